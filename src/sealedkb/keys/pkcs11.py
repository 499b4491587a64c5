"""PKCS#11 HSMs: ``pkcs11:token=<label>;object=<label>`` (python-pkcs11).

The KMS key is a non-extractable, sensitive AES-256 secret key on the token,
labelled ``<object>``; each material version is one key object with that label
and ``CKA_ID = "v<n>"`` (rotation generates a new one; old ones stay to unwrap).
Data keys are wrapped inside the HSM with:

- ``aes-gcm`` (default, ``CKM_AES_GCM``): a random 96-bit nonce, the AAD is the
  encryption context (keys/external.py); body ``0x01 | nonce (12) | ct | tag (16)``;
- ``aes-kwp`` (RFC 5649 key wrap with padding, ``CKM_AES_KEY_WRAP_KWP`` 0x210B or,
  as SoftHSM2 names it, ``CKM_AES_KEY_WRAP_PAD`` 0x210A: whichever the token
  offers). Key wrap has no AAD, so SHA-256 of the AAD is wrapped in front of the
  data key and checked after unwrapping; body ``0x02 | wrapped``.

The HMAC-SHA256 key of audit checkpoints and token MACs is a generic secret on the
token (``SEALEDKB_PKCS11_MAC_OBJECT``, made on first use). The module is
``SEALEDKB_PKCS11_MODULE``; the user PIN comes from ``SEALEDKB_PKCS11_PIN`` or a
0600 file (``SEALEDKB_PKCS11_PIN_FILE``) and is never logged or echoed.

PKCS#11 has keys, but no key states, rotation schedule or policy: those are the
bookkeeping of keys/external.py. Destroying a key after its pending window calls
``C_DestroyObject`` on every version (crypto-shredding). A PKCS#11 library is
loaded once per process and logs in once per token (the login state is the
process's), so every provider of a token shares one session, under a lock.
"""

from __future__ import annotations

import hashlib
import logging
import re
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealedkb.config import Settings
from sealedkb.crypto.kdf import constant_time_eq, random_bytes
from sealedkb.errors import ConfigError, IntegrityError, KeyUnavailableError, ValidationError
from sealedkb.keys.external import ExternalKeyProvider

if TYPE_CHECKING:
    import pkcs11 as p11

log = logging.getLogger("sealedkb.keys.pkcs11")

SCHEME = "pkcs11"
LABEL_RE = r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}"
_URI = re.compile(rf"^pkcs11:token=({LABEL_RE});object=({LABEL_RE})$")
CKM_AES_KEY_WRAP_PAD = 0x210A  # SoftHSM2's number for RFC 5649
CKM_AES_KEY_WRAP_KWP = 0x210B  # PKCS#11 3.0's number for RFC 5649
_GCM, _KWP = 0x01, 0x02
_ADOPTED_PREFIX = "sealedkb-adopted:"


def key_uri(token: str, obj: str) -> str:
    return f"pkcs11:token={token};object={obj}"


def parse_uri(uri: str) -> tuple[str, str]:
    m = _URI.match(uri)
    if m is None:
        raise ValidationError(
            "a PKCS#11 key URI looks like pkcs11:token=<label>;object=<label> "
            "(labels: letters, digits, space, '.', '_', '-')",
            field="kms_key_id",
        )
    return m.group(1), m.group(2)


def read_pin(settings: Settings) -> str:
    """The user PIN: SEALEDKB_PKCS11_PIN, else the 0600 file SEALEDKB_PKCS11_PIN_FILE."""
    if settings.pkcs11_pin is not None:
        return settings.pkcs11_pin.get_secret_value()
    path = settings.pkcs11_pin_file
    if path is None:
        raise ConfigError(
            "the PKCS#11 provider needs the token's user PIN: set SEALEDKB_PKCS11_PIN or "
            "SEALEDKB_PKCS11_PIN_FILE (a 0600 file)",
            field="pkcs11_pin",
        )
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"PKCS#11 PIN file not found: {path}", field="pkcs11_pin_file") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(
            f"PKCS#11 PIN file {path} is readable by group or others; run: chmod 600 {path}",
            field="pkcs11_pin_file",
        )
    pin = path.read_text().strip()
    if not pin:
        raise ConfigError(f"PKCS#11 PIN file {path} is empty", field="pkcs11_pin_file")
    return pin


def _lib() -> Any:
    try:
        import pkcs11
    except ImportError:
        raise ConfigError(
            "the PKCS#11 provider needs python-pkcs11: pip install 'sealedkb[pkcs11]'",
            field="kms_key_id",
        ) from None
    return pkcs11


