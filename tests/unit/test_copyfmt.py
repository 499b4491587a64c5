"""COPY formats as bytes (store/copyfmt.py): row counting over arbitrary piece
boundaries, parse/encode round trip, malformed streams."""

from __future__ import annotations

import random
import struct

import pytest

from sealedkb.store.copyfmt import (
    BINARY_SIGNATURE,
    BinaryRowCounter,
    CopyFormatError,
    TextRowCounter,
    encode_binary,
    parse_binary,
)


def sample_rows(n: int, rng: random.Random) -> list[list[bytes | None]]:
    rows: list[list[bytes | None]] = []
    for i in range(n):
        rows.append(
            [
                rng.randbytes(16),
                None if i % 3 == 0 else rng.randbytes(rng.randint(0, 3000)),
                b"",
                struct.pack(">q", i),
            ]
        )
    return rows


def feed_in_pieces(data: bytes, rng: random.Random, counter: BinaryRowCounter) -> int:
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 2, 3, 5, 17, 100, 4096, 70000])
        counter.feed(memoryview(data)[pos : pos + step])
        pos += step
    return counter.finish()


@pytest.mark.parametrize("seed", range(5))
def test_binary_counter_any_boundaries(seed: int) -> None:
    rng = random.Random(seed)
    rows = sample_rows(200, rng)
    data = encode_binary(rows)
    assert feed_in_pieces(data, rng, BinaryRowCounter()) == 200
    assert parse_binary(data) == rows


def test_binary_counter_header_extension_and_empty() -> None:
    ext = BINARY_SIGNATURE + struct.pack(">ii", 0, 3) + b"xyz" + struct.pack(">h", -1)
    c = BinaryRowCounter()
    for b in ext:
        c.feed(bytes([b]))
    assert c.finish() == 0
    assert parse_binary(encode_binary([])) == []


def test_binary_counter_rejects_damage() -> None:
    data = encode_binary(sample_rows(3, random.Random(1)))
    c = BinaryRowCounter()
    c.feed(data[:-1])
    with pytest.raises(CopyFormatError, match="middle of a row"):
        c.finish()
    with pytest.raises(CopyFormatError, match="signature"):
        BinaryRowCounter().feed(b"X" + data[1:])
    c = BinaryRowCounter()
    with pytest.raises(CopyFormatError, match="after the end"):
        c.feed(data + b"\x00")
    with pytest.raises(CopyFormatError):
        parse_binary(data[:-3])


def test_text_counter() -> None:
    c = TextRowCounter()
    for piece in (b"a\tb\n", b"c\t", b"d\\nstill row 2\n", b""):
        c.feed(piece)
    assert c.finish() == 2
    c = TextRowCounter()
    c.feed(b"no newline")
    with pytest.raises(CopyFormatError):
        c.finish()
