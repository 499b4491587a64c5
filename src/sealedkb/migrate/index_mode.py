"""``sealedkb migrate index --to memory|server``: move the search index of an encrypted
knowledge base between PostgreSQL (server) and each process's memory, online and
resumable (docs/SEARCH.md, "Switching the search index").

The setting ``kb_meta.search_index`` (MACed under the key provider) decides what every
write stores. The order of the switch keeps one rule: no process writes searchable
columns into a table whose setting says memory.

* server -> memory: **switch first, then clear.** One audited transaction writes
  ``memory`` with its MAC (the setting's row locked, so two switches serialise) and the
  progress marker. Every process reads the setting again before a write or a search
  at most SEARCH_INDEX_RECHECK_SECONDS after its last read (KnowledgeBase.
  follow_search_index) and from then on writes no searchable column; the migration
  waits that long and for every transaction running then to end, so the rows of any
  write that still went by the old setting are committed before the clearing. Then
  ``kw_tokens``, ``embedding_enc``, ``fingerprint`` and ``index_key_id`` are set NULL
  and ``tag_tokens`` empty in batches (each its own audited transaction; each live
  document re-sealed without the index digest, as the memory index writes it) until
  no row holds one, and ``VACUUM FULL kb_entries`` rewrites the table so no dead row version
  keeps a token (ANALYZE refreshes its statistics; a superuser also rewrites
  pg_statistic). WAL segments, replicas and backups taken before still hold them.
* memory -> server: **build first, then switch.** Every live sealed row without
  keyword tokens is opened, its columns are made by the SearchIndexer (through an
  EntrySealer of the server index, so the document is re-sealed with the digest of its
  columns) and written in batches, each only where the row is unchanged since it was
  read (same version and sealed document; KnowledgeBase writes are optimistic the
  same way). Then the switch, the same wait, and a last pass over rows written
  meanwhile by processes still in memory mode.

Killed at any point, a rerun continues: the marker (``kb_meta.search_index_migration``)
says where it was, the setting says which side of the switch, and each pass selects
only the rows still to do. Migrating back is the same command with the other ``--to``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sealedkb.errors import ConflictError, EmbeddingError, IntegrityError, ValidationError
from sealedkb.formats.aad import embedding_aad
from sealedkb.kb.sealer import EntrySealer
from sealedkb.model import KeyPurpose
from sealedkb.search.engine import DB_DIM, vector_from_bytes
from sealedkb.store.db import connect
from sealedkb.store.entries import EntryRow
from sealedkb.store.index_mode import SETTING_KEY, IndexModeTable
from sealedkb.store.migration_sql import is_superuser

if TYPE_CHECKING:
    from sealedkb.kb.knowledge_base import KnowledgeBase

__all__ = [
    "INDEX_MIGRATION_BATCH",
    "SEARCH_INDEX_RECHECK_SECONDS",
    "IndexMigrationResult",
    "migrate_index",
]

INDEX_MIGRATION_BATCH = 500
# How long a process trusts the search index setting it last read before a write or a
# search reads it again (KnowledgeBase.follow_search_index); the migration waits this
# long, and for the transactions running then, after its switch.
SEARCH_INDEX_RECHECK_SECONDS = 1.0
MAX_FAILED_IDS = 20
MAX_PASSES = 20
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class IndexMigrationResult:
    from_index: str  # the setting when this run started
    to_index: str
    state: str  # complete
    rows: int  # built (to server) or cleared (to memory) by this run
    skipped: int  # changed while being built (its own write indexed it, or a pass will)
    failed: int  # rows that failed their integrity check (left as they are)
    failed_ids: tuple[str, ...]
    scrubbed: tuple[str, ...]  # tables rewritten (to memory)
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": self.from_index,
            "to": self.to_index,
            "state": self.state,
            "rows": self.rows,
            "skipped": self.skipped,
            "failed": self.failed,
            "failed_ids": list(self.failed_ids),
            "scrubbed": list(self.scrubbed),
            "seconds": round(self.seconds, 3),
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _Run:
    def __init__(self, kb: KnowledgeBase, to: str, batch: int, progress: ProgressFn | None):
        self.kb = kb
        self.to = to
        self.batch = batch
        self.progress = progress
        self.table = IndexModeTable(kb.db)
        self.rows = self.skipped = 0
        self.failed: list[str] = []

    def current(self) -> str:
        return self.kb.current_search_index()

    def mark(self, state: str, frm: str) -> None:
        marker = {"from": frm, "to": self.to, "state": state, "rows": self.rows, "at": _now()}
        with self.kb.audit.transaction("index migration marker") as conn:
            self.table.set_marker(conn, marker)

    def switch(self, frm: str) -> None:
        """The setting becomes ``self.to`` (with its MAC) in one audited transaction."""
        kb = self.kb
        values = kb.signed_search_index(self.to)
        with kb.audit.transaction("index migration switch") as conn:
            self.table.lock_setting(conn, SETTING_KEY)
            self.table.write_settings(conn, values)
            self.table.set_marker(
                conn,
                {"from": frm, "to": self.to, "state": "switched", "rows": self.rows, "at": _now()},
            )
            kb.audit.append(
                conn,
                "SwitchSearchIndex",
                key_uri=kb.kms_key_uri,
                details={"from": frm, "to": self.to},
            )

    def settle(self) -> None:
        """Wait until every process has read the setting again (or is in a transaction
        that ends before this returns)."""
        time.sleep(SEARCH_INDEX_RECHECK_SECONDS + 0.2)
        self.table.wait_for_older_transactions()

    # --- server -> memory -----------------------------------------------------

    def clear(self) -> None:
        """Every row holding a searchable value loses it; a live row's document is
        re-sealed without the index digest (as the memory index writes it), only where
        the row is unchanged since it was read. Passes until no row holds one."""
        kb = self.kb
        keyring = kb.keyring
        assert keyring is not None
        sealer = EntrySealer(keyring, kb.indexer, kb.telemetry, memory_index=True)
        total = sum(self.table.searchable_counts().values())
        for _ in range(MAX_PASSES):
            after: uuid.UUID | None = None
            skipped = 0
            while batch := self.table.holding_searchable(after, self.batch):
                after = batch[-1].id
                prepared: list[tuple[EntryRow, bytes | None]] = []
                for row in batch:
                    sealed: bytes | None = None
                    if row.doc_sealed is not None and row.deleted_at is None:
                        try:
                            doc = kb.sealer.open_row(row)
                        except IntegrityError:
                            if len(self.failed) < 10_000:
                                self.failed.append(str(row.id))
                        else:
                            cols = sealer.store_columns(
                                row.namespace, row.id, doc._replace(index_digest=None)
                            )
                            sealed = cols["doc_sealed"]
                    prepared.append((row, sealed))
                with kb.audit.transaction("index migration") as conn:
                    n = sum(self.table.clear_row(conn, row, sealed) for row, sealed in prepared)
                    kb.audit.append(
                        conn,
                        "MigrateSearchIndex",
                        key_uri=kb.kms_key_uri,
                        details={"to": "memory", "rows": n, "step": "clear"},
                    )
                self.rows += n
                skipped += len(prepared) - n
                if self.progress is not None:
                    self.progress("clear", self.rows, max(total, self.rows))
            if not skipped and not sum(self.table.searchable_counts().values()):
                return
            self.skipped += skipped
        raise ConflictError(
            "rows kept changing while their search columns were cleared; run"
            " 'sealedkb migrate index --to memory' again"
        )

    def scrub(self) -> tuple[str, ...]:
        kb = self.kb
        if self.progress is not None:
            self.progress("scrub", 0, 1)
        with connect(kb.target.url, allow_insecure=kb.settings.database_allow_insecure) as conn:
            done = self.table.scrub(conn, superuser=is_superuser(conn))
        if self.progress is not None:
            self.progress("scrub", 1, 1)
        return tuple(done)

    # --- memory -> server -----------------------------------------------------

    def build(self) -> None:
        kb = self.kb
        keyring = kb.keyring
        assert keyring is not None
        sealer = EntrySealer(keyring, kb.indexer, kb.telemetry, memory_index=False)
        index_ids: dict[str, uuid.UUID] = {}
        total = self.table.unbuilt_count()
        done = 0
        after: uuid.UUID | None = None
        while True:
            batch = self.table.needing_build(None, after, self.batch)
            if not batch:
                return
            after = batch[-1].row.id
            prepared = []
            for item in batch:
                row = item.row
                ns = row.namespace
                try:
                    doc = kb.sealer.open_row(row)
                    vector = None
                    if item.embedding_sealed is not None:
                        plain = keyring.open(item.embedding_sealed, embedding_aad(ns, row.id))
                        vector = vector_from_bytes(plain, DB_DIM)
                except IntegrityError:
                    if len(self.failed) < 10_000:
                        self.failed.append(str(row.id))
                    continue
                if vector is not None and kb.indexer.embedder is None:
                    raise EmbeddingError(
                        "the server index holds encrypted vectors: migrate index --to server"
                        " needs the embedder configured (SEALEDKB_EMBEDDER)"
                    )
                if ns not in index_ids:
                    keyring.blinder(ns)  # the namespace's index key, made if it has none
                    rec = kb.datakeys.get_active_data_key(ns, KeyPurpose.INDEX)
                    assert rec is not None
                    index_ids[ns] = rec.id
                new_row, cols = sealer.sealed_row(ns, row.entry_type, row.id, doc, vector)
                assert new_row.doc_sealed is not None
                prepared.append((row, new_row.doc_sealed, list(new_row.tag_tokens or []), cols))
            if not prepared:
                continue
            with kb.audit.transaction("index migration") as conn:
                moved = sum(
                    kb.search_table.set_index(
                        conn, row, index_ids[row.namespace], doc_sealed, tags, cols
                    )
                    for row, doc_sealed, tags, cols in prepared
                )
                kb.audit.append(
                    conn,
                    "MigrateSearchIndex",
                    key_uri=kb.kms_key_uri,
                    details={
                        "to": "server",
                        "rows": moved,
                        "skipped": len(prepared) - moved,
                        "step": "build",
                    },
                )
            self.rows += moved
            self.skipped += len(prepared) - moved
            done += len(batch)
            if self.progress is not None:
                self.progress("build", done, max(total, done))


def migrate_index(
    kb: KnowledgeBase,
    to: str,
    *,
    batch: int = INDEX_MIGRATION_BATCH,
    progress: ProgressFn | None = None,
) -> IndexMigrationResult:
    """Move the search index of ``kb`` to ``to`` (memory or server); see the module
    docstring for the order of the steps. Idempotent: run again, it finishes a run
    that was interrupted, or finds nothing to do."""
    if to not in ("memory", "server"):
        raise ValidationError("--to must be memory or server", field="to")
    if not 1 <= batch <= 10_000:
        raise ValidationError("--batch must be between 1 and 10000", field="batch")
    if kb.keyring is None or kb.provider is None or kb.kms_key_uri is None:
        raise ValidationError(
            "a plaintext knowledge base is searched by PostgreSQL; the search index"
            " moves only in an encrypted one",
            field="encryption",
        )
    with connect(kb.target.url, allow_insecure=kb.settings.database_allow_insecure) as lock:
        if not IndexModeTable.try_run_lock(lock):
            raise ConflictError(
                "another 'sealedkb migrate index' is running on this knowledge base"
            )
        return _migrate(kb, to, batch, progress)


def _migrate(
    kb: KnowledgeBase, to: str, batch: int, progress: ProgressFn | None
) -> IndexMigrationResult:
    started = time.monotonic()
    run = _Run(kb, to, batch, progress)
    frm = run.current()
    marker = run.table.marker() or {}
    origin = str(marker.get("from", frm)) if marker.get("to") == to else frm
    scrubbed: tuple[str, ...] = ()
    if to == "memory":
        if frm == "server":
            run.switch(frm)
        run.settle()
        run.clear()
        run.mark("scrubbing", origin)
        scrubbed = run.scrub()
    else:
        if frm == "memory":
            run.mark("building", origin)
            run.build()
            run.switch(frm)
        run.settle()
        run.build()
    run.mark("complete", origin)
    kb.audit.record(
        "MigrateSearchIndex",
        key_uri=kb.kms_key_uri,
        details={"to": to, "rows": run.rows, "step": "complete"},
    )
    kb.follow_search_index(force=True)
    return IndexMigrationResult(
        from_index=origin,
        to_index=to,
        state="complete",
        rows=run.rows,
        skipped=run.skipped,
        failed=len(run.failed),
        failed_ids=tuple(run.failed[:MAX_FAILED_IDS]),
        scrubbed=scrubbed,
        seconds=time.monotonic() - started,
    )
