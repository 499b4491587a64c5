"""Keyed blind tokens (DESIGN.md §4): equality-searchable, content-hiding.

token = hex(first 10 bytes of HMAC-SHA256(index key, domain || 0x00 || value)).
The domain separates tags from keyword tokens so a tag never matches a word.
"""

from __future__ import annotations

import hmac
from functools import lru_cache

TOKEN_BYTES = 10


class Blinder:
    """Computes blind tokens under one index key (one per namespace)."""

    def __init__(self, index_key: bytes, cache_size: int = 65536) -> None:
        key = bytes(index_key)

        @lru_cache(maxsize=cache_size)
        def _token(domain: str, value: str) -> str:
            mac = hmac.digest(key, domain.encode() + b"\x00" + value.encode(), "sha256")
            return mac[:TOKEN_BYTES].hex()

        self._token = _token

    def tag_token(self, tag: str) -> str:
        """Token of an already-normalised tag (see domain.validate_tags)."""
        return self._token("tag", tag)

    def word_token(self, word: str) -> str:
        return self._token("word", word)
