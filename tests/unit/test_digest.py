"""crypto/digest.py: the audit chain hash, checked against hashlib directly."""

from __future__ import annotations

import hashlib

import pytest

from sealedkb.crypto.digest import GENESIS, canonical_json, chain_hash


def test_canonical_json() -> None:
    assert (
        canonical_json({"b": 1, "a": [True, None, "é"]}) == '{"a":[true,null,"é"],"b":1}'.encode()
    )
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_chain_hash_is_sha256_of_prev_and_event() -> None:
    event = {"seq": 1, "action": "CreateKey"}
    first = chain_hash(GENESIS, event)
    assert first == hashlib.sha256(bytes(32) + b'{"action":"CreateKey","seq":1}').digest()
    second = chain_hash(first, {"seq": 2, "action": "Decrypt"})
    assert second == hashlib.sha256(first + b'{"action":"Decrypt","seq":2}').digest()
    # any change to the event or the link changes the hash
    assert chain_hash(GENESIS, {"seq": 1, "action": "CreateKeY"}) != first
    assert chain_hash(second, event) != first
    with pytest.raises(ValueError):
        chain_hash(b"short", event)
