"""``kb_entries`` rows as bytes and tokens (encrypted mode) or text (plaintext mode).

The store does no crypto: the service hands it sealed blobs and tokens and gets
the same back.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from psycopg import Connection
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from sealedkb.store.db import Database


@dataclass(slots=True)
class EntryRow:
    id: uuid.UUID
    namespace: str
    entry_type: str
    doc_sealed: bytes | None = None
    tag_tokens: list[str] | None = None
    title_plain: str | None = None
    content_plain: str | None = None
    source_plain: str | None = None
    metadata_plain: dict[str, Any] | None = None
    tags_plain: list[str] | None = None
    verified: bool = False
    archived: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None
    version: int = 1
    deleted_at: datetime | None = None


COLUMNS = [f.name for f in fields(EntryRow)]
# Rows are fetched in binary format: bytea in text format travels hex-encoded
# (twice the bytes, decoded in Python), which would tax the encrypted mode alone.
# Column names are fixed identifiers, so plain strings are safe; building them once
# (rather than composing psycopg.sql objects per call) keeps per-query overhead low.
_SELECT = ", ".join(COLUMNS)
_INSERT_COLS = [c for c in COLUMNS if c not in ("created_at", "updated_at", "deleted_at")]
_INSERT = (
    f"INSERT INTO kb_entries ({', '.join(_INSERT_COLS)})"
    f" VALUES ({', '.join(['%s'] * len(_INSERT_COLS))}) RETURNING {_SELECT}"
)
_GET = f"SELECT {_SELECT} FROM kb_entries WHERE id = %s"
_GET_FOR_UPDATE = (
    f"SELECT {_SELECT} FROM kb_entries WHERE id = %s AND deleted_at IS NULL FOR UPDATE"
)
# Columns a caller may set on update (identity, timestamps and version are managed here).
MUTABLE = frozenset(COLUMNS) - {"id", "namespace", "created_at", "updated_at", "version"}
# Search columns (migration 003, store/search.py): written with the entry on update,
# never read by get/list.
MUTABLE |= {
    "kw_tokens",
    "embedding_enc",
    "embedding_sealed",
    "embedding_plain",
    "embed_model",
    "embed_dim",
    "fingerprint",
    "import_key",
    "import_hash",
}


def _from_db(r: Sequence[Any]) -> EntryRow:
    row = EntryRow(*r)
    if row.doc_sealed is not None:
        row.doc_sealed = bytes(row.doc_sealed)
    return row


def _adapt(name: str, value: Any) -> Any:
    if name == "metadata_plain" and value is not None:
        return Jsonb(value)
    return value


# For the other writers of kb_entries rows (store/migration_sql.py): the columns a new
# row is inserted with, and its parameters in that order.
INSERT_COLS: tuple[str, ...] = tuple(_INSERT_COLS)


def insert_values(row: EntryRow) -> list[Any]:
    values = [_adapt(c, getattr(row, c)) for c in _INSERT_COLS]
    if row.tag_tokens is None:
        values[_INSERT_COLS.index("tag_tokens")] = []
    return values


@dataclass(frozen=True, slots=True)
class ListFilter:
    namespace: str | None = None
    entry_type: str | None = None
    tag_token: str | None = None
    tag_plain: str | None = None
    include_archived: bool = True
    limit: int = 50
    offset: int = 0
    namespaces: tuple[str, ...] | None = None  # restrict to these (access scope)


class EntryTable:
    def __init__(self, db: Database) -> None:
        self.db = db

    def insert(self, row: EntryRow, conn: Connection[TupleRow] | None = None) -> EntryRow:
        values = [_adapt(c, getattr(row, c)) for c in _INSERT_COLS]
        if row.tag_tokens is None:
            values[_INSERT_COLS.index("tag_tokens")] = []
        if conn is not None:
            r = conn.execute(_INSERT, values, binary=True).fetchone()
        else:
            with self.db.transaction("add") as c:
                r = c.execute(_INSERT, values, binary=True).fetchone()
        assert r is not None
        return _from_db(r)

    def get(self, entry_id: uuid.UUID, *, include_deleted: bool = False) -> EntryRow | None:
        with self.db.transaction("get") as conn:
            r = conn.execute(_GET, (entry_id,), binary=True).fetchone()
        if r is None:
            return None
        row = _from_db(r)
        if row.deleted_at is not None and not include_deleted:
            return None
        return row

    def get_for_update(self, conn: Connection[TupleRow], entry_id: uuid.UUID) -> EntryRow | None:
        r = conn.execute(_GET_FOR_UPDATE, (entry_id,), binary=True).fetchone()
        return _from_db(r) if r else None

    def update(
        self, conn: Connection[TupleRow], entry_id: uuid.UUID, changes: dict[str, Any]
    ) -> EntryRow:
        bad = set(changes) - MUTABLE
        if bad:
            raise ValueError(f"not updatable: {sorted(bad)}")
        sets = [f"{k} = %s" for k in changes]  # k is checked against MUTABLE above
        sets.append("updated_at = now(), version = version + 1")
        stmt = f"UPDATE kb_entries SET {', '.join(sets)} WHERE id = %s RETURNING {_SELECT}"
        r = conn.execute(
            stmt, [*(_adapt(k, v) for k, v in changes.items()), entry_id], binary=True
        ).fetchone()
        assert r is not None
        return _from_db(r)

    def soft_delete(
        self, entry_id: uuid.UUID, *, namespaces: tuple[str, ...] | None = None
    ) -> bool:
        """Mark deleted; ``namespaces`` limits it to rows of those namespaces."""
        scope = list(namespaces) if namespaces is not None else None
        with self.db.transaction("delete") as conn:
            cur = conn.execute(
                "UPDATE kb_entries SET deleted_at = now(), updated_at = now(),"
                " version = version + 1 WHERE id = %s AND deleted_at IS NULL"
                " AND (%s::text[] IS NULL OR namespace = ANY(%s::text[]))",
                (entry_id, scope, scope),
            )
            return cur.rowcount == 1

    def list(self, f: ListFilter) -> list[EntryRow]:
        where = ["deleted_at IS NULL"]
        params: list[Any] = []
        if f.namespace is not None:
            where.append("namespace = %s")
            params.append(f.namespace)
        if f.entry_type is not None:
            where.append("entry_type = %s")
            params.append(f.entry_type)
        if f.tag_token is not None:
            where.append("tag_tokens @> ARRAY[%s]::text[]")
            params.append(f.tag_token)
        if f.tag_plain is not None:
            where.append("tags_plain @> ARRAY[%s]::text[]")
            params.append(f.tag_plain)
        if not f.include_archived:
            where.append("NOT archived")
        if f.namespaces is not None:
            where.append("namespace = ANY(%s)")
            params.append(list(f.namespaces))
        stmt = (
            f"SELECT {_SELECT} FROM kb_entries WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, id LIMIT %s OFFSET %s"
        )
        with self.db.transaction("list") as conn:
            rows = conn.execute(stmt, [*params, f.limit, f.offset], binary=True).fetchall()
        return [_from_db(r) for r in rows]

    def stats(self, namespaces: builtins.list[str] | None) -> builtins.list[tuple[str, str, int]]:
        """(namespace, entry_type, count) of live entries."""
        where = "deleted_at IS NULL"
        params: list[Any] = []
        if namespaces is not None:
            where += " AND namespace = ANY(%s)"
            params.append(namespaces)
        with self.db.transaction("stats") as conn:
            rows = conn.execute(
                f"SELECT namespace, entry_type, count(*) FROM kb_entries WHERE {where}"
                " GROUP BY 1, 2 ORDER BY 1, 2",
                params,
            ).fetchall()
        return [(r[0], r[1], int(r[2])) for r in rows]

    def tag_counts(self, namespace: str, limit: int) -> builtins.list[tuple[str, int, uuid.UUID]]:
        """Most used tag tokens (encrypted mode) or tags (plaintext) of a namespace, with
        one entry id carrying each (so the service can name a token's tag)."""
        with self.db.transaction("stats") as conn:
            rows = conn.execute(
                "SELECT t, count(*), (array_agg(id))[1] FROM ("
                " SELECT id, unnest(CASE WHEN doc_sealed IS NULL THEN tags_plain"
                " ELSE tag_tokens END) AS t FROM kb_entries"
                " WHERE namespace = %s AND deleted_at IS NULL) s"
                " GROUP BY t ORDER BY 2 DESC, 1 LIMIT %s",
                (namespace, limit),
            ).fetchall()
        return [(r[0], int(r[1]), r[2]) for r in rows]

    def counts(self) -> dict[str, int]:
        with self.db.transaction("status") as conn:
            r = conn.execute(
                "SELECT count(*) FILTER (WHERE deleted_at IS NULL),"
                " count(*) FILTER (WHERE content_plain IS NOT NULL),"
                " count(*) FILTER (WHERE doc_sealed IS NOT NULL),"
                " count(DISTINCT namespace)"
                " FROM kb_entries"
            ).fetchone()
        assert r is not None
        return {"total": r[0], "plaintext": r[1], "sealed": r[2], "namespaces": r[3]}
