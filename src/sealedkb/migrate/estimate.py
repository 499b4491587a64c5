"""How long a migration will take (``migrate plan``): the sealing cost measured on a
sample of the source with a throwaway keyring, plus the database's share at rates
calibrated by bench/bench_migrate.py (docs/PERFORMANCE.md)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import Connection
from psycopg.rows import TupleRow

from sealedkb.config import Settings
from sealedkb.migrate.reports import Estimate
from sealedkb.migrate.sealing import RowSealer, as_vector, scratch_keyring
from sealedkb.migrate.source import SourceEntry
from sealedkb.store import migration_sql as msql


def measure_in_place(settings: Settings, sample: list[tuple[Any, ...]]) -> float:
    """Seconds to seal one plaintext row (msql.PLAIN_COLS), measured on ``sample``."""
    if not sample:
        return 0.0
    with scratch_keyring() as ring:
        sealer = RowSealer.offline(settings, ring)
        # The first row pays one-time costs (the vector key's rotation matrix: ~0.5 s
        # for 384 dimensions) that would dominate a 200-row sample: not timed per row.
        sealer.seal_plain_rows(sample[:1])
        rest = sample[1:] or sample
        start = time.perf_counter()
        sealer.seal_plain_rows(rest)
        return (time.perf_counter() - start) / len(rest)


def measure_foreign(settings: Settings, entries: list[SourceEntry], model: str | None) -> float:
    """Seconds to seal one mapped foreign row, measured on ``entries``."""
    if not entries:
        return 0.0
    with scratch_keyring() as ring:
        sealer = RowSealer.offline(settings, ring)
        sealer.seal_foreign(entries[:1], "plan", model)  # one-time costs
        rest = entries[1:] or entries
        start = time.perf_counter()
        sealer.seal_foreign(rest, "plan", model)
        return (time.perf_counter() - start) / max(len(rest), 1)


def index_facts(
    conn: Connection[TupleRow], rows: int, sample: Sequence[tuple[Any, ...]]
) -> dict[str, int]:
    """What the index builds of an in-place migration depend on: how many rows carry
    a vector (estimated from the sample), its dimension, and maintenance_work_mem
    (an HNSW build slows down several times once its graph outgrows it)."""
    with_vec = [r[14] for r in sample if r[14] is not None]
    first = as_vector(with_vec[0]) if with_vec else None
    dim = len(first) if first is not None else 0
    mem = conn.execute(
        "SELECT setting::bigint * 1024 FROM pg_settings WHERE name = 'maintenance_work_mem'"
    ).fetchone()
    server = int(mem[0]) if mem else 64 << 20
    return {
        "vector_rows": round(rows * len(with_vec) / len(sample)) if sample else 0,
        "vector_dim": dim,
        # the index build raises it for its own transaction (store/migration_sql.py)
        "maintenance_work_mem": max(server, msql.INDEX_BUILD_MEMORY_BYTES),
    }


def hnsw_seconds(db: Mapping[str, int]) -> float:
    """One HNSW build over the sealed vectors: rows whose graph fits in
    maintenance_work_mem are cheap, the rest are inserted into an on-disk graph."""
    n = db.get("vector_rows", 0)
    dim = db.get("vector_dim", 0)
    if not n or not dim:
        return 0.0
    fit = db.get("maintenance_work_mem", 64 << 20) // (4 * dim + HNSW_ELEMENT_OVERHEAD)
    return min(n, fit) * HNSW_S_PER_ROW + max(0, n - fit) * HNSW_SPILL_S_PER_ROW


def estimate(
    rows: int, size: int, per_row: float, *, in_place: bool, db: Mapping[str, int] | None = None
) -> Estimate:
    """Duration from the measured sealing cost per row plus the database's share
    (writes, index build, snapshot, scrub), whose rates were calibrated by
    bench/bench_migrate.py on this kind of machine (docs/PERFORMANCE.md). In place,
    the secondary indexes are built once on the sealed table; ``db`` (from
    :func:`index_facts`) sizes their HNSW part."""
    write = rows * WRITE_S_PER_ROW
    index = rows * INDEX_S_PER_ROW + (hnsw_seconds(db) if db else rows * HNSW_S_PER_ROW)
    snapshot = size / SNAPSHOT_BYTES_PER_S + 0.5
    scrub = (size / SCRUB_BYTES_PER_S + SCRUB_FIXED_S) if in_place else 0.0
    seal = rows * per_row + 0.3  # + one-time key setup
    # catch-up from the change log, and the VACUUM of both tables before the switch
    other = (0.2 + size / VACUUM_BYTES_PER_S) if in_place else 0.2
    total = seal + write + index + snapshot + scrub + other
    # The last changes, sealed under the lock, and the row counts (index-only scans).
    switch = 0.02 + 20 * (per_row + WRITE_S_PER_ROW) + rows * SWITCH_S_PER_ROW
    return {
        "estimate_seconds": round(total, 1),
        "estimate_breakdown_seconds": {
            "snapshot": round(snapshot, 1),
            "seal": round(seal, 1),
            "write": round(write, 1),
            "indexes": round(index, 1),
            "catch-up+switch": round(other, 1),
            "scrub": round(scrub, 1),
        },
        "expected_downtime_ms": round(switch * 1000) if in_place else 0,
        "downtime_note": (
            "reads and writes go on during the copy; writes pause only for the final switch"
            if in_place
            else "the source is only read; this knowledge base stays online"
        ),
    }


# Rates of the database's share, from bench/bench_migrate.py on 2 shared cores,
# embedded PostgreSQL 18 with durable defaults (see PERFORMANCE.md, the migration runs).
WRITE_S_PER_ROW = 0.0003  # shadow upsert + digest row, 500 per transaction
INDEX_S_PER_ROW = 0.00012  # B-tree and GIN indexes of one row
HNSW_S_PER_ROW = 0.0003  # HNSW build, graph within maintenance_work_mem
HNSW_SPILL_S_PER_ROW = 0.0029  # HNSW build, rows beyond it
HNSW_ELEMENT_OVERHEAD = 600  # bytes of graph per element besides the vector (m = 16)
SNAPSHOT_BYTES_PER_S = 200e6  # of pg_total_relation_size
SCRUB_BYTES_PER_S = 70e6  # VACUUM FULL's table rewrite and the checkpoints
SCRUB_FIXED_S = 0.5  # the other tables, pg_statistic, 3 WAL switches and checkpoints
VACUUM_BYTES_PER_S = 150e6  # VACUUM of both tables before the switch
SWITCH_S_PER_ROW = 0.0000002  # under the lock: the row counts (index-only scans)


def steps(in_place: bool) -> list[str]:
    if in_place:
        return [
            "create a keystore and a KMS key; guard the plaintext knowledge base so it keeps "
            "opening beside the new keystore",
            "take an encrypted snapshot of the database (the rollback point)",
            "seal every entry in batches into a shadow table (reads and writes go on; "
            "each batch is a checkpoint, a rerun resumes)",
            "build the search indexes on the sealed table, seal rows changed meanwhile",
            "switch: pause writes, seal the last changes, swap the tables, mark the knowledge "
            "base encrypted (one transaction)",
            "scrub: rewrite the tables and the statistics catalog, switch and delete old WAL",
        ]
    return [
        "check the mapping against the source table (read-only connection)",
        "take an encrypted snapshot of this knowledge base (the rollback point)",
        "map, validate and seal the source rows in batches (re-embedding when the source "
        "has no vectors of this model); each batch is a checkpoint, a rerun resumes",
        "record a keyed digest of every source row for 'migrate verify'",
    ]
