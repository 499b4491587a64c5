"""The snapshot file, format 1 (spec: docs/SNAPSHOT-FORMAT.md).

    magic "\\x89SKBSNAP" (8) | version 0x01 | u32 BE header length | header (canonical JSON)
      | SHA-256(header) (32) | HMAC(header) (32)
    | STREAM chunks (crypto/stream.py) of zstd(payload)
    | trailer (canonical JSON) | SHA-256(trailer) (32) | HMAC(trailer) (32)
      | u32 BE trailer length | end magic "\\x89SKBEND\\n" (8)

    payload = for each table of the header, in order: blocks (u32 BE length > 0 | bytes)
              of its COPY output, then u32 0

The header holds what is known when a snapshot starts (id, time, source,
schema, KMS key, wrapped snapshot key, tables and columns); the trailer what is
known at the end (row counts and SHA-256 digests per table, sizes). Both are
plaintext, so ``snapshot list`` works without keys, and both are authenticated
(HMAC under a key derived from the snapshot data key), so ``verify`` trusts
nothing it has not checked. The SHA-256 beside each is an unkeyed checksum: it
tells accidental damage ("the header is damaged") from a failed MAC, and lets
``list`` flag a damaged file without keys; it is not what makes the file
authentic.

This module is the byte layer: it writes and reads the container, seals and
opens chunks, compresses, frames the tables and counts and hashes them. It
does not talk to PostgreSQL or the key provider (create, verify, restore and
copy do).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import queue
import struct
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypedDict, cast

import zstandard

from sealedkb.crypto.stream import (
    DEFAULT_CHUNK_SIZE,
    HASH_LEN,
    MAC_LEN,
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MIN_CHUNK_SIZE,
    NONCE_PREFIX_LEN,
    SALT_LEN,
    TAG_LEN,
    SnapshotKeys,
    StreamOpener,
    StreamSealer,
    header_mac,
    mac_equal,
    new_digest,
    sha256,
    trailer_mac,
)
from sealedkb.errors import IntegrityError
from sealedkb.objectstore import ObjectPath
from sealedkb.store.copyfmt import CopyFormatError, row_counter
from sealedkb.store.snapshot_io import TableMeta

FORMAT_NAME = "sealedkb-snapshot"
FORMAT_VERSION = 1
MAGIC = b"\x89SKBSNAP"
END_MAGIC = b"\x89SKBEND\n"
_PREFIX = struct.Struct(">8sBI")  # magic, version, header length
_SUFFIX = struct.Struct(">I8s")  # trailer length, end magic
_U32 = struct.Struct(">I")
MAX_JSON = 16 * 1024 * 1024  # header / trailer size limit
BLOCK_SIZE = 256 * 1024  # payload framing block written (COPY output is cut to this)
QUEUE_BLOCKS = 16  # blocks in flight between the COPY reader and the writer thread
MAX_BLOCK = 1024 * 1024  # largest block a reader accepts (the spec's limit)
ZSTD_LEVEL = 1  # ciphertext dominates and does not compress: favour speed


class SnapshotIntegrityError(IntegrityError):
    """A snapshot file failed a check. ``part`` names what is bad (``header``,
    ``chunk 3``, ``trailer``, ``table kb_entries`` ...), so the operator knows
    where, never why in cryptographic detail."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(message)
        self.part = part


class SchemaFacts(TypedDict, total=False):
    version: int  # the newest schema migration applied
    migrations: list[int]  # every schema migration applied


class Header(TypedDict, total=False):
    """The header (docs/SNAPSHOT-FORMAT.md): what is known when a snapshot starts.
    Read from a file it is checked by :func:`read_envelope` before any use; keys
    after ``tables`` are written by sealedkb but not required of a file."""

    format: str
    version: int
    snapshot_id: str
    created_at: str
    kind: str  # manual | automated
    name: str | None
    kms_key_id: str
    kms_key_version: int | None
    wrapped_key: str  # base64
    encryption_context: dict[str, str]
    cipher: str
    salt: str  # base64
    nonce_prefix: str  # base64
    chunk_size: int
    compression: str
    source: dict[str, Any]  # kb_id, database, server facts, fingerprint
    schema: SchemaFacts
    tables: list[TableMeta]
    sealedkb_version: str
    encryption_mode: str
    copied_from: str
    copied_at: str


