"""The built-in key provider: a keystore of files under ``$SEALEDKB_HOME/keys``.

Layout (all files 0600, folder 0700):
- ``root.json``: how the root key is obtained (file, passphrase or generated),
  the Argon2id salt and cost for a passphrase, a check value
  HMAC(mac_key, "check") that tells a wrong root key from a damaged keystore, and
  (format 2) a MAC of the whole record under the root key, so its Argon2 cost and
  source cannot be edited unnoticed. The Argon2 cost is also bounded before it is
  used, so a forged cost fails cleanly instead of exhausting memory or time. A
  format 1 record is upgraded in place the first time it opens.
- ``root.key``: a generated root key, for local development only.
- ``<uuid>.json``: one KMS key: state, rotation settings and its key material
  versions, each sealed under the root key; the whole record is MACed under the
  root key so its state cannot be edited without the root key.

Data keys are wrapped as ``0x01 | version (4, BE) | keywrap(material_v, dk, aad)``
with aad = canonical JSON of the key id, the version and the encryption context.

Lifecycle (docs/DESIGN.md §4, AWS KMS semantics): rotation adds a material version
(old versions stay to unwrap); disable/enable flip the state; scheduled deletion
waits 7-30 days, then :meth:`LocalKeyProvider.destroy_key_if_due` removes every
material version from the record (crypto-shredding: wrapped data keys can then
never be unwrapped, even with the root key). Every record change happens under
the keystore lock as read-modify-write, so two processes never lose an update.

Each record carries its key policy (keys/policy.py), evaluated against the
provider's principal before every action. Here that is a guard-rail: whoever
holds the root key can rewrite the records. The clock is injectable (``now``)
so tests can step past rotation periods and deletion windows.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import logging
import os
import stat
import struct
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

from sealedkb._fs import file_lock, write_private
from sealedkb.config import Settings
from sealedkb.crypto import keywrap
from sealedkb.crypto.kdf import (
    Argon2Params,
    argon2id,
    constant_time_eq,
    hkdf,
    hmac_sha256,
    random_bytes,
    random_key,
)
from sealedkb.errors import (
    AccessDeniedError,
    ConfigError,
    ConflictError,
    IntegrityError,
    KeyUnavailableError,
    NotFoundError,
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

log = logging.getLogger("sealedkb.keys.local")

SCHEME = "local"
URI_PREFIX = "local:key/"
FORMAT = 1  # KMS key records
ROOT_FORMAT = 2  # root.json (format 1: no record MAC; upgraded in place on open)
_CHECK_LABEL = b"sealedkb/keystore/v1/check"
_CHECK_LABEL_V2 = b"sealedkb/keystore/v2/check"
_ROOT_MAC_LABEL = b"sealedkb/keystore/v2/root\x00"

# The passphrase strength floor (SEALEDKB_ALLOW_WEAK_PASSPHRASE lifts it).
MIN_PASSPHRASE_CHARS = 12

# Bounds on the Argon2id cost in root.json, checked before Argon2 runs. The top is
# RFC 9106's first recommended option (2 GiB, t=1) with room for more passes; the
# floor is the least that still makes each guess cost real memory.
ARGON2_MIN_MEMORY_KIB = 8 * 1024
ARGON2_MAX_MEMORY_KIB = 2 * 1024 * 1024
ARGON2_MIN_TIME = 1
ARGON2_MAX_TIME = 16
ARGON2_MIN_PARALLELISM = 1
ARGON2_MAX_PARALLELISM = 16
ARGON2_SALT_BYTES = 16


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode(), validate=True)


def _now() -> datetime:
    return datetime.now(UTC)


def _read_root_key_file(path: Path) -> bytes:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyUnavailableError(f"root key file not found: {path}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(
            f"root key file {path} is readable by group or others; run: chmod 600 {path}",
            field="root_key_file",
        )
    raw = path.read_bytes()
    if len(raw) == 32:
        return raw
    text = raw.strip()
    with contextlib.suppress(ValueError):
        if len(text) == 64:
            return bytes.fromhex(text.decode())
    with contextlib.suppress(ValueError):
        decoded = base64.b64decode(text, validate=True)
        if len(decoded) == 32:
            return decoded
    raise ConfigError(
        "root key file must hold 32 random bytes (raw, 64 hex digits or base64)",
        field="root_key_file",
    )


@dataclass(frozen=True)
class RootKeySource:
    """Where the root key comes from; resolved in docs/DESIGN.md §4's order.
    ``allow_weak_passphrase`` lifts the passphrase strength floor (reported by
    :meth:`LocalKeyProvider.warnings`)."""

    key_file: Path | None = None
    passphrase: str | None = field(default=None, repr=False)
    allow_weak_passphrase: bool = False


def check_passphrase(passphrase: str, *, allow_weak: bool = False) -> None:
    """Refuse a passphrase below the strength floor (ConfigError, exit code 2)."""
    if allow_weak or len(passphrase) >= MIN_PASSPHRASE_CHARS:
        return
    raise ConfigError(
        f"SEALEDKB_PASSPHRASE is too weak: use at least {MIN_PASSPHRASE_CHARS} characters "
        "(a few random words); SEALEDKB_ALLOW_WEAK_PASSPHRASE=1 accepts a weaker one, "
        "for tests only",
        field="passphrase",
    )


def check_argon2_params(params: Argon2Params) -> None:
    """ValidationError unless the cost lies within the keystore's bounds."""
    for name, value, low, high in (
        ("time cost", params.time_cost, ARGON2_MIN_TIME, ARGON2_MAX_TIME),
        ("memory (KiB)", params.memory_kib, ARGON2_MIN_MEMORY_KIB, ARGON2_MAX_MEMORY_KIB),
        ("parallelism", params.parallelism, ARGON2_MIN_PARALLELISM, ARGON2_MAX_PARALLELISM),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValidationError(
                f"Argon2id {name} must be between {low} and {high}", field="argon2"
            )


def _stored_kdf(kdf: Any) -> tuple[bytes, Argon2Params]:
    """The salt and cost in root.json, validated before any Argon2 run: a forged or
    damaged value is an IntegrityError, never a huge allocation or a traceback."""
    try:
        if not isinstance(kdf, dict) or kdf.get("name") != "argon2id":
            raise ValueError
        salt = _unb64(kdf["salt"])
        raw = {k: kdf[k] for k in ("t", "m", "p")}
        if len(salt) != ARGON2_SALT_BYTES or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in raw.values()
        ):
            raise ValueError
        params = Argon2Params.from_dict(raw)
        check_argon2_params(params)
    except (KeyError, TypeError, ValueError, AttributeError, ValidationError):
        raise IntegrityError(
            "keystore root.json: the Argon2id parameters are malformed or out of bounds "
            "(the file was damaged or altered); restore keys/ from backup"
        ) from None
    return salt, params


