"""The AWS KMS key provider: ``aws-kms:arn:aws:kms:<region>:<account>:key/<id>``
(or ``aws-kms:<key id>`` / ``aws-kms:alias/<name>`` in the configured region).

Data keys are made by GenerateDataKey, unwrapped by Decrypt and moved to the
newest key material by ReEncrypt, inside AWS KMS: the KMS key never leaves it.
The encryption context sealedkb gives (namespace, purpose, data key id) is the
AWS EncryptionContext, which AWS binds into the ciphertext.

Wrapped blob: ``0x01 | label (4, BE) | key tag (8) | AWS CiphertextBlob``.

- AWS ciphertext blobs are opaque and AWS rotation is transparent: Decrypt opens a
  blob made under any earlier key material, automatic rotation needs nothing from
  sealedkb. The *label* is sealedkb's own count of the key material versions at
  wrap time (1 + the rotations ListKeyRotations lists); it only tells
  ``key rotate`` / ``status`` which data keys were wrapped before the newest
  rotation. It is authenticated: it is sent as one more EncryptionContext entry
  (``sealedkb:kms_version``), so an edited label fails to decrypt.
- The key tag is the first 8 bytes of SHA-256 of the key ARN: a blob offered to
  another KMS key is refused before any call (AWS would say IncorrectKeyException).

AWS enforces the key's state and policies. sealedkb checks the state itself too
(DescribeKey before every wrap or unwrap), so a disabled or pending-deletion key
is refused with its state named even where an emulator would not refuse it, and
the role split of sealedkb principals (keys/policy.py's default policy: the admin
manages the key, the service principal uses it) is applied before a call, as the
local provider does. What the AWS credentials may do is decided by AWS (IAM and
the key policy, which ``get_key_policy``/``put_key_policy`` read and write as the
AWS JSON document).

Automatic rotation (EnableKeyRotation with RotationPeriodInDays) and deletion
after the pending window are AWS's own schedule: ``rotate_key_if_due`` and
``destroy_key_if_due`` have nothing to do here.

Every call's KMS request id is kept (:meth:`AwsKmsProvider.last_request_id`) and
named in errors, so an event can be matched with CloudTrail. Credentials come
from boto3's standard chain (environment, profile, SSO, instance or task role);
retries are botocore's standard mode with bounded attempts, with connect and read
timeouts, so an outage fails within seconds as KEY_UNAVAILABLE.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import struct
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

from sealedkb.config import Settings
from sealedkb.crypto.kdf import constant_time_eq
from sealedkb.errors import (
    AccessDeniedError,
    ConfigError,
    ConflictError,
    IntegrityError,
    KeyUnavailableError,
    NotFoundError,
    SealedKBError,
    ValidationError,
)
from sealedkb.keys import request_ids
from sealedkb.keys.policy import (
    DEFAULT_ADMIN,
    DEFAULT_SERVICE,
    SYSTEM_PRINCIPAL,
    Action,
    KeyPolicy,
    default_policy,
    validate_principal,
)
from sealedkb.keys.provider import (
    DEFAULT_PENDING_WINDOW_DAYS,
    DEFAULT_ROTATION_DAYS,
    MAX_PENDING_WINDOW_DAYS,
    MAX_ROTATION_DAYS,
    MIN_PENDING_WINDOW_DAYS,
    MIN_ROTATION_DAYS,
    KeyMetadata,
    KeyState,
    ProviderDiagnosis,
)

if TYPE_CHECKING:
    from mypy_boto3_kms.client import KMSClient

log = logging.getLogger("sealedkb.keys.aws_kms")

SCHEME = "aws-kms"
URI_PREFIX = SCHEME + ":"
BLOB_FORMAT = 0x01
_HEADER = struct.Struct(">BI8s")
VERSION_CONTEXT_KEY = "sealedkb:kms_version"
MAX_PLAINTEXT = 4096  # AWS KMS Encrypt's limit
MAX_POLICY_BYTES = 32 * 1024
MAX_LISTED_KEYS = 500
AWS_POLICY_VERSION = "2012-10-17"

# botocore client settings: standard retry mode (exponential backoff with jitter,
# retries throttling and transient errors), bounded; short timeouts so an outage
# surfaces as KEY_UNAVAILABLE within seconds instead of hanging a request.
MAX_ATTEMPTS = 3
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0

# AWS KMS error codes that mean "try again later": the key service is there but
# cannot answer now (after botocore's own retries).
_TRANSIENT = {
    "ThrottlingException",
    "LimitExceededException",
    "KMSInternalException",
    "DependencyTimeoutException",
    "KeyUnavailableException",
    "ServiceUnavailableException",
    "InternalFailure",
    "RequestTimeout",
}
_AWS_STATES = {
    "Enabled": KeyState.ENABLED,
    "Disabled": KeyState.DISABLED,
    "PendingDeletion": KeyState.PENDING_DELETION,
    "PendingReplicaDeletion": KeyState.PENDING_DELETION,
}

T = TypeVar("T")


def _utc(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def key_tag(arn: str) -> bytes:
    """8 bytes naming the KMS key a blob was wrapped under (not secret)."""
    return hashlib.sha256(arn.encode()).digest()[:8]


def _key_id_of(key_uri: str) -> str:
    if not key_uri.startswith(URI_PREFIX) or len(key_uri) <= len(URI_PREFIX):
        raise ValidationError(
            "not an AWS KMS key URI (aws-kms:arn:aws:kms:<region>:<account>:key/<id>, "
            "aws-kms:<key id> or aws-kms:alias/<name>)",
            field="kms_key_id",
        )
    key_id = key_uri[len(URI_PREFIX) :]
    if len(key_id) > 2048 or not key_id.isprintable() or any(c.isspace() for c in key_id):
        raise ValidationError("malformed AWS KMS key id", field="kms_key_id")
    return key_id


def region_of(key_uri: str) -> str | None:
    """The region an ARN (or a key URI holding one) names; None for a key id or alias."""
    key_id = _key_id_of(key_uri) if key_uri.startswith(URI_PREFIX) else key_uri
    parts = key_id.split(":")
    if key_id.startswith("arn:") and len(parts) >= 6 and parts[2] == "kms":
        return parts[3] or None
    return None


def _state_of(raw: Any) -> KeyState:
    # Creating/Updating/PendingImport/Unavailable: not usable; shown as Disabled.
    return _AWS_STATES.get(str(raw), KeyState.DISABLED)


def _paged(method: str, marker: str | None, **kw: Any) -> Callable[[KMSClient], Any]:
    """A call of a paginated KMS list operation, from ``marker`` on."""
    if marker:
        kw["Marker"] = marker
    return lambda client: getattr(client, method)(**kw)


class KmsClientSource(Protocol):
    """Where a provider gets its boto3 KMS client for a region (tests pass stubs)."""

    def get(self, region: str | None) -> KMSClient: ...


# boto3 clients are thread-safe and slow to build (they load the service model):
# one per (region, endpoint) for the whole process.
_client_lock = threading.Lock()
_client_cache: dict[tuple[str | None, str | None], KMSClient] = {}


class _Clients:
    """boto3 KMS clients by region, shared by every provider of the process."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def get(self, region: str | None) -> KMSClient:
        region = region or self._settings.aws_region
        key = (region, self._settings.aws_endpoint_url or None)
        with _client_lock:
            client = _client_cache.get(key)
            if client is None:
                client = self._make(region)
                _client_cache[key] = client
            return client

    def _make(self, region: str | None) -> KMSClient:
        try:
            import boto3
            from botocore.config import Config
            from botocore.exceptions import NoRegionError
        except ImportError:  # pragma: no cover - depends on the installation
            raise ConfigError(
                "the aws-kms key provider needs boto3: pip install 'sealedkb[aws]'",
                field="kms_key_id",
            ) from None
        config = Config(
            retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
        )
        try:
            return boto3.session.Session().client(
                "kms",
                region_name=region,
                endpoint_url=self._settings.aws_endpoint_url or None,
                config=config,
            )
        except NoRegionError:
            raise ConfigError(
                "no AWS region: use a key ARN, set SEALEDKB_AWS_REGION or AWS_REGION",
                field="aws_region",
            ) from None


