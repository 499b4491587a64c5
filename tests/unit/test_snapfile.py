"""The snapshot container without a database (snapshots/fileformat.py): round trips of
synthetic COPY data, chunk-boundary cases, the writer thread's failure path, and
structural damage named by part."""

from __future__ import annotations

import errno
import io
import os
import random
from pathlib import Path
from typing import Any

import pytest

from sealedkb.crypto.stream import derive_keys, random_nonce_prefix, random_salt
from sealedkb.snapshots.fileformat import (
    BLOCK_SIZE,
    SnapshotIntegrityError,
    SnapshotReader,
    SnapshotWriter,
    new_header,
    read_envelope,
)
from sealedkb.store.copyfmt import encode_binary

CHUNK = 4096


def make_header(tables: list[dict[str, Any]], chunk_size: int = CHUNK) -> dict[str, Any]:
    return new_header(
        snapshot_id="snap-20250101-000000-0000abcd",
        created_at="2025-01-01T00:00:00Z",
        kind="manual",
        name=None,
        kms_key_id="local:key/00000000-0000-4000-8000-000000000000",
        kms_key_version=1,
        wrapped_key=b"\x01" * 66,
        encryption_context={
            "sealedkb:purpose": "snapshot",
            "sealedkb:snapshot_id": "snap-20250101-000000-0000abcd",
        },
        salt=random_salt(),
        nonce_prefix=random_nonce_prefix(),
        source={},
        schema={"version": 1, "migrations": [1]},
        tables=tables,
        chunk_size=chunk_size,
    )


def table(name: str, fmt: str = "binary") -> dict[str, Any]:
    return {
        "name": name,
        "format": fmt,
        "columns": [{"name": "a", "type": "bytea"}],
        "order_by": [],
    }


def write(
    path: Path, datas: dict[str, tuple[bytes, int]], *, pipeline: bool = True, **kw: Any
) -> Any:
    keys = derive_keys(os.urandom(32), random_salt())
    header = make_header([table(n, "text" if n.endswith("_t") else "binary") for n in datas], **kw)
    with path.open("wb") as fh:
        writer = SnapshotWriter(fh, header, keys, pipeline=pipeline)
        for name, (data, rows) in datas.items():
            tw = writer.table(name)
            for i in range(0, len(data), 7777):  # arbitrary piece sizes, as COPY gives
                tw.write(data[i : i + 7777])
            writer.add_result(name, tw.close(rows))
        writer.finish({"completed_at": "2025-01-01T00:00:01Z"})
    return keys


def read_all(path: Path, keys: Any) -> dict[str, bytes]:
    out = {}
    with SnapshotReader(read_envelope(path), keys) as reader:
        for ts in reader.tables():
            out[ts.name] = b"".join(ts.blocks())
            ts.require_match()
    return out


def rows_of(n: int, size: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    return encode_binary([[rng.randbytes(size)] for _ in range(n)])


@pytest.mark.parametrize("pipeline", [True, False])
def test_round_trip(tmp_path: Path, pipeline: bool) -> None:
    datas = {
        "kb_a": (rows_of(300, 500), 300),
        "kb_b": (rows_of(0, 1), 0),
        "kb_c_t": (b"1\tx\n2\ty\n", 2),  # text format
        "kb_d": (rows_of(2, BLOCK_SIZE + 10), 2),  # rows larger than a block
    }
    path = tmp_path / "s.snap"
    keys = write(path, datas, pipeline=pipeline)
    env = read_envelope(path)
    assert env.chunk_count() > 100
    assert read_all(path, keys) == {n: d for n, (d, _) in datas.items()}


def test_stream_of_exactly_whole_chunks(tmp_path: Path) -> None:
    """Whatever the compressed size, the last chunk is never empty; try many sizes so
    that one lands on a chunk boundary."""
    for n in range(1, 40):
        path = tmp_path / f"s{n}.snap"
        data = os.urandom(n * 997)  # incompressible: the stream size follows n closely
        keys = write(path, {"kb_x_t": (data.hex().encode() + b"\n", 1)})
        assert read_all(path, keys)["kb_x_t"] == data.hex().encode() + b"\n"


class FullDisk(io.RawIOBase):
    def __init__(self, room: int) -> None:
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return len(b)


def test_writer_thread_failure_reaches_the_caller() -> None:
    keys = derive_keys(os.urandom(32), random_salt())
    writer = SnapshotWriter(FullDisk(50_000), make_header([table("kb_a")]), keys)  # type: ignore[arg-type]
    tw = writer.table("kb_a")
    with pytest.raises(OSError, match="No space"):
        for _ in range(200):
            tw.write(os.urandom(BLOCK_SIZE))
        writer.add_result("kb_a", tw.close(0))
        writer.finish()
    writer.abort()  # idempotent, and the worker is gone
    assert writer._thread is not None and not writer._thread.is_alive()


def test_structural_damage_is_named(tmp_path: Path) -> None:
    path = tmp_path / "s.snap"
    write(path, {"kb_a": (rows_of(50, 300), 50)})
    good = path.read_bytes()
    cases = {
        b"": "not a sealedkb snapshot",
        good[:5]: "not a sealedkb snapshot",
        b"\x00" + good[1:]: "not a sealedkb snapshot",
        good[:8] + b"\x02" + good[9:]: "format version 2",
        good[:-1]: "end marker",
        good + b"\x00": "end marker",
    }
    for data, message in cases.items():
        path.write_bytes(data)
        with pytest.raises(SnapshotIntegrityError, match=message):
            read_envelope(path)
