"""The built-in key provider: a keystore of files under ``$SEALEDKB_HOME/keys``.

Layout (all files 0600, folder 0700):
- ``root.json``: how the root key is obtained (file, passphrase or generated),
  the Argon2id salt and cost for a passphrase, and a check value
  HMAC(mac_key, "check") that tells a wrong root key from a damaged keystore.
- ``root.key``: a generated root key, for local development only.
- ``<uuid>.json``: one KMS key: state, rotation settings and its key material
  versions, each sealed under the root key; the whole record is MACed under the
  root key so its state cannot be edited without the root key.

Data keys are wrapped as ``0x01 | version (4, BE) | keywrap(material_v, dk, aad)``
with aad = canonical JSON of the key id, the version and the encryption context.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import stat
import struct
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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
    ConfigError,
    IntegrityError,
    KeyUnavailableError,
    NotFoundError,
    ValidationError,
)
from sealedkb.keys.provider import KeyMetadata, KeyState

log = logging.getLogger("sealedkb.keys.local")

SCHEME = "local"
URI_PREFIX = "local:key/"
FORMAT = 1
DEFAULT_ROTATION_DAYS = 365
_CHECK_LABEL = b"sealedkb/keystore/v1/check"


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode(), validate=True)


def _now() -> datetime:
    return datetime.now(UTC)


def write_private(path: Path, data: bytes) -> None:
    """Atomically write a 0600 file (tmp + fsync + rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
    """Where the root key comes from; resolved in DESIGN.md §4's order."""

    key_file: Path | None = None
    passphrase: str | None = None


class _RootKeys:
    def __init__(self, root: bytes, source: str) -> None:
        self.enc = hkdf(root, b"sealedkb/keystore/v1/enc")
        self.mac = hkdf(root, b"sealedkb/keystore/v1/mac")
        self.source = source

    def check_value(self) -> bytes:
        return hmac_sha256(self.mac, _CHECK_LABEL)


class LocalKeyProvider:
    """File-backed KMS. Every call re-reads the key's record, so a state change made
    by another process (e.g. ``sealedkb key disable``) applies to the next call."""

    scheme = SCHEME

    def __init__(self, keys_dir: Path, source: RootKeySource | None = None) -> None:
        self.keys_dir = keys_dir
        self._source = source or RootKeySource()
        self._root: _RootKeys | None = None
        self._material: dict[tuple[str, int], bytes] = {}

    # --- keystore set-up -------------------------------------------------

    def exists(self) -> bool:
        return (self.keys_dir / "root.json").exists()

    def initialize(self, argon2: Argon2Params | None = None) -> None:
        """Create the keystore if missing (idempotent; never replaces a root key)."""
        self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.keys_dir, 0o700)
        with self._locked():
            if self.exists():
                self._root_keys()
                return
            salt = random_bytes(16)
            params = argon2 or Argon2Params()
            if self._source.key_file is not None:
                kind, root = "file", _read_root_key_file(self._source.key_file)
            elif self._source.passphrase:
                kind = "passphrase"
                root = argon2id(self._source.passphrase.encode(), salt, params)
            else:
                kind, root = "generated", random_key()
                write_private(self.keys_dir / "root.key", root)
            keys = _RootKeys(root, kind)
            record = {
                "format": FORMAT,
                "source": kind,
                "kdf": {"name": "argon2id", "salt": _b64(salt), **params.to_dict()}
                if kind == "passphrase"
                else None,
                "check": _b64(keys.check_value()),
                "created_at": _now().isoformat(),
            }
            write_private(self.keys_dir / "root.json", canonical_json(record))
            self._root = keys
            log.info("keystore created (root key source: %s)", kind)

    def root_key_source(self) -> str:
        return self._root_keys().source

    def warnings(self) -> list[str]:
        if not self.exists():
            return []
        rec = self._root_record()
        if rec.get("source") == "generated" and self._source.key_file is None:
            return [
                "development root key: keys/root.key sits beside the data; use "
                "SEALEDKB_ROOT_KEY_FILE (kept elsewhere) or SEALEDKB_PASSPHRASE in production"
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
        return rec

    def _root_keys(self) -> _RootKeys:
        if self._root is not None:
            return self._root
        rec = self._root_record()
        kind = rec.get("source")
        if self._source.key_file is not None:
            root = _read_root_key_file(self._source.key_file)
        elif self._source.passphrase:
            kdf = rec.get("kdf")
            if not kdf:
                raise KeyUnavailableError(
                    "this keystore's root key is not passphrase-derived; set "
                    "SEALEDKB_ROOT_KEY_FILE to its root key file"
                )
            root = argon2id(
                self._source.passphrase.encode(), _unb64(kdf["salt"]), Argon2Params.from_dict(kdf)
            )
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
        if not constant_time_eq(keys.check_value(), check):
            raise KeyUnavailableError(
                "wrong root key: it does not open this keystore (check SEALEDKB_ROOT_KEY_FILE "
                "or SEALEDKB_PASSPHRASE)"
            )
        self._root = keys
        return keys

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.keys_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

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

    def _metadata(self, rec: dict[str, Any]) -> KeyMetadata:
        state = KeyState(rec["state"])
        last = datetime.fromisoformat(rec["versions"][-1]["created_at"])
        period = int(rec["rotation_period_days"])
        rotating = bool(rec["rotation_enabled"]) and state == KeyState.ENABLED
        return KeyMetadata(
            key_id=URI_PREFIX + rec["key_id"],
            state=state,
            created_at=datetime.fromisoformat(rec["created_at"]),
            description=rec.get("description", ""),
            rotation_enabled=bool(rec["rotation_enabled"]),
            rotation_period_days=period,
            next_rotation_date=last + timedelta(days=period) if rotating else None,
            versions=len(rec["versions"]),
            deletion_date=(
                datetime.fromisoformat(rec["deletion_date"]) if rec.get("deletion_date") else None
            ),
            provider=SCHEME,
        )

    # --- KeyProvider -----------------------------------------------------

    def create_key(self, description: str = "") -> KeyMetadata:
        root = self._root_keys()
        kid = str(uuid.uuid4())
        now = _now().isoformat()
        material = random_key()
        rec: dict[str, Any] = {
            "format": FORMAT,
            "key_id": kid,
            "description": description,
            "created_at": now,
            "state": KeyState.ENABLED.value,
            "rotation_enabled": True,
            "rotation_period_days": DEFAULT_ROTATION_DAYS,
            "deletion_date": None,
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
        return self._metadata(self._load(key_uri))

    def list_keys(self) -> list[KeyMetadata]:
        out = []
        for path in sorted(self.keys_dir.glob("*.json")):
            if path.name == "root.json":
                continue
            out.append(self.describe_key(URI_PREFIX + path.stem))
        return out

    @staticmethod
    def _material_aad(kid: str, version: int) -> bytes:
        return f"sealedkb/keystore/v1|{kid}|{version}".encode()

    @staticmethod
    def _wrap_aad(kid: str, version: int, context: Mapping[str, str]) -> bytes:
        return canonical_json({"key": kid, "version": version, "context": dict(context)})

    def _usable(self, key_uri: str) -> dict[str, Any]:
        try:
            rec = self._load(key_uri)
        except NotFoundError:
            raise KeyUnavailableError(f"KMS key {key_uri} is not in the keystore") from None
        state = KeyState(rec["state"])
        if state != KeyState.ENABLED:
            raise KeyUnavailableError(f"KMS key {key_uri} is {state.value}")
        return rec

    def _version_material(self, rec: dict[str, Any], version: int) -> bytes:
        cached = self._material.get((rec["key_id"], version))
        if cached is not None:
            return cached
        for v in rec["versions"]:
            if v["version"] == version:
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

    def encrypt(self, key_uri: str, plaintext: bytes, context: Mapping[str, str]) -> bytes:
        rec = self._usable(key_uri)
        version = int(rec["versions"][-1]["version"])
        kek = self._version_material(rec, version)
        body = keywrap.wrap(kek, plaintext, self._wrap_aad(rec["key_id"], version, context))
        return b"\x01" + struct.pack(">I", version) + body

    def decrypt(self, key_uri: str, blob: bytes, context: Mapping[str, str]) -> bytes:
        rec = self._usable(key_uri)
        if len(blob) < 5 or blob[0] != 0x01:
            raise IntegrityError("wrapped data key is malformed")
        (version,) = struct.unpack(">I", blob[1:5])
        kek = self._version_material(rec, version)
        return keywrap.unwrap(kek, blob[5:], self._wrap_aad(rec["key_id"], version, context))
