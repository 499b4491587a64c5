"""Hashes and MACs for the audit trail (docs/DESIGN.md §5).

Kept in ``crypto/`` so the rest of sealedkb never picks a hash function itself:
the chain hash and the checkpoint MAC are defined once, here, and the format is
specified in docs/FORMATS.md (audit event and checkpoint sections).

    hash_n = SHA-256(hash_{n-1} || canonical_json(event_n)),  hash_0 = 32 zero bytes

The chain hash is unkeyed on purpose: anyone holding the rows can verify it
(an auditor needs no key). What makes a rewritten chain detectable is the
checkpoint, a MAC under a key only the key provider holds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

HASH_LEN = 32
GENESIS = bytes(HASH_LEN)


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: one byte string per value (FORMATS.md §1)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def chain_hash(prev_hash: bytes, event: dict[str, Any]) -> bytes:
    """The hash of one audit event, linked to the one before it."""
    if len(prev_hash) != HASH_LEN:
        raise ValueError("previous hash must be 32 bytes")
    return sha256(prev_hash + canonical_json(event))


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def mac_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison, so a MAC check leaks nothing through timing."""
    return hmac.compare_digest(a, b)
