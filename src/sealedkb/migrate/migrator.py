"""``sealedkb migrate``: plaintext knowledge base -> encrypted, online, resumable,
verifiable, with a rollback point (runbook: docs/ENCRYPTION-KEY-MANAGEMENT.md §25).

In place (a sealedkb initialised with ``--encryption off``):

1. a keystore and a KMS key are created, and a *guard* (kb_meta
   ``migration_guard``, MACed under the keystore) lets the plaintext knowledge
   base keep opening beside the new keystore while the migration runs;
2. an encrypted snapshot of the whole database is taken: the rollback point;
3. rows are sealed in batches into a shadow table (``sealedkb_mig_entries``) while
   the plaintext table keeps serving reads and writes; each batch commits with
   its checkpoint (kb_meta ``migration``), so a killed run resumes where it
   stopped, and the upserts are idempotent;
4. rows written meanwhile are caught up (diff on version/updated_at/deleted_at...);
5. the switch: writers are paused (``LOCK ... EXCLUSIVE``, reads go on), the last
   changes are sealed, the shadow replaces ``kb_entries`` and kb_meta says
   ``encryption on`` — one transaction, timed (the downtime);
6. scrub: every sealedkb table and pg_statistic are rewritten (VACUUM FULL), WAL is
   switched and old segments deleted rather than recycled, so no plaintext copy
   is left in the data directory.

Foreign (``--from URL --table T --map ...``): rows of another server's table are
mapped, validated and sealed into this (encrypted) knowledge base under
deterministic ids; the source is opened read-only and never changed.

Every migrated row gets a keyed digest of its source form (``sealedkb_mig_rows``);
``verify`` opens every entry and compares. ``rollback`` before the switch drops
the shadow; after it, it restores the rollback snapshot over the database in one
transaction (the audit trail is kept, not rewound).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import Connection
from psycopg.rows import TupleRow

from sealedkb.config import Settings
from sealedkb.crypto.keyring import KeyRing
from sealedkb.embed import load_embedder
from sealedkb.errors import (
    ConflictError,
    NotFoundError,
    NotInitializedError,
    SealedKBError,
    ValidationError,
)
from sealedkb.formats.entry_doc import EntryDoc
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.wiring import (
    DatabaseTarget,
    key_provider,
    resolve_database,
    scratch_key_provider,
    tls_files,
)
from sealedkb.keys.provider import KeyProvider, keystore_of
from sealedkb.migrate.guard import (
    COMPLETE,
    COPYING,
    GUARD,
    PREPARING,
    ROLLED_BACK,
    ROLLING_BACK,
    SWITCHED,
    make_guard,
    read_marker,
    write_marker,
)
from sealedkb.migrate.guard import get_meta as _get_meta
from sealedkb.migrate.guard import set_meta as _set_meta
from sealedkb.migrate.source import (
    ForeignMapping,
    SourceEntry,
    check_mapping,
    digest_fields,
    foreign_entry,
    key_from_json,
    key_to_json,
    migrated_id,
    parse_map,
    parse_table,
)
from sealedkb.model import DEFAULT_NAMESPACE, EncryptionMode, EntryType, WrappedDataKey
from sealedkb.store import migration_sql as msql
from sealedkb.store.db import Database, classify_transport, connect, lock_schema, mapped_errors
from sealedkb.store.entries import EntryRow

DIGEST_DOMAIN = "migration-row"
DEFAULT_BATCH = 500
CATCH_UP_ROUNDS = 20
SWITCH_LOCK_TIMEOUT_MS = 10_000

ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


# --- a throwaway keyring for plan (nothing written anywhere) -----------------------------


class _MemoryDataKeys:
    def __init__(self) -> None:
        self.keys: dict[uuid.UUID, WrappedDataKey] = {}

    def get_data_key(self, key_id: uuid.UUID) -> WrappedDataKey | None:
        return self.keys.get(key_id)

    def get_active_data_key(self, namespace: str, purpose: Any) -> WrappedDataKey | None:
        for k in self.keys.values():
            if k.namespace == namespace and k.purpose == purpose:
                return k
        return None

    def insert_data_key(self, key: WrappedDataKey) -> WrappedDataKey:
        self.keys[key.id] = key
        return key


@contextmanager
def _scratch_keyring() -> Iterator[KeyRing]:
    """A keyring over a temporary keystore: plan measures sealing without creating a
    key in the real keystore or a data key in the database."""
    with tempfile.TemporaryDirectory(prefix="sealedkb-plan-") as tmp:
        provider = scratch_key_provider(Path(tmp) / "keys")
        key = provider.create_key("migration plan (throwaway)")
        yield KeyRing(provider, _MemoryDataKeys(), key.key_id)


# --- the source descriptor ---------------------------------------------------------------


@dataclass(frozen=True)
class ForeignSpec:
    url: str
    table: str
    map_text: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    entry_type: str = "note"
    embedding_model: str | None = None  # model of the source vectors (default: ours)


@dataclass
class _Sealed:
    """One row ready to write: parameters for the insert and its digest record."""

    values: list[Any]
    digest: tuple[uuid.UUID, str, str]


class Migrator:
    """One migration of the knowledge base at ``settings`` (in place when ``foreign``
    is None). ``progress`` gets (phase, done, total) after each batch."""

    def __init__(
        self,
        settings: Settings,
        foreign: ForeignSpec | None = None,
        *,
        batch: int = DEFAULT_BATCH,
        progress: ProgressFn | None = None,
        sample_size: int = 200,
    ) -> None:
        if not 10 <= batch <= 10_000:
            raise ValidationError("--batch must be between 10 and 10000", field="batch")
        self.settings = settings
        self.foreign = foreign
        self.batch = batch
        self.progress = progress or (lambda phase, done, total: None)
        self.sample_size = sample_size
        self._map_wanted = parse_map(foreign.map_text) if foreign else None
        if foreign is not None:
            self._schema, self._table = parse_table(foreign.table)
            if foreign.entry_type not in set(EntryType):
                raise ValidationError(
                    f"--type must be one of {', '.join(EntryType)}", field="entry_type"
                )

    @property
    def kind(self) -> str:
        return "foreign" if self.foreign else "in-place"

    # --- connections ---------------------------------------------------------------

    def _target(self, create: bool = False) -> DatabaseTarget:
        return resolve_database(self.settings, create=create)

    def _connect(self, url: str) -> Connection[TupleRow]:
        conn = connect(url, allow_insecure=self.settings.database_allow_insecure)
        register_vector(conn)
        return conn

    @contextmanager
    def _source(self) -> Iterator[Connection[TupleRow]]:
        """A read-only connection to the foreign source (TLS rules as for the database)."""
        assert self.foreign is not None
        transport = classify_transport(
            self.foreign.url,
            allow_insecure=self.settings.database_allow_insecure,
            tls=tls_files(self.settings),
        )
        with mapped_errors("connect to the migration source"):
            conn = connect(transport.conninfo, allow_insecure=self.settings.database_allow_insecure)
            try:
                conn.execute("SET default_transaction_read_only = on")
                if conn.execute("SELECT 1 FROM pg_type WHERE typname = 'vector'").fetchone():
                    register_vector(conn)
                yield conn
            finally:
                conn.close()

    def _source_id(self, conn: Connection[TupleRow]) -> str:
        """Identity of the foreign source (database + table), for deterministic ids."""
        row = conn.execute("SELECT current_database()").fetchone()
        return f"{row[0] if row else '?'}/{self._schema}.{self._table}"

    def _mapping(self, conn: Connection[TupleRow], model_dim: int | None) -> ForeignMapping:
        cols = msql.describe_table(conn, self._schema, self._table)
        unique = msql.unique_columns(conn, self._schema, self._table)
        return check_mapping(self._schema, self._table, cols, unique, self._map_wanted, model_dim)

    # --- plan ------------------------------------------------------------------------

    def plan(self) -> dict[str, Any]:
        """Inspect the source, measure sealing on a sample, estimate; changes nothing."""
        with mapped_errors("migration plan"):
            return self._plan_foreign() if self.foreign else self._plan_in_place()

    def _plan_in_place(self) -> dict[str, Any]:
        target = self._target()
        with self._connect(target.url) as conn:
            marker = read_marker(conn)
            _require_in_place_source(_get_meta(conn, "encryption"), marker)
            rows, plain, size = msql.source_stats(conn)
            sample = msql.plain_rows_after(conn, None, min(self.sample_size, max(rows, 1)))
            db = _index_facts(conn, rows, sample)
        per_row = self._measure_in_place(sample)
        est = _estimate(rows, size, per_row, in_place=True, db=db)
        return {
            "kind": "in-place",
            "source": {"database": target.kind, "table": "kb_entries"},
            "rows": rows,
            "plaintext_rows": plain,
            "bytes": size,
            "resume": marker if _resumable(marker) else None,
            "sample_rows": len(sample),
            "seal_ms_per_row": round(per_row * 1000, 3),
            **est,
            "steps": _steps(True),
            "rollback_point": (
                "an encrypted snapshot of the whole database, taken first; "
                "'sealedkb migrate rollback' restores it until the snapshot is deleted"
            ),
        }

    def _plan_foreign(self) -> dict[str, Any]:
        kb = self._open_target_if_any()
        try:
            embedder = kb.embedder if kb is not None else load_embedder(self.settings.embedder)
            model_dim = embedder.dim if embedder is not None else None
            model_id = embedder.model_id if embedder is not None else None
            with self._source() as src:
                mapping = self._mapping(src, model_dim)
                rows, size = msql.foreign_stats(
                    src, mapping.schema, mapping.table, mapping.columns["content"]
                )
                sample = _source_rows(src, mapping, limit=min(self.sample_size, max(rows, 1)))
                invalid = self._count_invalid(src, mapping)
        finally:
            if kb is not None:
                kb.close()
        per_row = self._measure_foreign(mapping, sample)
        est = _estimate(rows, size, per_row, in_place=False)
        reembed = "embedding" not in mapping.columns or (
            self._vector_model() not in (None, model_id)
        )
        return {
            "kind": "foreign",
            "source": {"table": f"{mapping.schema}.{mapping.table}", "key_type": mapping.key_type},
            "mapping": mapping.columns,
            "rows": rows,
            "bytes": size,
            "invalid_rows": invalid,
            "reembed": reembed,
            "sample_rows": len(sample),
            "seal_ms_per_row": round(per_row * 1000, 3),
            **est,
            "steps": _steps(False),
            "rollback_point": (
                "an encrypted snapshot of this knowledge base, taken first; the source table "
                "is only read (read-only connection) and stays as it is"
            ),
        }

    def _count_invalid(self, src: Connection[TupleRow], mapping: ForeignMapping) -> list[str]:
        """Every source row mapped and validated (cheap: no crypto); reasons of the
        first few failures (keys and field names only)."""
        bad: list[str] = []
        for rows in _source_batches(src, mapping, batch=2000):
            for r in rows:
                try:
                    self._foreign_entry(mapping, r)
                except ValidationError as exc:
                    if len(bad) < 20:
                        bad.append(exc.message)
        return bad

    def _foreign_entry(self, mapping: ForeignMapping, row: Sequence[Any]) -> SourceEntry:
        assert self.foreign is not None
        return foreign_entry(
            mapping,
            row,
            default_namespace=self.foreign.namespace,
            default_type=EntryType(self.foreign.entry_type),
        )

    def _measure_in_place(self, sample: list[tuple[Any, ...]]) -> float:
        if not sample:
            return 0.0
        with _scratch_keyring() as ring:
            sealer = _Sealer(self.settings, ring)
            # The first row pays one-time costs (the vector key's rotation matrix: ~0.5 s
            # for 384 dimensions) that would dominate a 200-row sample: not timed per row.
            sealer.seal_plain_rows(sample[:1])
            rest = sample[1:] or sample
            start = time.perf_counter()
            sealer.seal_plain_rows(rest)
            return (time.perf_counter() - start) / len(rest)

    def _measure_foreign(self, mapping: ForeignMapping, sample: list[tuple[Any, ...]]) -> float:
        if not sample:
            return 0.0
        with _scratch_keyring() as ring:
            sealer = _Sealer(self.settings, ring)
            entries = []
            for r in sample:
                try:
                    entries.append(self._foreign_entry(mapping, r))
                except ValidationError:
                    continue
            sealer.seal_foreign(entries[:1], "plan", self._vector_model())  # one-time costs
            rest = entries[1:] or entries
            start = time.perf_counter()
            sealer.seal_foreign(rest, "plan", self._vector_model())
            return (time.perf_counter() - start) / max(len(rest), 1)

    def _vector_model(self) -> str | None:
        assert self.foreign is not None
        return self.foreign.embedding_model

    def _open_target_if_any(self) -> KnowledgeBase | None:
        try:
            return KnowledgeBase.open(self.settings)
        except NotInitializedError:
            return None

    # --- run -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        with mapped_errors("migration"):
            return self._run_foreign() if self.foreign else self._run_in_place()

    def _run_in_place(self) -> dict[str, Any]:
        started = time.perf_counter()
        target = self._target()
        db = Database(target.url, max_size=4, allow_insecure=self.settings.database_allow_insecure)
        try:
            with db.transaction("migration") as conn:
                mode = _get_meta(conn, "encryption")
                marker = read_marker(conn)
            _require_in_place_source(mode, marker)
            provider = key_provider(self.settings)
            if (
                marker is None
                or marker.get("state") in (ROLLED_BACK, COMPLETE)
                or (marker.get("kind") != "in-place")
            ):
                marker = self._prepare_in_place(db, provider)
            key_uri = str(marker["key_uri"])
            if marker["state"] == PREPARING:
                marker = self._take_rollback_point(db, target, marker)
            kb = KnowledgeBase(self.settings, target, db, EncryptionMode.ON, provider, key_uri)
            if marker["state"] == COPYING:
                self._copy_in_place(kb, marker)
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
            return self._summary(marker, time.perf_counter() - started)
        finally:
            db.close()

    def _prepare_in_place(self, db: Database, provider: KeyProvider) -> dict[str, Any]:
        """Keystore, KMS key and guard (one transaction for the kb_meta part)."""
        keystore = keystore_of(provider)
        if keystore is not None and not keystore.exists():
            keystore.initialize()
        key = provider.create_key("sealedkb knowledge base key (migrated from plaintext)")
        with db.transaction("migration") as conn:
            kb_id = _get_meta(conn, "kb_id") or str(uuid.uuid4())
            _set_meta(conn, "kb_id", kb_id)
            _set_meta(conn, GUARD, make_guard(provider, key.key_id, kb_id))
            marker = {
                "version": 1,
                "kind": "in-place",
                "state": PREPARING,
                "key_uri": key.key_id,
                "started_at": _now_iso(),
                "after": None,
                "rows_copied": 0,
            }
            write_marker(conn, marker)
        return marker

    def _take_rollback_point(
        self, db: Database, target: DatabaseTarget, marker: dict[str, Any]
    ) -> dict[str, Any]:
        from sealedkb.snapshots.service import Snapshots  # snapshots imports service

        plain = KnowledgeBase(
            self.settings, target, db, EncryptionMode.OFF, None, None, principal=None
        )
        self.progress("snapshot", 0, 1)
        info = Snapshots(self.settings, plain).create_rollback_point(
            str(marker["key_uri"]), name=f"pre-migration {marker['started_at'][:19]}"
        )
        self.progress("snapshot", 1, 1)
        marker = {**marker, "state": COPYING, "rollback_snapshot": info.id}
        with db.transaction("migration") as conn:
            write_marker(conn, marker)
        return marker

    def _copy_in_place(self, kb: KnowledgeBase, marker: dict[str, Any]) -> None:
        assert kb.keyring is not None
        sealer = _Sealer(self.settings, kb.keyring, kb)
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
            marker.update(after=str(after), rows_copied=done)
            with kb.db.transaction("migration") as conn:
                self._write_shadow(conn, sealed)
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

    def _write_shadow(self, conn: Connection[TupleRow], sealed: list[_Sealed]) -> None:
        with conn.cursor() as cur:
            cur.executemany(msql.UPSERT_SHADOW, [s.values for s in sealed])
        msql.record_digests(conn, [s.digest for s in sealed])

    def _catch_up(
        self, kb: KnowledgeBase, sealer: _Sealer, conn: Connection[TupleRow] | None = None
    ) -> int:
        """Re-seal the rows written since their copy, from the change log. Outside the
        switch (``conn`` None) a few rounds, stopping once a round finds only a handful
        (the switch takes the rest); inside it, until the log is empty (writers wait)."""
        fixed = 0
        rounds = 0
        while conn is not None or rounds < CATCH_UP_ROUNDS:
            rounds += 1
            with self._in(kb, conn) as c:
                changes = msql.pending_changes(c, self.batch)
                ids = sorted({i for _, i in changes})
                rows = msql.plain_rows_by_id(c, ids) if ids else []
            if not changes:
                return fixed
            gone = sorted(set(ids) - {r[0] for r in rows})
            sealed = sealer.seal_plain_rows(rows)
            with self._in(kb, conn) as c:
                self._apply_catch_up(c, sealed, gone)
                msql.forget_changes(c, [seq for seq, _ in changes])
            fixed += len(ids)
            self.progress("catch-up", fixed, fixed)
            if conn is None and len(changes) < 20:
                return fixed
        return fixed

    @staticmethod
    @contextmanager
    def _in(kb: KnowledgeBase, conn: Connection[TupleRow] | None) -> Iterator[Connection[TupleRow]]:
        """The switch's transaction when given, else a transaction of its own."""
        if conn is not None:
            yield conn
            return
        with kb.db.transaction("migration") as c:
            yield c

    def _apply_catch_up(
        self, conn: Connection[TupleRow], sealed: list[_Sealed], gone: list[uuid.UUID]
    ) -> None:
        if gone:
            msql.delete_shadow_rows(conn, gone)
        if not sealed:
            return
        try:
            with conn.transaction():
                self._write_shadow(conn, sealed)
        except psycopg.errors.UniqueViolation:
            # Two live rows with one fingerprint, transiently (a row deleted and its text
            # re-added meanwhile): write one at a time, the stale one first goes away.
            for s in sealed:
                try:
                    with conn.transaction():
                        self._write_shadow(conn, [s])
                except psycopg.errors.UniqueViolation:
                    fp = msql.WRITE_COLS.index("fingerprint")
                    s.values[fp] = None
                    with conn.transaction():
                        self._write_shadow(conn, [s])

    def _switch(self, kb: KnowledgeBase, marker: dict[str, Any]) -> dict[str, Any]:
        """Pause writers, seal the last changes, swap the tables, flip the mode: one
        transaction. Readers keep reading the plaintext table until the commit."""
        assert kb.keyring is not None and kb.kms_key_uri is not None
        sealer = _Sealer(self.settings, kb.keyring, kb)
        self.progress("switch", 0, 1)
        # Outside the lock: visibility maps set, so the row counts under it are cheap
        # index-only scans; statistics for the planner once the table is live.
        with mapped_errors("migration"), self._connect(kb.db.url) as conn:
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
            _set_meta(conn, "encryption", EncryptionMode.ON.value)
            _set_meta(conn, "kms_key_uri", kb.kms_key_uri)
            downtime = time.perf_counter() - locked_at
            marker = {
                **marker,
                "state": SWITCHED,
                "switched_at": _now_iso(),
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
        self.progress("switch", 1, 1)
        return marker

    def _scrub(
        self, db: Database, target: DatabaseTarget, marker: dict[str, Any]
    ) -> dict[str, Any]:
        self.progress("scrub", 0, 1)
        with self._connect(target.url) as conn:
            report = msql.scrub(conn)
        marker = {
            **marker,
            "state": COMPLETE,
            "finished_at": _now_iso(),
            "scrub": {
                "vacuumed": report.vacuumed,
                "checkpoints": report.checkpoints,
                "wal_switches": report.wal_switches,
                "wal_recycle_off": report.wal_recycle_off,
                "notes": report.notes,
            },
        }
        with db.transaction("migration") as conn:
            write_marker(conn, marker)
        self.progress("scrub", 1, 1)
        return marker

    # --- run: foreign ------------------------------------------------------------------

    def _run_foreign(self) -> dict[str, Any]:
        from sealedkb.snapshots.service import Snapshots

        assert self.foreign is not None
        started = time.perf_counter()
        kb, _created = KnowledgeBase.init(self.settings)
        try:
            if not kb.encrypted or kb.keyring is None:
                raise ValidationError(
                    "this knowledge base stores plaintext: migrate it in place first "
                    "('sealedkb migrate run'), then import the foreign table",
                    field="encryption",
                )
            model_dim = kb.embedder.dim if kb.embedder is not None else None
            with self._source() as src:
                source_id = self._source_id(src)
                mapping = self._mapping(src, model_dim)
                total = msql.foreign_stats(
                    src, mapping.schema, mapping.table, mapping.columns["content"]
                )[0]
                invalid = self._count_invalid(src, mapping)
            if invalid:
                # Refused before anything is written (plan lists them too).
                raise ValidationError(
                    f"{len(invalid)}{'+' if len(invalid) >= 20 else ''} source rows do not "
                    f"validate, e.g. {invalid[0]}; fix them or the mapping first",
                    field="source",
                )
            with kb.db.transaction("migration") as conn:
                marker = read_marker(conn)
            same = (
                marker is not None
                and marker.get("kind") == "foreign"
                and marker.get("source_id") == source_id
                and marker.get("state") in (COPYING, COMPLETE)
            )  # a rerun after completion picks up rows added to the source since
            if marker is not None and marker.get("state") in (COPYING, SWITCHED) and not same:
                raise ConflictError(
                    "another migration is in progress in this knowledge base; finish it or "
                    "roll it back first",
                    field="migration",
                )
            if not same:
                info = Snapshots(self.settings, kb).create(name=f"pre-migration {_now_iso()[:19]}")
                marker = {
                    "version": 1,
                    "kind": "foreign",
                    "state": COPYING,
                    "key_uri": kb.kms_key_uri,
                    "source_id": source_id,
                    "mapping": mapping.columns,
                    "key_type": mapping.key_type,
                    "rollback_snapshot": info.id,
                    "started_at": _now_iso(),
                    "after": None,
                    "rows_copied": 0,
                }
                with kb.db.transaction("migration") as conn:
                    msql.create_rows_table(conn)
                    write_marker(conn, marker)
            assert marker is not None
            marker["state"] = COPYING
            self._copy_foreign(kb, mapping, source_id, marker, total)
            marker = {**marker, "state": COMPLETE, "finished_at": _now_iso(), "rows": total}
            with kb.db.transaction("migration") as conn:
                write_marker(conn, marker)
                kb.audit.append(
                    conn,
                    "MigrateComplete",
                    key_uri=kb.kms_key_uri,
                    details={"kind": "foreign", "entries": marker.get("rows_copied")},
                )
            return self._summary(marker, time.perf_counter() - started)
        finally:
            kb.close()

    def _copy_foreign(
        self,
        kb: KnowledgeBase,
        mapping: ForeignMapping,
        source_id: str,
        marker: dict[str, Any],
        total: int,
    ) -> None:
        assert kb.keyring is not None
        sealer = _Sealer(self.settings, kb.keyring, kb)
        after = key_from_json(marker.get("after"), mapping.key_type)
        done = int(marker.get("rows_copied") or 0)
        with self._source() as src:
            for rows in _source_batches(src, mapping, after=after, batch=self.batch):
                entries = [self._foreign_entry(mapping, r) for r in rows]
                sealed = sealer.seal_foreign(entries, source_id, self._vector_model())
                done += len(rows)
                marker.update(after=key_to_json(rows[-1][0]), rows_copied=done)
                with kb.db.transaction("migration") as conn:
                    self._insert_entries(conn, sealed)
                    write_marker(conn, marker)
                self.progress("copy", done, total)

    def _insert_entries(self, conn: Connection[TupleRow], sealed: list[_Sealed]) -> None:
        """Insert (a rerun skips rows already there). Content already live in the
        namespace keeps its dedup fingerprint; the newcomer is stored as a duplicate."""
        fp = msql.WRITE_COLS.index("fingerprint")
        ns = msql.WRITE_COLS.index("namespace")
        wanted = [(s.values[ns], s.values[fp]) for s in sealed if s.values[fp]]
        taken: set[tuple[str, str]] = set()
        if wanted:
            rows = conn.execute(
                "SELECT namespace, fingerprint FROM kb_entries WHERE deleted_at IS NULL"
                " AND fingerprint = ANY(%s) AND id <> ALL(%s)",
                ([f for _, f in wanted], [s.digest[0] for s in sealed]),
            ).fetchall()
            taken = {(r[0], r[1]) for r in rows}
        for s in sealed:
            key = (s.values[ns], s.values[fp])
            if s.values[fp] and key in taken:
                s.values[fp] = None
            elif s.values[fp]:
                taken.add(key)
        with conn.cursor() as cur:
            cur.executemany(msql.INSERT_ENTRY, [s.values for s in sealed])
        msql.record_digests(conn, [s.digest for s in sealed])

    def _summary(self, marker: dict[str, Any], seconds: float) -> dict[str, Any]:
        return {
            "kind": marker.get("kind"),
            "state": marker.get("state"),
            "kms_key_id": marker.get("key_uri"),
            "rollback_snapshot": marker.get("rollback_snapshot"),
            "rows": marker.get("rows", marker.get("rows_copied")),
            "rows_copied": marker.get("rows_copied"),
            "downtime_ms": marker.get("downtime_ms"),
            "scrub": marker.get("scrub"),
            "seconds": round(seconds, 2),
        }

    # --- status, verify ------------------------------------------------------------------

    def status(self) -> dict[str, Any] | None:
        target = self._target()
        with mapped_errors("migration status"), self._connect(target.url) as conn:
            return read_marker(conn)

    def verify(self) -> dict[str, Any]:
        """Every migrated row opens and equals its source (keyed digests); no plaintext
        row is left; the switch and the scrub happened (in place)."""
        with mapped_errors("migration verify"):
            kb = KnowledgeBase.open(self.settings)
        try:
            with kb.db.transaction("migration verify") as conn:
                marker = read_marker(conn)
            if marker is None:
                raise NotFoundError(
                    "no migration has run in this knowledge base", field="migration"
                )
            problems: list[str] = []
            if marker.get("state") != COMPLETE:
                problems.append(f"the migration is not complete (state {marker.get('state')})")
            checked, mismatched, missing = self._verify_digests(
                kb, in_place=marker.get("kind") == "in-place"
            )
            if mismatched:
                problems.append(f"{mismatched} entries differ from their source")
            if missing:
                problems.append(f"{missing} migrated entries are missing")
            status = kb.status()
            if not status["storage_encrypted"]:
                problems.append("status says storage_encrypted: false")
            if status["entries_plaintext"]:
                problems.append(f"{status['entries_plaintext']} plaintext entries remain")
            source_rows = None
            if self.foreign is not None or marker.get("kind") == "foreign":
                source_rows, src_mismatch = self._verify_foreign_source(kb, marker)
                if source_rows != checked:
                    problems.append(f"the source holds {source_rows} rows, {checked} were migrated")
                if src_mismatch:
                    problems.append(f"{src_mismatch} source rows differ from their entries")
            elif marker.get("rows") is not None and marker["rows"] != checked:
                problems.append(f"{marker['rows']} rows were switched, {checked} have digests")
            scrub = marker.get("scrub") or {}
            if marker.get("kind") == "in-place" and scrub.get("notes"):
                problems.extend(scrub["notes"])
            return {
                "ok": not problems,
                "kind": marker.get("kind"),
                "state": marker.get("state"),
                "entries_checked": checked,
                "mismatched": mismatched,
                "missing": missing,
                "source_rows": source_rows,
                "storage_encrypted": status["storage_encrypted"],
                "entries_plaintext": status["entries_plaintext"],
                "kms_key_id": status["kms_key_id"],
                "scrub": scrub or None,
                "problems": problems,
            }
        finally:
            kb.close()

    def _verify_digests(self, kb: KnowledgeBase, *, in_place: bool) -> tuple[int, int, int]:
        assert kb.keyring is not None
        checked = mismatched = missing = 0
        after: uuid.UUID | None = None
        while True:
            with kb.db.transaction("migration verify") as conn:
                batch = msql.digests_after(conn, after, 1000)
            if not batch:
                break
            for eid, _key, digest in batch:
                checked += 1
                row = kb.entries.get(eid, include_deleted=True)
                if row is None:
                    missing += 1
                    continue
                if _entry_digest(kb, row, in_place=in_place) != digest:
                    mismatched += 1
            after = batch[-1][0]
            self.progress("verify", checked, checked)
        return checked, mismatched, missing

    def _verify_foreign_source(self, kb: KnowledgeBase, marker: dict[str, Any]) -> tuple[int, int]:
        """Re-read the source (when it is given again with --from) and compare each row's
        digest with the recorded one; without --from, count the recorded rows."""
        if self.foreign is None:
            with kb.db.transaction("migration verify") as conn:
                return msql.count_digests(conn), 0
        assert kb.keyring is not None
        sealer = _Sealer(self.settings, kb.keyring, kb)
        count = mismatch = 0
        with self._source() as src:
            source_id = self._source_id(src)
            mapping = self._mapping(src, None)
            for rows in _source_batches(src, mapping, batch=1000):
                for r in rows:
                    count += 1
                    e = self._foreign_entry(mapping, r)
                    eid = migrated_id(source_id, key_to_json(e.key))
                    row = kb.entries.get(eid, include_deleted=True)
                    if row is None or _entry_digest(
                        kb, row, in_place=False
                    ) != sealer.foreign_digest(e):
                        mismatch += 1
        return count, mismatch

    # --- rollback ---------------------------------------------------------------------

    def rollback(self) -> dict[str, Any]:
        """Back to the state before the migration. Before the switch (in place): drop
        the encrypted copy, the plaintext table never changed. After it, or for a
        foreign migration: restore the rollback snapshot over the database, in one
        transaction; readers meanwhile get MIGRATION_IN_PROGRESS or a database error,
        never wrong data. Possible only while the rollback snapshot exists."""
        from sealedkb.snapshots.service import Snapshots

        started = time.perf_counter()
        target = self._target()
        with mapped_errors("migration rollback"), self._connect(target.url) as conn:
            marker = read_marker(conn)
            if marker is None or marker.get("state") == ROLLED_BACK:
                raise NotFoundError("no migration to roll back", field="migration")
            sid = marker.get("rollback_snapshot")
            if marker["kind"] == "in-place" and marker["state"] in (PREPARING, COPYING):
                with conn.transaction():
                    msql.drop_working_tables(conn)
                    write_marker(
                        conn, {**marker, "state": ROLLED_BACK, "rolled_back_at": _now_iso()}
                    )
                return {
                    "kind": marker["kind"],
                    "restored_snapshot": None,
                    "state": ROLLED_BACK,
                    "seconds": round(time.perf_counter() - started, 2),
                    "note": "the switch had not happened: the plaintext table was never changed",
                }
            if not sid:
                raise NotFoundError("the migration has no rollback snapshot", field="migration")
            kb = KnowledgeBase.open(self.settings)  # records the restore in its audit trail
        try:
            snaps = Snapshots(self.settings, kb)
            snaps.resolve(sid)  # NotFoundError if it was deleted: rollback is no longer possible
            with mapped_errors("migration rollback"), self._connect(target.url) as conn:
                write_marker(conn, {**marker, "state": ROLLING_BACK})
            try:
                result = snaps.restore_over(
                    sid,
                    target.url,
                    after_load=lambda c: _after_rollback(c, marker),
                )
            except BaseException:
                with mapped_errors("migration rollback"), self._connect(target.url) as conn:
                    write_marker(conn, marker)  # the restore rolled back: state as before
                raise
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
            "row_counts": result.get("row_counts"),
            "seconds": round(time.perf_counter() - started, 2),
        }


