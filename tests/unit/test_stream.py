"""STREAM over AES-256-GCM for snapshots (crypto/stream.py): known-answer vectors that
freeze the format (docs/SNAPSHOT-FORMAT.md §9), an independent re-derivation of
the construction, and tamper tests: flip, truncate, reorder, splice across two
streams, drop the last chunk, a full chunk re-labelled as last."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealedkb.crypto.stream import (
    CHUNK_AAD_LABEL,
    TAG_LEN,
    StreamOpener,
    StreamSealer,
    chunk_nonce,
    derive_keys,
    header_mac,
    random_nonce_prefix,
    random_salt,
    sha256,
    trailer_mac,
)
from sealedkb.errors import IntegrityError

# --- known-answer vectors (docs/SNAPSHOT-FORMAT.md §9) ----------------------------------

DATA_KEY = bytes(range(32))
SALT = bytes(range(0x40, 0x50))
PREFIX = bytes.fromhex("a0a1a2a3a4a5a6")
HEADER = b"header"
HEADER_HASH = "1e0584a25d9f43bf5cbd0aec01eb1af2220ed085b4e7f1837b0d89958cae353a"
STREAM_KEY = "411a6399b71f42250f2ca49d81f9ad86c47dca6cd8d59cd134055193dec9b45b"
MAC_KEY = "a9c6f59c2b6d14645b521fc2ebdc343f2b8c4f00d115c77eba615aa10b3768b8"
CHUNK0 = "b358cfa49258099560268054d347b14f4cd35adececf35550e22f347d5a93bff"
CHUNK1 = "282de961e4f988c6bc9fc6861e51127898fb975e"
HEADER_MAC = "5f7d9a73f1f680f0c8c281a727c9dbf85d0f55d2ce89e1f7a0b20f613a35027f"
TRAILER_MAC = "df4967b1efca74ed94b1e1485b2c1a7274d200305f3b240f808802ff4e1fcbd5"
PLAIN = [b"sealedkb snapsho", b"t v1"]  # chunk size 16


def _hkdf_rfc5869(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 from RFC 5869, written out with hmac alone (independent of pyca)."""
    prk = hmac.digest(salt, ikm, "sha256")
    return hmac.digest(prk, info + b"\x01", "sha256")


def test_known_answer_keys_and_macs() -> None:
    keys = derive_keys(DATA_KEY, SALT)
    assert keys.stream_key.hex() == STREAM_KEY
    assert keys.mac_key.hex() == MAC_KEY
    assert keys.stream_key == _hkdf_rfc5869(DATA_KEY, SALT, b"sealedkb/snapshot/v1/stream")
    assert keys.mac_key == _hkdf_rfc5869(DATA_KEY, SALT, b"sealedkb/snapshot/v1/mac")
    assert sha256(HEADER).hex() == HEADER_HASH
    assert header_mac(keys, HEADER).hex() == HEADER_MAC
    assert header_mac(keys, HEADER) == hmac.digest(
        keys.mac_key, b"sealedkb/snapshot/v1/header" + HEADER, "sha256"
    )
    hh = bytes.fromhex(HEADER_HASH)
    assert trailer_mac(keys, hh, b"trailer").hex() == TRAILER_MAC
    assert trailer_mac(keys, hh, b"trailer") == hmac.digest(
        keys.mac_key, b"sealedkb/snapshot/v1/trailer" + hh + b"trailer", "sha256"
    )
    assert repr(keys).count(STREAM_KEY) == 0  # keys never print


def test_known_answer_chunks() -> None:
    keys = derive_keys(DATA_KEY, SALT)
    hh = bytes.fromhex(HEADER_HASH)
    sealer = StreamSealer(keys.stream_key, PREFIX, hh, 16)
    c0 = sealer.seal(PLAIN[0], last=False)
    c1 = sealer.seal(PLAIN[1], last=True)
    assert (c0.hex(), c1.hex()) == (CHUNK0, CHUNK1)
    # the construction, spelled out: nonce = prefix | u32 BE counter | last flag
    assert chunk_nonce(PREFIX, 0, False).hex() == "a0a1a2a3a4a5a60000000000"
    assert chunk_nonce(PREFIX, 1, True).hex() == "a0a1a2a3a4a5a60000000101"
    aead = AESGCM(bytes.fromhex(STREAM_KEY))
    aad = CHUNK_AAD_LABEL + hh
    assert aead.encrypt(bytes.fromhex("a0a1a2a3a4a5a60000000000"), PLAIN[0], aad) == c0
    assert aead.encrypt(bytes.fromhex("a0a1a2a3a4a5a60000000101"), PLAIN[1], aad) == c1
    opener = StreamOpener(keys.stream_key, PREFIX, hh, 16)
    assert opener.open(c0, last=False) == PLAIN[0]
    assert opener.open(c1, last=True) == PLAIN[1]


# --- round trip and tampering -------------------------------------------------------------

SIZE = 64


def make_stream(n_full: int = 4, tail: int = 10) -> tuple[bytes, bytes, bytes, list[bytes]]:
    key = derive_keys(random_salt() + random_salt(), random_salt()).stream_key
    prefix, hh = random_nonce_prefix(), sha256(random_salt())
    sealer = StreamSealer(key, prefix, hh, SIZE)
    chunks = [sealer.seal(bytes([i]) * SIZE, last=False) for i in range(n_full)]
    chunks.append(sealer.seal(b"t" * tail, last=True))
    return key, prefix, hh, chunks


