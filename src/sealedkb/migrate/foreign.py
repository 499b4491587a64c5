"""Foreign tables (``--from URL --table T --map ...``): rows of another server's table
are mapped, validated and sealed into this (encrypted) knowledge base under
deterministic ids; the source is opened read-only and never changed."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pgvector.psycopg import register_vector
from psycopg import Connection
from psycopg.rows import TupleRow

from sealedkb.config import Settings
from sealedkb.embed import load_embedder
from sealedkb.errors import ConflictError, ValidationError
from sealedkb.kb.wiring import tls_files
from sealedkb.migrate.common import ProgressFn, now_iso, open_if_any
from sealedkb.migrate.estimate import estimate, measure_foreign, steps
from sealedkb.migrate.guard import COMPLETE, COPYING, SWITCHED, read_marker, write_marker
from sealedkb.migrate.host import KnowledgeBases, OpenKnowledgeBase
from sealedkb.migrate.reports import Marker, PlanReport, RunReport, run_report
from sealedkb.migrate.sealing import RowSealer, Sealed, entry_digest
from sealedkb.migrate.source import (
    ForeignMapping,
    SourceEntry,
    check_mapping,
    foreign_entry,
    key_from_json,
    key_to_json,
    migrated_id,
    parse_map,
    parse_table,
)
from sealedkb.model import DEFAULT_NAMESPACE, EntryType
from sealedkb.store import migration_sql as msql
from sealedkb.store.db import classify_transport, connect, mapped_errors

INVALID_REASONS = 20  # reasons of failing source rows kept for the plan and the refusal


@dataclass(frozen=True)
class ForeignSpec:
    url: str
    table: str
    map_text: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    entry_type: str = "note"
    embedding_model: str | None = None  # model of the source vectors (default: ours)


class ForeignSource:
    """The foreign table at ``spec``: read-only connections, its checked mapping, its
    rows mapped and validated as entries."""

    def __init__(self, settings: Settings, spec: ForeignSpec) -> None:
        self.settings = settings
        self.spec = spec
        self.map_wanted = parse_map(spec.map_text)
        self.schema, self.table = parse_table(spec.table)
        if spec.entry_type not in set(EntryType):
            raise ValidationError(
                f"--type must be one of {', '.join(EntryType)}", field="entry_type"
            )

    @property
    def vector_model(self) -> str | None:
        return self.spec.embedding_model

    @contextmanager
    def connect(self) -> Iterator[Connection[TupleRow]]:
        """A read-only connection to the foreign source (TLS rules as for the database)."""
        allow_insecure = self.settings.database_allow_insecure
        transport = classify_transport(
            self.spec.url, allow_insecure=allow_insecure, tls=tls_files(self.settings)
        )
        with mapped_errors("connect to the migration source"):
            conn = connect(transport.conninfo, allow_insecure=allow_insecure)
            try:
                conn.execute("SET default_transaction_read_only = on")
                if conn.execute("SELECT 1 FROM pg_type WHERE typname = 'vector'").fetchone():
                    register_vector(conn)
                yield conn
            finally:
                conn.close()

    def source_id(self, conn: Connection[TupleRow]) -> str:
        """Identity of the foreign source (database + table), for deterministic ids."""
        row = conn.execute("SELECT current_database()").fetchone()
        return f"{row[0] if row else '?'}/{self.schema}.{self.table}"

    def mapping(self, conn: Connection[TupleRow], model_dim: int | None) -> ForeignMapping:
        cols = msql.describe_table(conn, self.schema, self.table)
        unique = msql.unique_columns(conn, self.schema, self.table)
        return check_mapping(self.schema, self.table, cols, unique, self.map_wanted, model_dim)

    def entry(self, mapping: ForeignMapping, row: Sequence[Any]) -> SourceEntry:
        return foreign_entry(
            mapping,
            row,
            default_namespace=self.spec.namespace,
            default_type=EntryType(self.spec.entry_type),
        )

    def invalid_rows(self, conn: Connection[TupleRow], mapping: ForeignMapping) -> list[str]:
        """Every source row mapped and validated (cheap: no crypto); reasons of the
        first few failures (keys and field names only)."""
        bad: list[str] = []
        for rows in source_batches(conn, mapping, batch=2000):
            for r in rows:
                try:
                    self.entry(mapping, r)
                except ValidationError as exc:
                    if len(bad) < INVALID_REASONS:
                        bad.append(exc.message)
        return bad


def source_batches(
    src: Connection[TupleRow], mapping: ForeignMapping, *, after: Any = None, batch: int
) -> Iterator[list[tuple[Any, ...]]]:
    """The mapped columns of the source rows in key order, in batches (key first)."""
    while rows := source_rows(src, mapping, after=after, limit=batch):
        yield rows
        after = rows[-1][0]


def source_rows(
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


class ForeignMigration:
    """The migration of one foreign table into the knowledge base at ``settings``."""

    def __init__(
        self,
        settings: Settings,
        source: ForeignSource,
        *,
        host: KnowledgeBases,
        batch: int,
        progress: ProgressFn,
        sample_size: int,
    ) -> None:
        self.settings = settings
        self.source = source
        self.host = host
        self.batch = batch
        self.progress = progress
        self.sample_size = sample_size

    # --- plan ------------------------------------------------------------------------

    def plan(self) -> PlanReport:
        """Check the mapping, validate every row, measure sealing on a sample, estimate."""
        kb = open_if_any(self.host, self.settings)
        try:
            embedder = kb.embedder if kb is not None else load_embedder(self.settings.embedder)
            model_dim = embedder.dim if embedder is not None else None
            model_id = embedder.model_id if embedder is not None else None
            with self.source.connect() as src:
                mapping = self.source.mapping(src, model_dim)
                rows, size = msql.foreign_stats(
                    src, mapping.schema, mapping.table, mapping.columns["content"]
                )
                sample = source_rows(src, mapping, limit=min(self.sample_size, max(rows, 1)))
                invalid = self.source.invalid_rows(src, mapping)
        finally:
            if kb is not None:
                kb.close()
        entries = []
        for r in sample:
            try:
                entries.append(self.source.entry(mapping, r))
            except ValidationError:
                continue
        per_row = measure_foreign(self.settings, entries, self.source.vector_model)
        est = estimate(rows, size, per_row, in_place=False)
        reembed = "embedding" not in mapping.columns or (
            self.source.vector_model not in (None, model_id)
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
            "estimate_seconds": est["estimate_seconds"],
            "estimate_breakdown_seconds": est["estimate_breakdown_seconds"],
            "expected_downtime_ms": est["expected_downtime_ms"],
            "downtime_note": est["downtime_note"],
            "steps": steps(False),
            "rollback_point": (
                "an encrypted snapshot of this knowledge base, taken first; the source table "
                "is only read (read-only connection) and stays as it is"
            ),
        }

    # --- run -----------------------------------------------------------------------------

    def run(self) -> RunReport:

        started = time.perf_counter()
        kb = self.host.init(self.settings)
        try:
            if not kb.encrypted or kb.keyring is None:
                raise ValidationError(
                    "this knowledge base stores plaintext: migrate it in place first "
                    "('sealedkb migrate run'), then import the foreign table",
                    field="encryption",
                )
            model_dim = kb.embedder.dim if kb.embedder is not None else None
            with self.source.connect() as src:
                source_id = self.source.source_id(src)
                mapping = self.source.mapping(src, model_dim)
                total = msql.foreign_stats(
                    src, mapping.schema, mapping.table, mapping.columns["content"]
                )[0]
                invalid = self.source.invalid_rows(src, mapping)
            if invalid:
                # Refused before anything is written (plan lists them too).
                more = "+" if len(invalid) >= INVALID_REASONS else ""
                raise ValidationError(
                    f"{len(invalid)}{more} source rows do not "
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
            if marker is None or not same:
                info = self.host.snapshots(self.settings, kb).create(
                    name=f"pre-migration {now_iso()[:19]}"
                )
                marker = {
                    "version": 1,
                    "kind": "foreign",
                    "state": COPYING,
                    "key_uri": kb.kms_key_uri,
                    "source_id": source_id,
                    "mapping": mapping.columns,
                    "key_type": mapping.key_type,
                    "rollback_snapshot": info.id,
                    "started_at": now_iso(),
                    "after": None,
                    "rows_copied": 0,
                }
                with kb.db.transaction("migration") as conn:
                    msql.create_rows_table(conn)
                    write_marker(conn, marker)
            marker["state"] = COPYING
            self._copy(kb, mapping, source_id, marker, total)
            marker = {**marker, "state": COMPLETE, "finished_at": now_iso(), "rows": total}
            with kb.db.transaction("migration") as conn:
                write_marker(conn, marker)
                kb.audit.append(
                    conn,
                    "MigrateComplete",
                    key_uri=kb.kms_key_uri,
                    details={"kind": "foreign", "entries": marker.get("rows_copied")},
                )
            return run_report(marker, time.perf_counter() - started)
        finally:
            kb.close()

    def _copy(
        self,
        kb: OpenKnowledgeBase,
        mapping: ForeignMapping,
        source_id: str,
        marker: Marker,
        total: int,
    ) -> None:
        assert kb.keyring is not None
        sealer = RowSealer.of(kb)
        after = key_from_json(marker.get("after"), mapping.key_type)
        done = int(marker.get("rows_copied") or 0)
        with self.source.connect() as src:
            for rows in source_batches(src, mapping, after=after, batch=self.batch):
                entries = [self.source.entry(mapping, r) for r in rows]
                sealed = sealer.seal_foreign(entries, source_id, self.source.vector_model)
                done += len(rows)
                marker["after"] = key_to_json(rows[-1][0])
                marker["rows_copied"] = done
                with kb.db.transaction("migration") as conn:
                    _insert_entries(conn, sealed)
                    write_marker(conn, marker)
                self.progress("copy", done, total)


def verify_source(kb: OpenKnowledgeBase, source: ForeignSource) -> tuple[int, int]:
    """Re-read the source and compare each row's digest with its entry's: (rows read,
    rows that differ or are missing)."""
    assert kb.keyring is not None
    sealer = RowSealer.of(kb)
    count = mismatch = 0
    with source.connect() as src:
        source_id = source.source_id(src)
        mapping = source.mapping(src, None)
        for rows in source_batches(src, mapping, batch=1000):
            for r in rows:
                count += 1
                e = source.entry(mapping, r)
                eid = migrated_id(source_id, key_to_json(e.key))
                row = kb.entries.get(eid, include_deleted=True)
                if row is None or entry_digest(kb, row, in_place=False) != sealer.foreign_digest(e):
                    mismatch += 1
    return count, mismatch


def _insert_entries(conn: Connection[TupleRow], sealed: list[Sealed]) -> None:
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