def _after_rollback(conn: Connection[TupleRow], marker: dict[str, Any]) -> None:
    """Inside the restore transaction: record the rollback in the restored kb_meta."""
    msql.drop_working_tables(conn)
    write_marker(conn, {**marker, "state": ROLLED_BACK, "rolled_back_at": _now_iso()})


def _source_batches(
    src: Connection[TupleRow], mapping: ForeignMapping, *, after: Any = None, batch: int
) -> Iterator[list[tuple[Any, ...]]]:
    """The mapped columns of the source rows in key order, in batches (key first)."""
    while rows := _source_rows(src, mapping, after=after, limit=batch):
        yield rows
        after = rows[-1][0]


def _source_rows(
    src: Connection[TupleRow], mapping: ForeignMapping, *, after: Any = None, limit: int
) -> list[tuple[Any, ...]]:
    return msql.foreign_rows(
        src,
        mapping.schema,
        mapping.table,
        mapping.columns["id"],
        mapping.read_columns(),
        after=after,
        limit=limit,
        key_is_text=mapping.key_is_text,
    )


def _require_in_place_source(mode: str | None, marker: dict[str, Any] | None) -> None:
    """An in-place migration needs a plaintext knowledge base, or one it is resuming."""
    if mode is None:
        raise NotInitializedError("the database has no knowledge base; nothing to migrate")
    if mode == EncryptionMode.ON.value and not _resumable(marker):
        raise ValidationError(
            "this knowledge base is already encrypted: nothing to migrate in place",
            field="encryption",
        )


