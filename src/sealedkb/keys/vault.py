"""The Vault / OpenBao Transit key provider: ``vault:transit/<mount>/<key>``.

A Transit key never leaves Vault. sealedkb's KMS keys are ``aes256-gcm96`` keys
created with ``derived=true``; every call passes a derivation context, so each
(namespace, purpose, data key) gets its own derived key inside Vault. The context
is the whole encryption context sealedkb gives (namespace, purpose, data key id)
as canonical JSON: a data key wrapped for one namespace or purpose does not open
for another, and Transit's rewrap carries it along (rewrap does not carry
associated data, so nothing is put there).

- Data keys: ``<mount>/datakey/plaintext/<key>`` (256 bits, made by Vault, one call).
- Unwrap: ``<mount>/decrypt/<key>``; re-wrap under the newest version without the
  key leaving Vault: ``<mount>/rewrap/<key>``.
- The wrapped blob is Transit's own ciphertext string (``vault:v<N>:<base64>``),
  so the key version is the one Vault wrote: ``wrapped_version`` reads it.
- Rotation: ``<mount>/keys/<key>/rotate``; automatic rotation is Transit's own
  ``auto_rotate_period``; ``min_decryption_version`` retires old versions
  (:meth:`VaultTransitProvider.set_min_decryption_version`).
- Audit checkpoints and token MACs: ``<mount>/hmac/<mac key>/sha2-256`` pinned to
  version 1 of a separate Transit key (``SEALEDKB_VAULT_MAC_KEY``), so a MAC stays
  the same after that key is rotated (token look-ups depend on it).

Transit keys have no Disabled or PendingDeletion state and no per-key policy:
disable, enable, scheduled deletion and key policies are refused with a
ValidationError saying how to do the same in Vault (an ACL policy on the key's
paths; deleting a key there is immediate). Vault's ACL policies decide what the
token may do (a refusal names the path and capability); sealedkb's role split of
its own principals (keys/policy.py's default policy) is applied before a call.

Address: ``SEALEDKB_VAULT_ADDR`` or ``VAULT_ADDR``; token: the 0600 file
``SEALEDKB_VAULT_TOKEN_FILE`` or ``VAULT_TOKEN`` (a replaced token file, as Vault
Agent's auto-auth sink writes it, is read again before the next call);
``SEALEDKB_VAULT_CA_FILE`` verifies a TLS server. Every call has a timeout, so
an outage fails fast as KEY_UNAVAILABLE and the next call after Vault returns
works again.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import logging
import os
import re
import stat
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from sealedkb.config import Settings
from sealedkb.crypto.kdf import constant_time_eq
from sealedkb.errors import (
    AccessDeniedError,
    ConfigError,
    IntegrityError,
    KeyUnavailableError,
    NotFoundError,
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
    MAX_ROTATION_DAYS,
    MIN_ROTATION_DAYS,
    KeyMetadata,
    KeyState,
    ProviderDiagnosis,
)

if TYPE_CHECKING:
    import hvac

log = logging.getLogger("sealedkb.keys.vault")

SCHEME = "vault"
URI_PREFIX = "vault:transit/"
MAX_PLAINTEXT = 4096
TIMEOUT_SECONDS = 10
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_BLOB_RE = re.compile(rb"vault:v([1-9][0-9]{0,8}):[A-Za-z0-9+/=]+")


def parse_uri(key_uri: str) -> tuple[str, str]:
    """(mount, key name) of ``vault:transit/<mount>/<key>``; the mount may be nested."""
    if not key_uri.startswith(URI_PREFIX):
        raise ValidationError(
            "not a Vault Transit key URI (vault:transit/<mount>/<key>)", field="kms_key_id"
        )
    mount, sep, name = key_uri[len(URI_PREFIX) :].rpartition("/")
    parts = mount.split("/") if mount else []
    if not sep or not parts or not all(_NAME_RE.fullmatch(p) for p in [*parts, name]):
        raise ValidationError(
            "malformed Vault Transit key URI (vault:transit/<mount>/<key>: letters, digits, "
            "'_', '.', '-')",
            field="kms_key_id",
        )
    return mount, name


def key_uri_of(mount: str, name: str) -> str:
    return f"{URI_PREFIX}{mount}/{name}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def derivation_context(context: Mapping[str, str]) -> str:
    """Transit's ``context`` for a sealedkb encryption context (base64)."""
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in context.items()):
        raise ValidationError("encryption context entries must be strings", field="context")
    text = json.dumps(dict(context), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _b64(b"sealedkb/v1|" + text.encode())


def _read_token(settings: Settings) -> str:
    path: Path | None = settings.vault_token_file
    if path is not None:
        try:
            st = path.stat()
        except OSError:
            raise ConfigError(
                f"Vault token file not found: {path}", field="vault_token_file"
            ) from None
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise ConfigError(
                f"Vault token file {path} is readable by group or others; run: chmod 600 {path}",
                field="vault_token_file",
            )
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise ConfigError(f"Vault token file {path} is empty", field="vault_token_file")
        return token
    token = os.environ.get("VAULT_TOKEN", "").strip()
    if not token:
        raise ConfigError(
            "no Vault token: set SEALEDKB_VAULT_TOKEN_FILE (a 0600 file) or VAULT_TOKEN",
            field="vault_token_file",
        )
    return token


class _Connection:
    """One hvac client for every principal's provider (built on first use)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._client: hvac.Client | None = None
        self._token_stamp: tuple[int, int] | None = None

    def _stamp(self) -> tuple[int, int] | None:
        path = self._settings.vault_token_file
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    def client(self) -> hvac.Client:
        with self._lock:
            if self._client is not None and self._stamp() != self._token_stamp:
                # The token file was replaced (Vault Agent's auto-auth sink renews it):
                # use the new token from the next call on.
                self._token_stamp = self._stamp()
                self._client.token = _read_token(self._settings)
            if self._client is None:
                try:
                    import hvac
                except ImportError:  # pragma: no cover - depends on the installation
                    raise ConfigError(
                        "the vault key provider needs hvac: pip install 'sealedkb[vault]'",
                        field="kms_key_id",
                    ) from None
                addr = self._settings.vault_addr or os.environ.get("VAULT_ADDR", "")
                if not addr:
                    raise ConfigError(
                        "no Vault address: set SEALEDKB_VAULT_ADDR or VAULT_ADDR",
                        field="vault_addr",
                    )
                ca = self._settings.vault_ca_file
                self._token_stamp = self._stamp()
                self._client = hvac.Client(
                    url=addr,
                    token=_read_token(self._settings),
                    verify=str(ca) if ca is not None else True,
                    timeout=TIMEOUT_SECONDS,
                )
            return self._client


class VaultTransitProvider:
    """KeyProvider on Vault / OpenBao Transit (module doc)."""

    scheme = SCHEME
    schedules_itself = True  # keys/provider.py SelfScheduling

    def __init__(
        self,
        settings: Settings,
        *,
        principal: str = DEFAULT_ADMIN,
        service_principal: str = DEFAULT_SERVICE,
        connection: _Connection | None = None,
    ) -> None:
        if principal != SYSTEM_PRINCIPAL:
            validate_principal(principal)
        self.principal = principal
        self.service_principal = validate_principal(service_principal)
        self._mount = settings.vault_transit_mount
        self._mac_key = settings.vault_mac_key
        self._conn = connection or _Connection(settings)
        self._policy: KeyPolicy = default_policy(service=self.service_principal)

    def for_principal(self, principal: str) -> Self:
        if principal != SYSTEM_PRINCIPAL:
            validate_principal(principal)
        other = copy.copy(self)  # shares the connection
        other.principal = principal
        return other

    # --- calls -------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        key_uri: str | None,
        capability: str = "update",
        management: bool = False,
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One Transit call; hvac's errors mapped to sealedkb's (Vault's message is
        not echoed: it can name request details)."""
        import hvac.exceptions as vault_errors

        client = self._conn.client()
        target = key_uri or f"Vault mount {self._mount}"
        request_ids.clear()
        try:
            resp = client.adapter.request(method, f"/v1/{path}", json=dict(body or {}))
        except vault_errors.Forbidden:
            raise AccessDeniedError(
                f"Vault denied {what} on {target}: the token's ACL policy must grant "
                f'"{capability}" on path "{path}"'
            ) from None
        except vault_errors.InvalidPath:
            msg = f"Vault Transit key not found: {target}"
            if management:
                raise NotFoundError(msg, field="kms_key_id") from None
            raise KeyUnavailableError(msg) from None
        except vault_errors.InvalidRequest as exc:
            text = str(exc).lower()
            if "not found" in text:
                msg = f"Vault Transit key not found: {target}"
                if management:
                    raise NotFoundError(msg, field="kms_key_id") from None
                raise KeyUnavailableError(msg) from None
            if "disallowed by policy" in text or "min_decryption_version" in text:
                raise KeyUnavailableError(
                    f"the key version of this wrapped key is retired on {target} "
                    "(below min_decryption_version)"
                ) from None
            if management:
                raise ValidationError(f"Vault refused {what} on {target} as invalid") from None
            raise IntegrityError(
                f"wrapped data key does not open under {target} with this encryption context"
            ) from None
        except (vault_errors.VaultDown, vault_errors.VaultNotInitialized):
            raise KeyUnavailableError(
                f"Vault is sealed or not initialised; {what} not done"
            ) from None
        except vault_errors.VaultError as exc:
            raise KeyUnavailableError(
                f"Vault could not serve {what} now ({type(exc).__name__})"
            ) from None
        except OSError as exc:  # requests' connection errors and timeouts
            raise KeyUnavailableError(
                f"Vault is unreachable ({type(exc).__name__}, {TIMEOUT_SECONDS}s timeout); "
                f"{what} not done"
            ) from None
        if isinstance(resp, dict):
            request_ids.note(resp.get("request_id"))  # for the audit event of this call
            return resp
        request_ids.clear()
        return {}  # 204 No Content

    def _data(self, resp: Mapping[str, Any], *fields: str) -> dict[str, Any]:
        data = resp.get("data")
        if not isinstance(data, dict) or not all(f in data for f in fields):
            raise IntegrityError("Vault returned an answer without the expected fields")
        return data

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

    def _key(self, key_uri: str, action: Action) -> tuple[str, str]:
        mount, name = parse_uri(key_uri)
        self._authorize(key_uri, action)
        return mount, name

    @staticmethod
    def _refuse(op: str, how: str) -> ValidationError:
        return ValidationError(f"Vault Transit has no {op}: {how}", field="kms_key_id")

    # --- doctor (keys/provider.py SelfDiagnosing) -------------------------------------

    def required_capabilities(self, key_uri: str) -> dict[str, str]:
        """Path -> the capability sealedkb's calls need on it (the runbook's policy)."""
        mount, name = parse_uri(key_uri)
        paths = {
            f"{mount}/datakey/plaintext/{name}": "update",
            f"{mount}/encrypt/{name}": "update",
            f"{mount}/decrypt/{name}": "update",
            f"{mount}/rewrap/{name}": "update",
            f"{mount}/keys/{name}": "read",
        }
        if self._mac_key:
            paths[f"{mount}/hmac/{self._mac_key}"] = "update"
            paths[f"{mount}/verify/{self._mac_key}"] = "update"
        return paths

    def diagnose(self, key_uri: str) -> ProviderDiagnosis:
        """The token's capabilities on every path sealedkb uses
        (``sys/capabilities-self``) and the server's clock (its HTTP ``Date``)."""
        needed = self.required_capabilities(key_uri)
        resp = self._request(
            "post",
            "sys/capabilities-self",
            what="capabilities-self",
            key_uri=key_uri,
            management=True,
            body={"paths": sorted(needed)},
        )
        data = resp.get("data") if isinstance(resp.get("data"), dict) else resp
        missing: list[str] = []
        for path, capability in sorted(needed.items()):
            caps = data.get(path) if isinstance(data, dict) else None
            granted = {str(c) for c in caps} if isinstance(caps, list) else set()
            if capability not in granted and "root" not in granted:
                missing.append(f'"{capability}" on path "{path}"')
        return ProviderDiagnosis(
            missing_permissions=tuple(missing),
            server_time=self._server_time(),
            checked_permissions=len(needed),
        )

    def _server_time(self) -> datetime | None:
        client = self._conn.client()
        try:
            resp = client.adapter.session.get(
                f"{client.url}/v1/sys/health", timeout=TIMEOUT_SECONDS
            )
            return parsedate_to_datetime(resp.headers["Date"])
        except (OSError, KeyError, TypeError, ValueError):
            return None

    # --- wrapped blobs -------------------------------------------------------------

    def wrapped_version(self, blob: bytes) -> int:
        match = _BLOB_RE.fullmatch(blob)
        if match is None:
            raise IntegrityError("wrapped data key is malformed")
        return int(match.group(1))

    def _ciphertext(self, blob: bytes) -> str:
        self.wrapped_version(blob)
        return blob.decode("ascii")

    @staticmethod
    def _blob(data: Mapping[str, Any]) -> bytes:
        ciphertext = data.get("ciphertext")
        if not isinstance(ciphertext, str) or _BLOB_RE.fullmatch(ciphertext.encode()) is None:
            raise IntegrityError("Vault returned a malformed ciphertext")
        return ciphertext.encode("ascii")

    @staticmethod
    def _plaintext(data: Mapping[str, Any]) -> bytes:
        try:
            return base64.b64decode(str(data["plaintext"]), validate=True)
        except (KeyError, binascii.Error, ValueError):
            raise IntegrityError("Vault returned a malformed plaintext") from None

    # --- KeyProvider: wrap / unwrap ----------------------------------------------------

    def encrypt(self, key_uri: str, plaintext: bytes, context: Mapping[str, str]) -> bytes:
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValidationError("at most 4 KiB can be wrapped", field="plaintext")
        mount, name = self._key(key_uri, Action.ENCRYPT)
        resp = self._request(
            "post",
            f"{mount}/encrypt/{name}",
            what="encrypt",
            key_uri=key_uri,
            body={"plaintext": _b64(plaintext), "context": derivation_context(context)},
        )
        return self._blob(self._data(resp, "ciphertext"))

    def generate_data_key(self, key_uri: str, context: Mapping[str, str]) -> tuple[bytes, bytes]:
        mount, name = self._key(key_uri, Action.GENERATE_DATA_KEY)
        resp = self._request(
            "post",
            f"{mount}/datakey/plaintext/{name}",
            what="datakey",
            key_uri=key_uri,
            body={"context": derivation_context(context), "bits": 256},
        )
        data = self._data(resp, "ciphertext", "plaintext")
        plaintext = self._plaintext(data)
        if len(plaintext) != 32:
            raise IntegrityError("Vault returned a data key of the wrong size")
        return plaintext, self._blob(data)

    def decrypt(self, key_uri: str, blob: bytes, context: Mapping[str, str]) -> bytes:
        ciphertext = self._ciphertext(blob)
        mount, name = self._key(key_uri, Action.DECRYPT)
        resp = self._request(
            "post",
            f"{mount}/decrypt/{name}",
            what="decrypt",
            key_uri=key_uri,
            body={"ciphertext": ciphertext, "context": derivation_context(context)},
        )
        return self._plaintext(self._data(resp, "plaintext"))

    def re_encrypt(self, key_uri: str, blob: bytes, context: Mapping[str, str]) -> bytes:
        ciphertext = self._ciphertext(blob)
        mount, name = self._key(key_uri, Action.RE_ENCRYPT)
        resp = self._request(
            "post",
            f"{mount}/rewrap/{name}",
            what="rewrap",
            key_uri=key_uri,
            body={"ciphertext": ciphertext, "context": derivation_context(context)},
        )
        return self._blob(self._data(resp, "ciphertext"))

    # --- KeyProvider: keys ---------------------------------------------------------------

    def _read(self, key_uri: str) -> dict[str, Any]:
        mount, name = parse_uri(key_uri)
        resp = self._request(
            "get",
            f"{mount}/keys/{name}",
            what="read key",
            key_uri=key_uri,
            capability="read",
            management=True,
        )
        return self._data(resp, "type")

    def _metadata(self, key_uri: str, data: Mapping[str, Any]) -> KeyMetadata:
        if not data.get("derived") or data.get("type") not in ("aes256-gcm96", "aes128-gcm96"):
            raise ConfigError(
                f"{key_uri} is not a derived AES-GCM Transit key: create it with "
                "type=aes256-gcm96 derived=true",
                field="kms_key_id",
            )
        try:
            latest = int(data["latest_version"])
        except (KeyError, TypeError, ValueError):
            raise IntegrityError("Vault returned a key without its latest version") from None
        keys = data.get("keys") or {}

        def created(version: int) -> datetime:
            raw = keys.get(str(version))
            return (
                datetime.fromtimestamp(int(raw), UTC)
                if isinstance(raw, int)
                else datetime.fromtimestamp(0, UTC)
            )

        period_s = int(data.get("auto_rotate_period") or 0)
        period_days = period_s // 86400 if period_s else DEFAULT_ROTATION_DAYS
        return KeyMetadata(
            key_id=key_uri,
            state=KeyState.ENABLED,  # Transit keys have no other state
            created_at=created(1),
            description="",
            rotation_enabled=period_s > 0,
            rotation_period_days=period_days,
            next_rotation_date=(
                created(latest) + timedelta(seconds=period_s) if period_s > 0 else None
            ),
            versions=latest,
            deletion_date=None,
            provider=SCHEME,
        )

    def create_key(self, description: str = "") -> KeyMetadata:
        """A new derived aes256-gcm96 key on the configured mount, rotating every 365
        days (``auto_rotate_period``). Transit keys carry no description."""
        if not isinstance(description, str) or len(description) > 256:
            raise ValidationError("description is limited to 256 characters", field="description")
        name = f"sealedkb-{uuid.uuid4()}"
        uri = key_uri_of(self._mount, name)
        self._request(
            "post",
            f"{self._mount}/keys/{name}",
            what="create key",
            key_uri=uri,
            management=True,
            body={
                "type": "aes256-gcm96",
                "derived": True,
                "auto_rotate_period": f"{DEFAULT_ROTATION_DAYS * 24}h",
            },
        )
        log.info("Transit key created: %s", uri)
        return self._metadata(uri, self._read(uri))

    def describe_key(self, key_uri: str) -> KeyMetadata:
        self._key(key_uri, Action.DESCRIBE_KEY)
        return self._metadata(key_uri, self._read(key_uri))

    def list_keys(self) -> list[KeyMetadata]:
        """The derived AES-GCM keys on the configured Transit mount."""
        try:
            resp = self._request(
                "list",
                f"{self._mount}/keys",
                what="list keys",
                key_uri=None,
                capability="list",
                management=True,
            )
        except NotFoundError:
            return []  # no keys yet
        names = (resp.get("data") or {}).get("keys") or []
        out: list[KeyMetadata] = []
        for name in names:
            if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
                continue
            uri = key_uri_of(self._mount, name)
            try:
                out.append(self._metadata(uri, self._read(uri)))
            except (ConfigError, NotFoundError, AccessDeniedError):
                continue  # the MAC key, another key type, or a key this token may not read
        return out

    def rotate_key(self, key_uri: str) -> KeyMetadata:
        mount, name = self._key(key_uri, Action.ROTATE_KEY)
        self._request(
            "post", f"{mount}/keys/{name}/rotate", what="rotate", key_uri=key_uri, management=True
        )
        meta = self._metadata(key_uri, self._read(key_uri))
        log.info("Transit key rotated: %s (version %d)", key_uri, meta.versions)
        return meta

    def _configure(
        self, key_uri: str, action: Action, what: str, body: Mapping[str, Any]
    ) -> KeyMetadata:
        mount, name = self._key(key_uri, action)
        self._request(
            "post",
            f"{mount}/keys/{name}/config",
            what=what,
            key_uri=key_uri,
            management=True,
            body=body,
        )
        return self._metadata(key_uri, self._read(key_uri))

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
        return self._configure(
            key_uri,
            Action.ENABLE_KEY_ROTATION,
            "set auto_rotate_period",
            {"auto_rotate_period": f"{period_days * 24}h"},
        )

    def disable_key_rotation(self, key_uri: str) -> KeyMetadata:
        return self._configure(
            key_uri,
            Action.DISABLE_KEY_ROTATION,
            "set auto_rotate_period",
            {"auto_rotate_period": 0},
        )

    def set_min_decryption_version(self, key_uri: str, version: int) -> KeyMetadata:
        """Retire key versions below ``version``: data keys wrapped under them no longer
        unwrap (re-wrap them first: ``key rotate --rewrap-only``). Governed like a
        rotation setting."""
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValidationError("min_decryption_version must be 1 or more", field="version")
        latest = self._metadata(key_uri, self._read(key_uri)).versions
        if version > latest:
            raise ValidationError(
                f"min_decryption_version cannot exceed the latest version ({latest})",
                field="version",
            )
        return self._configure(
            key_uri,
            Action.ENABLE_KEY_ROTATION,
            "set min_decryption_version",
            {"min_decryption_version": version},
        )

    def disable_key(self, key_uri: str) -> KeyMetadata:
        mount, name = self._key(key_uri, Action.DISABLE_KEY)
        raise self._refuse(
            "Disabled state",
            f'take the token\'s access away instead: remove "update" on {mount}/encrypt/{name}, '
            f"{mount}/decrypt/{name}, {mount}/datakey/plaintext/{name} and "
            f"{mount}/rewrap/{name} from its ACL policy (bao policy write), or revoke the token",
        )

    def enable_key(self, key_uri: str) -> KeyMetadata:
        mount, name = self._key(key_uri, Action.ENABLE_KEY)
        raise self._refuse(
            "Disabled state",
            f'give the token "update" on {mount}/encrypt/{name}, {mount}/decrypt/{name}, '
            f"{mount}/datakey/plaintext/{name} and {mount}/rewrap/{name} again (bao policy write)",
        )

    def schedule_key_deletion(
        self, key_uri: str, pending_window_days: int = DEFAULT_PENDING_WINDOW_DAYS
    ) -> KeyMetadata:
        mount, name = self._key(key_uri, Action.SCHEDULE_KEY_DELETION)
        raise self._refuse(
            "scheduled deletion (deleting a Transit key is immediate and final)",
            "copy the data under another key first (snapshot copy), then in Vault: "
            f"bao write {mount}/keys/{name}/config deletion_allowed=true && "
            f"bao delete {mount}/keys/{name}; to retire old versions only, raise "
            "min_decryption_version",
        )

    def cancel_key_deletion(self, key_uri: str) -> KeyMetadata:
        self._key(key_uri, Action.CANCEL_KEY_DELETION)
        raise self._refuse(
            "scheduled deletion",
            "there is nothing to cancel; keep deletion_allowed=false on the key's config",
        )

    def get_key_policy(self, key_uri: str) -> dict[str, Any]:
        """sealedkb's role split for its principals (Vault's ACL policies are per token
        and path, not per key: read them with ``bao policy read``)."""
        self._key(key_uri, Action.GET_KEY_POLICY)
        return self._policy.to_dict()

    def put_key_policy(
        self, key_uri: str, policy: dict[str, Any], *, bypass_lockout_check: bool = False
    ) -> KeyMetadata:
        mount, name = self._key(key_uri, Action.PUT_KEY_POLICY)
        raise self._refuse(
            "per-key policy",
            "Vault's ACL policies are per token and path: grant the service token "
            f'"update" on {mount}/encrypt/{name}, {mount}/decrypt/{name}, '
            f'{mount}/datakey/plaintext/{name}, {mount}/rewrap/{name} and "read" on '
            f"{mount}/keys/{name} with bao policy write",
        )

    # --- Vault runs its own schedule -------------------------------------------------------

    def rotate_key_if_due(self, key_uri: str) -> KeyMetadata | None:
        return None  # auto_rotate_period: Vault rotates by itself

    def destroy_key_if_due(self, key_uri: str) -> KeyMetadata | None:
        return None  # Transit has no pending deletion

    # --- audit checkpoints and token MACs -------------------------------------------------

    def _mac_name(self) -> str:
        if not self._mac_key:
            raise ConfigError(
                "SEALEDKB_VAULT_MAC_KEY is not set: audit checkpoints and token MACs need a "
                f"Transit key (bao write -f {self._mount}/keys/sealedkb-audit type=hmac)",
                field="vault_mac_key",
            )
        return self._mac_key

    def generate_mac(self, message: bytes) -> bytes:
        name = self._mac_name()
        resp = self._request(
            "post",
            f"{self._mount}/hmac/{name}/sha2-256",
            what="hmac",
            key_uri=key_uri_of(self._mount, name),
            body={"input": _b64(message), "key_version": 1},
        )
        text = self._data(resp, "hmac")["hmac"]
        prefix = "vault:v1:"
        if not isinstance(text, str) or not text.startswith(prefix):
            raise IntegrityError("Vault returned a malformed HMAC")
        try:
            return base64.b64decode(text[len(prefix) :], validate=True)
        except (binascii.Error, ValueError):
            raise IntegrityError("Vault returned a malformed HMAC") from None

    def verify_mac(self, message: bytes, mac: bytes) -> bool:
        return constant_time_eq(self.generate_mac(message), mac)


def vault_provider(
    settings: Settings,
    *,
    principal: str,
    now: Callable[[], datetime] | None = None,
) -> VaultTransitProvider:
    """The ``vault`` scheme's factory (``now`` is unused: Vault keeps the schedule)."""
    return VaultTransitProvider(
        settings, principal=principal, service_principal=settings.service_principal
    )