def _root_mac(mac_key: bytes, body: dict[str, Any]) -> bytes:
    return hmac_sha256(mac_key, _ROOT_MAC_LABEL + canonical_json(body))


class _RootKeys:
    def __init__(self, root: bytes, source: str) -> None:
        self.enc = hkdf(root, b"sealedkb/keystore/v1/enc")
        self.mac = hkdf(root, b"sealedkb/keystore/v1/mac")
        # Signs audit checkpoints; independent of any KMS key, so the audit trail
        # stays verifiable after a KMS key is disabled or destroyed.
        self.audit = hkdf(root, b"sealedkb/keystore/v1/audit")
        self.source = source

    def check_value(self, root_format: int = ROOT_FORMAT) -> bytes:
        return hmac_sha256(self.mac, _CHECK_LABEL if root_format == 1 else _CHECK_LABEL_V2)


class LocalKeyProvider:
    """File-backed KMS. Every call re-reads the key's record, so a state change made
    by another process (e.g. ``sealedkb key disable``) applies to the next call."""

    scheme = SCHEME

    def __init__(
        self,
        keys_dir: Path,
        source: RootKeySource | None = None,
        *,
        principal: str = DEFAULT_ADMIN,
        service_principal: str = DEFAULT_SERVICE,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.keys_dir = keys_dir
        self._source = source or RootKeySource()
        self._root: _RootKeys | None = None
        self._material: dict[tuple[str, int], bytes] = {}
        if principal != SYSTEM_PRINCIPAL:
            validate_principal(principal)
        self.principal = principal
        self.service_principal = validate_principal(service_principal)
        self._now = now or _now

    def for_principal(self, principal: str) -> Self:
        """A provider acting for ``principal``, sharing the opened root and material
        (so switching principal costs no Argon2id run and no re-read)."""
        if principal != SYSTEM_PRINCIPAL:
            validate_principal(principal)
        if self._root is None and self.exists():
            # Open the root now so both instances share it (one Argon2id run). If it
            # does not open, each instance reports that on first use.
            with contextlib.suppress(KeyUnavailableError, ConfigError, IntegrityError):
                self._root_keys()
        other = copy.copy(self)  # shares the material cache dict
        other.principal = principal
        return other

    # --- keystore set-up -------------------------------------------------

    def exists(self) -> bool:
        return (self.keys_dir / "root.json").exists()

    def initialize(self, argon2: Argon2Params | None = None) -> None:
        """Create the keystore if missing (idempotent; never replaces a root key)."""
        params = argon2 or Argon2Params()
        check_argon2_params(params)
        self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.keys_dir, 0o700)
        with self._locked():
            if self.exists():
                self._root_keys()
                return
            salt = random_bytes(ARGON2_SALT_BYTES)
            if self._source.key_file is not None:
                kind, root = "file", _read_root_key_file(self._source.key_file)
            elif self._source.passphrase:
                kind = "passphrase"
                root = self._stretch(salt, params)
            else:
                kind, root = "generated", random_key()
                write_private(self.keys_dir / "root.key", root)
            keys = _RootKeys(root, kind)
            record: dict[str, Any] = {
                "format": ROOT_FORMAT,
                "source": kind,
                "kdf": {"name": "argon2id", "salt": _b64(salt), **params.to_dict()}
                if kind == "passphrase"
                else None,
                "check": _b64(keys.check_value()),
                "created_at": _now().isoformat(),
            }
            record["mac"] = _b64(_root_mac(keys.mac, record))
            write_private(self.keys_dir / "root.json", canonical_json(record))
            self._root = keys
            log.info("keystore created (root key source: %s)", kind)

    def _stretch(self, salt: bytes, params: Argon2Params) -> bytes:
        passphrase = self._source.passphrase
        assert passphrase
        check_passphrase(passphrase, allow_weak=self._source.allow_weak_passphrase)
        return argon2id(passphrase.encode(), salt, params)

    def root_key_source(self) -> str:
        return self._root_keys().source

    def warnings(self) -> list[str]:
        if not self.exists():
            return []
        # Once the root is open, its source is the MAC-verified one.
        source = self._root.source if self._root is not None else self._root_record().get("source")
        if source == "generated" and self._source.key_file is None:
            return [
                "development root key: keys/root.key sits beside the data; use "
                "SEALEDKB_ROOT_KEY_FILE (kept elsewhere) or SEALEDKB_PASSPHRASE in production"
            ]
        if (
            self._source.allow_weak_passphrase
            and self._source.passphrase
            and self._source.key_file is None
        ):
            return [
                "weak passphrases allowed (SEALEDKB_ALLOW_WEAK_PASSPHRASE): the floor of "
                f"{MIN_PASSPHRASE_CHARS} characters for SEALEDKB_PASSPHRASE is off; "
                "not for production"
            ]
        return []

    def _root_record(self) -> dict[str, Any]:
        path = self.keys_dir / "root.json"
        try:
            rec: dict[str, Any] = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise KeyUnavailableError(
                f"no keystore at {self.keys_dir}; run 'sealedkb init'"
            ) from None
        except ValueError:
            raise KeyUnavailableError("keystore root.json is damaged") from None
        if not isinstance(rec, dict):
            raise KeyUnavailableError("keystore root.json is damaged")
        return rec

    def _root_keys(self) -> _RootKeys:
        if self._root is not None:
            return self._root
        rec = self._root_record()
        root_format = rec.get("format")
        if type(root_format) is not int or root_format not in (1, ROOT_FORMAT):
            raise IntegrityError(
                "keystore root.json has an unknown format (altered, or written by a newer sealedkb)"
            )
        kind = rec.get("source")
        # Bounded before use, whichever source opens the keystore.
        kdf = _stored_kdf(rec["kdf"]) if rec.get("kdf") is not None else None
        if self._source.key_file is not None:
            root = _read_root_key_file(self._source.key_file)
        elif self._source.passphrase:
            if kdf is None:
                raise KeyUnavailableError(
                    "this keystore's root key is not passphrase-derived; set "
                    "SEALEDKB_ROOT_KEY_FILE to its root key file"
                )
            root = self._stretch(*kdf)
        elif kind == "generated":
            try:
                root = (self.keys_dir / "root.key").read_bytes()
            except FileNotFoundError:
                raise KeyUnavailableError(
                    "root key unavailable: keys/root.key is missing; restore it from backup"
                ) from None
            if len(root) != 32:
                raise KeyUnavailableError("root key unavailable: keys/root.key is damaged")
        elif kind == "passphrase":
            raise KeyUnavailableError(
                "root key unavailable: this keystore needs SEALEDKB_PASSPHRASE"
            )
        else:
            raise KeyUnavailableError(
                "root key unavailable: this keystore needs SEALEDKB_ROOT_KEY_FILE"
            )
        keys = _RootKeys(root, str(kind))
        try:
            check = _unb64(rec["check"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise KeyUnavailableError("keystore root.json is damaged") from None
        if not constant_time_eq(keys.check_value(root_format), check):
            raise KeyUnavailableError(
                "wrong root key: it does not open this keystore (check SEALEDKB_ROOT_KEY_FILE "
                "or SEALEDKB_PASSPHRASE)"
            )
        if root_format == ROOT_FORMAT:
            body = dict(rec)
            try:
                mac = _unb64(body.pop("mac"))
            except (KeyError, TypeError, ValueError, AttributeError):
                mac = b""
            if not constant_time_eq(mac, _root_mac(keys.mac, body)):
                raise IntegrityError(
                    "keystore root.json failed its integrity check (its source or Argon2id "
                    "parameters were altered); restore keys/ from backup"
                )
        else:
            self._upgrade_root_record(rec, keys)
        self._root = keys
        return keys

    def _upgrade_root_record(self, rec: dict[str, Any], keys: _RootKeys) -> None:
        """Rewrite a format 1 root.json (no MAC) as format 2, once its check passed.

        No lock is needed: the new record is a function of the old one and the root
        key alone, so two processes upgrading at once write the same bytes."""
        body = {k: v for k, v in rec.items() if k not in ("mac", "check", "format")}
        body["format"] = ROOT_FORMAT
        body["check"] = _b64(keys.check_value(ROOT_FORMAT))
        body["mac"] = _b64(_root_mac(keys.mac, body))
        try:
            write_private(self.keys_dir / "root.json", canonical_json(body))
        except OSError as exc:  # a read-only keystore still opens; upgraded next time
            log.warning("keystore root.json not upgraded to format 2: %s", exc.strerror)
            return
        log.info("keystore root.json upgraded to format %d (record MAC)", ROOT_FORMAT)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with file_lock(self.keys_dir / ".lock"):
            yield

    # --- key records -----------------------------------------------------

    def _key_path(self, key_uri: str) -> tuple[str, Path]:
        if not key_uri.startswith(URI_PREFIX):
            raise ValidationError("not a local key URI (local:key/<uuid>)", field="kms_key_id")
        try:
            kid = str(uuid.UUID(key_uri[len(URI_PREFIX) :]))
        except ValueError:
            raise ValidationError("malformed local key id", field="kms_key_id") from None
        return kid, self.keys_dir / f"{kid}.json"

    def _load(self, key_uri: str) -> dict[str, Any]:
        kid, path = self._key_path(key_uri)
        try:
            rec: dict[str, Any] = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise NotFoundError(f"KMS key not found: {key_uri}") from None
        except ValueError:
            raise IntegrityError(f"KMS key record is damaged: {key_uri}") from None
        try:
            mac = _unb64(rec.pop("mac"))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise IntegrityError(f"KMS key record is damaged: {key_uri}") from None
        if rec.get("key_id") != kid or not constant_time_eq(
            mac, hmac_sha256(self._root_keys().mac, canonical_json(rec))
        ):
            raise IntegrityError(f"KMS key record failed its integrity check: {key_uri}")
        return rec

    def _store(self, rec: dict[str, Any]) -> None:
        body = dict(rec)
        body.pop("mac", None)
        body["mac"] = _b64(hmac_sha256(self._root_keys().mac, canonical_json(body)))
        write_private(self.keys_dir / f"{rec['key_id']}.json", canonical_json(body))

    @staticmethod
    def _next_rotation(rec: dict[str, Any]) -> datetime | None:
        """Anchor + period while rotation is on and the key is Enabled. The anchor is
        the last automatic rotation or the time rotation was (re-)enabled; on-demand
        rotations do not move it (as AWS KMS)."""
        if not rec["rotation_enabled"] or rec["state"] != KeyState.ENABLED.value:
            return None
        anchor = datetime.fromisoformat(rec.get("rotation_anchor_at") or rec["created_at"])
        return anchor + timedelta(days=int(rec["rotation_period_days"]))

    def _metadata(self, rec: dict[str, Any]) -> KeyMetadata:
        state = KeyState(rec["state"])
        period = int(rec["rotation_period_days"])
        return KeyMetadata(
            key_id=URI_PREFIX + rec["key_id"],
            state=state,
            created_at=datetime.fromisoformat(rec["created_at"]),
            description=rec.get("description", ""),
            rotation_enabled=bool(rec["rotation_enabled"]),
            rotation_period_days=period,
            next_rotation_date=self._next_rotation(rec),
            versions=len(rec["versions"]),
            deletion_date=(
                datetime.fromisoformat(rec["deletion_date"]) if rec.get("deletion_date") else None
            ),
            provider=SCHEME,
        )

    # --- KeyProvider -----------------------------------------------------

    def create_key(self, description: str = "") -> KeyMetadata:
        """A new symmetric key, Enabled, automatic rotation on (365 days), default policy.

        Creating a key is not governed by a key policy (there is none yet), as in
        AWS KMS where IAM decides; the new key's policy lets the admin manage it
        and the service principal use it."""
        if not isinstance(description, str) or len(description) > 256:
            raise ValidationError("description is limited to 256 characters", field="description")
        root = self._root_keys()
        kid = str(uuid.uuid4())
        now = self._now().isoformat()
        material = random_key()
        rec: dict[str, Any] = {
            "format": FORMAT,
            "key_id": kid,
            "description": description,
            "created_at": now,
            "state": KeyState.ENABLED.value,
            "rotation_enabled": True,
            "rotation_period_days": DEFAULT_ROTATION_DAYS,
            "rotation_anchor_at": now,
            "deletion_date": None,
            "policy": default_policy(service=self.service_principal).to_dict(),
            "versions": [
                {
                    "version": 1,
                    "created_at": now,
                    "material": _b64(keywrap.wrap(root.enc, material, self._material_aad(kid, 1))),
                }
            ],
        }
        with self._locked():
            self._store(rec)
        log.info("KMS key created: %s", URI_PREFIX + kid)
        return self._metadata(rec)

    def describe_key(self, key_uri: str) -> KeyMetadata:
        rec = self._load(key_uri)
        self._authorize(rec, Action.DESCRIBE_KEY)
        return self._metadata(rec)

    def list_keys(self) -> list[KeyMetadata]:
        """Every key in the keystore. Like AWS ListKeys this is not governed by key
        policies (it reveals ids and states, never material or policy)."""
        out = []
        for path in sorted(self.keys_dir.glob("*.json")):
            if path.name == "root.json":
                continue
            out.append(self._metadata(self._load(URI_PREFIX + path.stem)))
        return out

    # --- policy ------------------------------------------------------------

    def _policy_of(self, rec: dict[str, Any]) -> KeyPolicy:
        raw = rec.get("policy")
        if raw is None:  # records written before key policies existed
            return default_policy(service=self.service_principal)
        try:
            return parse_policy(raw)
        except ValidationError:
            raise IntegrityError("the key policy in the keystore record is malformed") from None

    def _authorize(self, rec: dict[str, Any], action: Action) -> None:
        if self.principal == SYSTEM_PRINCIPAL:
            return
        decision = self._policy_of(rec).evaluate(self.principal, action)
        if not decision.allowed:
            raise AccessDeniedError(
                f"principal {self.principal!r} may not {action.value} with "
                f"{URI_PREFIX + rec['key_id']}: {decision.reason} of the key policy"
            )

    @staticmethod
    def _material_aad(kid: str, version: int) -> bytes:
        return f"sealedkb/keystore/v1|{kid}|{version}".encode()

    @staticmethod
    def _wrap_aad(kid: str, version: int, context: Mapping[str, str]) -> bytes:
        return canonical_json({"key": kid, "version": version, "context": dict(context)})

    def _usable(self, key_uri: str, action: Action) -> dict[str, Any]:
        try:
            rec = self._load(key_uri)
        except NotFoundError:
            raise KeyUnavailableError(f"KMS key {key_uri} is not in the keystore") from None
        self._authorize(rec, action)
        state = KeyState(rec["state"])
        if state != KeyState.ENABLED:
            raise KeyUnavailableError(f"KMS key {key_uri} is {state.value}", key_state=state.value)
        return rec

    def _version_material(self, rec: dict[str, Any], version: int) -> bytes:
        cached = self._material.get((rec["key_id"], version))
        if cached is not None:
            return cached
        for v in rec["versions"]:
            if v["version"] == version:
                if not v.get("material"):
                    raise KeyUnavailableError(
                        f"the key material of {URI_PREFIX + rec['key_id']} was destroyed",
                        key_state=KeyState.DESTROYED.value,
                    )
                try:
                    material = keywrap.unwrap(
                        self._root_keys().enc,
                        _unb64(v["material"]),
                        self._material_aad(rec["key_id"], version),
                    )
                except IntegrityError:
                    raise KeyUnavailableError(
                        "KMS key material does not open under this root key"
                    ) from None
                self._material[(rec["key_id"], version)] = material
                return material
        # Versions are only ever added, so an unknown one means a damaged wrapped key.
        raise IntegrityError("wrapped data key names a key version this KMS key does not have")

    def _wrap(self, rec: dict[str, Any], plaintext: bytes, context: Mapping[str, str]) -> bytes:
        if len(plaintext) > 4096:
            raise ValidationError("at most 4 KiB can be wrapped", field="plaintext")
        version = int(rec["versions"][-1]["version"])
        kek = self._version_material(rec, version)
        body = keywrap.wrap(kek, plaintext, self._wrap_aad(rec["key_id"], version, context))
        return b"\x01" + struct.pack(">I", version) + body

    def _unwrap(self, rec: dict[str, Any], blob: bytes, context: Mapping[str, str]) -> bytes:
        version = self.wrapped_version(blob)
        kek = self._version_material(rec, version)
        return keywrap.unwrap(kek, blob[5:], self._wrap_aad(rec["key_id"], version, context))

    def wrapped_version(self, blob: bytes) -> int:
        if len(blob) < 5 or blob[0] != 0x01:
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
        """Unwrap and re-wrap under the newest version without the caller seeing the key."""
        rec = self._usable(key_uri, Action.RE_ENCRYPT)
        return self._wrap(rec, self._unwrap(rec, blob, context), context)

    # --- lifecycle -----------------------------------------------------------

    def _update(
        self,
        key_uri: str,
        action: Action | None,
        change: Callable[[dict[str, Any]], bool | None],
    ) -> KeyMetadata:
        """Read-modify-write one record under the keystore lock. ``change`` validates
        and mutates (returning False when there is nothing to write); if it raises,
        nothing is written. ``action`` None = the key service's own schedule (no
        policy applies)."""
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
            uri = URI_PREFIX + rec["key_id"]
            hint = {
                KeyState.PENDING_DELETION: "; cancel the deletion first (key cancel-deletion)",
                KeyState.DISABLED: "; enable it first (key enable)",
                KeyState.DESTROYED: "; its key material is gone for good",
            }.get(state, "")
            raise ConflictError(f"cannot {action}: KMS key {uri} is {state.value}{hint}")

    def _add_version(self, rec: dict[str, Any], now: datetime) -> None:
        version = max(int(v["version"]) for v in rec["versions"]) + 1
        material = random_key()
        rec["versions"].append(
            {
                "version": version,
                "created_at": now.isoformat(),
                "material": _b64(
                    keywrap.wrap(
                        self._root_keys().enc,
                        material,
                        self._material_aad(rec["key_id"], version),
                    )
                ),
            }
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
        if not self._rotation_due(self._load(key_uri)):  # the common case: no lock taken
            return None
        rotated = False

        def change(rec: dict[str, Any]) -> bool:
            nonlocal rotated
            if not self._rotation_due(rec):  # another process rotated meanwhile
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
        if not self._deletion_due(self._load(key_uri)):
            return None
        destroyed = False

        def change(rec: dict[str, Any]) -> bool:
            nonlocal destroyed
            if not self._deletion_due(rec):
                return False
            for v in rec["versions"]:
                v.pop("material", None)
            rec["state"] = KeyState.DESTROYED.value
            rec["destroyed_at"] = self._now().isoformat()
            rec["deletion_date"] = None
            destroyed = True
            return True

        meta = self._update(key_uri, None, change)
        if destroyed:
            kid = key_uri[len(URI_PREFIX) :]
            for cached in [k for k in self._material if k[0] == kid]:
                del self._material[cached]
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
            # (runs after the caller's PutKeyPolicy permission was checked)
            if not bypass_lockout_check and not parsed.allows(
                self.principal, Action.PUT_KEY_POLICY
            ):
                # AWS KMS's lockout safety check: a policy that takes PutKeyPolicy away
                # from the principal installing it would leave the key unmanageable.
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

    # --- audit checkpoints ------------------------------------------------------

    def generate_mac(self, message: bytes) -> bytes:
        return hmac_sha256(self._root_keys().audit, message)

    def verify_mac(self, message: bytes, mac: bytes) -> bool:
        return constant_time_eq(self.generate_mac(message), mac)


def local_provider(
    settings: Settings,
    *,
    principal: str,
    now: Callable[[], datetime] | None = None,
) -> LocalKeyProvider:
    """The local provider of ``settings``' home (the ``local`` scheme's factory)."""
    source = RootKeySource(
        key_file=settings.root_key_file,
        passphrase=settings.passphrase.get_secret_value() if settings.passphrase else None,
        allow_weak_passphrase=settings.allow_weak_passphrase,
    )
    return LocalKeyProvider(
        settings.keys_dir,
        source,
        principal=principal,
        service_principal=settings.service_principal,
        now=now,
    )


def scratch_provider(keys_dir: Path) -> LocalKeyProvider:
    """A throwaway keystore with a generated root key (for measurements that must not
    touch the real keystore), created and ready."""
    provider = LocalKeyProvider(keys_dir)
    provider.initialize()
    return provider
