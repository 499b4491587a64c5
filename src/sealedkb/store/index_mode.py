"""SQL of switching where the search index lives (``sealedkb migrate index``,
migrate/index_mode.py). No crypto here: the columns are cleared or selected as bytes.

The searchable columns of the server index are ``kw_tokens``, ``embedding_enc``,
``tag_tokens`` and ``fingerprint`` (and ``index_key_id``, which says under which index
key they were built); a memory-mode row holds none of them.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from psycopg import Connection
from psycopg.rows import TupleRow

from sealedkb.store.db import Database
from sealedkb.store.entries import _SELECT, EntryRow, _from_db
from sealedkb.store.jobs import job_lock_key
from sealedkb.store.search import ReindexRow

__all__ = ["INDEX_MIGRATION_KEY", "SETTING_KEY", "IndexModeTable"]

SETTING_KEY = "search_index"  # kb_meta: memory or server (MACed; kb/knowledge_base.py)
INDEX_MIGRATION_KEY = "search_index_migration"  # kb_meta: progress marker (JSON)
RUN_LOCK = "migrate index"  # one run at a time

_HOLDS_SEARCHABLE = (
    "kw_tokens IS NOT NULL OR embedding_enc IS NOT NULL OR fingerprint IS NOT NULL"
    " OR cardinality(tag_tokens) > 0 OR index_key_id IS NOT NULL"
)


class IndexModeTable:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- the progress marker ------------------------------------------------

    def marker(self) -> dict[str, Any] | None:
        with self.db.transaction("index migration marker") as conn:
            r = conn.execute(
                "SELECT value FROM kb_meta WHERE key = %s", (INDEX_MIGRATION_KEY,)
            ).fetchone()
        if r is None:
            return None
        try:
            value = json.loads(r[0])
        except ValueError:
            return None  # not one of ours: the run starts afresh
        return value if isinstance(value, dict) else None

    @staticmethod
    def set_marker(conn: Connection[TupleRow], marker: dict[str, Any]) -> None:
        conn.execute(
            "INSERT INTO kb_meta (key, value) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now()",
            (INDEX_MIGRATION_KEY, json.dumps(marker, sort_keys=True)),
        )

    @staticmethod
    def try_run_lock(conn: Connection[TupleRow]) -> bool:
        """Take the session advisory lock of a migration run on ``conn`` (a connection
        of its own, held for the run; a killed run's session ends and frees it)."""
        r = conn.execute("SELECT pg_try_advisory_lock(%s)", (job_lock_key(RUN_LOCK),)).fetchone()
        return bool(r and r[0])

    # --- the switch ---------------------------------------------------------

    @staticmethod
    def lock_setting(conn: Connection[TupleRow], key: str) -> str | None:
        """The setting's row, locked for the caller's transaction (one switch at a time)."""
        r = conn.execute("SELECT value FROM kb_meta WHERE key = %s FOR UPDATE", (key,)).fetchone()
        return str(r[0]) if r else None

    @staticmethod
    def write_settings(conn: Connection[TupleRow], values: dict[str, str]) -> None:
        for key, value in values.items():
            conn.execute(
                "INSERT INTO kb_meta (key, value) VALUES (%s, %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now()",
                (key, value),
            )

    def wait_for_older_transactions(self, timeout: float = 600.0) -> None:
        """Return once every transaction running now has finished (committed or not):
        a write that read the old setting has landed before the caller's next pass."""
        with self.db.transaction("index migration horizon") as conn:
            r = conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())").fetchone()
        assert r is not None
        horizon = r[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.db.transaction("index migration horizon") as conn:
                r = conn.execute(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot()) >= %s", (horizon,)
                ).fetchone()
            if r is not None and r[0]:
                return
            time.sleep(0.05)

    # --- server -> memory: clearing -----------------------------------------

    def holding_searchable(self, after: uuid.UUID | None, limit: int) -> list[EntryRow]:
        """Rows (deleted ones too) holding a value in a searchable column, in id order
        (keyset pagination)."""
        stmt = f"SELECT {_SELECT} FROM kb_entries WHERE ({_HOLDS_SEARCHABLE})"
        params: list[Any] = []
        if after is not None:
            stmt += " AND id > %s"
            params.append(after)
        with self.db.transaction("index migration scan") as conn:
            rows = conn.execute(stmt + " ORDER BY id LIMIT %s", [*params, limit], binary=True)
            return [_from_db(r) for r in rows.fetchall()]

    @staticmethod
    def clear_row(conn: Connection[TupleRow], row: EntryRow, doc_sealed: bytes | None) -> bool:
        """Set a row's searchable columns NULL (tag tokens empty) and, when given, its
        sealed document to ``doc_sealed`` (re-sealed without the index digest), unless
        the row changed since it was read. No new entry version."""
        cur = conn.execute(
            "UPDATE kb_entries SET kw_tokens = NULL, embedding_enc = NULL, fingerprint = NULL,"
            " tag_tokens = '{}', index_key_id = NULL, doc_sealed = coalesce(%s, doc_sealed)"
            " WHERE id = %s AND version = %s AND doc_sealed IS NOT DISTINCT FROM %s",
            (doc_sealed, row.id, row.version, row.doc_sealed),
        )
        return cur.rowcount == 1

    def searchable_counts(self) -> dict[str, int]:
        """Rows holding a value in each searchable column."""
        with self.db.transaction("status") as conn:
            r = conn.execute(
                "SELECT count(kw_tokens), count(embedding_enc), count(fingerprint),"
                " count(*) FILTER (WHERE cardinality(tag_tokens) > 0),"
                " count(index_key_id) FROM kb_entries"
            ).fetchone()
        assert r is not None
        names = ("kw_tokens", "embedding_enc", "fingerprint", "tag_tokens", "index_key_id")
        return dict(zip(names, (int(v) for v in r), strict=True))

    @staticmethod
    def scrub(conn: Connection[TupleRow], *, superuser: bool) -> list[str]:
        """Rewrite kb_entries (no dead row version keeps a token) and refresh its
        statistics (ANALYZE kept most-common token values in pg_statistic); a superuser
        also rewrites pg_statistic. ``conn`` must be in autocommit mode."""
        conn.execute("VACUUM FULL kb_entries")
        conn.execute("ANALYZE kb_entries")
        done = ["kb_entries"]
        if superuser:
            conn.execute("VACUUM FULL pg_statistic")
            done.append("pg_statistic")
        return done

    # --- memory -> server: building -----------------------------------------

    def needing_build(
        self, namespace: str | None, after: uuid.UUID | None, limit: int
    ) -> list[ReindexRow]:
        """Live sealed rows without keyword tokens (memory-mode rows), with their
        sealed exact embeddings, in id order (keyset pagination)."""
        where = ["deleted_at IS NULL", "doc_sealed IS NOT NULL", "kw_tokens IS NULL"]
        params: list[Any] = []
        if namespace is not None:
            where.append("namespace = %s")
            params.append(namespace)
        if after is not None:
            where.append("id > %s")
            params.append(after)
        stmt = (
            f"SELECT {_SELECT}, embedding_sealed FROM kb_entries WHERE {' AND '.join(where)}"
            " ORDER BY id LIMIT %s"
        )
        with self.db.transaction("index migration scan") as conn:
            rows = conn.execute(stmt, [*params, limit], binary=True).fetchall()
        n = len(_SELECT.split(", "))
        return [
            ReindexRow(_from_db(r[:n]), None if r[n] is None else bytes(r[n]), True) for r in rows
        ]

    def unbuilt_count(self) -> int:
        with self.db.transaction("status") as conn:
            r = conn.execute(
                "SELECT count(*) FROM kb_entries WHERE deleted_at IS NULL"
                " AND doc_sealed IS NOT NULL AND kw_tokens IS NULL"
            ).fetchone()
        assert r is not None
        return int(r[0])