def _resumable(marker: dict[str, Any] | None) -> bool:
    return marker is not None and marker.get("state") in (PREPARING, COPYING, SWITCHED)


def _row_digest(ring: KeyRing, namespace: str, entry_type: str, doc: EntryDoc, **facts: Any) -> str:
    """The keyed digest ``migrate verify`` compares: of the source row when it is
    sealed, of the opened entry afterwards (same fields, same code)."""
    data = digest_fields(
        namespace=namespace,
        entry_type=entry_type,
        title=doc.title,
        content=doc.content,
        source=doc.source,
        metadata=doc.metadata,
        tags=doc.tags,
        **facts,
    )
    return ring.blinder(namespace).digest(DIGEST_DOMAIN, data)


def _in_place_facts(
    verified: bool,
    archived: bool,
    version: int,
    created_at: datetime | None,
    updated_at: datetime | None,
    deleted_at: datetime | None,
) -> dict[str, Any]:
    """Row facts an in-place migration keeps as they were (part of its digest)."""
    return {
        "verified": verified,
        "archived": archived,
        "version": version,
        "created_at": created_at,
        "updated_at": updated_at,
        "deleted_at": deleted_at,
    }


def _entry_digest(kb: KnowledgeBase, row: EntryRow, *, in_place: bool) -> str:
    assert kb.keyring is not None
    facts = (
        _in_place_facts(
            row.verified, row.archived, row.version, row.created_at, row.updated_at, row.deleted_at
        )
        if in_place
        else {}
    )
    return _row_digest(kb.keyring, row.namespace, row.entry_type, kb.sealer.open_row(row), **facts)


