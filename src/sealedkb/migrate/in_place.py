"""In place: a sealedkb initialised with ``--encryption off`` becomes encrypted, online
and resumable (runbook: docs/ENCRYPTION-KEY-MANAGEMENT.md §25).

1. a keystore and a KMS key are created, and a *guard* (guard.py) lets the plaintext
   knowledge base keep opening beside the new keystore while the migration runs;
2. an encrypted snapshot of the whole database is taken: the rollback point;
3. rows are sealed in batches into a shadow table (``sealedkb_mig_entries``) while
   the plaintext table keeps serving reads and writes; each batch commits with
   its checkpoint (kb_meta ``migration``), so a killed run resumes where it
   stopped, and the upserts are idempotent;
4. rows written meanwhile are caught up (from a change log filled by a trigger);
5. the switch: writers are paused (``LOCK ... EXCLUSIVE``, reads go on), the last
   changes are sealed, the shadow replaces ``kb_entries``, kb_meta says
   ``encryption on`` and the guard is removed — one transaction, timed (the downtime);
6. scrub: every sealedkb table and pg_statistic are rewritten (VACUUM FULL), WAL is
   switched and old segments deleted rather than recycled, so no plaintext copy
   is left in the data directory.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import Connection
from psycopg.rows import TupleRow

from sealedkb.config import Settings
from sealedkb.errors import (
    ConflictError,
    IntegrityError,
    NotInitializedError,
    SealedKBError,
    ValidationError,
)
from sealedkb.kb.wiring import DatabaseTarget, key_provider, resolve_database
from sealedkb.keys.provider import KeyProvider, keystore_of
from sealedkb.migrate.common import ProgressFn, connect_vectors, now_iso
from sealedkb.migrate.estimate import estimate, index_facts, measure_in_place, steps
from sealedkb.migrate.guard import (
    COMPLETE,
    COPYING,
    GUARD,
    PREPARING,
    ROLLED_BACK,
    SWITCHED,
    disarm_guard,
    get_meta,
    guard_is_armed,
    new_guard,
    put_guard,
    read_marker,
    set_meta,
    write_marker,
)
from sealedkb.migrate.host import KnowledgeBases, OpenKnowledgeBase
from sealedkb.migrate.reports import Marker, PlanReport, RunReport, ScrubSummary, run_report
from sealedkb.migrate.sealing import RowSealer, Sealed
from sealedkb.model import EncryptionMode
from sealedkb.store import migration_sql as msql
from sealedkb.store.db import Database, lock_schema, mapped_errors

CATCH_UP_ROUNDS = 20
SWITCH_LOCK_TIMEOUT_MS = 10_000


def require_in_place_source(mode: str | None, marker: Marker | None) -> None:
    """An in-place migration needs a plaintext knowledge base, or one it is resuming."""
    if mode is None:
        raise NotInitializedError("the database has no knowledge base; nothing to migrate")
    if mode == EncryptionMode.ON.value and not resumable(marker):
        raise ValidationError(
            "this knowledge base is already encrypted: nothing to migrate in place",
            field="encryption",
        )


def resumable(marker: Marker | None) -> bool:
    return marker is not None and marker.get("state") in (PREPARING, COPYING, SWITCHED)


class InPlaceMigration:
    """The in-place migration of the knowledge base at ``settings``."""

    def __init__(
        self,
        settings: Settings,
        *,
        host: KnowledgeBases,
        batch: int,
        progress: ProgressFn,
        sample_size: int,
    ) -> None:
        self.settings = settings
        self.host = host
        self.batch = batch
        self.progress = progress
        self.sample_size = sample_size

    def _target(self) -> DatabaseTarget:
        return resolve_database(self.settings, create=False)

    # --- plan ------------------------------------------------------------------------

    def plan(self) -> PlanReport:
        """Inspect the plaintext table, measure sealing on a sample, estimate."""
        target = self._target()
        with connect_vectors(self.settings, target.url) as conn:
            marker = read_marker(conn)
            require_in_place_source(get_meta(conn, "encryption"), marker)
            rows, plain, size = msql.source_stats(conn)
            sample = msql.plain_rows_after(conn, None, min(self.sample_size, max(rows, 1)))
            db = index_facts(conn, rows, sample)
        per_row = measure_in_place(self.settings, sample)
        est = estimate(rows, size, per_row, in_place=True, db=db)
        return {
            "kind": "in-place",
            "source": {"database": target.kind, "table": "kb_entries"},
            "rows": rows,
            "plaintext_rows": plain,
            "bytes": size,
            "resume": marker if resumable(marker) else None,
            "sample_rows": len(sample),
            "seal_ms_per_row": round(per_row * 1000, 3),
            "estimate_seconds": est["estimate_seconds"],
            "estimate_breakdown_seconds": est["estimate_breakdown_seconds"],
            "expected_downtime_ms": est["expected_downtime_ms"],
            "downtime_note": est["downtime_note"],
            "steps": steps(True),
            "rollback_point": (
                "an encrypted snapshot of the whole database, taken first; "
                "'sealedkb migrate rollback' restores it until the snapshot is deleted"
            ),
        }

    # --- run -----------------------------------------------------------------------------

    def run(self) -> RunReport:
        started = time.perf_counter()
        target = self._target()
        db = Database(target.url, max_size=4, allow_insecure=self.settings.database_allow_insecure)
        try:
            with db.transaction("migration") as conn:
                mode = get_meta(conn, "encryption")
                marker = read_marker(conn)
            require_in_place_source(mode, marker)
            provider = key_provider(self.settings)
            if (
                marker is None
                or marker.get("state") in (ROLLED_BACK, COMPLETE)
                or (marker.get("kind") != "in-place")
            ):
                marker = self._prepare(db, provider)
            elif mode == EncryptionMode.OFF.value and marker.get("state") in (PREPARING, COPYING):
                self._rearm_guard(db, provider, marker)
            key_uri = str(marker["key_uri"])
            if marker["state"] == PREPARING:
                marker = self._take_rollback_point(db, target, marker)
            kb = self.host.attach(self.settings, target, db, provider, key_uri)
            if marker["state"] == COPYING:
                self._copy(kb, marker)
                marker = self._switch(kb, marker)
            if marker["state"] == SWITCHED:
                marker = self._scrub(db, target, marker)
            kb.audit.record(
                "MigrateComplete",
                key_uri=key_uri,
                details={"kind": "in-place", "entries": marker.get("rows_copied")},
            )
            if kb.audit.appended:
                kb.audit.checkpoint_quietly()
            return run_report(marker, time.perf_counter() - started)
        finally:
            db.close()

    def _prepare(self, db: Database, provider: KeyProvider) -> Marker:
        """Keystore, KMS key and guard (one transaction for the kb_meta part)."""
        keystore = keystore_of(provider)
        if keystore is not None and not keystore.exists():
            keystore.initialize()
        key = provider.create_key("sealedkb knowledge base key (migrated from plaintext)")
        with db.transaction("migration") as conn:
            kb_id = get_meta(conn, "kb_id") or str(uuid.uuid4())
            set_meta(conn, "kb_id", kb_id)
            guard = new_guard(provider, key.key_id, kb_id)
            put_guard(conn, guard)
            marker: Marker = {
                "version": 1,
                "kind": "in-place",
                "state": PREPARING,
                "key_uri": key.key_id,
                "started_at": now_iso(),
                "after": None,
                "rows_copied": 0,
            }
            write_marker(conn, marker)
        guard.arm(self.settings)
        return marker

    def _rearm_guard(self, db: Database, provider: KeyProvider, marker: Marker) -> None:
        """A resumed run whose guard no longer counts (a switch whose commit failed after
        the guard was removed): a fresh one, so the plaintext knowledge base opens again
        while the copy goes on. Never over a table that holds sealed rows: that is an
        encrypted knowledge base whose kb_meta was rewritten, not a plaintext one."""
        with db.transaction("migration") as conn:
            if guard_is_armed(self.settings, get_meta(conn, GUARD)):
                return
            if msql.has_sealed_rows(conn):
                raise IntegrityError(
                    "the database says encryption is off, but kb_entries holds sealed "
                    "entries; refusing to resume the migration (check kb_meta)"
                )
            kb_id = get_meta(conn, "kb_id") or str(uuid.uuid4())
            set_meta(conn, "kb_id", kb_id)
            guard = new_guard(provider, str(marker["key_uri"]), kb_id)
            put_guard(conn, guard)
        guard.arm(self.settings)

    def _take_rollback_point(self, db: Database, target: DatabaseTarget, marker: Marker) -> Marker:

        plain = self.host.attach(self.settings, target, db, None, None)
        self.progress("snapshot", 0, 1)
        info = self.host.snapshots(self.settings, plain).create_rollback_point(
            str(marker["key_uri"]), name=f"pre-migration {marker['started_at'][:19]}"
        )
        self.progress("snapshot", 1, 1)
        marker = {**marker, "state": COPYING, "rollback_snapshot": info.id}
        with db.transaction("migration") as conn:
            write_marker(conn, marker)
        return marker

    def _copy(self, kb: OpenKnowledgeBase, marker: Marker) -> None:
        assert kb.keyring is not None
        sealer = RowSealer.of(kb)
        with kb.db.transaction("migration") as conn:
            msql.create_shadow(conn)
            msql.install_change_log(conn)  # before the first row is read
            total = msql.source_stats(conn)[0]
        after = uuid.UUID(marker["after"]) if marker.get("after") else None
        done = int(marker.get("rows_copied") or 0)
        # 1. bulk copy in id order, checkpointed per batch
        while not marker.get("bulk_done"):
            with kb.db.transaction("migration") as conn:
                rows = msql.plain_rows_after(conn, after, self.batch)
            if not rows:
                marker["bulk_done"] = True
                with kb.db.transaction("migration") as conn:
                    write_marker(conn, marker)
                break
            sealed = sealer.seal_plain_rows(rows)
            after = rows[-1][0]
            done += len(rows)
            marker["after"] = str(after)
            marker["rows_copied"] = done
            with kb.db.transaction("migration") as conn:
                _write_shadow(conn, sealed)
                write_marker(conn, marker)
            self.progress("copy", done, total)
        # 2. catch up rows written meanwhile, then build the indexes once
        self._catch_up(kb, sealer)
        if not marker.get("indexes_built"):
            self.progress("indexes", 0, 1)
            for _attempt in range(3):
                try:
                    with kb.db.transaction("migration") as conn:
                        msql.build_shadow_indexes(conn)
                    break
                except SealedKBError:
                    self._catch_up(kb, sealer)  # a duplicate written meanwhile
            else:
                raise ConflictError("could not build the indexes of the encrypted table")
            marker["indexes_built"] = True
            with kb.db.transaction("migration") as conn:
                write_marker(conn, marker)
            self.progress("indexes", 1, 1)
        self._catch_up(kb, sealer)

    def _catch_up(
        self, kb: OpenKnowledgeBase, sealer: RowSealer, conn: Connection[TupleRow] | None = None
    ) -> int:
        """Re-seal the rows written since their copy, from the change log. Outside the
        switch (``conn`` None) a few rounds, stopping once a round finds only a handful
        (the switch takes the rest); inside it, until the log is empty (writers wait)."""
        fixed = 0
        rounds = 0
        while conn is not None or rounds < CATCH_UP_ROUNDS:
            rounds += 1
            with _in(kb, conn) as c:
                changes = msql.pending_changes(c, self.batch)
                ids = sorted({i for _, i in changes})
                rows = msql.plain_rows_by_id(c, ids) if ids else []
            if not changes:
                return fixed
            gone = sorted(set(ids) - {r[0] for r in rows})
            sealed = sealer.seal_plain_rows(rows)
            with _in(kb, conn) as c:
                _apply_catch_up(c, sealed, gone)
                msql.forget_changes(c, [seq for seq, _ in changes])
            fixed += len(ids)
            self.progress("catch-up", fixed, fixed)
            if conn is None and len(changes) < 20:
                return fixed
        return fixed

    def _switch(self, kb: OpenKnowledgeBase, marker: Marker) -> Marker:
        """Pause writers, seal the last changes, swap the tables, flip the mode, remove
        the guard: one transaction. Readers keep reading the plaintext table until the
        commit."""
        assert kb.keyring is not None and kb.kms_key_uri is not None
        sealer = RowSealer.of(kb)
        self.progress("switch", 0, 1)
        # Outside the lock: visibility maps set, so the row counts under it are cheap
        # index-only scans; statistics for the planner once the table is live.
        with mapped_errors("migration"), connect_vectors(self.settings, kb.db.url) as conn:
            conn.execute(f"VACUUM (ANALYZE) {msql.SHADOW}")
            conn.execute(f"VACUUM {msql.ENTRIES}")
        with kb.db.transaction("migration switch") as conn:
            conn.execute(f"SET LOCAL lock_timeout = {SWITCH_LOCK_TIMEOUT_MS}")
            locked_at = time.perf_counter()
            lock_schema(conn)  # a schema change: openers wait rather than deadlock
            conn.execute("LOCK TABLE kb_entries IN EXCLUSIVE MODE")
            last = self._catch_up(kb, sealer, conn)
            rows = msql.count_rows(conn, msql.ENTRIES)
            if msql.count_rows(conn, msql.SHADOW) != rows:
                raise ConflictError(
                    "the encrypted copy does not hold every row; run 'sealedkb migrate run' again"
                )
            msql.swap_in_shadow(conn)
            msql.drop_working_tables(conn, keep_rows=True)  # change log and its trigger
            set_meta(conn, "encryption", EncryptionMode.ON.value)
            set_meta(conn, "kms_key_uri", kb.kms_key_uri)
            downtime = time.perf_counter() - locked_at
            marker = {
                **marker,
                "state": SWITCHED,
                "switched_at": now_iso(),
                "rows": rows,
                "switch_rows_caught_up": last,
                "downtime_ms": round(downtime * 1000, 1),
            }
            write_marker(conn, marker)
            kb.audit.append(
                conn,
                "MigrateSwitch",
                key_uri=kb.kms_key_uri,
                details={
                    "kind": "in-place",
                    "entries": rows,
                    "downtime_ms": round(downtime * 1000),
                },
            )
            # Last, just before the commit: the guard no longer opens anything.
            disarm_guard(conn, self.settings)
        self.progress("switch", 1, 1)
        return marker

    def _scrub(self, db: Database, target: DatabaseTarget, marker: Marker) -> Marker:
        disarm_guard(None, self.settings)  # a resumed run: the switch already removed it
        self.progress("scrub", 0, 1)
        with connect_vectors(self.settings, target.url) as conn:
            report = msql.scrub(conn)
        scrub: ScrubSummary = {
            "vacuumed": report.vacuumed,
            "checkpoints": report.checkpoints,
            "wal_switches": report.wal_switches,
            "wal_recycle_off": report.wal_recycle_off,
            "notes": report.notes,
        }
        marker = {**marker, "state": COMPLETE, "finished_at": now_iso(), "scrub": scrub}
        with db.transaction("migration") as conn:
            write_marker(conn, marker)
        self.progress("scrub", 1, 1)
        return marker


def _write_shadow(conn: Connection[TupleRow], sealed: list[Sealed]) -> None:
    with conn.cursor() as cur:
        cur.executemany(msql.UPSERT_SHADOW, [s.values for s in sealed])
    msql.record_digests(conn, [s.digest for s in sealed])


@contextmanager
def _in(kb: OpenKnowledgeBase, conn: Connection[TupleRow] | None) -> Iterator[Connection[TupleRow]]:
    """The switch's transaction when given, else a transaction of its own."""
    if conn is not None:
        yield conn
        return
    with kb.db.transaction("migration") as c:
        yield c


def _apply_catch_up(
    conn: Connection[TupleRow], sealed: list[Sealed], gone: list[uuid.UUID]
) -> None:
    if gone:
        msql.delete_shadow_rows(conn, gone)
    if not sealed:
        return
    try:
        with conn.transaction():
            _write_shadow(conn, sealed)
    except psycopg.errors.UniqueViolation:
        # Two live rows with one fingerprint, transiently (a row deleted and its text
        # re-added meanwhile): write one at a time, the stale one first goes away.
        for s in sealed:
            try:
                with conn.transaction():
                    _write_shadow(conn, [s])
            except psycopg.errors.UniqueViolation:
                fp = msql.WRITE_COLS.index("fingerprint")
                s.values[fp] = None
                with conn.transaction():
                    _write_shadow(conn, [s])
