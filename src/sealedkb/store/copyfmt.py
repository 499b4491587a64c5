"""PostgreSQL's COPY formats, as bytes: count rows in a stream, parse and rebuild
the binary format (no database, no crypto).

Snapshots hold the output of ``COPY ... TO STDOUT`` verbatim. ``snapshot verify``
must count the rows of every table without a database, so it walks the stream:

- binary format: ``PGCOPY\\n\\377\\r\\n\\0`` | flags (i32) | extension length (i32) |
  extension, then per row an i16 field count and per field an i32 length (-1 =
  NULL) and that many bytes; the stream ends with the i16 -1.
- text format: one line per row (newlines inside values are escaped as ``\\n``).

Walking the binary format touches each field header, never field data, so it
costs about 0.2 s per 100k rows of 17 fields here.
"""

from __future__ import annotations

import struct

BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_HEADER_LEN = len(BINARY_SIGNATURE) + 8
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")


class CopyFormatError(ValueError):
    """The bytes are not a well-formed COPY stream (message names the problem)."""


class BinaryRowCounter:
    """Counts the rows of a binary COPY stream fed in pieces of any size."""

    def __init__(self) -> None:
        self.rows = 0
        self.done = False
        self._header = True
        self._ext_left = 0
        self._skip = 0
        self._fields_left = 0
        self._tail = b""

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        if self._skip:
            if len(view) <= self._skip:
                self._skip -= len(view)
                return
            view = view[self._skip :]
            self._skip = 0
        buf: bytes | memoryview = view
        if self._tail:
            buf = self._tail + bytes(view)
            self._tail = b""
        pos, end = 0, len(buf)
        if self._header:
            if end < _HEADER_LEN:
                self._tail = bytes(buf)
                return
            if bytes(buf[: len(BINARY_SIGNATURE)]) != BINARY_SIGNATURE:
                raise CopyFormatError("not a binary COPY stream (bad signature)")
            (ext,) = _I32.unpack_from(buf, _HEADER_LEN - 4)
            if ext < 0:
                raise CopyFormatError("bad header extension length")
            self._header = False
            self._ext_left = ext
            pos = _HEADER_LEN
        if self._ext_left:
            take = min(self._ext_left, end - pos)
            self._ext_left -= take
            pos += take
            if self._ext_left:
                return
        if self.done:
            if pos < end:
                raise CopyFormatError("data after the end of the COPY stream")
            return
        unpack16, unpack32 = _I16.unpack_from, _I32.unpack_from
        rows, fields_left = self.rows, self._fields_left
        while True:
            if fields_left == 0:
                # Fast path: a whole row inside this piece (the common case).
                try:
                    (count,) = unpack16(buf, pos)
                    if count >= 0:
                        p = pos + 2
                        for _ in range(count):
                            (length,) = unpack32(buf, p)
                            p += 4
                            if length > 0:
                                p += length
                            elif length < -1:
                                raise CopyFormatError(f"row {rows + 1}: bad field length")
                        if p <= end:
                            pos = p
                            rows += 1
                            continue
                except struct.error:
                    pass  # the row goes on in the next piece: step through it below
                if pos + 2 > end:
                    break
                (count,) = unpack16(buf, pos)
                pos += 2
                if count == -1:
                    self.done = True
                    if pos < end:
                        raise CopyFormatError("data after the end of the COPY stream")
                    break
                if count < 0:
                    raise CopyFormatError(f"row {rows + 1}: bad field count")
                rows += 1
                fields_left = count
                continue
            if pos + 4 > end:
                break
            (length,) = unpack32(buf, pos)
            pos += 4
            fields_left -= 1
            if length > 0:
                pos += length
                if pos > end:
                    self._skip = pos - end
                    pos = end
                    break
            elif length < -1:
                raise CopyFormatError(f"row {rows}: bad field length")
        self.rows, self._fields_left = rows, fields_left
        if pos < end:
            self._tail = bytes(buf[pos:])

    def finish(self) -> int:
        if not self.done or self._skip or self._tail or self._ext_left:
            raise CopyFormatError("the COPY stream ends in the middle of a row")
        return self.rows


class TextRowCounter:
    """Counts the rows of a text COPY stream: one newline per row."""

    def __init__(self) -> None:
        self.rows = 0
        self._last = b"\n"

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if len(data):
            self.rows += bytes(data).count(b"\n")
            self._last = bytes(data[-1:])

    def finish(self) -> int:
        if self._last != b"\n":
            raise CopyFormatError("the COPY stream ends in the middle of a row")
        return self.rows


def row_counter(fmt: str) -> BinaryRowCounter | TextRowCounter:
    if fmt == "binary":
        return BinaryRowCounter()
    if fmt == "text":
        return TextRowCounter()
    raise CopyFormatError(f"unknown COPY format {fmt!r}")


Field = bytes | None


def parse_binary(data: bytes) -> list[list[Field]]:
    """Every row of a (small, whole) binary COPY stream as lists of raw field values."""
    if len(data) < _HEADER_LEN or data[: len(BINARY_SIGNATURE)] != BINARY_SIGNATURE:
        raise CopyFormatError("not a binary COPY stream (bad signature)")
    (ext,) = _I32.unpack_from(data, _HEADER_LEN - 4)
    pos = _HEADER_LEN + ext
    rows: list[list[Field]] = []
    try:
        while True:
            (count,) = _I16.unpack_from(data, pos)
            pos += 2
            if count == -1:
                break
            row: list[Field] = []
            for _ in range(count):
                (length,) = _I32.unpack_from(data, pos)
                pos += 4
                if length == -1:
                    row.append(None)
                    continue
                if length < 0 or pos + length > len(data):
                    raise CopyFormatError("bad field length")
                row.append(data[pos : pos + length])
                pos += length
            rows.append(row)
    except struct.error:
        raise CopyFormatError("the COPY stream ends in the middle of a row") from None
    if pos != len(data):
        raise CopyFormatError("data after the end of the COPY stream")
    return rows


def encode_binary(rows: list[list[Field]]) -> bytes:
    """The binary COPY stream of ``rows`` (no header extension), as COPY FROM reads it."""
    out = [BINARY_SIGNATURE, _I32.pack(0), _I32.pack(0)]
    for row in rows:
        out.append(_I16.pack(len(row)))
        for value in row:
            if value is None:
                out.append(_I32.pack(-1))
            else:
                out.append(_I32.pack(len(value)))
                out.append(value)
    out.append(_I16.pack(-1))
    return b"".join(out)