# --- sealing -------------------------------------------------------------------------------


class _Sealer:
    """Source rows -> sealed insert parameters (+ keyed digests), in batches. Uses the
    knowledge base's own sealing and indexing (KnowledgeBase._sealed_row,
    SearchIndexer) so a migrated entry is bit-for-bit the kind ``add`` writes."""

    def __init__(self, settings: Settings, ring: KeyRing, kb: KnowledgeBase | None = None) -> None:
        if kb is None:
            kb = _offline_kb(settings, ring)
        self.kb = kb
        self.ring = ring

    def _vectors(
        self, docs: list[tuple[str, str]], given: list[Any], model: str | None
    ) -> list[Any]:
        """Source vectors when they come from our model, else re-embedded (batched)."""
        emb = self.kb.embedder
        out: list[Any] = list(given)
        if emb is None:
            return [None] * len(docs)
        redo = [i for i, v in enumerate(given) if v is None or model != emb.model_id]
        if redo:
            vecs = self.kb.indexer.embed([docs[i] for i in redo])
            for j, i in enumerate(redo):
                out[i] = vecs[j] if vecs is not None else None
        return out

    def seal_plain_rows(self, rows: Sequence[tuple[Any, ...]]) -> list[_Sealed]:
        """Rows of msql.PLAIN_COLS -> shadow upserts."""
        kb = self.kb
        emb_model = kb.embedder.model_id if kb.embedder is not None else None
        docs = []
        for r in rows:
            if r[4] is None:
                raise ConflictError(
                    f"entry {r[0]} is already sealed in a plaintext knowledge base; "
                    "run 'sealedkb doctor'"
                )
            docs.append(EntryDoc(r[3] or "", r[4], r[5], r[6] or {}, tuple(r[7] or ())))
        given = [_as_vector(r[14]) if r[15] == emb_model else None for r in rows]
        vectors = self._vectors([(d.title, d.content) for d in docs], given, emb_model)
        out = []
        for r, doc, vec in zip(rows, docs, vectors, strict=True):
            eid, ns = r[0], r[1]
            row, cols = kb.sealer.sealed_row(
                ns,
                r[2],
                eid,
                doc,
                vec,
                with_fingerprint=r[16] is not None,
                verified=r[8],
                archived=r[9],
                version=r[12],
            )
            if r[17] is not None:
                cols.import_key = self.ring.blinder(ns).file_token(r[17])
            facts = {"created_at": r[10], "updated_at": r[11], "deleted_at": r[13]}
            digest = _row_digest(
                self.ring, ns, r[2], doc, **_in_place_facts(r[8], r[9], r[12], r[10], r[11], r[13])
            )
            out.append(_Sealed(msql.row_values(row, cols, facts), (eid, str(eid), digest)))
        return out

    def foreign_digest(self, e: SourceEntry) -> str:
        doc = EntryDoc(e.title, e.content, e.source, e.metadata, e.tags)
        return _row_digest(self.ring, e.namespace, e.entry_type, doc)

    def seal_foreign(
        self, entries: Sequence[SourceEntry], source_id: str, model: str | None
    ) -> list[_Sealed]:
        kb = self.kb
        emb_model = kb.embedder.model_id if kb.embedder is not None else None
        docs = [EntryDoc(e.title, e.content, e.source, e.metadata, e.tags) for e in entries]
        given = [_as_vector(e.vector) for e in entries]
        vectors = self._vectors([(d.title, d.content) for d in docs], given, model or emb_model)
        out = []
        now = datetime.now(UTC)
        for e, doc, vec in zip(entries, docs, vectors, strict=True):
            eid = migrated_id(source_id, key_to_json(e.key))
            row, cols = kb.sealer.sealed_row(e.namespace, e.entry_type, eid, doc, _as_vector(vec))
            created = e.created_at or now
            facts = {
                "created_at": created,
                "updated_at": e.updated_at or created,
                "deleted_at": None,
            }
            out.append(
                _Sealed(
                    msql.row_values(row, cols, facts),
                    (
                        eid,
                        str(key_to_json(e.key)),
                        _row_digest(self.ring, e.namespace, e.entry_type, doc),
                    ),
                )
            )
        return out


