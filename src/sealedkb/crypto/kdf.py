"""Key derivation, MACs and randomness for the key layer (HKDF, Argon2id, HMAC)."""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_LEN = 32


def random_key() -> bytes:
    """A fresh 256-bit key from the OS CSPRNG."""
    return os.urandom(KEY_LEN)


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def hkdf(ikm: bytes, info: bytes, salt: bytes | None = None, length: int = KEY_LEN) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def constant_time_eq(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


@dataclass(frozen=True, slots=True)
class Argon2Params:
    """Argon2id cost; defaults follow RFC 9106's second recommended option (64 MiB)."""

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 4

    def to_dict(self) -> dict[str, int]:
        return {"t": self.time_cost, "m": self.memory_kib, "p": self.parallelism}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> Argon2Params:
        return cls(time_cost=int(d["t"]), memory_kib=int(d["m"]), parallelism=int(d["p"]))


def argon2id(passphrase: bytes, salt: bytes, params: Argon2Params) -> bytes:
    """Stretch a passphrase into a 256-bit root key."""
    return hash_secret_raw(
        secret=passphrase,
        salt=salt,
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=KEY_LEN,
        type=Type.ID,
    )
