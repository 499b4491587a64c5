"""Key wrapping, key derivation (HKDF, Argon2id, HMAC) and blind tokens."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest

from sealedkb.crypto import keywrap
from sealedkb.crypto.blind import Blinder
from sealedkb.crypto.kdf import (
    Argon2Params,
    argon2id,
    constant_time_eq,
    hkdf,
    hmac_sha256,
    random_bytes,
    random_key,
)
from sealedkb.errors import IntegrityError

KEK = bytes(range(32))
DK = bytes(range(100, 132))
AAD = b"sealedkb/test|ctx"
FAST = Argon2Params(time_cost=1, memory_kib=8192, parallelism=1)

# --- keywrap -------------------------------------------------------------------


def test_wrap_round_trip() -> None:
    blob = keywrap.wrap(KEK, DK, AAD)
    assert blob[0] == keywrap.WRAP_V1
    assert len(blob) == 1 + 12 + len(DK) + 16
    assert DK not in blob
    assert keywrap.unwrap(KEK, blob, AAD) == DK


def test_wrap_is_randomised() -> None:
    a, b = keywrap.wrap(KEK, DK, AAD), keywrap.wrap(KEK, DK, AAD)
    assert a != b
    assert keywrap.unwrap(KEK, a, AAD) == keywrap.unwrap(KEK, b, AAD) == DK


@pytest.mark.parametrize("n", [0, 1, 32, 4096])
def test_wrap_any_length(n: int) -> None:
    key = bytes(i % 251 for i in range(n))
    assert keywrap.unwrap(KEK, keywrap.wrap(KEK, key, AAD), AAD) == key


@pytest.mark.parametrize("aad", [b"", b"sealedkb/test|ctx2", b"sealedkb/test|ct", AAD.upper()])
def test_unwrap_wrong_aad(aad: bytes) -> None:
    blob = keywrap.wrap(KEK, DK, AAD)
    with pytest.raises(IntegrityError) as exc:
        keywrap.unwrap(KEK, blob, aad)
    assert DK.hex() not in str(exc.value)


def test_unwrap_wrong_kek() -> None:
    blob = keywrap.wrap(KEK, DK, AAD)
    with pytest.raises(IntegrityError):
        keywrap.unwrap(bytes(32), blob, AAD)


def test_unwrap_flipped_bytes() -> None:
    blob = keywrap.wrap(KEK, DK, AAD)
    for pos in range(len(blob)):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises(IntegrityError):
            keywrap.unwrap(KEK, bytes(bad), AAD)


def test_unwrap_malformed() -> None:
    blob = keywrap.wrap(KEK, DK, AAD)
    for bad in [b"", b"\x01", blob[:28], blob[:-1], blob + b"\x00", b"\x02" + blob[1:]]:
        with pytest.raises(IntegrityError):
            keywrap.unwrap(KEK, bad, AAD)


# --- kdf -------------------------------------------------------------------------


def test_argon2id_deterministic() -> None:
    salt = b"s" * 16
    a = argon2id(b"correct horse", salt, FAST)
    assert len(a) == 32
    assert argon2id(b"correct horse", salt, FAST) == a


def test_argon2id_depends_on_salt_passphrase_and_params() -> None:
    base = argon2id(b"correct horse", b"s" * 16, FAST)
    assert argon2id(b"correct horse", b"t" * 16, FAST) != base
    assert argon2id(b"correct horsf", b"s" * 16, FAST) != base
    assert argon2id(b"correct horse", b"s" * 16, Argon2Params(2, 8192, 1)) != base


def test_argon2_params_round_trip() -> None:
    p = Argon2Params(time_cost=2, memory_kib=16384, parallelism=3)
    assert p.to_dict() == {"t": 2, "m": 16384, "p": 3}
    assert Argon2Params.from_dict(p.to_dict()) == p
    assert Argon2Params() == Argon2Params(3, 64 * 1024, 4)  # RFC 9106 second option


def test_hkdf_rfc5869_case_1() -> None:
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    okm = hkdf(ikm, info, salt=salt, length=42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_hkdf_separates_info() -> None:
    assert hkdf(KEK, b"a") != hkdf(KEK, b"b")
    assert len(hkdf(KEK, b"a")) == 32


def test_hmac_and_compare() -> None:
    assert hmac_sha256(KEK, b"x") == hmac.new(KEK, b"x", hashlib.sha256).digest()
    assert constant_time_eq(b"abc", b"abc")
    assert not constant_time_eq(b"abc", b"abd")
    assert not constant_time_eq(b"abc", b"ab")


def test_randomness() -> None:
    assert len(random_key()) == 32
    assert random_key() != random_key()
    assert len(random_bytes(7)) == 7


# --- blind tokens ---------------------------------------------------------------

TOKEN_RE = re.compile(r"^[0-9a-f]{20}$")


def test_blind_token_shape_and_definition() -> None:
    b = Blinder(KEK)
    tok = b.word_token("encrypt")
    assert TOKEN_RE.match(tok)
    assert TOKEN_RE.match(b.tag_token("security"))
    expected = hmac.new(KEK, b"word\x00encrypt", hashlib.sha256).digest()[:10].hex()
    assert tok == expected


def test_blind_deterministic_per_key() -> None:
    assert Blinder(KEK).word_token("key") == Blinder(KEK).word_token("key")
    assert Blinder(KEK).tag_token("ops") == Blinder(bytearray(KEK)).tag_token("ops")
    b = Blinder(KEK)
    assert b.word_token("key") == b.word_token("key")  # cached path


def test_blind_different_keys() -> None:
    a, b = Blinder(KEK), Blinder(DK)
    for w in ["key", "rotation", "ключ", "世界"]:
        assert a.word_token(w) != b.word_token(w)
        assert a.tag_token(w) != b.tag_token(w)


def test_blind_different_values() -> None:
    b = Blinder(KEK)
    words = ["key", "keys", "Key", "kei", "", "a", "ä"]
    assert len({b.word_token(w) for w in words}) == len(words)


def test_blind_tag_word_domain_separation() -> None:
    b = Blinder(KEK)
    for v in ["security", "ops", "x", ""]:
        assert b.tag_token(v) != b.word_token(v)


def test_blind_key_copied() -> None:
    key = bytearray(KEK)
    b = Blinder(key)
    before = b.word_token("fresh")
    key[0] ^= 0xFF
    assert Blinder(bytes(KEK)).word_token("other") == b.word_token("other")
    assert b.word_token("fresh") == before