class AwsKmsProvider:
    """KeyProvider on AWS KMS (module doc). Acts for one sealedkb principal."""

    scheme = SCHEME
    schedules_itself = True  # keys/provider.py SelfScheduling

    def __init__(
        self,
        settings: Settings,
        *,
        principal: str = DEFAULT_ADMIN,
        service_principal: str = DEFAULT_SERVICE,
        clients: KmsClientSource | None = None,
    ) -> None:
        if principal != SYSTEM_PRINCIPAL:
            validate_principal(principal)
        self.principal = principal
        self.service_principal = validate_principal(service_principal)
        self._settings = settings
        self._clients: KmsClientSource = clients or _Clients(settings)
        self._mac_key_id = settings.aws_mac_key_id
        self._policy: KeyPolicy = default_policy(service=self.service_principal)
        self._local = threading.local()

    def for_principal(self, principal: str) -> Self:
        if principal != SYSTEM_PRINCIPAL:
            validate_principal(principal)
        other = copy.copy(self)  # shares the clients
        other.principal = principal
        other._local = threading.local()
        return other

    # --- calls -------------------------------------------------------------------

    def last_request_id(self) -> str | None:
        """The KMS request id of this thread's latest call (for the audit trail and
        CloudTrail), or None before any call."""
        rid: str | None = getattr(self._local, "request_id", None)
        return rid

    def _note(self, response: Mapping[str, Any] | None) -> str | None:
        meta = (response or {}).get("ResponseMetadata") or {}
        rid = meta.get("RequestId") if isinstance(meta, Mapping) else None
        rid = rid if isinstance(rid, str) and rid else None
        self._local.request_id = rid
        request_ids.note(rid)  # for the audit event of this call
        return rid

    def client(self, key_uri: str | None = None) -> KMSClient:
        """The boto3 KMS client used for ``key_uri``'s region (diagnostics, tests)."""
        return self._clients.get(region_of(key_uri) if key_uri else None)

    def _call(
        self,
        op: str,
        key_uri: str | None,
        fn: Callable[[KMSClient], T],
        *,
        management: bool = False,
    ) -> T:
        """One KMS call, its request id kept, AWS errors mapped to sealedkb's."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        client = self.client(key_uri)
        try:
            response = fn(client)
        except ClientError as exc:
            rid = self._note(exc.response)
            raise self._mapped(op, key_uri, exc.response, rid, management=management) from None
        except (NoCredentialsError, PartialCredentialsError):
            self._note(None)
            raise ConfigError(
                "no AWS credentials: boto3's standard chain (environment, profile, SSO, "
                "instance or task role) found none",
                field="aws_credentials",
            ) from None
        except BotoCoreError as exc:  # connect/read timeout, endpoint unreachable
            self._note(None)
            raise KeyUnavailableError(
                f"AWS KMS is unreachable ({type(exc).__name__} after {MAX_ATTEMPTS} attempts, "
                f"{CONNECT_TIMEOUT:g}s connect / {READ_TIMEOUT:g}s read timeout); {op} not done"
            ) from None
        self._note(response)  # type: ignore[arg-type]
        return response

    def _mapped(
        self,
        op: str,
        key_uri: str | None,
        response: Mapping[str, Any],
        rid: str | None,
        *,
        management: bool,
    ) -> SealedKBError:
        error = response.get("Error") or {}
        code = str(error.get("Code", "Unknown"))
        what = key_uri or "AWS KMS"
        ref = f" (KMS request id {rid})" if rid else ""
        if code == "AccessDeniedException":
            return AccessDeniedError(
                f"AWS KMS denied kms:{op} on {what}: the credentials' IAM policy or the key "
                f"policy must allow kms:{op}{ref}"
            )
        if code == "NotFoundException":
            msg = f"AWS KMS key not found: {what}{ref}"
            return (
                NotFoundError(msg, field="kms_key_id") if management else KeyUnavailableError(msg)
            )
        if code == "DisabledException":
            msg = f"KMS key {what} is Disabled{ref}"
            if management:
                return ConflictError(f"cannot {op}: {msg}; enable it first (key enable)")
            return KeyUnavailableError(msg, key_state=KeyState.DISABLED.value)
        if code == "KMSInvalidStateException":
            msg = f"KMS key {what} is in a state that does not allow {op}{ref}"
            if management:
                return ConflictError(msg)
            return KeyUnavailableError(msg)
        if code == "KMSInvalidMacException":
            return IntegrityError(f"the MAC does not verify under {what}{ref}")
        if code in ("InvalidCiphertextException", "IncorrectKeyException"):
            return IntegrityError(
                f"wrapped data key does not open under {what} with this encryption context{ref}"
            )
        if code in _TRANSIENT:
            return KeyUnavailableError(
                f"AWS KMS could not serve {op} now ({code}, after {MAX_ATTEMPTS} attempts){ref}"
            )
        if code == "MalformedPolicyDocumentException":
            return ValidationError(
                f"AWS KMS refused the key policy as malformed{ref}", field="policy"
            )
        if code in ("InvalidKeyUsageException", "UnsupportedOperationException"):
            return ConfigError(
                f"KMS key {what} cannot be used for {op} (wrong key spec or usage){ref}",
                field="kms_key_id",
            )
        if code in ("ValidationException", "InvalidArnException", "InvalidAliasNameException"):
            return ValidationError(f"AWS KMS refused {op} as invalid ({code}){ref}")
        return KeyUnavailableError(f"AWS KMS refused {op} ({code}){ref}")

    # --- guards ----------------------------------------------------------------

    def _authorize(self, key_uri: str, action: Action) -> None:
        if self.principal == SYSTEM_PRINCIPAL:
            return
        decision = self._policy.evaluate(self.principal, action)
        if not decision.allowed:
            raise AccessDeniedError(
                f"principal {self.principal!r} may not {action.value} with {key_uri}: "
                f"{decision.reason} of sealedkb's key roles"
            )

    def _describe(self, key_uri: str, *, management: bool = False) -> dict[str, Any]:
        key_id = _key_id_of(key_uri)
        resp = self._call(
            "DescribeKey", key_uri, lambda c: c.describe_key(KeyId=key_id), management=management
        )
        return dict(resp["KeyMetadata"])

    def _usable(self, key_uri: str, action: Action) -> str:
        """The key's ARN once the principal may act and the key is Enabled."""
        _key_id_of(key_uri)
        self._authorize(key_uri, action)
        meta = self._describe(key_uri)
        state = _state_of(meta.get("KeyState"))
        if state is not KeyState.ENABLED:
            raise KeyUnavailableError(f"KMS key {key_uri} is {state.value}", key_state=state.value)
        return str(meta["Arn"])

    @staticmethod
    def _require_state(key_uri: str, meta: Mapping[str, Any], op: str, *allowed: KeyState) -> None:
        state = _state_of(meta.get("KeyState"))
        if state not in allowed:
            hint = {
                KeyState.PENDING_DELETION: "; cancel the deletion first (key cancel-deletion)",
                KeyState.DISABLED: "; enable it first (key enable)",
            }.get(state, "")
            raise ConflictError(f"cannot {op}: KMS key {key_uri} is {state.value}{hint}")

    def _versions(self, arn: str) -> int:
        """1 + the rotations AWS lists for the key (on-demand and automatic)."""
        count = 0
        marker: str | None = None
        while True:
            resp = self._call(
                "ListKeyRotations", arn, _paged("list_key_rotations", marker, KeyId=arn)
            )
            count += len(resp.get("Rotations", []))
            if not resp.get("Truncated"):
                return count + 1
            marker = resp.get("NextMarker")

    # --- wrapped blobs -----------------------------------------------------------

    @staticmethod
    def _context(context: Mapping[str, str], version: int) -> dict[str, str]:
        if VERSION_CONTEXT_KEY in context:
            raise ValidationError(
                f"the encryption context entry {VERSION_CONTEXT_KEY!r} is reserved",
                field="context",
            )
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in context.items()):
            raise ValidationError("encryption context entries must be strings", field="context")
        return {**context, VERSION_CONTEXT_KEY: str(version)}

    @staticmethod
    def _parse(blob: bytes) -> tuple[int, bytes, bytes]:
        if len(blob) <= _HEADER.size or blob[0] != BLOB_FORMAT:
            raise IntegrityError("wrapped data key is malformed")
        _fmt, version, tag = _HEADER.unpack_from(blob)
        if version < 1:
            raise IntegrityError("wrapped data key is malformed")
        return int(version), bytes(tag), blob[_HEADER.size :]

    def wrapped_version(self, blob: bytes) -> int:
        return self._parse(blob)[0]

    @staticmethod
    def _pack(version: int, arn: str, aws_blob: bytes) -> bytes:
        return _HEADER.pack(BLOB_FORMAT, version, key_tag(arn)) + aws_blob

    def _opened(self, key_uri: str, blob: bytes, action: Action) -> tuple[str, int, bytes]:
        version, tag, aws_blob = self._parse(blob)
        arn = self._usable(key_uri, action)
        if not constant_time_eq(tag, key_tag(arn)):
            raise IntegrityError(f"wrapped data key was not made under {key_uri}")
        return arn, version, aws_blob

    # --- KeyProvider: wrap / unwrap -------------------------------------------------

    def encrypt(self, key_uri: str, plaintext: bytes, context: Mapping[str, str]) -> bytes:
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValidationError("at most 4 KiB can be wrapped", field="plaintext")
        self._context(context, 1)
        arn = self._usable(key_uri, Action.ENCRYPT)
        version = self._versions(arn)
        ctx = self._context(context, version)
        resp = self._call(
            "Encrypt",
            key_uri,
            lambda c: c.encrypt(KeyId=arn, Plaintext=plaintext, EncryptionContext=ctx),
        )
        return self._pack(version, arn, resp["CiphertextBlob"])

    def generate_data_key(self, key_uri: str, context: Mapping[str, str]) -> tuple[bytes, bytes]:
        self._context(context, 1)
        arn = self._usable(key_uri, Action.GENERATE_DATA_KEY)
        version = self._versions(arn)
        ctx = self._context(context, version)
        resp = self._call(
            "GenerateDataKey",
            key_uri,
            lambda c: c.generate_data_key(KeyId=arn, KeySpec="AES_256", EncryptionContext=ctx),
        )
        plaintext = bytes(resp["Plaintext"])
        if len(plaintext) != 32:
            raise IntegrityError("AWS KMS returned a data key of the wrong size")
        return plaintext, self._pack(version, arn, resp["CiphertextBlob"])

    def decrypt(self, key_uri: str, blob: bytes, context: Mapping[str, str]) -> bytes:
        arn, version, aws_blob = self._opened(key_uri, blob, Action.DECRYPT)
        ctx = self._context(context, version)
        resp = self._call(
            "Decrypt",
            key_uri,
            lambda c: c.decrypt(KeyId=arn, CiphertextBlob=aws_blob, EncryptionContext=ctx),
        )
        return bytes(resp["Plaintext"])

    def re_encrypt(self, key_uri: str, blob: bytes, context: Mapping[str, str]) -> bytes:
        arn, version, aws_blob = self._opened(key_uri, blob, Action.RE_ENCRYPT)
        source = self._context(context, version)
        newest = self._versions(arn)
        dest = self._context(context, newest)
        resp = self._call(
            "ReEncrypt",
            key_uri,
            lambda c: c.re_encrypt(
                CiphertextBlob=aws_blob,
                SourceKeyId=arn,
                SourceEncryptionContext=source,
                DestinationKeyId=arn,
                DestinationEncryptionContext=dest,
            ),
        )
        return self._pack(newest, arn, resp["CiphertextBlob"])

    # --- KeyProvider: keys -----------------------------------------------------------

    def _metadata(self, key_uri: str, meta: Mapping[str, Any] | None = None) -> KeyMetadata:
        raw = dict(meta) if meta is not None else self._describe(key_uri, management=True)
        arn = str(raw["Arn"])
        state = _state_of(raw.get("KeyState"))
        rotation_enabled = False
        period = DEFAULT_ROTATION_DAYS
        next_rotation: datetime | None = None
        status: Mapping[str, Any] = {}
        if state in (KeyState.ENABLED, KeyState.DISABLED):
            with contextlib.suppress(ConflictError):  # a state without rotation facts
                status = self._call(
                    "GetKeyRotationStatus",
                    arn,
                    lambda c: c.get_key_rotation_status(KeyId=arn),
                    management=True,
                )
        if status:
            rotation_enabled = bool(status.get("KeyRotationEnabled"))
            period = int(status.get("RotationPeriodInDays") or DEFAULT_ROTATION_DAYS)
            next_rotation = _utc(status.get("NextRotationDate")) if rotation_enabled else None
        return KeyMetadata(
            key_id=URI_PREFIX + arn,
            state=state,
            created_at=_utc(raw.get("CreationDate")) or datetime.fromtimestamp(0, UTC),
            description=str(raw.get("Description") or ""),
            rotation_enabled=rotation_enabled,
            rotation_period_days=period,
            next_rotation_date=next_rotation,
            versions=self._versions(arn),
            deletion_date=_utc(raw.get("DeletionDate")),
            provider=SCHEME,
        )

    def create_key(self, description: str = "") -> KeyMetadata:
        """A new symmetric encryption key, automatic rotation on (365 days). Who may
        create keys is IAM's decision (no key policy exists yet)."""
        if not isinstance(description, str) or len(description) > 256:
            raise ValidationError("description is limited to 256 characters", field="description")
        resp = self._call(
            "CreateKey",
            None,
            lambda c: c.create_key(
                Description=description,
                KeyUsage="ENCRYPT_DECRYPT",
                KeySpec="SYMMETRIC_DEFAULT",
                Tags=[{"TagKey": "sealedkb", "TagValue": "kms-key"}],
            ),
            management=True,
        )
        arn = str(resp["KeyMetadata"]["Arn"])
        uri = URI_PREFIX + arn
        self._call(
            "EnableKeyRotation",
            uri,
            lambda c: c.enable_key_rotation(KeyId=arn, RotationPeriodInDays=DEFAULT_ROTATION_DAYS),
            management=True,
        )
        log.info("KMS key created: %s", uri)
        return self._metadata(uri)

    def diagnose(self, key_uri: str) -> ProviderDiagnosis:
        """AWS's clock (the HTTP ``Date`` of a DescribeKey answer: SigV4 refuses
        requests more than 5 minutes off). IAM tells no caller its own permissions
        without iam:SimulatePrincipalPolicy, so ``doctor`` learns those by using the
        key (GenerateDataKey, Decrypt, GenerateMac, VerifyMac)."""
        key_id = _key_id_of(key_uri)
        self._authorize(key_uri, Action.DESCRIBE_KEY)
        resp = self._call("DescribeKey", key_uri, lambda c: c.describe_key(KeyId=key_id))
        headers = (resp.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
        try:
            server_time: datetime | None = parsedate_to_datetime(str(headers["date"]))
        except (KeyError, TypeError, ValueError):
            server_time = None
        return ProviderDiagnosis(server_time=server_time)

    def describe_key(self, key_uri: str) -> KeyMetadata:
        _key_id_of(key_uri)
        self._authorize(key_uri, Action.DESCRIBE_KEY)
        return self._metadata(key_uri)

    def list_keys(self) -> list[KeyMetadata]:
        """The account's customer-managed symmetric encryption keys in the configured
        region (at most 500), as AWS ListKeys (not governed by key policies)."""
        out: list[KeyMetadata] = []
        marker: str | None = None
        seen = 0
        while seen < MAX_LISTED_KEYS:
            resp = self._call(
                "ListKeys", None, _paged("list_keys", marker, Limit=100), management=True
            )
            for entry in resp.get("Keys", []):
                seen += 1
                uri = URI_PREFIX + str(entry["KeyArn"])
                try:
                    raw = self._describe(uri, management=True)
                    if (
                        raw.get("KeyManager") != "CUSTOMER"
                        or raw.get("KeySpec", "SYMMETRIC_DEFAULT") != "SYMMETRIC_DEFAULT"
                        or raw.get("KeyUsage", "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT"
                    ):
                        continue
                    out.append(self._metadata(uri, raw))
                except (AccessDeniedError, NotFoundError, ConflictError):
                    continue  # a key these credentials may not see, or gone meanwhile
            if not resp.get("Truncated"):
                break
            marker = resp.get("NextMarker")
        return out

    # --- KeyProvider: lifecycle --------------------------------------------------------

    def _change(
        self,
        key_uri: str,
        action: Action,
        op: str,
        allowed: tuple[KeyState, ...],
        call: Callable[[KMSClient, str], object],
    ) -> KeyMetadata:
        """Authorize, check the state AWS would check, make the change, describe."""
        _key_id_of(key_uri)
        self._authorize(key_uri, action)
        raw = self._describe(key_uri, management=True)
        self._require_state(key_uri, raw, op, *allowed)
        # Management calls name the key by its id: they only work in the key's own
        # account, where the id is unique per region (cross-account use of a key,
        # which needs the ARN, is for the cryptographic calls only).
        key_id = str(raw["KeyId"])
        self._call(op, str(raw["Arn"]), lambda c: call(c, key_id), management=True)
        return self._metadata(key_uri)

    def rotate_key(self, key_uri: str) -> KeyMetadata:
        meta = self._change(
            key_uri,
            Action.ROTATE_KEY,
            "RotateKeyOnDemand",
            (KeyState.ENABLED,),
            lambda c, kid: c.rotate_key_on_demand(KeyId=kid),
        )
        log.info("KMS key rotated: %s (version %d)", key_uri, meta.versions)
        return meta

    def enable_key_rotation(
        self, key_uri: str, period_days: int = DEFAULT_ROTATION_DAYS
    ) -> KeyMetadata:
        if (
            isinstance(period_days, bool)
            or not isinstance(period_days, int)
            or not MIN_ROTATION_DAYS <= period_days <= MAX_ROTATION_DAYS
        ):
            raise ValidationError(
                f"rotation period must be {MIN_ROTATION_DAYS}-{MAX_ROTATION_DAYS} days",
                field="period_days",
            )
        return self._change(
            key_uri,
            Action.ENABLE_KEY_ROTATION,
            "EnableKeyRotation",
            (KeyState.ENABLED, KeyState.DISABLED),
            lambda c, kid: c.enable_key_rotation(KeyId=kid, RotationPeriodInDays=period_days),
        )

    def disable_key_rotation(self, key_uri: str) -> KeyMetadata:
        return self._change(
            key_uri,
            Action.DISABLE_KEY_ROTATION,
            "DisableKeyRotation",
            (KeyState.ENABLED, KeyState.DISABLED),
            lambda c, kid: c.disable_key_rotation(KeyId=kid),
        )

    def disable_key(self, key_uri: str) -> KeyMetadata:
        return self._change(
            key_uri,
            Action.DISABLE_KEY,
            "DisableKey",
            (KeyState.ENABLED, KeyState.DISABLED),
            lambda c, kid: c.disable_key(KeyId=kid),
        )

    def enable_key(self, key_uri: str) -> KeyMetadata:
        return self._change(
            key_uri,
            Action.ENABLE_KEY,
            "EnableKey",
            (KeyState.ENABLED, KeyState.DISABLED),
            lambda c, kid: c.enable_key(KeyId=kid),
        )

    def schedule_key_deletion(
        self, key_uri: str, pending_window_days: int = DEFAULT_PENDING_WINDOW_DAYS
    ) -> KeyMetadata:
        if (
            isinstance(pending_window_days, bool)
            or not isinstance(pending_window_days, int)
            or not MIN_PENDING_WINDOW_DAYS <= pending_window_days <= MAX_PENDING_WINDOW_DAYS
        ):
            raise ValidationError(
                f"pending window must be {MIN_PENDING_WINDOW_DAYS}-{MAX_PENDING_WINDOW_DAYS} days",
                field="pending_window_days",
            )
        return self._change(
            key_uri,
            Action.SCHEDULE_KEY_DELETION,
            "ScheduleKeyDeletion",
            (KeyState.ENABLED, KeyState.DISABLED),
            lambda c, kid: c.schedule_key_deletion(
                KeyId=kid, PendingWindowInDays=pending_window_days
            ),
        )

    def cancel_key_deletion(self, key_uri: str) -> KeyMetadata:
        """PendingDeletion -> Disabled (AWS's own rule)."""
        return self._change(
            key_uri,
            Action.CANCEL_KEY_DELETION,
            "CancelKeyDeletion",
            (KeyState.PENDING_DELETION,),
            lambda c, kid: c.cancel_key_deletion(KeyId=kid),
        )

    def get_key_policy(self, key_uri: str) -> dict[str, Any]:
        """The AWS key policy document (``default``), parsed."""
        key_id = _key_id_of(key_uri)
        self._authorize(key_uri, Action.GET_KEY_POLICY)
        resp = self._call(
            "GetKeyPolicy",
            key_uri,
            lambda c: c.get_key_policy(KeyId=key_id, PolicyName="default"),
            management=True,
        )
        try:
            doc = json.loads(resp["Policy"])
        except (KeyError, ValueError):
            raise IntegrityError("AWS KMS returned a key policy that is not JSON") from None
        if not isinstance(doc, dict):
            raise IntegrityError("AWS KMS returned a key policy that is not a JSON object")
        return doc

    def put_key_policy(
        self, key_uri: str, policy: dict[str, Any], *, bypass_lockout_check: bool = False
    ) -> KeyMetadata:
        """Replace the AWS key policy. It must be an AWS policy document (Version
        2012-10-17, a Statement list, at most 32 KB); AWS checks its grammar and,
        unless bypassed, that it does not lock the caller out."""
        if (
            not isinstance(policy, dict)
            or policy.get("Version") != AWS_POLICY_VERSION
            or not isinstance(policy.get("Statement"), list)
            or not policy["Statement"]
        ):
            raise ValidationError(
                f'an AWS KMS key policy is an IAM policy document: "Version": '
                f'"{AWS_POLICY_VERSION}" and a non-empty "Statement" list (sealedkb\'s own '
                "policy format is for the local provider)",
                field="policy",
            )
        text = json.dumps(policy, separators=(",", ":"))
        if len(text.encode()) > MAX_POLICY_BYTES:
            raise ValidationError("a key policy is limited to 32 KB", field="policy")
        return self._change(
            key_uri,
            Action.PUT_KEY_POLICY,
            "PutKeyPolicy",
            (KeyState.ENABLED, KeyState.DISABLED, KeyState.PENDING_DELETION),
            lambda c, kid: c.put_key_policy(
                KeyId=kid,
                PolicyName="default",
                Policy=text,
                BypassPolicyLockoutSafetyCheck=bypass_lockout_check,
            ),
        )

    # --- AWS runs its own schedule ----------------------------------------------------

    def rotate_key_if_due(self, key_uri: str) -> KeyMetadata | None:
        return None  # AWS rotates automatically (EnableKeyRotation)

    def destroy_key_if_due(self, key_uri: str) -> KeyMetadata | None:
        return None  # AWS deletes the key material when the pending window ends

    # --- audit checkpoints and token MACs: a separate HMAC_256 KMS key -------------------

    def _mac_key(self) -> str:
        if not self._mac_key_id:
            raise ConfigError(
                "SEALEDKB_AWS_MAC_KEY_ID is not set: audit checkpoints and token MACs need "
                "an HMAC_256 KMS key (aws kms create-key --key-spec HMAC_256 "
                "--key-usage GENERATE_VERIFY_MAC)",
                field="aws_mac_key_id",
            )
        return self._mac_key_id

    def generate_mac(self, message: bytes) -> bytes:
        key_id = self._mac_key()
        resp = self._call(
            "GenerateMac",
            URI_PREFIX + key_id,
            lambda c: c.generate_mac(KeyId=key_id, Message=message, MacAlgorithm="HMAC_SHA_256"),
        )
        return bytes(resp["Mac"])

    def verify_mac(self, message: bytes, mac: bytes) -> bool:
        key_id = self._mac_key()
        if not mac:
            return False
        try:
            resp = self._call(
                "VerifyMac",
                URI_PREFIX + key_id,
                lambda c: c.verify_mac(
                    KeyId=key_id, Message=message, Mac=mac, MacAlgorithm="HMAC_SHA_256"
                ),
            )
        except (IntegrityError, ValidationError):
            return False  # does not verify, or a MAC of the wrong length
        return bool(resp.get("MacValid"))


def aws_kms_provider(
    settings: Settings,
    *,
    principal: str,
    now: Callable[[], datetime] | None = None,
) -> AwsKmsProvider:
    """The ``aws-kms`` scheme's factory (``now`` is unused: AWS keeps the schedule)."""
    return AwsKmsProvider(
        settings, principal=principal, service_principal=settings.service_principal
    )