def _as_vector(v: Any) -> Any:
    """A pgvector value (Vector in binary fetches, ndarray in text ones) as float32."""
    if v is None:
        return None
    if hasattr(v, "to_numpy"):
        v = v.to_numpy()
    return np.asarray(v, dtype=np.float32)


def _offline_kb(settings: Settings, ring: KeyRing) -> KnowledgeBase:
    """A KnowledgeBase shell around a scratch keyring, for plan's measurements: its
    sealing and indexing code without a database (nothing it does touches ``db``)."""
    kb = KnowledgeBase.__new__(KnowledgeBase)
    from sealedkb.embed import load_embedder
    from sealedkb.kb.sealer import EntrySealer
    from sealedkb.monitoring.telemetry import Telemetry
    from sealedkb.search.engine import SearchIndexer

    kb.settings = settings
    kb.keyring = ring
    kb.mode = EncryptionMode.ON
    kb.telemetry = Telemetry()
    kb.embedder = load_embedder(settings.embedder)
    kb.indexer = SearchIndexer(ring, kb.embedder)
    kb.sealer = EntrySealer(ring, kb.indexer, kb.telemetry)
    return kb


# --- estimate --------------------------------------------------------------------------


def _index_facts(
    conn: Connection[TupleRow], rows: int, sample: Sequence[tuple[Any, ...]]
) -> dict[str, int]:
    """What the index builds of an in-place migration depend on: how many rows carry
    a vector (estimated from the sample), its dimension, and maintenance_work_mem
    (an HNSW build slows down several times once its graph outgrows it)."""
    with_vec = [r[14] for r in sample if r[14] is not None]
    dim = len(_as_vector(with_vec[0])) if with_vec else 0
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


