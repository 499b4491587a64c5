"""The change feed of kb_entries (migration 007) and the reads of the memory index.

No crypto here: the memory search index (search/memory.py) reads sealed rows in
batches and the changes other processes made, and opens them itself.

A change row is written by a trigger in the same transaction as the row change.
Its ``seq`` is drawn when the row changes, not when the transaction commits, so
a reader that only asked for ``seq > last`` could miss a transaction that drew a
lower seq and committed late. Instead a reader keeps a *horizon*: the oldest
transaction id still running when it last read (``pg_snapshot_xmin``). Every
change it has not seen yet was written by a transaction with an id at or above
that horizon, so it asks for those (``xid >= horizon``, indexed) and skips the
ones it already applied.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import Connection
from psycopg.rows import TupleRow

from sealedkb.store.db import Database
from sealedkb.store.entries import _SELECT, EntryRow, _from_db

__all__ = ["Change", "ChangeFeed", "FeedPosition", "IndexRow"]

BATCH_ROWS = 1000  # rows per round trip while an index is built


@dataclass(frozen=True, slots=True)
class Change:
    seq: int
    xid: int
    entry_id: uuid.UUID
    namespace: str


@dataclass(frozen=True, slots=True)
class FeedPosition:
    """``epoch``: what positions are relative to (the database's and the two tables'
    object ids: a restore, which drops and loads the tables with triggers off, or a
    move to another database changes it). ``first_seq``: the oldest change still
    held (None: none); ``last_seq``: the last change number drawn (0: none yet).
    A reader at change ``n`` missed nothing to pruning if ``last_seq == n`` or
    ``first_seq <= n + 1`` (pruning deletes the oldest changes first)."""

    epoch: str
    first_seq: int | None
    last_seq: int

    def covers(self, seq: int) -> bool:
        """Whether every change after number ``seq`` is still in the feed."""
        if self.first_seq is None:
            return self.last_seq <= seq
        return self.first_seq <= seq + 1


@dataclass(frozen=True, slots=True)
class IndexRow:
    """What the memory index needs of a row: bookkeeping and the sealed values."""

    id: uuid.UUID
    namespace: str
    entry_type: str
    created_at: datetime
    archived: bool
    deleted: bool
    doc_sealed: bytes | None
    embedding_sealed: bytes | None
    embed_model: str | None


_INDEX_COLS = (
    "id, namespace, entry_type, created_at, archived, deleted_at IS NOT NULL,"
    " doc_sealed, embedding_sealed, embed_model"
)


def _index_row(r: Sequence[Any]) -> IndexRow:
    doc = r[6]
    emb = r[7]
    return IndexRow(
        id=r[0],
        namespace=str(r[1]),
        entry_type=str(r[2]),
        created_at=r[3],
        archived=bool(r[4]),
        deleted=bool(r[5]),
        doc_sealed=None if doc is None else bytes(doc),
        embedding_sealed=None if emb is None else bytes(emb),
        embed_model=None if r[8] is None else str(r[8]),
    )


class ChangeFeed:
    def __init__(self, db: Database) -> None:
        self.db = db

    @contextmanager
    def _tx(self, conn: Connection[TupleRow] | None, action: str) -> Iterator[Connection[TupleRow]]:
        """The caller's connection (its transaction, e.g. one holding a lock), or a
        transaction of its own."""
        if conn is not None:
            yield conn
            return
        with self.db.transaction(action) as own:
            yield own

    def horizon(self, conn: Connection[TupleRow] | None = None) -> int:
        """The oldest transaction id still running: every change not yet committed
        now will carry an id at or above it."""
        with self._tx(conn, "change feed") as c:
            r = c.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text").fetchone()
        assert r is not None
        return int(r[0])

    def since(
        self, horizon: int, conn: Connection[TupleRow] | None = None
    ) -> tuple[int, list[Change]]:
        """(the new horizon, the changes written by transactions at or above
        ``horizon``), oldest first. The new horizon is taken before the changes are
        read, so a change committed in between is read again next time, never lost."""
        # One statement: the horizon is that of the very snapshot the changes are read in.
        with self._tx(conn, "change feed") as c:
            rows = c.execute(
                "WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS x)"
                " SELECT h.x, c.seq, c.xid::text, c.entry_id, c.namespace"
                " FROM h LEFT JOIN kb_changes c ON c.xid >= %s::xid8 ORDER BY c.seq",
                (str(horizon),),
            ).fetchall()
        changes = [Change(int(s), int(x), e, n) for _, s, x, e, n in rows if s is not None]
        return int(rows[0][0]), changes

    def prune(self, keep_seconds: float) -> int:
        """Delete the changes older than ``keep_seconds`` (in seq order, so the scan
        stops at the first recent one); returns how many went."""
        with self.db.transaction("change feed") as conn:
            cur = conn.execute(
                "DELETE FROM kb_changes WHERE seq < coalesce((SELECT seq FROM kb_changes"
                " WHERE changed_at >= now() - make_interval(secs => %s) ORDER BY seq LIMIT 1),"
                " (SELECT max(seq) + 1 FROM kb_changes))",
                (keep_seconds,),
            )
            return cur.rowcount

    def position(self) -> FeedPosition:
        """Where the feed stands (the memory index's warm-start image,
        search/warm_start.py, records it and checks it before use)."""
        with self.db.transaction("change feed") as c:
            r = c.execute(
                "SELECT (SELECT oid FROM pg_database WHERE datname = current_database())::text,"
                " 'kb_entries'::regclass::oid::text, 'kb_changes'::regclass::oid::text,"
                " (SELECT min(seq) FROM kb_changes),"
                " (SELECT CASE WHEN is_called THEN last_value ELSE 0 END"
                "  FROM kb_changes_seq_seq)"
            ).fetchone()
        assert r is not None
        return FeedPosition(f"{r[0]}.{r[1]}.{r[2]}", None if r[3] is None else int(r[3]), int(r[4]))

    def count_live(self, namespace: str, conn: Connection[TupleRow] | None = None) -> int:
        with self._tx(conn, "memory index") as c:
            r = c.execute(
                "SELECT count(*) FROM kb_entries WHERE namespace = %s AND deleted_at IS NULL",
                (namespace,),
            ).fetchone()
        assert r is not None
        return int(r[0])

    def live_rows(
        self, namespace: str, batch: int = BATCH_ROWS, conn: Connection[TupleRow] | None = None
    ) -> Iterator[list[IndexRow]]:
        """The live rows of a namespace in batches (keyset pagination by id)."""
        after: uuid.UUID | None = None
        while True:
            with self._tx(conn, "memory index") as c:
                rows = c.execute(
                    f"SELECT {_INDEX_COLS} FROM kb_entries WHERE namespace = %s"
                    " AND deleted_at IS NULL AND (%s::uuid IS NULL OR id > %s::uuid)"
                    " ORDER BY id LIMIT %s",
                    (namespace, after, after, batch),
                    binary=True,
                ).fetchall()
            if not rows:
                return
            out = [_index_row(r) for r in rows]
            after = out[-1].id
            yield out
            if len(rows) < batch:
                return

    def rows(
        self, ids: Sequence[uuid.UUID], conn: Connection[TupleRow] | None = None
    ) -> list[IndexRow]:
        """The current state of these rows (deleted ones included, flagged)."""
        if not ids:
            return []
        with self._tx(conn, "memory index") as c:
            rows = c.execute(
                f"SELECT {_INDEX_COLS} FROM kb_entries WHERE id = ANY(%s)",
                (list(ids),),
                binary=True,
            ).fetchall()
        return [_index_row(r) for r in rows]

    def entries(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, EntryRow]:
        """Full live rows by id (a page of a tag-filtered list)."""
        if not ids:
            return {}
        with self.db.transaction("list") as conn:
            rows = conn.execute(
                f"SELECT {_SELECT} FROM kb_entries WHERE id = ANY(%s) AND deleted_at IS NULL",
                (list(ids),),
                binary=True,
            ).fetchall()
        out = [_from_db(r) for r in rows]
        return {r.id: r for r in out}

    def has_memory_indexed_rows(self) -> bool:
        """Whether any sealed row lacks every search column (a memory-mode row);
        answered from the partial index of migration 007."""
        with self.db.transaction("open") as conn:
            r = conn.execute(
                "SELECT 1 FROM kb_entries WHERE doc_sealed IS NOT NULL AND kw_tokens IS NULL"
                " AND embedding_enc IS NULL LIMIT 1"
            ).fetchone()
        return r is not None


def lock_namespace(conn: Connection[TupleRow], namespace: str) -> None:
    """Serialise adds to one namespace for the caller's transaction: dedup is
    answered by the memory index, so two processes must not both find no
    duplicate and both insert."""
    key = zlib.crc32(b"sealedkb/dedup|" + namespace.encode()) - (1 << 31)
    conn.execute("SELECT pg_advisory_xact_lock(7, %s)", (key,))
