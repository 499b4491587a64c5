"""SQL for hybrid search, dedup and import (migration 003). No crypto here.

The store sees blind tokens, DCPE ciphertexts, sealed bytes and opaque digests
in encrypted mode, and plaintext only in plaintext mode. The search columns are
written in the same INSERT/UPDATE as the entry (one row version, one round
trip) but are never read by get/list: a get stays as cheap as before.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from psycopg import Connection
from psycopg.rows import TupleRow

from sealedkb.store.db import Database
from sealedkb.store.entries import _INSERT_COLS, _SELECT, EntryRow, _adapt, _from_db

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


@dataclass(slots=True)
class SearchColumns:
    """Search-side columns of one entry, as the service computed them."""

    kw_tokens: str | None = None  # tsvector text of blind tokens (encrypted mode)
    embedding_enc: NDArray[np.float32] | None = None  # DCPE ciphertext
    embedding_sealed: bytes | None = None  # exact embedding, sealed
    embedding_plain: NDArray[np.float32] | None = None  # plaintext mode
    embed_model: str | None = None
    embed_dim: int | None = None
    fingerprint: str | None = None
    import_key: str | None = None
    import_hash: str | None = None
    # Not a column: the digest of kw_tokens and embedding_enc that the sealed document
    # carries (search/digest.py), handed from the indexer to the sealer.
    index_digest: bytes | None = field(default=None, metadata={"column": False})

    def as_changes(self, *, embedding_only: bool = False) -> dict[str, Any]:
        names = _EMBEDDING_COLS if embedding_only else SEARCH_COLS
        return {n: getattr(self, n) for n in names}


SEARCH_COLS = tuple(f.name for f in fields(SearchColumns) if f.metadata.get("column", True))
_EMBEDDING_COLS = (
    "embedding_enc",
    "embedding_sealed",
    "embedding_plain",
    "embed_model",
    "embed_dim",
)
_CASTS = {"kw_tokens": "%s::tsvector"}
_ALL_INSERT = [*_INSERT_COLS, *SEARCH_COLS]
_VALUES = ", ".join(_CASTS.get(c, "%s") for c in _ALL_INSERT)
_INSERT = f"INSERT INTO kb_entries ({', '.join(_ALL_INSERT)}) VALUES ({_VALUES})"
_RETURNING = f" RETURNING {_SELECT}"
# Dedup without a race: the partial unique index decides, in the same statement.
_ON_DUP = (
    " ON CONFLICT (namespace, fingerprint)"
    " WHERE deleted_at IS NULL AND fingerprint IS NOT NULL DO NOTHING"
)
_BY_FINGERPRINT = (
    f"SELECT {_SELECT} FROM kb_entries WHERE namespace = %s AND fingerprint = %s"
    " AND deleted_at IS NULL"
)


def _existing(conn: Connection[TupleRow], namespace: str, fingerprint: str | None) -> EntryRow:
    """The live entry whose fingerprint made a dedup INSERT insert nothing."""
    r = conn.execute(_BY_FINGERPRINT, (namespace, fingerprint), binary=True).fetchone()
    if r is None:  # pragma: no cover - the conflicting row was deleted meanwhile
        raise RuntimeError("dedup conflict without a live entry")
    return _from_db(r)


@dataclass(frozen=True, slots=True)
class SearchFilter:
    namespace: str
    entry_type: str | None = None
    tag_tokens: tuple[str, ...] = ()  # all must be present (encrypted mode)
    tags_plain: tuple[str, ...] = ()  # all must be present (plaintext mode)
    since: datetime | None = None

    def where(self) -> tuple[str, list[Any]]:
        where = ["namespace = %s", "deleted_at IS NULL"]
        params: list[Any] = [self.namespace]
        if self.entry_type is not None:
            where.append("entry_type = %s")
            params.append(self.entry_type)
        if self.tag_tokens:
            where.append("tag_tokens @> %s::text[]")
            params.append(list(self.tag_tokens))
        if self.tags_plain:
            where.append("tags_plain @> %s::text[]")
            params.append(list(self.tags_plain))
        if self.since is not None:
            where.append("created_at >= %s")
            params.append(self.since)
        return " AND ".join(where), params


@dataclass(slots=True)
class HitRow:
    """What a search hit needs from its row (the sealed doc or the plaintext)."""

    id: uuid.UUID
    namespace: str
    entry_type: str
    doc_sealed: bytes | None
    title_plain: str | None
    content_plain: str | None
    source_plain: str | None
    tags_plain: list[str] | None
    created_at: datetime
    kw_hash: bytes | None = None  # encrypted mode: the stored search columns' hashes
    vec_hash: bytes | None = None


REINDEX_MARKER = "reindex_pending:"  # kb_meta key prefix: an unfinished reindex


@dataclass(frozen=True, slots=True)
class ReindexRow:
    """A row whose search columns a reindex rebuilds."""

    row: EntryRow
    embedding_sealed: bytes | None
    has_fingerprint: bool  # a forced duplicate has none, and keeps none


class VectorCandidate(NamedTuple):
    """A semantic candidate, nearest first. Plaintext: its id and cosine similarity.
    Encrypted: its id as text (what the sealed embedding's AAD holds) and ``stamp``,
    the row version's transaction id (``xmin``: any change of the row changes it),
    under which its opened exact embedding may be remembered; the sealed embedding
    itself is read by :meth:`SearchTable.sealed_embeddings` for the ones that are not."""

    id: uuid.UUID | str
    score: float | None
    stamp: int | None


_HIT_BASE = ", ".join(f.name for f in fields(HitRow) if f.name not in ("kw_hash", "vec_hash"))


class SearchTable:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._common: dict[str, tuple[float, dict[str, float]]] = {}

    def term_frequencies(self, column: str, max_age: float = 60.0) -> dict[str, float]:
        """Fraction of rows holding each of the most common lexemes of ``kw_tokens`` or
        ``kw_plain``, from ANALYZE's statistics (pg_stats.most_common_elems; empty
        before the first ANALYZE). Cached for ``max_age`` seconds. The database knows
        these frequencies anyway: they are statistics over the stored column."""
        if column not in ("kw_tokens", "kw_plain"):
            raise ValueError("not a keyword column")
        now = time.monotonic()
        hit = self._common.get(column)
        if hit is not None and now - hit[0] < max_age:
            return hit[1]
        with self.db.transaction("search statistics") as conn:
            r = conn.execute(
                "SELECT most_common_elems::text::text[], most_common_elem_freqs FROM pg_stats"
                " WHERE schemaname = current_schema() AND tablename = 'kb_entries'"
                " AND attname = %s",
                (column,),
            ).fetchone()
        freqs = dict(zip(r[0], r[1], strict=False)) if r and r[0] else {}
        self._common[column] = (now, freqs)
        return freqs

    # --- writes ------------------------------------------------------------

    def insert(
        self,
        row: EntryRow,
        cols: SearchColumns,
        *,
        dedup: bool,
        conn: Connection[TupleRow] | None = None,
    ) -> tuple[EntryRow, bool]:
        """Insert the entry with its search columns. With ``dedup`` and a live entry of
        the same fingerprint in the namespace, insert nothing and return that entry.
        Returns (row, created)."""
        stmt, values = self._insert_statement(row, cols, dedup)
        if conn is None:
            with self.db.transaction("add") as c:
                return self._insert(c, stmt, values, row.namespace, cols.fingerprint)
        return self._insert(conn, stmt, values, row.namespace, cols.fingerprint)

    def insert_many(
        self,
        conn: Connection[TupleRow],
        items: Iterable[tuple[EntryRow, SearchColumns]],
        *,
        dedup: bool,
    ) -> list[tuple[EntryRow, bool]]:
        """Insert entries in the caller's transaction, in pipeline mode: each INSERT is
        sent without waiting for its result, so while PostgreSQL inserts one row (heap,
        GIN, HNSW) the caller's ``items`` generator seals and indexes the next one.
        Dedup as :meth:`insert` (a duplicate of an earlier item of the same batch
        returns that item's row). Returns (row, created) per item, in order; any
        error aborts the whole transaction."""
        sent: list[tuple[Any, str, str | None]] = []
        with conn.pipeline():
            for row, cols in items:
                stmt, values = self._insert_statement(row, cols, dedup)
                cur = conn.cursor(binary=True)
                cur.execute(stmt, values)
                sent.append((cur, row.namespace, cols.fingerprint))
        out = []
        for cur, ns, fp in sent:
            r = cur.fetchone()
            out.append((_from_db(r), True) if r is not None else (_existing(conn, ns, fp), False))
        return out

    @staticmethod
    def _insert_statement(row: EntryRow, cols: SearchColumns, dedup: bool) -> tuple[str, list[Any]]:
        values = [_adapt(c, getattr(row, c)) for c in _INSERT_COLS]
        if row.tag_tokens is None:
            values[_INSERT_COLS.index("tag_tokens")] = []
        values.extend(getattr(cols, c) for c in SEARCH_COLS)
        stmt = _INSERT + (_ON_DUP if dedup and cols.fingerprint else "") + _RETURNING
        return stmt, values

    @staticmethod
    def _insert(
        conn: Connection[TupleRow], stmt: str, values: list[Any], ns: str, fp: str | None
    ) -> tuple[EntryRow, bool]:
        r = conn.execute(stmt, values, binary=True).fetchone()
        if r is not None:
            return _from_db(r), True
        return _existing(conn, ns, fp), False

    def fingerprint_taken(
        self, conn: Connection[TupleRow], namespace: str, fingerprint: str, other_than: uuid.UUID
    ) -> bool:
        r = conn.execute(
            "SELECT 1 FROM kb_entries WHERE namespace = %s AND fingerprint = %s"
            " AND deleted_at IS NULL AND id <> %s",
            (namespace, fingerprint, other_than),
        ).fetchone()
        return r is not None

    def set_embedding(
        self,
        conn: Connection[TupleRow],
        entry_id: uuid.UUID,
        version: int,
        cols: SearchColumns,
        doc_sealed: bytes | None = None,
    ) -> bool:
        """Replace only the vector columns (reembed) and, in encrypted mode, the sealed
        document that carries their digest, unless the entry changed since it was read
        (its own update already wrote a fresh vector). No new entry version."""
        changes = cols.as_changes(embedding_only=True)
        if doc_sealed is not None:
            changes["doc_sealed"] = doc_sealed
        sets = ", ".join(f"{k} = %s" for k in changes)
        cur = conn.execute(
            f"UPDATE kb_entries SET {sets} WHERE id = %s AND version = %s AND deleted_at IS NULL",
            [*changes.values(), entry_id, version],
        )
        return cur.rowcount == 1

    def soft_delete_many(self, conn: Connection[TupleRow], ids: Sequence[uuid.UUID]) -> int:
        cur = conn.execute(
            "UPDATE kb_entries SET deleted_at = now(), updated_at = now(), version = version + 1"
            " WHERE id = ANY(%s) AND deleted_at IS NULL",
            (list(ids),),
        )
        return cur.rowcount

    # --- import --------------------------------------------------------------

    def chunks_of(self, namespace: str, import_key: str) -> list[tuple[uuid.UUID, str | None]]:
        """(id, import_hash) of the live chunks imported from one file."""
        with self.db.transaction("import lookup") as conn:
            rows = conn.execute(
                "SELECT id, import_hash FROM kb_entries WHERE namespace = %s"
                " AND import_key = %s AND deleted_at IS NULL",
                (namespace, import_key),
            ).fetchall()
        return [(r[0], r[1]) for r in rows]

    # --- reembed -----------------------------------------------------------

    def needing_embedding(
        self,
        model_id: str,
        dim: int,
        namespace: str | None,
        after: uuid.UUID | None,
        limit: int,
        *,
        redo_all: bool = False,
    ) -> list[EntryRow]:
        """Live entries whose vector is missing or from another model, in id order
        (keyset pagination: a rerun resumes where the last one stopped)."""
        where = ["deleted_at IS NULL"]
        params: list[Any] = []
        if not redo_all:
            where.append("(embed_model IS DISTINCT FROM %s OR embed_dim IS DISTINCT FROM %s)")
            params.extend([model_id, dim])
        if namespace is not None:
            where.append("namespace = %s")
            params.append(namespace)
        if after is not None:
            where.append("id > %s")
            params.append(after)
        stmt = f"SELECT {_SELECT} FROM kb_entries WHERE {' AND '.join(where)} ORDER BY id LIMIT %s"
        with self.db.transaction("reembed scan") as conn:
            rows = conn.execute(stmt, [*params, limit], binary=True).fetchall()
        return [_from_db(r) for r in rows]

    # --- reindex -----------------------------------------------------------

    def needing_reindex(
        self, namespace: str, index_key_id: uuid.UUID, after: uuid.UUID | None, limit: int
    ) -> list[ReindexRow]:
        """Live rows of a namespace whose search columns were not rebuilt under the
        index data key ``index_key_id`` (migration 008), with their sealed exact
        embeddings, in id order (keyset pagination)."""
        stmt = (
            f"SELECT {_SELECT}, embedding_sealed, fingerprint IS NOT NULL FROM kb_entries"
            " WHERE namespace = %s"
            " AND deleted_at IS NULL AND doc_sealed IS NOT NULL"
            " AND index_key_id IS DISTINCT FROM %s"
            + (" AND id > %s" if after is not None else "")
            + " ORDER BY id LIMIT %s"
        )
        params: list[Any] = [namespace, index_key_id]
        if after is not None:
            params.append(after)
        with self.db.transaction("reindex scan") as conn:
            rows = conn.execute(stmt, [*params, limit], binary=True).fetchall()
        n = len(_SELECT.split(", "))
        return [
            ReindexRow(_from_db(r[:n]), None if r[n] is None else bytes(r[n]), bool(r[n + 1]))
            for r in rows
        ]

    def set_index(
        self,
        conn: Connection[TupleRow],
        row: EntryRow,
        index_key_id: uuid.UUID,
        doc_sealed: bytes,
        tag_tokens: list[str],
        cols: SearchColumns,
    ) -> bool:
        """Replace a row's search columns, its sealed document (which carries their
        digest) and tag tokens, marked as rebuilt under ``index_key_id``, unless the
        row changed since it was read (same version and sealed document). No new
        entry version: the entry did not change."""
        changes: dict[str, Any] = {
            "doc_sealed": doc_sealed,
            "tag_tokens": tag_tokens,
            "kw_tokens": cols.kw_tokens,
            "fingerprint": cols.fingerprint,
            "index_key_id": index_key_id,
        }
        if cols.embedding_enc is not None:
            changes["embedding_enc"] = cols.embedding_enc
            changes["embedding_sealed"] = cols.embedding_sealed
        # A live entry of the same content indexed meanwhile under the new key (an add
        # during the reindex) keeps the fingerprint: this one becomes a duplicate.
        fp = (
            "fingerprint = CASE WHEN EXISTS (SELECT 1 FROM kb_entries o WHERE"
            " o.namespace = kb_entries.namespace AND o.fingerprint = %s AND o.id <> kb_entries.id"
            " AND o.deleted_at IS NULL) THEN NULL ELSE %s END"
        )
        fingerprint = changes.pop("fingerprint")
        sets = ", ".join([*(f"{k} = {_CASTS.get(k, '%s')}" for k in changes), fp])
        cur = conn.execute(
            f"UPDATE kb_entries SET {sets} WHERE id = %s AND version = %s"
            " AND doc_sealed = %s AND deleted_at IS NULL",
            [*changes.values(), fingerprint, fingerprint, row.id, row.version, row.doc_sealed],
        )
        return cur.rowcount == 1

    def reindex_marker(self, namespace: str) -> uuid.UUID | None:
        """The index data key an unfinished reindex of ``namespace`` rebuilds under."""
        with self.db.transaction("reindex marker") as conn:
            r = conn.execute(
                "SELECT value FROM kb_meta WHERE key = %s", (REINDEX_MARKER + namespace,)
            ).fetchone()
        try:
            return uuid.UUID(r[0]) if r else None
        except ValueError:
            return None  # not one of ours: the run starts afresh

    def reindex_retired_keys(self, namespace: str) -> tuple[uuid.UUID, uuid.UUID] | None:
        """While a reindex of ``namespace`` is unfinished: the index and vector data
        keys it moves the rows off (the ones retired last), which search also queries
        so rows not yet rebuilt are found. None when no reindex is pending."""
        with self.db.transaction("reindex marker") as conn:
            r = conn.execute(
                "SELECT (SELECT id FROM kb_data_keys WHERE namespace = %s AND purpose = 'index'"
                "   AND NOT active AND retired_at IS NOT NULL ORDER BY retired_at DESC LIMIT 1),"
                " (SELECT id FROM kb_data_keys WHERE namespace = %s AND purpose = 'vector'"
                "   AND NOT active AND retired_at IS NOT NULL ORDER BY retired_at DESC LIMIT 1)"
                " FROM kb_meta WHERE key = %s",
                (namespace, namespace, REINDEX_MARKER + namespace),
            ).fetchone()
        if r is None or r[0] is None or r[1] is None:
            return None
        return r[0], r[1]

    @staticmethod
    def set_reindex_marker(
        conn: Connection[TupleRow], namespace: str, index_key_id: uuid.UUID | None
    ) -> None:
        key = REINDEX_MARKER + namespace
        if index_key_id is None:
            conn.execute("DELETE FROM kb_meta WHERE key = %s", (key,))
            return
        conn.execute(
            "INSERT INTO kb_meta (key, value) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now()",
            (key, str(index_key_id)),
        )

    def reindex_counts(self, namespace: str, index_key_id: uuid.UUID) -> dict[str, int]:
        """Live sealed rows of a namespace: rebuilt under ``index_key_id``, and not."""
        with self.db.transaction("status") as conn:
            r = conn.execute(
                "SELECT count(*) FILTER (WHERE index_key_id = %s),"
                " count(*) FILTER (WHERE index_key_id IS DISTINCT FROM %s)"
                " FROM kb_entries WHERE namespace = %s AND deleted_at IS NULL"
                " AND doc_sealed IS NOT NULL",
                (index_key_id, index_key_id, namespace),
            ).fetchone()
        assert r is not None
        return {"rebuilt": r[0], "remaining": r[1]}

    def embedding_counts(self, model_id: str, dim: int) -> dict[str, int]:
        with self.db.transaction("status") as conn:
            r = conn.execute(
                "SELECT count(*) FILTER (WHERE embed_model = %s AND embed_dim = %s),"
                " count(*) FILTER (WHERE embed_model IS NULL),"
                " count(*) FILTER (WHERE embed_model IS DISTINCT FROM %s"
                "   AND embed_model IS NOT NULL)"
                " FROM kb_entries WHERE deleted_at IS NULL",
                (model_id, dim, model_id),
            ).fetchone()
        assert r is not None
        return {"current": r[0], "missing": r[1], "other_model": r[2]}

    # --- search ------------------------------------------------------------

    def keyword_candidates(
        self,
        f: SearchFilter,
        *,
        encrypted: bool,
        keyword_query: str,
        keyword_filter: str | None,
        depth: int,
        conn: Connection[TupleRow] | None = None,
    ) -> list[tuple[uuid.UUID, float]]:
        """(id, rank) best first (ts_rank encrypted, ts_rank_cd plaintext).
        ``keyword_query`` is a tsquery of blind tokens (encrypted) or the raw query
        text for plainto_tsquery (plaintext); it ranks.
        ``keyword_filter`` (a tsquery of some of its lexemes) selects the rows to rank:
        ranking every row that holds a very common word would cost ~10 µs a row."""
        if conn is None:
            with self.db.transaction("search") as c:
                return self.keyword_candidates(
                    f,
                    encrypted=encrypted,
                    keyword_query=keyword_query,
                    keyword_filter=keyword_filter,
                    depth=depth,
                    conn=c,
                )
        where, params = f.where()
        rank = "ts_rank_cd"
        if encrypted:
            q = "CAST(%s AS tsquery)"
            col = "kw_tokens"
            # Blind tokens are stored without positions (docs/SEARCH.md, "Leakage"):
            # ts_rank (frequency) rather than ts_rank_cd (cover density, which needs
            # positions and ranks every stripped row 0).
            rank = "ts_rank"
        else:
            # plainto_tsquery ANDs the words; OR them, as the blind query does.
            q = "CAST(replace(plainto_tsquery('english', %s)::text, ' & ', ' | ') AS tsquery)"
            col = "kw_plain"
        if keyword_filter:
            stmt = (
                f"SELECT id, {rank}({col}, q) AS r FROM kb_entries, {q} AS q,"
                " CAST(%s AS tsquery) AS f"
                f" WHERE {col} @@ f AND {where} ORDER BY r DESC, id LIMIT %s"
            )
            args = [keyword_query, keyword_filter, *params, depth]
        else:
            stmt = (
                f"SELECT id, {rank}({col}, q) AS r FROM kb_entries, {q} AS q"
                f" WHERE {col} @@ q AND {where} ORDER BY r DESC, id LIMIT %s"
            )
            args = [keyword_query, *params, depth]
        rows = conn.execute(stmt, args).fetchall()
        return [(r[0], float(r[1])) for r in rows]

    def vector_candidates(
        self,
        f: SearchFilter,
        *,
        encrypted: bool,
        vector: NDArray[np.float32],
        model_id: str | None,
        depth: int,
        ef_search: int,
        conn: Connection[TupleRow] | None = None,
    ) -> list[VectorCandidate]:
        """(id, cosine similarity or None, sealed exact embedding or None), nearest
        first by the HNSW index on the DCPE ciphertexts (encrypted) or the plain
        vectors. Encrypted candidates carry their id as text (what the sealed
        embedding's AAD holds; only the re-ranked top become UUIDs), plaintext ones
        as a UUID."""
        if conn is None:
            with self.db.transaction("search") as c:
                return self.vector_candidates(
                    f,
                    encrypted=encrypted,
                    vector=vector,
                    model_id=model_id,
                    depth=depth,
                    ef_search=ef_search,
                    conn=c,
                )
        where, params = f.where()
        conn.execute(
            "SELECT set_config('hnsw.ef_search', %s, true),"
            " set_config('hnsw.iterative_scan', 'relaxed_order', true)",
            (str(ef_search),),
        )
        if encrypted:
            stmt = (
                "SELECT id::text, NULL, xmin::text::bigint FROM kb_entries"
                f" WHERE embedding_enc IS NOT NULL AND embed_model = %s AND {where}"
                " ORDER BY embedding_enc <=> %s LIMIT %s"
            )
        else:
            stmt = (
                "SELECT id, 1 - (embedding_plain <=> %s), NULL FROM kb_entries"
                f" WHERE embedding_plain IS NOT NULL AND embed_model = %s AND {where}"
                " ORDER BY embedding_plain <=> %s LIMIT %s"
            )
        args: list[Any] = [model_id, *params, vector, depth]
        if not encrypted:
            args = [vector, *args]
        rows = conn.execute(stmt, args, binary=True).fetchall()
        return [VectorCandidate(r[0], None if r[1] is None else float(r[1]), r[2]) for r in rows]

    def sealed_embeddings(self, namespace: str, ids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        """``id -> (stamp, sealed exact embedding)`` of live rows of ``namespace`` among
        ``ids`` (an id that is gone, moved or has no embedding is absent)."""
        if not ids:
            return {}
        with self.db.transaction("search") as conn:
            rows = conn.execute(
                "SELECT id::text, xmin::text::bigint, embedding_sealed FROM kb_entries"
                " WHERE id = ANY(%s::uuid[]) AND namespace = %s AND deleted_at IS NULL"
                " AND embedding_sealed IS NOT NULL",
                (list(ids), namespace),
                binary=True,
            ).fetchall()
        return {r[0]: (r[1], bytes(r[2])) for r in rows}

    def hit_rows(
        self, ids: Sequence[uuid.UUID], *, column_hashes: tuple[str, str] | None = None
    ) -> dict[uuid.UUID, HitRow]:
        """The rows of the hits; ``column_hashes``: two SQL expressions computed over
        each row's stored search columns (the caller's digest definition)."""
        if not ids:
            return {}
        extra = f", {column_hashes[0]}, {column_hashes[1]}" if column_hashes else ""
        with self.db.transaction("search") as conn:
            rows = conn.execute(
                f"SELECT {_HIT_BASE}{extra} FROM kb_entries"
                " WHERE id = ANY(%s) AND deleted_at IS NULL",
                (list(ids),),
                binary=True,
            ).fetchall()
        out = {}
        for r in rows:
            h = HitRow(*r)
            if h.doc_sealed is not None:
                h.doc_sealed = bytes(h.doc_sealed)
            out[h.id] = h
        return out