def _lost_errors() -> tuple[type[Exception], ...]:
    """Errors that mean the session or the device is gone (not a bad ciphertext)."""
    e = _lib().exceptions
    return (
        e.SessionClosed,
        e.SessionHandleInvalid,
        e.DeviceError,
        e.DeviceRemoved,
        e.DeviceMemory,
        e.TokenNotPresent,
        e.TokenNotRecognised,
        e.UserNotLoggedIn,
    )


class _Token:
    """One logged-in session on one token, shared by every provider of the process."""

    def __init__(self, session: p11.Session, mechanisms: frozenset[int]) -> None:
        self.session = session
        self.mechanisms = mechanisms
        self.lock = threading.RLock()


_libs: dict[str, Any] = {}
_tokens: dict[tuple[str, str], _Token] = {}
_registry_lock = threading.Lock()


class Pkcs11Service:
    """The KeyService of keys/external.py over one PKCS#11 module."""

    scheme = SCHEME

    def __init__(
        self,
        module: Path,
        pin: Callable[[], str],
        *,
        default_token: str | None,
        mechanism: str = "aes-gcm",
        mac_object: str = "sealedkb-audit-mac",
    ) -> None:
        self.module = str(module)
        self._pin = pin
        self.default_token = default_token
        self.mechanism = mechanism
        self.mac_object = mac_object

    # --- sessions ---------------------------------------------------------------

    def _token(self, label: str) -> _Token:
        pkcs11 = _lib()
        with _registry_lock:
            tok = _tokens.get((self.module, label))
            if tok is not None:
                return tok
            try:
                lib = _libs.get(self.module)
                if lib is None:
                    lib = _libs[self.module] = pkcs11.lib(self.module)
                token = lib.get_token(token_label=label)
                session = token.open(rw=True, user_pin=self._pin())
                mechs = frozenset(int(m) for m in token.slot.get_mechanisms())
            except pkcs11.exceptions.NoSuchToken:
                raise KeyUnavailableError(f"no PKCS#11 token labelled {label!r}") from None
            except pkcs11.exceptions.PinIncorrect:
                raise KeyUnavailableError(
                    f"the PKCS#11 PIN was refused by token {label!r}"
                ) from None
            except pkcs11.exceptions.PKCS11Error as exc:
                raise KeyUnavailableError(
                    f"PKCS#11 token {label!r} is unavailable ({type(exc).__name__})"
                ) from None
            except RuntimeError as exc:  # the module itself did not load
                raise KeyUnavailableError(
                    f"the PKCS#11 module did not load ({type(exc).__name__})"
                ) from None
            tok = _tokens[(self.module, label)] = _Token(session, mechs)
            return tok

    def _forget(self, label: str) -> None:
        with _registry_lock:
            _tokens.pop((self.module, label), None)

    @contextmanager
    def _session(self, label: str) -> Iterator[tuple[p11.Session, frozenset[int]]]:
        """The token's session; a session or device failure drops it (the next call
        opens a new one) and is KeyUnavailableError."""
        lost = _lost_errors()
        tok = self._token(label)
        with tok.lock:
            try:
                yield tok.session, tok.mechanisms
            except lost as exc:
                self._forget(label)
                raise KeyUnavailableError(
                    f"PKCS#11 token {label!r} is unavailable ({type(exc).__name__})"
                ) from None

    def _find_key(self, session: p11.Session, label: str, version: int | None) -> Any | None:
        pkcs11 = _lib()
        attrs: dict[Any, Any] = {
            pkcs11.Attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY,
            pkcs11.Attribute.LABEL: label,
        }
        if version is not None:
            attrs[pkcs11.Attribute.ID] = f"v{version}".encode()
        found = list(session.get_objects(attrs))
        if len(found) > 1:
            raise IntegrityError(f"the token holds more than one key object labelled {label!r}")
        return found[0] if found else None

    def _generate(self, session: p11.Session, label: str, version: int) -> None:
        pkcs11 = _lib()
        a = pkcs11.Attribute
        if self._find_key(session, label, version) is not None:
            raise IntegrityError(f"the token already holds version {version} of {label!r}")
        session.generate_key(
            pkcs11.KeyType.AES,
            256,
            label=label,
            id=f"v{version}".encode(),
            store=True,
            template={
                a.TOKEN: True,
                a.PRIVATE: True,
                a.SENSITIVE: True,
                a.EXTRACTABLE: False,
                a.ENCRYPT: True,
                a.DECRYPT: True,
                a.WRAP: True,
                a.UNWRAP: True,
                a.SIGN: False,
                a.VERIFY: False,
            },
        )

    # --- KeyService ---------------------------------------------------------------

    def parse_uri(self, key_uri: str) -> str:
        parse_uri(key_uri)
        return key_uri

    @staticmethod
    def _handle(token: str, label: str, version: int) -> str:
        return f"{token}\x1f{label}\x1f{version}"

    @staticmethod
    def _split(handle: str) -> tuple[str, str, int]:
        try:
            token, label, version = handle.split("\x1f")
            return token, label, int(version)
        except ValueError:
            raise IntegrityError("a PKCS#11 key record names a malformed key object") from None

    def _home_token(self) -> str:
        if self.default_token is None:
            raise ConfigError(
                "set SEALEDKB_PKCS11_TOKEN (the token label new keys and the audit MAC key "
                "live on)",
                field="pkcs11_token",
            )
        return self.default_token

    def new_key(self, version: int) -> tuple[str, str]:
        token = self._home_token()
        label = f"sealedkb-{uuid.uuid4().hex}"
        with self._session(token) as (session, _):
            self._generate(session, label, version)
            self._mark(session, label)  # known to sealedkb: never adopted as new
        return key_uri(token, label), self._handle(token, label, version)

    @staticmethod
    def _marker(label: str) -> dict[Any, Any]:
        pkcs11 = _lib()
        a = pkcs11.Attribute
        return {
            a.CLASS: pkcs11.ObjectClass.DATA,
            a.LABEL: _ADOPTED_PREFIX + label,
            a.APPLICATION: "sealedkb",
        }

    def _mark(self, session: p11.Session, label: str) -> None:
        a = _lib().Attribute
        session.create_object(
            {**self._marker(label), a.TOKEN: True, a.PRIVATE: True, a.VALUE: b"sealedkb"}
        )

    def new_version(self, key_uri: str, version: int) -> str:
        token, label = parse_uri(key_uri)
        with self._session(token) as (session, _):
            self._generate(session, label, version)
        return self._handle(token, label, version)

    def adopt(self, key_uri: str) -> str | None:
        """An AES-256 key made on the token by other tools (one object with that
        label), adopted once: a data object marks it on the token (keys sealedkb
        makes are marked when made)."""
        pkcs11 = _lib()
        a = pkcs11.Attribute
        token, label = parse_uri(key_uri)
        with self._session(token) as (session, _):
            if list(session.get_objects(self._marker(label))):
                return None
            candidates = list(
                session.get_objects({a.CLASS: pkcs11.ObjectClass.SECRET_KEY, a.LABEL: label})
            )
            if len(candidates) != 1:
                return None
            key = candidates[0]
            if key[a.KEY_TYPE] != pkcs11.KeyType.AES or key[a.VALUE_LEN] != 32:
                raise ValidationError(
                    f"PKCS#11 key {label!r} is not an AES-256 key", field="kms_key_id"
                )
            if key[a.EXTRACTABLE] or not key[a.SENSITIVE]:
                raise ValidationError(
                    f"PKCS#11 key {label!r} is extractable or not sensitive: make it "
                    "CKA_EXTRACTABLE=false, CKA_SENSITIVE=true",
                    field="kms_key_id",
                )
            raw_id = bytes(key[a.ID] or b"")
            version = 1
            if raw_id != b"v1":
                key[a.ID] = b"v1"  # versions are CKA_ID v1, v2, ...
            self._mark(session, label)
        return self._handle(token, label, version)

    def _key(self, session: p11.Session, handle: str) -> tuple[Any, str]:
        _token, label, version = self._split(handle)
        key = self._find_key(session, label, version)
        if key is None:
            raise KeyUnavailableError(
                f"the key object of version {version} of {label!r} is gone from the token",
                key_state="Destroyed",
            )
        return key, label

    def kwp_mechanism(self, mechanisms: frozenset[int]) -> Any:
        """RFC 5649 key wrap as the token numbers it (``mechanisms``: what it offers)."""
        pkcs11 = _lib()
        for number in (CKM_AES_KEY_WRAP_KWP, CKM_AES_KEY_WRAP_PAD):
            if number in mechanisms:
                return pkcs11.Mechanism(number)
        raise KeyUnavailableError(
            "this token offers no RFC 5649 key wrap (CKM 0x210B or 0x210A); "
            "use SEALEDKB_PKCS11_MECHANISM=aes-gcm"
        )

    def wrap(self, handle: str, plaintext: bytes, aad: bytes) -> bytes:
        pkcs11 = _lib()
        from pkcs11.mechanisms import GCMParams

        token, _label, _v = self._split(handle)
        with self._session(token) as (session, mechanisms):
            key, _ = self._key(session, handle)
            if self.mechanism == "aes-gcm":
                nonce = random_bytes(12)
                ct = key.encrypt(
                    plaintext,
                    mechanism=pkcs11.Mechanism.AES_GCM,
                    mechanism_param=GCMParams(nonce, aad, 128),
                )
                return bytes([_GCM]) + nonce + bytes(ct)
            a = pkcs11.Attribute
            secret = session.create_object(
                {
                    a.CLASS: pkcs11.ObjectClass.SECRET_KEY,
                    a.KEY_TYPE: pkcs11.KeyType.GENERIC_SECRET,
                    a.VALUE: hashlib.sha256(aad).digest() + plaintext,
                    a.TOKEN: False,
                    a.EXTRACTABLE: True,
                    a.SENSITIVE: False,
                }
            )
            try:
                wrapped = key.wrap_key(secret, mechanism=self.kwp_mechanism(mechanisms))
            finally:
                secret.destroy()
            return bytes([_KWP]) + bytes(wrapped)

    def unwrap(self, handle: str, body: bytes, aad: bytes) -> bytes:
        pkcs11 = _lib()
        from pkcs11.mechanisms import GCMParams

        lost = _lost_errors()
        token, _label, _v = self._split(handle)
        with self._session(token) as (session, mechanisms):
            key, _ = self._key(session, handle)
            try:
                if body[:1] == bytes([_GCM]) and len(body) > 1 + 12 + 16:
                    pt = key.decrypt(
                        body[13:],
                        mechanism=pkcs11.Mechanism.AES_GCM,
                        mechanism_param=GCMParams(body[1:13], aad, 128),
                    )
                    return bytes(pt)
                if body[:1] == bytes([_KWP]) and len(body) >= 1 + 48:
                    a = pkcs11.Attribute
                    secret = key.unwrap_key(
                        pkcs11.ObjectClass.SECRET_KEY,
                        pkcs11.KeyType.GENERIC_SECRET,
                        body[1:],
                        mechanism=self.kwp_mechanism(mechanisms),
                        store=False,
                        template={a.TOKEN: False, a.EXTRACTABLE: True, a.SENSITIVE: False},
                    )
                    try:
                        value = bytes(secret[a.VALUE])
                    finally:
                        secret.destroy()
                    if len(value) > 32 and constant_time_eq(
                        value[:32], hashlib.sha256(aad).digest()
                    ):
                        return value[32:]
            except lost:
                raise
            except pkcs11.exceptions.PKCS11Error:
                pass
        raise IntegrityError("wrapped data key failed authentication")

    def destroy(self, handle: str) -> None:
        token, label, version = self._split(handle)
        with self._session(token) as (session, _):
            key = self._find_key(session, label, version)
            if key is not None:
                key.destroy()

    def _mac_key(self, session: p11.Session) -> Any:
        pkcs11 = _lib()
        a = pkcs11.Attribute
        attrs = {
            a.CLASS: pkcs11.ObjectClass.SECRET_KEY,
            a.LABEL: self.mac_object,
            a.KEY_TYPE: pkcs11.KeyType.GENERIC_SECRET,
        }
        found = list(session.get_objects(attrs))
        if len(found) > 1:
            raise IntegrityError(f"the token holds more than one {self.mac_object!r} key")
        if found:
            return found[0]
        log.info("creating the audit MAC key on the PKCS#11 token")
        return session.generate_key(
            pkcs11.KeyType.GENERIC_SECRET,
            256,
            label=self.mac_object,
            store=True,
            template={
                a.TOKEN: True,
                a.PRIVATE: True,
                a.SENSITIVE: True,
                a.EXTRACTABLE: False,
                a.SIGN: True,
                a.VERIFY: True,
                a.ENCRYPT: False,
                a.DECRYPT: False,
            },
        )

    def mac(self, message: bytes) -> bytes:
        pkcs11 = _lib()
        with self._session(self._home_token()) as (session, _):
            key = self._mac_key(session)
            try:
                return bytes(key.sign(message, mechanism=pkcs11.Mechanism.SHA256_HMAC))
            except pkcs11.exceptions.MechanismInvalid:
                raise KeyUnavailableError("this token offers no HMAC-SHA256") from None


def pkcs11_provider(
    settings: Settings,
    *,
    principal: str,
    now: Callable[[], datetime] | None = None,
) -> ExternalKeyProvider:
    """The ``pkcs11`` scheme's factory: the module, PIN and token from settings."""
    if settings.pkcs11_module is None:
        raise ConfigError(
            "the PKCS#11 provider needs SEALEDKB_PKCS11_MODULE (the path of the HSM's "
            "PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so)",
            field="pkcs11_module",
        )
    default_token = settings.pkcs11_token
    if (
        default_token is None
        and settings.kms_key_uri
        and settings.kms_key_uri.startswith("pkcs11:")
    ):
        default_token = parse_uri(settings.kms_key_uri)[0]
    service = Pkcs11Service(
        settings.pkcs11_module,
        lambda: read_pin(settings),
        default_token=default_token,
        mechanism=settings.pkcs11_mechanism,
        mac_object=settings.pkcs11_mac_object,
    )
    return ExternalKeyProvider(
        service,
        settings.keys_dir / SCHEME,
        principal=principal,
        service_principal=settings.service_principal,
        now=now,
    )