def _hnsw_seconds(db: dict[str, int]) -> float:
    """One HNSW build over the sealed vectors: rows whose graph fits in
    maintenance_work_mem are cheap, the rest are inserted into an on-disk graph."""
    n = db.get("vector_rows", 0)
    dim = db.get("vector_dim", 0)
    if not n or not dim:
        return 0.0
    fit = db.get("maintenance_work_mem", 64 << 20) // (4 * dim + HNSW_ELEMENT_OVERHEAD)
    return min(n, fit) * HNSW_S_PER_ROW + max(0, n - fit) * HNSW_SPILL_S_PER_ROW


def _estimate(
    rows: int, size: int, per_row: float, *, in_place: bool, db: dict[str, int] | None = None
) -> dict[str, Any]:
    """Duration from the measured sealing cost per row plus the database's share
    (writes, index build, snapshot, scrub), whose rates were calibrated by
    bench/bench_migrate.py on this kind of machine (docs/PERFORMANCE.md). In place,
    the secondary indexes are built once on the sealed table; ``db`` (from
    :func:`_index_facts`) sizes their HNSW part."""
    write = rows * WRITE_S_PER_ROW
    index = rows * INDEX_S_PER_ROW + (_hnsw_seconds(db) if db else rows * HNSW_S_PER_ROW)
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
# embedded PostgreSQL 18 with durable defaults (see docs/PERFORMANCE.md, migration).
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


def _steps(in_place: bool) -> list[str]:
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
