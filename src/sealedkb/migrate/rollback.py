"""``migrate rollback``: back to the state before the migration. Before the switch (in
place) the encrypted copy is dropped, the plaintext table never changed. After it, or
for a foreign migration, the rollback snapshot is restored over the database in one
transaction (the audit trail is kept, not rewound); readers meanwhile get
MIGRATION_IN_PROGRESS or a database error, never wrong data. Possible only while the
rollback snapshot exists."""

from __future__ import annotations

import time
import uuid

from psycopg import Connection
from psycopg.rows import TupleRow

from sealedkb.config import Settings
from sealedkb.errors import NotFoundError
from sealedkb.kb.wiring import key_provider, resolve_database
from sealedkb.migrate.common import connect_vectors, now_iso
from sealedkb.migrate.guard import (
    COPYING,
    PREPARING,
    ROLLED_BACK,
    ROLLING_BACK,
    Guard,
    get_meta,
    new_guard,
    put_guard,
    read_marker,
    set_meta,
    write_marker,
)
from sealedkb.migrate.host import KnowledgeBases
from sealedkb.migrate.reports import Marker, RollbackReport
from sealedkb.store import migration_sql as msql
from sealedkb.store.db import mapped_errors


def rollback(host: KnowledgeBases, settings: Settings) -> RollbackReport:

    started = time.perf_counter()
    target = resolve_database(settings, create=False)
    with mapped_errors("migration rollback"), connect_vectors(settings, target.url) as conn:
        marker = read_marker(conn)
        if marker is None or marker.get("state") == ROLLED_BACK:
            raise NotFoundError("no migration to roll back", field="migration")
        sid = marker.get("rollback_snapshot")
        if marker["kind"] == "in-place" and marker["state"] in (PREPARING, COPYING):
            # The guard stays: the plaintext knowledge base keeps opening.
            with conn.transaction():
                msql.drop_working_tables(conn)
                write_marker(conn, _rolled_back(marker))
            return {
                "kind": marker["kind"],
                "restored_snapshot": None,
                "state": ROLLED_BACK,
                "seconds": round(time.perf_counter() - started, 2),
                "note": "the switch had not happened: the plaintext table was never changed",
            }
        if not sid:
            raise NotFoundError("the migration has no rollback snapshot", field="migration")
        kb = host.open(settings)  # records the restore in its audit trail
    guards: list[Guard] = []

    def after_load(c: Connection[TupleRow]) -> None:
        """Inside the restore transaction: record the rollback in the restored kb_meta;
        an in-place one is plaintext again, beside the keystore: a fresh guard."""
        msql.drop_working_tables(c)
        write_marker(c, _rolled_back(marker))
        if marker["kind"] == "in-place" and marker.get("key_uri"):
            kb_id = get_meta(c, "kb_id") or str(uuid.uuid4())
            set_meta(c, "kb_id", kb_id)
            guard = new_guard(key_provider(settings), str(marker["key_uri"]), kb_id)
            put_guard(c, guard)
            guards.append(guard)

    try:
        snaps = host.snapshots(settings, kb)
        snaps.resolve(sid)  # NotFoundError if it was deleted: rollback is no longer possible
        with mapped_errors("migration rollback"), connect_vectors(settings, target.url) as conn:
            write_marker(conn, {**marker, "state": ROLLING_BACK})
        try:
            result = snaps.restore_over(sid, target.url, after_load=after_load)
        except BaseException:
            with mapped_errors("migration rollback"), connect_vectors(settings, target.url) as conn:
                write_marker(conn, marker)  # the restore rolled back: state as before
            raise
        for guard in guards:  # committed: the guard counts from now on
            guard.arm(settings)
        kb.audit.record(
            "MigrateRollback",
            key_uri=marker.get("key_uri"),
            details={"kind": str(marker["kind"]), "snapshot_id": str(sid)},
        )
    finally:
        kb.close()
    return {
        "kind": marker["kind"],
        "restored_snapshot": sid,
        "state": ROLLED_BACK,
        "row_counts": result["row_counts"],
        "seconds": round(time.perf_counter() - started, 2),
    }


def _rolled_back(marker: Marker) -> Marker:
    return {**marker, "state": ROLLED_BACK, "rolled_back_at": now_iso()}
