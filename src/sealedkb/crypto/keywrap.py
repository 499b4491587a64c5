"""Wrapping of keys under a key-encryption key (AES-256-GCM, AAD = context).

Used by the local key provider for both layers it owns: KMS key material sealed
under the root key, and data keys wrapped under a KMS key version. Format::

    0x01 | nonce (12) | AES-256-GCM(kek, nonce, key, aad) incl. tag (16)

Random nonces are safe here: a KEK wraps at most a few thousand keys.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealedkb.errors import IntegrityError

WRAP_V1 = 0x01
_NONCE = 12


def wrap(kek: bytes, key: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return bytes([WRAP_V1]) + nonce + AESGCM(kek).encrypt(nonce, key, aad)


def unwrap(kek: bytes, blob: bytes, aad: bytes) -> bytes:
    if len(blob) < 1 + _NONCE + 16 or blob[0] != WRAP_V1:
        raise IntegrityError("wrapped key is malformed")
    try:
        return AESGCM(kek).decrypt(blob[1 : 1 + _NONCE], blob[1 + _NONCE :], aad)
    except InvalidTag:
        raise IntegrityError(
            "wrapped key failed to open (tampered, or bound to another context)"
        ) from None
