"""Bearer tokens: generation and the hash that is stored instead of the token."""

from __future__ import annotations

import base64
import hashlib
import os

TOKEN_PREFIX = "skb_"  # noqa: S105 - a public prefix, not a secret


def new_token() -> str:
    """A fresh bearer token: 256 random bits, URL-safe, with a recognisable prefix
    (so secret scanners can spot a leaked one)."""
    return TOKEN_PREFIX + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def token_hash(token: str) -> bytes:
    """SHA-256 of the token. Lookup is by this hash, so comparing never touches the
    secret itself; with 256-bit tokens a salted slow hash would add nothing."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
