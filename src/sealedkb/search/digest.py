"""The index digest: what authenticates an entry's search columns.

PostgreSQL holds an entry's keyword tokens (``kw_tokens``) and its encrypted search
vector (``embedding_enc``) beside the sealed document; a database writer could copy
them from one row to another to make an entry rank for words it does not contain.
So the sealed document carries a digest of both (formats/entry_doc.py, version 2),
and every hit search returns is checked against it: a hit whose columns differ is
dropped and counted, never shown.

    kw_hash  = SHA-256(the row's distinct keyword lexemes, sorted bytewise, joined by " ")
    vec_hash = SHA-256(pgvector's binary form of embedding_enc: u16 dim | u16 0 | f32 BE...)
    index digest = kw_hash || vec_hash          (SHA-256 of b"" for an absent column)

Both halves are computed by PostgreSQL for the returned rows (``KW_HASH_SQL``,
``VEC_HASH_SQL``): over the stored columns, which is what a forger would change.
Positions and weights of the tokens are not covered (they only move an entry's rank
for words it really contains).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


__all__ = ["EMPTY", "KW_HASH_SQL", "VEC_HASH_SQL", "index_digest", "kw_hash", "matches", "vec_hash"]

EMPTY = hashlib.sha256(b"").digest()

# A tsvector keeps its distinct lexemes sorted by length, then bytewise (PostgreSQL's
# tsCompareString); blind tokens all have one length, so that is the bytewise order
# kw_hash sorts by, and no sort is needed per hit. A row whose lexemes differ in length
# (only a forger writes one) hashes in another order and fails the check.
KW_HASH_SQL = (
    "sha256(convert_to(coalesce(array_to_string(tsvector_to_array(kw_tokens), ' '), ''), 'UTF8'))"
)
VEC_HASH_SQL = "sha256(coalesce(vector_send(embedding_enc), ''::bytea))"


def kw_hash(lexemes: Iterable[str]) -> bytes:
    return hashlib.sha256(" ".join(sorted(lexemes)).encode()).digest()


def vec_hash(vector: NDArray[np.float32] | None) -> bytes:
    import numpy as np

    if vector is None:
        return EMPTY
    v = np.asarray(vector, dtype=">f4")
    return hashlib.sha256(struct.pack(">HH", v.shape[0], 0) + v.tobytes()).digest()


def index_digest(kw: bytes, vec: bytes) -> bytes:
    return kw + vec


def matches(digest: bytes, kw: bytes, vec: bytes) -> bool:
    """Constant-time check of a stored row's two hashes against the sealed digest."""
    return hmac.compare_digest(digest, kw + vec)
