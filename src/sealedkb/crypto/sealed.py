"""Sealed field, format v1 (docs/DESIGN.md §4; spec in docs/FORMATS.md).

    0x01 | data_key_id (16) | salt (16) | nonce (12) | AES-256-GCM(subkey, nonce, pad64(pt), aad)

    subkey = HKDF-SHA256(ikm=data key, salt=salt, info=b"sealedkb/v1/field", L=32)
    pad64  = pt || 0x80 || 0x00* up to the next multiple of 64 bytes (ISO/IEC 7816-4)

The recipe layer: callers hand in plaintext and an AAD and never choose nonces,
salts or keys. A :class:`FieldSealer` draws a fresh random salt when it is made
and again after ``SEALS_PER_SALT`` seals, so no subkey ever sees more than 2^24
random 96-bit nonces (collision probability < 2^-48). Every failure to open
raises one opaque :class:`~sealedkb.errors.IntegrityError`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealedkb.errors import IntegrityError

FORMAT_V1 = 0x01
KEY_ID_LEN = 16
SALT_LEN = 16
NONCE_LEN = 12
TAG_LEN = 16
_KEY_END = 1 + KEY_ID_LEN  # 17
_SALT_END = _KEY_END + SALT_LEN  # 33
HEADER_LEN = _SALT_END + NONCE_LEN  # 45
OVERHEAD = HEADER_LEN + TAG_LEN  # 61 bytes, plus padding
PAD_BLOCK = 64
SEALS_PER_SALT = 1 << 24
HKDF_INFO = b"sealedkb/v1/field"

_OPEN_FAILED = "sealed value failed to open (tampered, moved, or sealed under another key)"


@dataclass(frozen=True, slots=True)
class DataKey:
    """An unwrapped 256-bit data key and its 16-byte id. Never printed."""

    key_id: bytes
    material: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key_id) != KEY_ID_LEN or len(self.material) != 32:
            raise ValueError("data key must be 32 bytes with a 16-byte id")


def pad64(data: bytes) -> bytes:
    padded_len = (len(data) // PAD_BLOCK + 1) * PAD_BLOCK
    return data + b"\x80" + b"\x00" * (padded_len - len(data) - 1)


def unpad64(data: bytes) -> bytes:
    n = len(data)
    if not n or n % PAD_BLOCK:
        raise IntegrityError(_OPEN_FAILED)
    # The marker is the last 0x80 byte, in the last block, with only zeros after it
    # (one copy of the value instead of the two of rstrip + slice: opened per hit).
    i = data.rfind(b"\x80", n - PAD_BLOCK)
    if i < 0 or data.count(b"\x00", i + 1) != n - i - 1:
        raise IntegrityError(_OPEN_FAILED)
    return data[:i]


def derive_subkey(material: bytes, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=HKDF_INFO).derive(material)


def seal_with(key: DataKey, salt: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Hazmat: seal with a caller-chosen salt and nonce. Only for known-answer tests."""
    subkey = derive_subkey(key.material, salt)
    ct = AESGCM(subkey).encrypt(nonce, pad64(plaintext), aad)
    return bytes([FORMAT_V1]) + key.key_id + salt + nonce + ct


def key_id_of(blob: bytes) -> bytes:
    """The data key id a sealed value names (unauthenticated until opened)."""
    if len(blob) < OVERHEAD + PAD_BLOCK or blob[0] != FORMAT_V1:
        raise IntegrityError(_OPEN_FAILED)
    return blob[1 : 1 + KEY_ID_LEN]


class FieldSealer:
    """Seals fields under one data key. Thread-safe."""

    def __init__(self, key: DataKey) -> None:
        self.key_id = key.key_id
        self._material = key.material
        self._lock = threading.Lock()
        self._rekey()

    def _rekey(self) -> None:
        self._salt = os.urandom(SALT_LEN)
        self._aead = AESGCM(derive_subkey(self._material, self._salt))
        self._count = 0

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        with self._lock:
            if self._count >= SEALS_PER_SALT:
                self._rekey()
            self._count += 1
            salt, aead = self._salt, self._aead
        nonce = os.urandom(NONCE_LEN)
        ct = aead.encrypt(nonce, pad64(plaintext), aad)
        return b"".join((bytes([FORMAT_V1]), self.key_id, salt, nonce, ct))


class OpenFailedError(IntegrityError):
    """One value of :meth:`FieldOpener.open_many` failed to open (``index``)."""

    def __init__(self, index: int) -> None:
        super().__init__(_OPEN_FAILED)
        self.index = index


class FieldOpener:
    """Opens sealed fields, resolving data keys by id and caching subkeys by (id, salt).

    ``resolve`` is called on every open so that key expiry and revocation in the
    key ring take effect; only the HKDF step is cached. Lookups take no lock
    (dict reads are atomic under the GIL); the cache is cleared wholesale when full.
    """

    def __init__(self, resolve: Callable[[bytes], DataKey], cache_size: int = 4096) -> None:
        self._resolve = resolve
        self._cache: dict[bytes, AESGCM] = {}
        self._cache_size = cache_size

    def clear(self) -> None:
        self._cache = {}

    def _aead(self, blob: bytes) -> AESGCM:
        """The AEAD of a sealed value's (key id, salt); its key is resolved every time."""
        key = self._resolve(blob[1:_KEY_END])  # may raise KeyUnavailableError
        cache_key = blob[1:_SALT_END]  # key id || salt
        aead = self._cache.get(cache_key)
        if aead is None:
            aead = AESGCM(derive_subkey(key.material, blob[_KEY_END:_SALT_END]))
            if len(self._cache) >= self._cache_size:
                self._cache = {}
            self._cache[cache_key] = aead
        return aead

    def open(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < OVERHEAD + PAD_BLOCK or blob[0] != FORMAT_V1:
            raise IntegrityError(_OPEN_FAILED)
        aead = self._aead(blob)
        try:
            padded = aead.decrypt(blob[_SALT_END:HEADER_LEN], blob[HEADER_LEN:], aad)
        except InvalidTag:
            raise IntegrityError(_OPEN_FAILED) from None
        return unpad64(padded)

    def open_many(self, blobs: Sequence[bytes], aads: Sequence[bytes]) -> list[bytes]:
        """Open several values (e.g. a search's candidates) with the same checks as
        :meth:`open`; the key is resolved once per run of values sealed under the same
        (key id, salt), as they are when written by one sealer. A value that fails
        raises :class:`OpenFailedError` naming its index; nothing is returned."""
        if len(blobs) != len(aads):
            raise ValueError("one AAD per sealed value")
        out: list[bytes] = []
        append = out.append
        last = b""
        aead: AESGCM | None = None
        for i, blob in enumerate(blobs):
            if len(blob) < OVERHEAD + PAD_BLOCK or blob[0] != FORMAT_V1:
                raise OpenFailedError(i)
            if aead is None or blob[1:_SALT_END] != last:
                aead = self._aead(blob)
                last = blob[1:_SALT_END]
            view = memoryview(blob)  # no copy of the ciphertext per value
            try:
                padded = aead.decrypt(view[_SALT_END:HEADER_LEN], view[HEADER_LEN:], aads[i])
                append(unpad64(padded))
            except (InvalidTag, IntegrityError):
                raise OpenFailedError(i) from None
        return out


def open_with(key: DataKey, blob: bytes, aad: bytes) -> bytes:
    """Open one value with a known key (tests, tools)."""

    def resolve(key_id: bytes) -> DataKey:
        if key_id != key.key_id:
            raise IntegrityError(_OPEN_FAILED)
        return key

    return FieldOpener(resolve, cache_size=1).open(blob, aad)