def open_all(key: bytes, prefix: bytes, hh: bytes, chunks: list[bytes]) -> bytes:
    opener = StreamOpener(key, prefix, hh, SIZE)
    out = [opener.open(c, last=i == len(chunks) - 1) for i, c in enumerate(chunks)]
    return b"".join(out)


def test_round_trip() -> None:
    key, prefix, hh, chunks = make_stream()
    assert open_all(key, prefix, hh, chunks) == b"".join(bytes([i]) * SIZE for i in range(4)) + (
        b"t" * 10
    )
    assert all(len(c) == SIZE + TAG_LEN for c in chunks[:-1])


def test_exactly_full_last_chunk_and_single_empty_stream() -> None:
    key = derive_keys(bytes(32), bytes(16)).stream_key
    prefix, hh = bytes(7), bytes(32)
    sealer = StreamSealer(key, prefix, hh, SIZE)
    only = sealer.seal(b"", last=True)  # an empty stream is one empty last chunk
    assert StreamOpener(key, prefix, hh, SIZE).open(only, last=True) == b""
    sealer = StreamSealer(key, prefix, hh, SIZE)
    a, b = sealer.seal(b"a" * SIZE, last=False), sealer.seal(b"b" * SIZE, last=True)
    assert open_all(key, prefix, hh, [a, b]) == b"a" * SIZE + b"b" * SIZE


@pytest.mark.parametrize("index", [0, 2, 4])
@pytest.mark.parametrize("offset", [0, 7, SIZE + TAG_LEN - 1])
def test_flipped_byte_names_the_chunk(index: int, offset: int) -> None:
    key, prefix, hh, chunks = make_stream()
    bad = bytearray(chunks[index])
    bad[min(offset, len(bad) - 1)] ^= 0x01
    chunks[index] = bytes(bad)
    with pytest.raises(IntegrityError, match=f"chunk {index} "):
        open_all(key, prefix, hh, chunks)


def test_reordered_chunks_fail() -> None:
    key, prefix, hh, chunks = make_stream()
    chunks[1], chunks[2] = chunks[2], chunks[1]
    with pytest.raises(IntegrityError, match="chunk 1 failed"):
        open_all(key, prefix, hh, chunks)


def test_dropped_last_chunk_fails() -> None:
    """Cut after a full chunk: that chunk was not sealed as the last one."""
    key, prefix, hh, chunks = make_stream()
    with pytest.raises(IntegrityError, match="chunk 3 failed"):
        open_all(key, prefix, hh, chunks[:-1])


def test_truncated_chunk_fails() -> None:
    key, prefix, hh, chunks = make_stream()
    chunks[-1] = chunks[-1][:-1]
    with pytest.raises(IntegrityError, match="chunk 4 failed"):
        open_all(key, prefix, hh, chunks)
    chunks[-1] = chunks[-1][:5]
    with pytest.raises(IntegrityError, match="chunk 4 has the wrong length"):
        open_all(key, prefix, hh, chunks)


def test_splice_across_two_streams_fails() -> None:
    """A chunk from another snapshot fails, even under the same key and prefix
    (the header hash in the AAD differs), and of course under another key."""
    key, prefix, hh, chunks = make_stream()
    sealer = StreamSealer(key, prefix, sha256(b"another header"), SIZE)
    other = [sealer.seal(b"x" * SIZE, last=False) for _ in range(4)]
    spliced = [*chunks[:2], other[2], *chunks[3:]]
    with pytest.raises(IntegrityError, match="chunk 2 failed"):
        open_all(key, prefix, hh, spliced)
    _key2, _prefix2, _hh2, chunks2 = make_stream()
    with pytest.raises(IntegrityError, match="chunk 1 failed"):
        open_all(key, prefix, hh, [chunks[0], chunks2[1], *chunks[2:]])


def test_data_after_the_last_chunk_and_wrong_flag() -> None:
    key, prefix, hh, chunks = make_stream()
    opener = StreamOpener(key, prefix, hh, SIZE)
    for c in chunks[:-1]:
        opener.open(c, last=False)
    with pytest.raises(IntegrityError, match="wrong length"):  # a short chunk is only ever last
        opener.open(chunks[-1], last=False)
    opener.open(chunks[-1], last=True)
    with pytest.raises(IntegrityError, match="after the last chunk"):
        opener.open(chunks[0], last=True)


def test_sealer_enforces_sizes() -> None:
    sealer = StreamSealer(bytes(32), bytes(7), bytes(32), SIZE)
    with pytest.raises(ValueError, match="exactly"):
        sealer.seal(b"short", last=False)
    with pytest.raises(ValueError, match=r"1\.\.chunk_size"):
        sealer.seal(b"x" * (SIZE + 1), last=True)
    sealer.seal(b"x", last=True)
    with pytest.raises(ValueError, match="finished"):
        sealer.seal(b"x", last=True)
    with pytest.raises(ValueError):
        StreamSealer(bytes(32), bytes(6), bytes(32), SIZE)
    with pytest.raises(ValueError):
        derive_keys(bytes(31), bytes(16))


def test_digest_is_sha256() -> None:
    from sealedkb.crypto.stream import new_digest

    d = new_digest()
    d.update(b"abc")
    assert d.hexdigest() == hashlib.sha256(b"abc").hexdigest()
