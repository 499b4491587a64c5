"""Verifying a snapshot: the whole file read, every chunk opened, every table's row
count and digest checked against the authenticated manifest. Restores nothing."""

from __future__ import annotations

import time
from typing import Any

from sealedkb.crypto.stream import SnapshotKeys
from sealedkb.errors import SealedKBError
from sealedkb.snapshots.base import VERIFY, SnapshotContext
from sealedkb.snapshots.fileformat import Envelope, SnapshotReader, read_envelope
from sealedkb.snapshots.results import TableReport, VerifyReport
from sealedkb.snapshots.store import SnapshotStorageError, snapshot_id_of


def check_stream(env: Envelope, keys: SnapshotKeys) -> dict[str, TableReport]:
    """Every chunk opened and every table counted and hashed against the manifest;
    SnapshotIntegrityError names the first bad part."""
    tables: dict[str, TableReport] = {}
    with SnapshotReader(env, keys) as reader:
        for ts in reader.tables():
            for _ in ts.blocks():
                pass
            check = ts.require_match()
            tables[ts.name] = {"rows": check.rows, "sha256": check.sha256, "ok": True}
    return tables


def verify(ctx: SnapshotContext, ref: str) -> VerifyReport:
    """Read the whole file: every chunk, every table's row count and digest.
    Raises SnapshotIntegrityError (exit 6) naming the bad part."""
    path = ctx.folder.resolve(ref)
    sid = snapshot_id_of(path)
    details: dict[str, Any] = {"snapshot_id": sid, "kind": None}
    key_uri: str | None = None
    started = time.perf_counter()
    try:
        env = read_envelope(path)
        details["kind"] = env.header["kind"]
        key_uri = env.header["kms_key_id"]
        keys = ctx.unwrap(env)  # a KMS call: latency, not throughput
        read_started = time.perf_counter()
        tables = check_stream(env, keys)
    except SealedKBError as exc:
        ctx.record_error(VERIFY, exc, key_uri, details)
        raise
    except OSError as exc:
        err = SnapshotStorageError(f"cannot read {path}: {exc.strerror}")
        ctx.record_error(VERIFY, err, key_uri, details)
        raise err from None
    done = time.perf_counter()
    reading = done - read_started
    assert key_uri is not None
    report: VerifyReport = {
        "ok": True,
        "chunks": env.chunk_count(),
        "tables": tables,
        "id": sid,
        "kind": env.header["kind"],
        "kms_key_id": key_uri,
        "size_bytes": env.size,
        "seconds": round(done - started, 3),
        "read_seconds": round(reading, 3),
        # throughput of reading and checking the file (after the key unwrap)
        "mb_per_s": round(env.size / 1e6 / reading, 1) if reading > 0 else None,
    }
    ctx.record(VERIFY, key_uri, {**details, "chunks": report["chunks"]})
    return report
