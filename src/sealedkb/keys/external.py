"""The key lifecycle of a key service that only holds keys and computes with them.

An HSM (PKCS#11) or a KMIP server creates keys, encrypts and decrypts with them,
computes MACs and destroys keys, but has no AWS-KMS-like lifecycle: no Disabled or
PendingDeletion state that can be undone, no rotation schedule, no key policy. This
module adds that lifecycle on top of a :class:`KeyService` and implements the
:class:`~sealedkb.keys.provider.KeyProvider` Protocol once for every such service.

What lives where:

- in the key service: the key material, one key object per material version
  (rotation creates a new object; old ones stay to unwrap), and the MAC key of
  the audit checkpoints; nothing ever leaves it;
- in ``$SEALEDKB_HOME/keys/<scheme>/``: one record per KMS key (state, rotation
  period and anchor, pending deletion date, key policy, and the service's handle
  of each version), MACed by the key service. A record edited without the key
  service (to re-enable a disabled key, or widen its policy) fails its check; a
  missing record makes the key unavailable (fail closed).

Wrapped data keys are ``0x01 | version (4, BE) | service body``; the AAD the
service binds is canonical JSON of the key URI, the version and the encryption
context. Destroying a key (after the pending window, our own bookkeeping)
destroys every key object of it in the service: crypto-shredding.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, Self

from sealedkb._fs import file_lock, write_private
from sealedkb.crypto.kdf import constant_time_eq, random_key
from sealedkb.errors import (
    AccessDeniedError,
    ConflictError,
    IntegrityError,
    KeyUnavailableError,
    ValidationError,
)
from sealedkb.keys.policy import (
    DEFAULT_ADMIN,
    DEFAULT_SERVICE,
    SYSTEM_PRINCIPAL,
    Action,
    KeyPolicy,
    default_policy,
    parse_policy,
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
)

log = logging.getLogger("sealedkb.keys.external")

RECORD_FORMAT = 1
WRAP_FORMAT = 0x01
MAX_PLAINTEXT = 4096
_RECORD_MAC_LABEL = b"sealedkb/external/v1/record\x00"
_held = threading.local()  # the records folders this thread holds the lock of


class KeyService(Protocol):
    """The part of a key provider that talks to the key service itself.

    ``handle`` is the service's name of one key version (a PKCS#11 object's label
    and id, a KMIP unique identifier), kept in the record. Errors: an unreachable
    service is KeyUnavailableError; a body that does not authenticate (tampered, or
    another key, or another AAD) is IntegrityError."""

    scheme: str

    def parse_uri(self, key_uri: str) -> str:
        """The key's name in the service (KeyUnavailableError or ValidationError)."""
        ...

    def new_key(self, version: int) -> tuple[str, str]:
        """Create the first key object of a new KMS key: (key URI, handle)."""
        ...

    def new_version(self, key_uri: str, version: int) -> str:
        """Create the key object of a new material version: its handle."""
        ...

    def wrap(self, handle: str, plaintext: bytes, aad: bytes) -> bytes: ...

    def unwrap(self, handle: str, body: bytes, aad: bytes) -> bytes: ...

    def destroy(self, handle: str) -> None:
        """Destroy one key object (gone already: no error)."""
        ...

    def mac(self, message: bytes) -> bytes:
        """HMAC-SHA256 under the service's MAC key (created on first use)."""
        ...

    def adopt(self, key_uri: str) -> str | None:
        """The handle of a key made in the service by other means (an HSM officer's
        tool, the KMIP server's console), marked as adopted in the service so it is
        adopted once only; None when there is no such key or it was adopted before
        (then a missing record is a lost record, not a new key)."""
        ...


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _now() -> datetime:
    return datetime.now(UTC)


