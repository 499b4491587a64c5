"""Sealed field format v1 (docs/DESIGN.md §4): known answers, layout, round trips, tampering."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import sealedkb.crypto.sealed as sealed_mod
from sealedkb.crypto.sealed import (
    OVERHEAD,
    DataKey,
    FieldOpener,
    FieldSealer,
    OpenFailedError,
    key_id_of,
    open_with,
    pad64,
    seal_with,
    unpad64,
)
from sealedkb.errors import IntegrityError, KeyUnavailableError
from sealedkb.formats.aad import field_aad

VECTORS_PATH = Path(__file__).parent / "vectors" / "sealed_v1.json"

# --- an independent reference implementation of the spec ----------------------


def ref_hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 with the standard library only (independent of sealed.py)."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def ref_pad64(pt: bytes) -> bytes:
    out = pt + b"\x80"
    while len(out) % 64:
        out += b"\x00"
    return out


def ref_seal(key: bytes, key_id: bytes, salt: bytes, nonce: bytes, pt: bytes, aad: bytes) -> bytes:
    subkey = ref_hkdf_sha256(key, salt, b"sealedkb/v1/field")
    return b"\x01" + key_id + salt + nonce + AESGCM(subkey).encrypt(nonce, ref_pad64(pt), aad)


# --- known-answer vectors ----------------------------------------------------

A63 = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
UTF8 = "Grüße, 世界! 🔐 ключ".encode()


def _inputs(i: int) -> tuple[bytes, bytes, bytes, bytes]:
    """Fixed, readable inputs of vector i (1-based): key, key id, salt, nonce."""
    key = bytes(range(32 * (i - 1), 32 * i))
    key_id = bytes(range(0x80 + 16 * (i - 1), 0x80 + 16 * i))
    salt = bytes(range(0xC0 + 16 * (i - 1), 0xC0 + 16 * i))
    nonce = bytes([i] * 12)
    return key, key_id, salt, nonce


KATS = [
    pytest.param(
        1,
        b"",
        "sealedkb/v1|default|kb_entries|content|00000000-0000-4000-8000-000000000001",
        "01808182838485868788898a8b8c8d8e8fc0c1c2c3c4c5c6c7c8c9cacbcccdcecf0101010101010101"
        "01010101d42f5719de89fa59e963be2cf6a1f8967f2194d92b40ec67765f721147cfa16ee3c55cae06"
        "1ab3bd383694ce0324335fb406b9e2f7f4e900eb18e55d7a2677c1c31e934440ebecdef96d8990c480"
        "3e10",
        id="empty",
    ),
    pytest.param(
        2,
        A63,
        "sealedkb/v1|default|kb_entries|title|00000000-0000-4000-8000-000000000002",
        "01909192939495969798999a9b9c9d9e9fd0d1d2d3d4d5d6d7d8d9dadbdcdddedf0202020202020202"
        "0202020218b1e13e94b659881e0e7a1ceff97c60a9e14fe5a06a1b7a504a3a8672d0ad9e4138b2eece"
        "18808c51019327bfe05db4e93b1237ee3038d4d8580710b552ba0563635ab4b53eef5a5dd033be5b24"
        "5043",
        id="63-bytes",
    ),
    pytest.param(
        3,
        A63 + b"!",
        "sealedkb/v1|team-a|kb_entries|content|00000000-0000-4000-8000-000000000003",
        "01a0a1a2a3a4a5a6a7a8a9aaabacadaeafe0e1e2e3e4e5e6e7e8e9eaebecedeeef0303030303030303"
        "03030303d67888a23d84fc22e191e8482862dafe39f11f9c0b634e776335def2cd8757361a58d36178"
        "0fb831981a98af0475baa0a2333ca5fcf4a19983807e0ce26cdf8eaf6cec3f655255b9a9dde89299d2"
        "5fa0ce68a4bf136252acd251e7349106cbc7f8ac09a004194d6f906af518b12fdbff2d87d465787c61"
        "f54cda245ffe08b1ef301f4ceb2246460f68f56c6a7d3218e7",
        id="64-bytes",
    ),
    pytest.param(
        4,
        UTF8,
        "sealedkb/v1|team-a|kb_entries|metadata|00000000-0000-4000-8000-000000000004",
        "01b0b1b2b3b4b5b6b7b8b9babbbcbdbebff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff0404040404040404"
        "04040404cd5472726c41ec67f36434b322db671fec64afe0c1f80a54e4cb6b664a50ca6543602b5ffd"
        "98c10051f9b29859e93884a0214da4b1acf30f3a10c076b0e7f88c9f31f9ba04b65d65f2265e915e31"
        "1634",
        id="utf8",
    ),
]


@pytest.mark.parametrize(("index", "plaintext", "aad", "expected_hex"), KATS)
def test_known_answer(index: int, plaintext: bytes, aad: str, expected_hex: str) -> None:
    key, key_id, salt, nonce = _inputs(index)
    blob = seal_with(DataKey(key_id, key), salt, nonce, plaintext, aad.encode())
    assert blob.hex() == expected_hex
    # The checked-in hex follows the spec, not only the implementation.
    assert ref_seal(key, key_id, salt, nonce, plaintext, aad.encode()).hex() == expected_hex
    assert open_with(DataKey(key_id, key), bytes.fromhex(expected_hex), aad.encode()) == plaintext


def test_known_answer_aads_are_field_aads() -> None:
    aads = [p.values[2] for p in KATS]
    assert (
        aads[0]
        == field_aad(
            "default", "kb_entries", "content", "00000000-0000-4000-8000-000000000001"
        ).decode()
    )
    assert (
        aads[3]
        == field_aad(
            "team-a", "kb_entries", "metadata", "00000000-0000-4000-8000-000000000004"
        ).decode()
    )


def test_known_answer_plaintext_lengths_cover_padding_boundary() -> None:
    assert [len(p.values[1]) for p in KATS] == [0, 63, 64, len(UTF8)]
    assert UTF8.decode() != UTF8.decode("latin-1")  # really multi-byte


def _load_vectors() -> list[dict[str, str]]:
    doc = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    vectors: list[dict[str, str]] = doc["vectors"]
    return vectors


def test_vector_file_matches_inline_vectors() -> None:
    vectors = _load_vectors()
    assert len(vectors) == len(KATS) >= 3
    fields = {
        "key_hex",
        "key_id_hex",
        "salt_hex",
        "nonce_hex",
        "aad",
        "plaintext_hex",
        "sealed_hex",
    }
    for v, p in zip(vectors, KATS, strict=True):
        index, plaintext, aad, expected_hex = p.values
        key, key_id, salt, nonce = _inputs(index)
        assert set(v) == fields
        assert v["key_hex"] == key.hex()
        assert v["key_id_hex"] == key_id.hex()
        assert v["salt_hex"] == salt.hex()
        assert v["nonce_hex"] == nonce.hex()
        assert v["aad"] == aad
        assert v["plaintext_hex"] == plaintext.hex()
        assert v["sealed_hex"] == expected_hex


@pytest.mark.parametrize("i", range(4))
def test_vector_file_seal_and_open(i: int) -> None:
    v = _load_vectors()[i]
    key = DataKey(bytes.fromhex(v["key_id_hex"]), bytes.fromhex(v["key_hex"]))
    salt, nonce = bytes.fromhex(v["salt_hex"]), bytes.fromhex(v["nonce_hex"])
    pt, aad = bytes.fromhex(v["plaintext_hex"]), v["aad"].encode()
    sealed = bytes.fromhex(v["sealed_hex"])
    assert seal_with(key, salt, nonce, pt, aad) == sealed
    assert open_with(key, sealed, aad) == pt
    assert ref_seal(key.material, key.key_id, salt, nonce, pt, aad) == sealed


# --- layout ------------------------------------------------------------------

KEY = DataKey(bytes(range(16)), bytes(range(100, 132)))
AAD = field_aad("default", "kb_entries", "content", "00000000-0000-4000-8000-0000000000aa")


@pytest.mark.parametrize("n", [0, 1, 62, 63, 64, 65, 127, 128, 129, 1000])
def test_layout(n: int) -> None:
    blob = FieldSealer(KEY).seal(b"x" * n, AAD)
    padded = (n // 64 + 1) * 64
    assert OVERHEAD == 61
    assert len(blob) == 61 + padded
    assert blob[0] == 0x01
    assert blob[1:17] == KEY.key_id
    assert key_id_of(blob) == KEY.key_id
    ct = blob[1 + 16 + 16 + 12 :]
    assert len(ct) % 64 == 16
    assert len(ct) == padded + 16


# --- round trips -------------------------------------------------------------


def _opener(*keys: DataKey) -> FieldOpener:
    by_id = {k.key_id: k for k in keys}

    def resolve(key_id: bytes) -> DataKey:
        return by_id[key_id]

    return FieldOpener(resolve)


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 200, 4096])
def test_round_trip(n: int) -> None:
    pt = bytes((i * 7) % 256 for i in range(n))
    blob = FieldSealer(KEY).seal(pt, AAD)
    assert _opener(KEY).open(blob, AAD) == pt
    assert open_with(KEY, blob, AAD) == pt


def test_sealing_twice_differs() -> None:
    sealer = FieldSealer(KEY)
    a, b = sealer.seal(b"same", AAD), sealer.seal(b"same", AAD)
    assert a != b
    assert a[17:33] == b[17:33]  # same sealer, same salt ...
    assert a[33:45] != b[33:45]  # ... fresh nonce
    c = FieldSealer(KEY).seal(b"same", AAD)
    assert c[17:33] != a[17:33]  # a new sealer draws a fresh salt
    opener = _opener(KEY)
    assert {opener.open(x, AAD) for x in (a, b, c)} == {b"same"}


def test_opener_resolves_several_keys() -> None:
    other = DataKey(bytes(range(16, 32)), bytes(range(32)))
    b1, b2 = FieldSealer(KEY).seal(b"one", AAD), FieldSealer(other).seal(b"two", AAD)
    opener = _opener(KEY, other)
    assert opener.open(b1, AAD) == b"one"
    assert opener.open(b2, AAD) == b"two"


def test_open_many_opens_a_batch_across_keys_and_names_the_failure() -> None:
    other = DataKey(bytes(range(16, 32)), bytes(range(32)))
    s1, s2 = FieldSealer(KEY), FieldSealer(other)
    blobs = [s1.seal(b"a", b"x|1"), s1.seal(b"b", b"x|2"), s2.seal(b"c", b"x|3")]
    aads = [b"x|1", b"x|2", b"x|3"]
    opener = _opener(KEY, other)
    assert opener.open_many(blobs, aads) == [b"a", b"b", b"c"]
    assert opener.open_many([], []) == []
    tampered = [*blobs[:1], blobs[1][:-1] + bytes([blobs[1][-1] ^ 1]), *blobs[2:]]
    with pytest.raises(OpenFailedError) as exc:
        opener.open_many(tampered, aads)
    assert exc.value.index == 1 and isinstance(exc.value, IntegrityError)
    with pytest.raises(OpenFailedError) as exc:
        opener.open_many(blobs, [b"x|1", b"x|2", b"x|other-row"])  # moved value
    assert exc.value.index == 2
    with pytest.raises(OpenFailedError):
        opener.open_many([b"\x01short"], [b""])
    with pytest.raises(ValueError):
        opener.open_many(blobs, aads[:2])


def test_opener_lets_key_unavailable_through() -> None:
    def resolve(key_id: bytes) -> DataKey:
        raise KeyUnavailableError("KMS key is Disabled")

    blob = FieldSealer(KEY).seal(b"x", AAD)
    with pytest.raises(KeyUnavailableError):
        FieldOpener(resolve).open(blob, AAD)


def test_opener_small_cache_still_opens() -> None:
    opener = FieldOpener(lambda _kid: KEY, cache_size=1)
    blobs = [FieldSealer(KEY).seal(bytes([i]), AAD) for i in range(5)]  # 5 salts
    for _ in range(2):
        assert [opener.open(b, AAD) for b in blobs] == [bytes([i]) for i in range(5)]


# --- tampering -----------------------------------------------------------------

SECRET = b"attack at dawn"


def _assert_opaque(exc: pytest.ExceptionInfo[IntegrityError]) -> None:
    msg = str(exc.value)
    assert SECRET.decode() not in msg
    assert SECRET.hex() not in msg
    assert KEY.material.hex() not in msg


def _fails(blob: bytes, aad: bytes = AAD, key: DataKey = KEY) -> None:
    with pytest.raises(IntegrityError) as exc:
        open_with(key, blob, aad)
    _assert_opaque(exc)
    with pytest.raises(IntegrityError) as exc:
        _strict_opener(key).open(blob, aad)
    _assert_opaque(exc)


def _strict_opener(key: DataKey) -> FieldOpener:
    """An opener that knows one key id (as the key ring does) and rejects others."""

    def resolve(key_id: bytes) -> DataKey:
        if key_id != key.key_id:
            raise IntegrityError("unknown data key")
        return key

    return FieldOpener(resolve)


def test_flip_one_bit_at_every_position() -> None:
    blob = FieldSealer(KEY).seal(SECRET, AAD)
    assert len(blob) == 125
    for pos in range(len(blob)):
        for bit in (0x01, 0x80):
            bad = bytearray(blob)
            bad[pos] ^= bit
            _fails(bytes(bad))


def test_truncated() -> None:
    blob = FieldSealer(KEY).seal(SECRET + b"." * 60, AAD)  # two pad blocks
    assert len(blob) == 189
    for n in [0, 1, 17, 33, 45, 60, 61, 124, 125, 126, 188]:
        _fails(blob[:n])
    _fails(blob[1:])
    _fails(blob[:-64])  # drop a whole block: still a valid-looking length


def test_extended() -> None:
    blob = FieldSealer(KEY).seal(SECRET, AAD)
    for extra in [b"\x00", b"\x80", b"\x00" * 16, b"\x80" + b"\x00" * 63, blob[-64:]]:
        _fails(blob + extra)


@pytest.mark.parametrize(
    "other",
    [
        ("other", "kb_entries", "content", "00000000-0000-4000-8000-0000000000aa"),
        ("default", "kb_entries", "title", "00000000-0000-4000-8000-0000000000aa"),
        ("default", "kb_other", "content", "00000000-0000-4000-8000-0000000000aa"),
        ("default", "kb_entries", "content", "00000000-0000-4000-8000-0000000000ab"),
    ],
    ids=["namespace", "column", "table", "entry"],
)
def test_wrong_aad(other: tuple[str, str, str, str]) -> None:
    blob = FieldSealer(KEY).seal(SECRET, AAD)
    _fails(blob, field_aad(*other))


def test_empty_aad_and_raw_aad() -> None:
    blob = FieldSealer(KEY).seal(SECRET, AAD)
    _fails(blob, b"")
    _fails(blob, AAD + b"x")


def test_wrong_key_same_id() -> None:
    blob = FieldSealer(KEY).seal(SECRET, AAD)
    impostor = DataKey(KEY.key_id, bytes(32))
    _fails(blob, key=impostor)


def test_wrong_key_id_in_open_with() -> None:
    blob = FieldSealer(KEY).seal(SECRET, AAD)
    _fails(blob, key=DataKey(bytes(16), KEY.material))


@pytest.mark.parametrize("version", [0x00, 0x02, 0x81, 0xFF])
def test_other_version_byte(version: int) -> None:
    blob = FieldSealer(KEY).seal(SECRET, AAD)
    _fails(bytes([version]) + blob[1:])
    with pytest.raises(IntegrityError):
        key_id_of(bytes([version]) + blob[1:])


def test_empty_input() -> None:
    _fails(b"")
    with pytest.raises(IntegrityError):
        key_id_of(b"")


def test_garbage_of_valid_length() -> None:
    _fails(b"\x01" + KEY.key_id + bytes(125 - 17))


# --- salt rotation -------------------------------------------------------------


def test_salt_rotates_after_seals_per_salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sealed_mod, "SEALS_PER_SALT", 3)
    sealer = FieldSealer(KEY)
    blobs = [sealer.seal(f"v{i}".encode(), AAD) for i in range(10)]
    salts = [b[17:33] for b in blobs]
    assert salts[0] == salts[1] == salts[2]
    assert salts[3] == salts[4] == salts[5]
    assert salts[6] == salts[7] == salts[8]
    assert len({salts[0], salts[3], salts[6], salts[9]}) == 4
    opener = _opener(KEY)
    assert [opener.open(b, AAD) for b in blobs] == [f"v{i}".encode() for i in range(10)]


# --- padding -------------------------------------------------------------------


def test_pad64_properties() -> None:
    for n in range(201):
        data = bytes([0x80, 0x00, 0x41][i % 3] for i in range(n))  # awkward byte values
        padded = pad64(data)
        assert len(padded) % 64 == 0
        assert len(data) < len(padded) <= len(data) + 64
        assert padded[:n] == data
        assert padded[n] == 0x80
        assert set(padded[n + 1 :]) <= {0}
        assert padded == ref_pad64(data)
        assert unpad64(padded) == data
        for tail in (b"", b"\x00", b"\x80", b"\x00\x80"):
            assert unpad64(pad64(data + tail)) == data + tail


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x80",  # not a multiple of 64
        b"\x80" + bytes(62),
        bytes(64),  # no marker at all
        bytes(128),
        b"a" * 64,  # no marker
        b"a" * 63 + b"\x01",  # wrong marker
        b"a" * 10 + b"\x80" + b"\x01" + bytes(52),  # non-zero after the marker
        b"\x80" + bytes(127),  # more than a whole block of padding
        b"a" * 63 + b"\x80" + bytes(64),  # a whole extra block of zeros
    ],
)
def test_unpad64_rejects(bad: bytes) -> None:
    with pytest.raises(IntegrityError):
        unpad64(bad)


# --- AAD, DataKey ------------------------------------------------------------


def test_field_aad() -> None:
    assert field_aad("ns", "t", "c", "id") == b"sealedkb/v1|ns|t|c|id"
    for i in range(4):
        parts = ["ns", "t", "c", "id"]
        parts[i] = "a|b"
        with pytest.raises(ValueError):
            field_aad(*parts)
    # Without the rule, these two would collide.
    with pytest.raises(ValueError):
        field_aad("a|b", "t", "c", "id")


def test_data_key_repr_hides_material() -> None:
    material = bytes(range(200, 232))
    key = DataKey(b"K" * 16, material)
    for text in (repr(key), str(key)):
        assert material.hex() not in text
        assert repr(material) not in text
        assert "material" not in text


@pytest.mark.parametrize(("kid_len", "key_len"), [(15, 32), (16, 31), (16, 16), (0, 32)])
def test_data_key_rejects_bad_sizes(kid_len: int, key_len: int) -> None:
    with pytest.raises(ValueError):
        DataKey(bytes(kid_len), bytes(key_len))
