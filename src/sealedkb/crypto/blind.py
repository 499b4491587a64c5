"""Keyed blind tokens (docs/DESIGN.md §4): equality-searchable, content-hiding.

token = hex(first 10 bytes of HMAC-SHA256(index key, domain || 0x00 || value)).
The domain separates tags from keyword tokens so a tag never matches a word.
Longer keyed digests (dedup fingerprints, import file identities) use their own
domains under the same index key and keep 16 bytes: they must not collide.
"""

from __future__ import annotations

import hmac
import os
from functools import lru_cache

TOKEN_BYTES = 10
DIGEST_BYTES = 16


class Blinder:
    """Computes blind tokens under one index key (one per namespace)."""

    def __init__(self, index_key: bytes, cache_size: int = 65536) -> None:
        key = bytes(index_key)

        @lru_cache(maxsize=cache_size)
        def _token(domain: str, value: str) -> str:
            mac = hmac.digest(key, domain.encode() + b"\x00" + value.encode(), "sha256")
            return mac[:TOKEN_BYTES].hex()

        self._token = _token
        self._key = key
        self._words: dict[str, str] = {}
        self._words_max = cache_size

    def tag_token(self, tag: str) -> str:
        """Token of an already-normalised tag (see model.validate_tags)."""
        return self._token("tag", tag)

    def word_token(self, word: str) -> str:
        tok = self._words.get(word)  # a plain dict first: called for every lexeme written
        if tok is None:
            tok = self._token("word", word)
            if len(self._words) >= self._words_max:
                self._words.clear()
            self._words[word] = tok
        return tok

    def digest(self, domain: str, data: bytes) -> str:
        """A 16-byte keyed digest (hex) in its own domain; not cached (inputs are large)."""
        mac = hmac.digest(self._key, domain.encode() + b"\x00" + data, "sha256")
        return mac[:DIGEST_BYTES].hex()

    def fingerprint(self, normalized_content: str) -> str:
        """Dedup fingerprint: equal only for equal (normalised) content in this namespace."""
        return self.digest("fingerprint", normalized_content.encode())

    def file_token(self, path: str) -> str:
        """Identity of an imported file (its path), so re-imports find their chunks."""
        return self.digest("file", path.encode())

    def file_hash(self, data: bytes) -> str:
        """Keyed hash of an imported file's bytes: detects a change without revealing it."""
        return self.digest("file-content", data)


class TextHasher:
    """Keyed hash for in-memory cache keys (the embedding cache).

    The key is random per process and never stored, so a cache key says nothing
    about the text outside this process and cannot be matched against a
    dictionary of likely texts.
    """

    def __init__(self) -> None:
        self._key = os.urandom(32)

    def __call__(self, text: str) -> bytes:
        return hmac.digest(self._key, text.encode("utf-8", "surrogatepass"), "sha256")