class ExternalKeyProvider:
    """A KeyProvider over a :class:`KeyService`, with the lifecycle kept in MACed
    records under ``records_dir``. Every call re-reads the key's record, so a change
    made by another process applies to the next call."""

    def __init__(
        self,
        service: KeyService,
        records_dir: Path,
        *,
        principal: str = DEFAULT_ADMIN,
        service_principal: str = DEFAULT_SERVICE,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.service = service
        self.scheme = service.scheme
        self.records_dir = records_dir
        if principal != SYSTEM_PRINCIPAL:
            validate_principal(principal)
        self.principal = principal
        self.service_principal = validate_principal(service_principal)
        self._now = now or _now

    def for_principal(self, principal: str) -> Self:
        if principal != SYSTEM_PRINCIPAL:
            validate_principal(principal)
        other = copy.copy(self)  # shares the service client
        other.principal = principal
        return other

    # --- records -----------------------------------------------------------------

    def _path(self, key_uri: str) -> Path:
        digest = hashlib.sha256(key_uri.encode()).hexdigest()[:32]
        return self.records_dir / f"{digest}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The records folder's lock (re-entrant within a thread: adopting a key
        happens inside a locked update)."""
        held: set[Path] = _held.__dict__.setdefault("paths", set())
        if self.records_dir in held:
            yield
            return
        self._ensure_dir()
        with file_lock(self.records_dir / ".lock"):
            held.add(self.records_dir)
            try:
                yield
            finally:
                held.discard(self.records_dir)

    def _ensure_dir(self) -> None:
        """The records folder and its parent (``keys/``), 0700 like the keystore."""
        for folder in (self.records_dir.parent, self.records_dir):
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask

    def _record_mac(self, body: dict[str, Any]) -> bytes:
        return self.service.mac(_RECORD_MAC_LABEL + canonical_json(body))

    def _load(self, key_uri: str) -> dict[str, Any]:
        self.service.parse_uri(key_uri)
        try:
            raw = self._path(key_uri).read_bytes()
        except FileNotFoundError:
            adopted = self._adopt(key_uri)
            if adopted is not None:
                return adopted
            raise KeyUnavailableError(
                f"KMS key {key_uri[:200]} is unknown here: no key record in "
                f"{self.records_dir} (create it with 'sealedkb key create', or restore "
                "the folder from backup)"
            ) from None
        try:
            rec: dict[str, Any] = json.loads(raw)
            mac = bytes.fromhex(rec.pop("mac"))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise IntegrityError(f"KMS key record is damaged: {key_uri[:200]}") from None
        if rec.get("key_id") != key_uri or not constant_time_eq(mac, self._record_mac(rec)):
            raise IntegrityError(
                f"KMS key record failed its integrity check: {key_uri[:200]} "
                "(edited without the key service); restore it from backup"
            )
        return rec

    def _adopt(self, key_uri: str) -> dict[str, Any] | None:
        """A record for a key created outside sealedkb (first use only): Enabled,
        rotation on, the default policy, its key object as version 1."""
        with self._locked():
            if self._path(key_uri).exists():  # another process adopted it meanwhile
                return self._load(key_uri)
            handle = self.service.adopt(key_uri)
            if handle is None:
                return None
            rec = self._new_record(key_uri, handle, "adopted from the key service")
            self._store(rec)
        log.info("KMS key adopted from the key service: %s", key_uri)
        return rec

    def _new_record(self, key_uri: str, handle: str, description: str) -> dict[str, Any]:
        now = self._now().isoformat()
        return {
            "format": RECORD_FORMAT,
            "key_id": key_uri,
            "description": description,
            "created_at": now,
            "state": KeyState.ENABLED.value,
            "rotation_enabled": True,
            "rotation_period_days": DEFAULT_ROTATION_DAYS,
            "rotation_anchor_at": now,
            "deletion_date": None,
            "policy": default_policy(service=self.service_principal).to_dict(),
            "versions": [{"version": 1, "handle": handle, "created_at": now}],
        }

    def _store(self, rec: dict[str, Any]) -> None:
        body = {k: v for k, v in rec.items() if k != "mac"}
        body["mac"] = self._record_mac(body).hex()
        self._ensure_dir()
        write_private(self._path(rec["key_id"]), canonical_json(body))

    def _record_paths(self) -> list[Path]:
        if not self.records_dir.is_dir():
            return []
        return sorted(self.records_dir.glob("*.json"))

    @staticmethod
    def _next_rotation(rec: dict[str, Any]) -> datetime | None:
        if not rec["rotation_enabled"] or rec["state"] != KeyState.ENABLED.value:
            return None
        anchor = datetime.fromisoformat(rec.get("rotation_anchor_at") or rec["created_at"])
        return anchor + timedelta(days=int(rec["rotation_period_days"]))

    def _metadata(self, rec: dict[str, Any]) -> KeyMetadata:
        return KeyMetadata(
            key_id=rec["key_id"],
            state=KeyState(rec["state"]),
            created_at=datetime.fromisoformat(rec["created_at"]),
            description=rec.get("description", ""),
            rotation_enabled=bool(rec["rotation_enabled"]),
            rotation_period_days=int(rec["rotation_period_days"]),
            next_rotation_date=self._next_rotation(rec),
            versions=len(rec["versions"]),
            deletion_date=(
                datetime.fromisoformat(rec["deletion_date"]) if rec.get("deletion_date") else None
            ),
            provider=self.scheme,
        )

    # --- KeyProvider: keys --------------------------------------------------------

    def create_key(self, description: str = "") -> KeyMetadata:
        """A new key object in the service, Enabled, rotation on (365 days), the
        default policy (as the local provider)."""
        if not isinstance(description, str) or len(description) > 256:
            raise ValidationError("description is limited to 256 characters", field="description")
        with self._locked():
            key_uri, handle = self.service.new_key(1)
            rec = self._new_record(key_uri, handle, description)
            self._store(rec)
        log.info("KMS key created: %s", key_uri)
        return self._metadata(rec)

    def describe_key(self, key_uri: str) -> KeyMetadata:
        rec = self._load(key_uri)
        self._authorize(rec, Action.DESCRIBE_KEY)
        return self._metadata(rec)

    def list_keys(self) -> list[KeyMetadata]:
        out: list[KeyMetadata] = []
        for path in self._record_paths():
            try:
                key_uri = json.loads(path.read_bytes())["key_id"]
                out.append(self._metadata(self._load(key_uri)))
            except (ValueError, KeyError, TypeError, IntegrityError, KeyUnavailableError):
                log.warning("skipping a damaged KMS key record: %s", path.name)
        return sorted(out, key=lambda m: m.created_at)

    def _policy_of(self, rec: dict[str, Any]) -> KeyPolicy:
        try:
            return parse_policy(rec["policy"])
        except (KeyError, ValidationError):
            raise IntegrityError(f"KMS key record has no valid policy: {rec['key_id']}") from None

    def _authorize(self, rec: dict[str, Any], action: Action) -> None:
        if self.principal == SYSTEM_PRINCIPAL:
            return
        decision = self._policy_of(rec).evaluate(self.principal, action)
        if not decision.allowed:
            raise AccessDeniedError(
                f"principal {self.principal!r} may not {action.value} with "
                f"{rec['key_id']}: {decision.reason} of the key policy"
            )

    def _usable(self, key_uri: str, action: Action) -> dict[str, Any]:
        rec = self._load(key_uri)
        self._authorize(rec, action)
        state = KeyState(rec["state"])
        if state != KeyState.ENABLED:
            raise KeyUnavailableError(f"KMS key {key_uri} is {state.value}", key_state=state.value)
        return rec

    @staticmethod
    def _aad(key_uri: str, version: int, context: Mapping[str, str]) -> bytes:
        return canonical_json({"key": key_uri, "version": version, "context": dict(context)})

    @staticmethod
    def _handle(rec: dict[str, Any], version: int) -> str:
        for v in rec["versions"]:
            if v["version"] == version:
                if v.get("destroyed"):
                    raise KeyUnavailableError(
                        f"the key material of {rec['key_id']} was destroyed",
                        key_state=KeyState.DESTROYED.value,
                    )
                return str(v["handle"])
        raise IntegrityError("wrapped data key names a key version this KMS key does not have")

    def _wrap(self, rec: dict[str, Any], plaintext: bytes, context: Mapping[str, str]) -> bytes:
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValidationError("at most 4 KiB can be wrapped", field="plaintext")
        version = int(rec["versions"][-1]["version"])
        body = self.service.wrap(
            self._handle(rec, version), plaintext, self._aad(rec["key_id"], version, context)
        )
        return bytes([WRAP_FORMAT]) + struct.pack(">I", version) + body

    def _unwrap(self, rec: dict[str, Any], blob: bytes, context: Mapping[str, str]) -> bytes:
        version = self.wrapped_version(blob)
        return self.service.unwrap(
            self._handle(rec, version), blob[5:], self._aad(rec["key_id"], version, context)
        )

    def wrapped_version(self, blob: bytes) -> int:
        if len(blob) < 6 or blob[0] != WRAP_FORMAT:
            raise IntegrityError("wrapped data key is malformed")
        (version,) = struct.unpack(">I", blob[1:5])
        return int(version)

    def encrypt(self, key_uri: str, plaintext: bytes, context: Mapping[str, str]) -> bytes:
        return self._wrap(self._usable(key_uri, Action.ENCRYPT), plaintext, context)

    def generate_data_key(self, key_uri: str, context: Mapping[str, str]) -> tuple[bytes, bytes]:
        rec = self._usable(key_uri, Action.GENERATE_DATA_KEY)
        material = random_key()
        return material, self._wrap(rec, material, context)

    def decrypt(self, key_uri: str, blob: bytes, context: Mapping[str, str]) -> bytes:
        return self._unwrap(self._usable(key_uri, Action.DECRYPT), blob, context)

    def re_encrypt(self, key_uri: str, blob: bytes, context: Mapping[str, str]) -> bytes:
        rec = self._usable(key_uri, Action.RE_ENCRYPT)
        return self._wrap(rec, self._unwrap(rec, blob, context), context)

    # --- lifecycle -------------------------------------------------------------------

    def _update(
        self,
        key_uri: str,
        action: Action | None,
        change: Callable[[dict[str, Any]], bool | None],
    ) -> KeyMetadata:
        with self._locked():
            rec = self._load(key_uri)
            if action is not None:
                self._authorize(rec, action)
            if change(rec) is not False:
                self._store(rec)
        return self._metadata(rec)

    @staticmethod
    def _require_state(rec: dict[str, Any], action: str, *allowed: KeyState) -> None:
        state = KeyState(rec["state"])
        if state not in allowed:
            hint = {
                KeyState.PENDING_DELETION: "; cancel the deletion first (key cancel-deletion)",
                KeyState.DISABLED: "; enable it first (key enable)",
                KeyState.DESTROYED: "; its key material is gone for good",
            }.get(state, "")
            raise ConflictError(f"cannot {action}: KMS key {rec['key_id']} is {state.value}{hint}")

    def _add_version(self, rec: dict[str, Any], now: datetime) -> None:
        version = max(int(v["version"]) for v in rec["versions"]) + 1
        handle = self.service.new_version(rec["key_id"], version)
        rec["versions"].append(
            {"version": version, "handle": handle, "created_at": now.isoformat()}
        )

    def rotate_key(self, key_uri: str) -> KeyMetadata:
        def change(rec: dict[str, Any]) -> None:
            self._require_state(rec, "rotate", KeyState.ENABLED)
            self._add_version(rec, self._now())

        meta = self._update(key_uri, Action.ROTATE_KEY, change)
        log.info("KMS key rotated: %s (version %d)", key_uri, meta.versions)
        return meta

    def _rotation_due(self, rec: dict[str, Any]) -> bool:
        due = self._next_rotation(rec)
        return due is not None and self._now() >= due

    def rotate_key_if_due(self, key_uri: str) -> KeyMetadata | None:
        if not self._rotation_due(self._load(key_uri)):
            return None
        rotated = False

        def change(rec: dict[str, Any]) -> bool:
            nonlocal rotated
            if not self._rotation_due(rec):
                return False
            now = self._now()
            self._add_version(rec, now)
            rec["rotation_anchor_at"] = now.isoformat()
            rotated = True
            return True

        meta = self._update(key_uri, None, change)
        return meta if rotated else None

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

        def change(rec: dict[str, Any]) -> None:
            self._require_state(rec, "enable rotation", KeyState.ENABLED, KeyState.DISABLED)
            if not rec["rotation_enabled"] or rec["rotation_period_days"] != period_days:
                rec["rotation_anchor_at"] = (
                    rec.get("rotation_anchor_at") if rec["rotation_enabled"] else None
                ) or self._now().isoformat()
            rec["rotation_enabled"] = True
            rec["rotation_period_days"] = period_days

        return self._update(key_uri, Action.ENABLE_KEY_ROTATION, change)

    def disable_key_rotation(self, key_uri: str) -> KeyMetadata:
        def change(rec: dict[str, Any]) -> None:
            self._require_state(rec, "disable rotation", KeyState.ENABLED, KeyState.DISABLED)
            rec["rotation_enabled"] = False

        return self._update(key_uri, Action.DISABLE_KEY_ROTATION, change)

    def disable_key(self, key_uri: str) -> KeyMetadata:
        def change(rec: dict[str, Any]) -> None:
            self._require_state(rec, "disable", KeyState.ENABLED, KeyState.DISABLED)
            rec["state"] = KeyState.DISABLED.value

        return self._update(key_uri, Action.DISABLE_KEY, change)

    def enable_key(self, key_uri: str) -> KeyMetadata:
        def change(rec: dict[str, Any]) -> None:
            self._require_state(rec, "enable", KeyState.ENABLED, KeyState.DISABLED)
            rec["state"] = KeyState.ENABLED.value

        return self._update(key_uri, Action.ENABLE_KEY, change)

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

        def change(rec: dict[str, Any]) -> None:
            self._require_state(rec, "schedule deletion", KeyState.ENABLED, KeyState.DISABLED)
            rec["state"] = KeyState.PENDING_DELETION.value
            rec["deletion_date"] = (self._now() + timedelta(days=pending_window_days)).isoformat()

        return self._update(key_uri, Action.SCHEDULE_KEY_DELETION, change)

    def cancel_key_deletion(self, key_uri: str) -> KeyMetadata:
        def change(rec: dict[str, Any]) -> None:
            self._require_state(rec, "cancel deletion", KeyState.PENDING_DELETION)
            if self._now() >= datetime.fromisoformat(rec["deletion_date"]):
                raise ConflictError(
                    f"cannot cancel deletion: the pending window of {key_uri} has ended and "
                    "its key material is being destroyed"
                )
            rec["state"] = KeyState.DISABLED.value
            rec["deletion_date"] = None

        return self._update(key_uri, Action.CANCEL_KEY_DELETION, change)

    def _deletion_due(self, rec: dict[str, Any]) -> bool:
        return rec["state"] == KeyState.PENDING_DELETION.value and self._now() >= (
            datetime.fromisoformat(rec["deletion_date"])
        )

    def destroy_key_if_due(self, key_uri: str) -> KeyMetadata | None:
        """Crypto-shred once the pending window has passed: every key object of the
        key is destroyed in the service, then the record says Destroyed."""
        if not self._deletion_due(self._load(key_uri)):
            return None
        destroyed = False

        def change(rec: dict[str, Any]) -> bool:
            nonlocal destroyed
            if not self._deletion_due(rec):
                return False
            for v in rec["versions"]:
                if not v.get("destroyed"):
                    self.service.destroy(str(v["handle"]))
                    v["destroyed"] = True
            rec["state"] = KeyState.DESTROYED.value
            rec["destroyed_at"] = self._now().isoformat()
            rec["deletion_date"] = None
            destroyed = True
            return True

        meta = self._update(key_uri, None, change)
        if destroyed:
            log.warning("KMS key material destroyed: %s", key_uri)
            return meta
        return None

    def get_key_policy(self, key_uri: str) -> dict[str, Any]:
        rec = self._load(key_uri)
        self._authorize(rec, Action.GET_KEY_POLICY)
        return self._policy_of(rec).to_dict()

    def put_key_policy(
        self, key_uri: str, policy: dict[str, Any], *, bypass_lockout_check: bool = False
    ) -> KeyMetadata:
        parsed = parse_policy(policy)

        def change(rec: dict[str, Any]) -> None:
            if not bypass_lockout_check and not parsed.allows(
                self.principal, Action.PUT_KEY_POLICY
            ):
                raise ValidationError(
                    f"this policy would not let {self.principal!r} change it again "
                    "(PutKeyPolicy); add a statement for it, or pass --bypass-lockout-check",
                    field="policy",
                )
            self._require_state(
                rec,
                "change the policy",
                KeyState.ENABLED,
                KeyState.DISABLED,
                KeyState.PENDING_DELETION,
            )
            rec["policy"] = parsed.to_dict()

        return self._update(key_uri, Action.PUT_KEY_POLICY, change)

    # --- audit checkpoints -------------------------------------------------------------

    def generate_mac(self, message: bytes) -> bytes:
        return self.service.mac(message)

    def verify_mac(self, message: bytes, mac: bytes) -> bool:
        return constant_time_eq(self.service.mac(message), mac)