class TableFacts(TypedDict):
    """One table in the trailer."""

    rows: int
    sha256: str
    bytes: int


class Trailer(TypedDict, total=False):
    """The trailer: what is known at the end of a snapshot."""

    snapshot_id: str
    chunks: int
    stream_bytes: int
    payload_bytes: int
    tables: dict[str, TableFacts]
    completed_at: str
    copied_from: str


def canonical_json(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: Any, what: str, length: int | None = None) -> bytes:
    try:
        raw = base64.b64decode(str(text).encode(), validate=True)
    except ValueError:
        raise SnapshotIntegrityError("header", f"the header's {what} is malformed") from None
    if length is not None and len(raw) != length:
        raise SnapshotIntegrityError("header", f"the header's {what} has the wrong length")
    return raw


# --- what can be read without keys -------------------------------------------------


@dataclass
class Envelope:
    """A snapshot file's structure and plaintext header/trailer (not yet authenticated)."""

    path: Path | ObjectPath  # a file, or an object in a bucket (snapshots/s3.py)
    size: int
    header: Header
    header_bytes: bytes
    header_hash: bytes
    header_mac: bytes
    trailer: Trailer
    trailer_bytes: bytes
    trailer_mac: bytes
    stream_offset: int
    stream_len: int

    @property
    def chunk_size(self) -> int:
        return int(self.header["chunk_size"])

    def chunk_count(self) -> int:
        full = self.chunk_size + TAG_LEN
        return max(1, -(-self.stream_len // full))


def _damaged(part: str, what: str) -> SnapshotIntegrityError:
    return SnapshotIntegrityError(part, f"the snapshot's {what}")


def _check_header(h: Any) -> Header:
    """Structural checks of a parsed header (types and ranges), before any use."""
    if not isinstance(h, dict):
        raise _damaged("header", "header is damaged (not an object)")
    try:
        ok = (
            h["format"] == FORMAT_NAME
            and h["version"] == FORMAT_VERSION
            and isinstance(h["snapshot_id"], str)
            and isinstance(h["created_at"], str)
            and h["kind"] in ("manual", "automated")
            and isinstance(h["kms_key_id"], str)
            and isinstance(h["encryption_context"], dict)
            and all(
                isinstance(k, str) and isinstance(v, str)
                for k, v in h["encryption_context"].items()
            )
            and isinstance(h["chunk_size"], int)
            and MIN_CHUNK_SIZE <= h["chunk_size"] <= MAX_CHUNK_SIZE
            and h["compression"] == "zstd"
            and isinstance(h["tables"], list)
            and all(
                isinstance(t, dict)
                and isinstance(t.get("name"), str)
                and t.get("format") in ("binary", "text")
                and isinstance(t.get("columns"), list)
                for t in h["tables"]
            )
            and isinstance(h["schema"], dict)
            and all(k in h for k in ("wrapped_key", "salt", "nonce_prefix"))
        )
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise _damaged("header", "header is damaged or of an unknown layout")
    unb64(h["wrapped_key"], "wrapped key")
    unb64(h["salt"], "salt", SALT_LEN)
    unb64(h["nonce_prefix"], "nonce prefix", NONCE_PREFIX_LEN)
    return cast(Header, h)


def read_envelope(path: Path | ObjectPath) -> Envelope:
    """Read and check the structure of a snapshot file; no keys needed.

    Raises SnapshotIntegrityError naming the part that is damaged: ``file``
    (not a snapshot, unknown version), ``header``, ``end`` (truncated or cut),
    ``trailer``."""
    with path.open("rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(0)
        prefix = fh.read(_PREFIX.size)
        if len(prefix) < _PREFIX.size or prefix[:8] != MAGIC:
            raise SnapshotIntegrityError("file", f"{path.name} is not a sealedkb snapshot")
        _magic, version, hlen = _PREFIX.unpack(prefix)
        if version != FORMAT_VERSION:
            raise SnapshotIntegrityError(
                "file",
                f"{path.name} has snapshot format version {version}, which this "
                "sealedkb does not know",
            )
        if hlen > MAX_JSON or _PREFIX.size + hlen + 2 * HASH_LEN > size:
            raise _damaged("header", "header length is damaged (or the file is truncated)")
        header_bytes = fh.read(hlen)
        checksum = fh.read(HASH_LEN)
        hmac_ = fh.read(MAC_LEN)
        header_hash = sha256(header_bytes)
        if checksum != header_hash:
            raise _damaged("header", "header is damaged (checksum mismatch)")
        try:
            header = _check_header(json.loads(header_bytes))
        except ValueError:
            raise _damaged("header", "header is damaged (not JSON)") from None
        stream_offset = fh.tell()
        tail_len = _SUFFIX.size
        if size < stream_offset + TAG_LEN + 2 * HASH_LEN + tail_len:
            raise _damaged("end", "end is missing: the file is truncated")
        fh.seek(size - tail_len)
        tlen, end = _SUFFIX.unpack(fh.read(tail_len))
        if end != END_MAGIC:
            raise _damaged("end", "end marker is missing: the file is truncated or its end damaged")
        trailer_start = size - tail_len - 2 * HASH_LEN - tlen
        if tlen > MAX_JSON or trailer_start < stream_offset + TAG_LEN:
            raise _damaged("trailer", "trailer length is damaged")
        fh.seek(trailer_start)
        trailer_bytes = fh.read(tlen)
        tsum = fh.read(HASH_LEN)
        tmac = fh.read(MAC_LEN)
        if sha256(trailer_bytes) != tsum:
            raise _damaged("trailer", "trailer is damaged (checksum mismatch)")
        try:
            trailer = json.loads(trailer_bytes)
        except ValueError:
            raise _damaged("trailer", "trailer is damaged (not JSON)") from None
        if not isinstance(trailer, dict) or not isinstance(trailer.get("tables"), dict):
            raise _damaged("trailer", "trailer is damaged or of an unknown layout")
    env = Envelope(
        path=path,
        size=size,
        header=header,
        header_bytes=header_bytes,
        header_hash=header_hash,
        header_mac=hmac_,
        trailer=cast(Trailer, trailer),
        trailer_bytes=trailer_bytes,
        trailer_mac=tmac,
        stream_offset=stream_offset,
        stream_len=trailer_start - stream_offset,
    )
    full = env.chunk_size + TAG_LEN
    if env.stream_len % full and env.stream_len % full <= TAG_LEN:
        raise _damaged("end", "chunk stream is cut short: the file is truncated or spliced")
    if env.chunk_count() > MAX_CHUNKS:
        raise _damaged("end", "chunk stream is longer than the format allows")
    return env


def authenticate(env: Envelope, keys: SnapshotKeys) -> None:
    """Check the header and trailer MACs and that the trailer describes this stream."""
    if not mac_equal(header_mac(keys, env.header_bytes), env.header_mac):
        raise SnapshotIntegrityError(
            "header", "the snapshot's header failed its authentication check"
        )
    if not mac_equal(trailer_mac(keys, env.header_hash, env.trailer_bytes), env.trailer_mac):
        raise SnapshotIntegrityError(
            "trailer", "the snapshot's trailer failed its authentication check"
        )
    t = env.trailer
    if t.get("snapshot_id") != env.header["snapshot_id"]:
        raise SnapshotIntegrityError("trailer", "the trailer belongs to another snapshot")
    if t.get("stream_bytes") != env.stream_len or t.get("chunks") != env.chunk_count():
        raise SnapshotIntegrityError(
            "end",
            "the chunk stream is not the length the trailer records: chunks were added, "
            "removed or the file was spliced",
        )
    names = [tb["name"] for tb in env.header["tables"]]
    if sorted(t["tables"]) != sorted(names):
        raise SnapshotIntegrityError("trailer", "the trailer's table list does not match")


# --- writing ---------------------------------------------------------------------


class _ChunkSink:
    """Compressed payload in, sealed fixed-size chunks out to the file."""

    def __init__(self, fh: IO[bytes], sealer: StreamSealer) -> None:
        self.fh = fh
        self.sealer = sealer
        self.buf = bytearray()
        self.stream_bytes = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.buf += data
        size = self.sealer.chunk_size
        while len(self.buf) > size:  # keep >= 1 byte back: the last chunk is never empty
            self._out(self.sealer.seal(bytes(self.buf[:size]), last=False))
            del self.buf[:size]

    def _out(self, sealed: bytes) -> None:
        self.fh.write(sealed)
        self.stream_bytes += len(sealed)

    def finish(self) -> None:
        self._out(self.sealer.seal(bytes(self.buf), last=True))
        self.buf = bytearray()


@dataclass
class TableResult:
    rows: int
    sha256: str
    bytes: int

    def to_dict(self) -> TableFacts:
        return {"rows": self.rows, "sha256": self.sha256, "bytes": self.bytes}


class TableWriter:
    """Takes one table's COPY output in pieces: frames and hashes it. The row count
    is the server's (COPY's command tag), not counted again here: walking every row
    in Python would make create CPU-bound (verify does walk them)."""

    def __init__(self, writer: SnapshotWriter) -> None:
        self._w = writer
        self._buf = bytearray()
        self._digest = new_digest()
        self.bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data
        while len(self._buf) >= BLOCK_SIZE:  # a 1 MB entry is one COPY row: cut it up
            self._emit(bytes(self._buf[:BLOCK_SIZE]))
            del self._buf[:BLOCK_SIZE]

    def _emit(self, block: bytes) -> None:
        self._digest.update(block)
        self.bytes += len(block)
        self._w._payload(_U32.pack(len(block)) + block)

    def close(self, rows: int) -> TableResult:
        """End the table; ``rows`` is what the server reported for its COPY."""
        if self._buf:
            self._emit(bytes(self._buf))
            self._buf = bytearray()
        self._w._payload(_U32.pack(0))
        return TableResult(rows, self._digest.hexdigest(), self.bytes)


class SnapshotWriter:
    """Writes one snapshot file: header now, tables in header order, trailer at the end.

    With ``pipeline`` (the default) compression, sealing and file writes run in a
    worker thread fed through a bounded queue (at most ``QUEUE_BLOCKS`` blocks of
    256 KiB in flight), so they overlap with reading COPY from PostgreSQL instead of
    adding to it; zstd, hashing and file I/O release the GIL. Call :meth:`finish`
    on success or :meth:`abort` on failure, so the worker always ends."""

    def __init__(
        self,
        fh: IO[bytes],
        header: Header,
        keys: SnapshotKeys,
        *,
        pipeline: bool = True,
    ) -> None:
        self.fh = fh
        self.header = _check_header(header)
        self.header_bytes = canonical_json(header)
        self.header_hash = sha256(self.header_bytes)
        self.keys = keys
        fh.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(self.header_bytes)))
        fh.write(self.header_bytes)
        fh.write(self.header_hash)
        fh.write(header_mac(keys, self.header_bytes))
        sealer = StreamSealer(
            keys.stream_key,
            unb64(header["nonce_prefix"], "nonce prefix", NONCE_PREFIX_LEN),
            self.header_hash,
            int(header["chunk_size"]),
        )
        self._sink = _ChunkSink(fh, sealer)
        self._zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
        self.payload_bytes = 0
        self.tables: dict[str, TableResult] = {}
        self._next = 0
        self._queue: queue.Queue[bytes | None] | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        if pipeline:
            self._queue = queue.Queue(maxsize=QUEUE_BLOCKS)
            self._thread = threading.Thread(
                target=self._work, name="sealedkb-snapshot-writer", daemon=True
            )
            self._thread.start()

    def _work(self) -> None:
        assert self._queue is not None
        try:
            while (item := self._queue.get()) is not None:
                self._sink.write(self._zstd.compress(item))
        except BaseException as exc:  # handed to the producer on its next call
            self._error = exc
            while self._queue.get() is not None:  # let the producer finish or abort
                pass

    def _raise_worker_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _payload(self, data: bytes) -> None:
        self.payload_bytes += len(data)
        if self._queue is None:
            self._sink.write(self._zstd.compress(data))
            return
        self._raise_worker_error()
        self._queue.put(data)

    def _stop_worker(self) -> None:
        if self._queue is not None and self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def abort(self) -> None:
        """Stop the worker after a failure (the caller discards the file)."""
        self._stop_worker()

    def table(self, name: str) -> TableWriter:
        """The writer of the next table; tables must come in header order."""
        expected = self.header["tables"][self._next]
        if expected["name"] != name:
            raise ValueError("tables must be written in header order")
        self._next += 1
        return TableWriter(self)

    def add_result(self, name: str, result: TableResult) -> None:
        self.tables[name] = result

    def finish(self, extra: Mapping[str, str] | None = None) -> Trailer:
        if self._next != len(self.header["tables"]) or len(self.tables) != self._next:
            raise ValueError("not every table was written")
        self._stop_worker()
        self._raise_worker_error()
        self._sink.write(self._zstd.flush())
        self._sink.finish()
        trailer: dict[str, Any] = {
            "snapshot_id": self.header["snapshot_id"],
            "chunks": self._sink.sealer.index,
            "stream_bytes": self._sink.stream_bytes,
            "payload_bytes": self.payload_bytes,
            "tables": {name: r.to_dict() for name, r in self.tables.items()},
            **(extra or {}),
        }
        tb = canonical_json(trailer)
        self.fh.write(tb)
        self.fh.write(sha256(tb))
        self.fh.write(trailer_mac(self.keys, self.header_hash, tb))
        self.fh.write(_SUFFIX.pack(len(tb), END_MAGIC))
        return cast(Trailer, trailer)


# --- reading ---------------------------------------------------------------------


class _DecryptedStream(io.RawIOBase):
    """The plaintext of the chunk stream, opened chunk by chunk as it is read."""

    def __init__(self, env: Envelope, keys: SnapshotKeys, fh: IO[bytes]) -> None:
        super().__init__()
        self.env = env
        self.fh = fh
        self.opener = StreamOpener(
            keys.stream_key,
            unb64(env.header["nonce_prefix"], "nonce prefix", NONCE_PREFIX_LEN),
            env.header_hash,
            env.chunk_size,
        )
        self.total = env.chunk_count()
        self.buf = memoryview(b"")
        self.chunks_opened = 0
        fh.seek(env.stream_offset)

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> bool:
        i = self.chunks_opened
        if i >= self.total:
            return False
        full = self.env.chunk_size + TAG_LEN
        start = i * full
        length = min(full, self.env.stream_len - start)
        data = self.fh.read(length)
        last = i == self.total - 1
        try:
            if len(data) != length:
                raise IntegrityError("short read")
            plain = self.opener.open(data, last=last)
        except IntegrityError:
            a = self.env.stream_offset + start
            raise SnapshotIntegrityError(
                f"chunk {i}",
                f"chunk {i} of {self.total} (bytes {a}-{a + length - 1}) failed its integrity "
                "check: the snapshot was altered, damaged, truncated or its chunks reordered",
            ) from None
        self.chunks_opened += 1
        self.buf = memoryview(plain)
        return True

    def readinto(self, b: Any) -> int:
        while not len(self.buf):
            if not self._next_chunk():
                return 0
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n

    def drain(self) -> int:
        """Open every chunk not read yet; returns how many plaintext bytes were left."""
        left = len(self.buf)
        self.buf = memoryview(b"")
        while self._next_chunk():
            left += len(self.buf)
            self.buf = memoryview(b"")
        return left


@dataclass
class TableCheck:
    name: str
    rows: int | None
    sha256: str
    bytes: int
    expected_rows: int | None
    expected_sha256: str | None

    @property
    def ok(self) -> bool:
        return self.rows == self.expected_rows and self.sha256 == self.expected_sha256


@dataclass
class TableStream:
    """One table's COPY data as it comes out of the payload, counted and hashed."""

    meta: TableMeta
    _reader: SnapshotReader
    _digest: Any = None
    _counter: Any = None
    _bytes: int = 0
    finished: bool = False
    check: TableCheck | None = field(default=None)

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    def blocks(self, *, count: bool = True) -> Iterator[bytes]:
        """The table's COPY output, block by block; afterwards :attr:`check` holds the
        recomputed digest (and, with ``count``, row count) next to the trailer's.
        A restore passes ``count=False``: the server counts the rows it loads."""
        self._digest = new_digest()
        self._counter = row_counter(self.meta["format"]) if count else None
        part = f"table {self.name}"
        while True:
            (length,) = _U32.unpack(self._reader._read_exact(4, part))
            if length == 0:
                break
            if length > MAX_BLOCK:
                raise SnapshotIntegrityError(part, f"table {self.name}: bad block length")
            block = self._reader._read_exact(length, part)
            self._digest.update(block)
            if self._counter is not None:
                try:
                    self._counter.feed(block)
                except CopyFormatError as exc:
                    raise SnapshotIntegrityError(part, f"table {self.name}: {exc}") from None
            self._bytes += length
            yield block
        rows = None
        if self._counter is not None:
            try:
                rows = self._counter.finish()
            except CopyFormatError as exc:
                raise SnapshotIntegrityError(part, f"table {self.name}: {exc}") from None
        # read from the file: a table or key may be missing (then the check fails)
        expected: Mapping[str, Any] = self._reader.env.trailer["tables"].get(self.name) or {}
        self.check = TableCheck(
            self.name,
            rows,
            self._digest.hexdigest(),
            self._bytes,
            expected.get("rows"),
            expected.get("sha256"),
        )
        self.finished = True

    def require_match(self, loaded_rows: int | None = None) -> TableCheck:
        """Raise unless the recomputed digest and count (walked here, or ``loaded_rows``
        as the server reported them) equal the manifest's."""
        assert self.check is not None
        c = self.check
        if loaded_rows is not None:
            c.rows = loaded_rows
        if c.rows is not None and c.rows != c.expected_rows:
            raise SnapshotIntegrityError(
                f"table {c.name}",
                f"table {c.name}: {c.rows} rows in the snapshot, the manifest says "
                f"{c.expected_rows}",
            )
        if c.sha256 != c.expected_sha256:
            raise SnapshotIntegrityError(
                f"table {c.name}", f"table {c.name}: digest does not match the manifest"
            )
        return c


class SnapshotReader:
    """Reads an authenticated snapshot's tables in order, streaming."""

    def __init__(self, env: Envelope, keys: SnapshotKeys) -> None:
        authenticate(env, keys)
        self.env = env
        self._fh = env.path.open("rb")
        self._plain = _DecryptedStream(env, keys, self._fh)
        self._zstd = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], self._plain), read_size=env.chunk_size
        )
        self._buf = bytearray()
        self.payload_bytes = 0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._zstd.close()  # type: ignore[no-untyped-call]
        self._fh.close()

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_exact(self, n: int, part: str) -> bytes:
        while len(self._buf) < n:
            try:
                more = self._zstd.read(max(n - len(self._buf), BLOCK_SIZE))
            except zstandard.ZstdError:
                raise SnapshotIntegrityError(
                    part, f"the compressed payload is damaged (while reading {part})"
                ) from None
            if not more:
                raise SnapshotIntegrityError(part, f"the payload ends early (in {part})")
            self._buf += more
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self.payload_bytes += n
        return out

    def tables(self) -> Iterator[TableStream]:
        """Each table in header order; consume its :meth:`TableStream.blocks` before the
        next. When the last table is done, the rest of the stream is checked."""
        for meta in self.env.header["tables"]:
            ts = TableStream(meta, self)
            yield ts
            if not ts.finished:
                for _ in ts.blocks():
                    pass
        self._finish()

    def _finish(self) -> None:
        try:
            extra = self._buf or self._zstd.read(1)
        except zstandard.ZstdError:
            raise SnapshotIntegrityError("payload", "the compressed payload is damaged") from None
        if extra:
            raise SnapshotIntegrityError("payload", "the payload has data after its last table")
        if self._plain.drain():
            raise SnapshotIntegrityError("payload", "the payload has data after its end")
        if self.payload_bytes != self.env.trailer.get("payload_bytes"):
            raise SnapshotIntegrityError(
                "payload", "the payload is not the size the manifest records"
            )


def new_header(
    *,
    snapshot_id: str,
    created_at: str,
    kind: str,
    name: str | None,
    kms_key_id: str,
    kms_key_version: int | None,
    wrapped_key: bytes,
    encryption_context: dict[str, str],
    salt: bytes,
    nonce_prefix: bytes,
    source: Mapping[str, Any],
    schema: SchemaFacts,
    tables: list[TableMeta],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    extra: Mapping[str, Any] | None = None,
) -> Header:
    header: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "snapshot_id": snapshot_id,
        "created_at": created_at,
        "kind": kind,
        "name": name,
        "kms_key_id": kms_key_id,
        "kms_key_version": kms_key_version,
        "wrapped_key": b64(wrapped_key),
        "encryption_context": encryption_context,
        "cipher": "AES-256-GCM STREAM",
        "salt": b64(salt),
        "nonce_prefix": b64(nonce_prefix),
        "chunk_size": chunk_size,
        "compression": "zstd",
        "source": source,
        "schema": schema,
        "tables": tables,
        **(extra or {}),
    }
    return cast(Header, header)
