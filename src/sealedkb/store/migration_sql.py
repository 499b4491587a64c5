"""The SQL side of ``sealedkb migrate`` (migrate/migrator.py). Bytes and keyed values
only: rows go in already sealed, rows come out as the source stores them.

Two kinds of source:

- **in place**: the ``*_plain`` rows of this knowledge base's own ``kb_entries``.
  Sealed copies go into a shadow table (``sealedkb_mig_entries``, built like
  ``kb_entries`` without its secondary indexes, which are built once after the
  bulk copy); the switch renames it over ``kb_entries`` in one short transaction.
- **foreign**: a table of another knowledge-base server (``--from URL --table T``),
  read through a read-only connection with a column mapping; sealed rows go
  straight into ``kb_entries`` under deterministic ids.

Working tables are named ``sealedkb_mig_*``, outside the ``kb_*`` prefix, so a
snapshot taken meanwhile does not copy them. ``sealedkb_mig_rows`` holds, per
migrated entry, the source key and a *keyed* digest of the source row (no
plaintext, no unkeyed hash of it), which ``migrate verify`` compares with the
opened entries.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import Connection, sql
from psycopg.rows import TupleRow

from sealedkb.store.entries import INSERT_COLS, EntryRow, insert_values
from sealedkb.store.search import SEARCH_COLS, SearchColumns

SHADOW = "sealedkb_mig_entries"
ROWS = "sealedkb_mig_rows"
ENTRIES = "kb_entries"
_CASTS = {"kw_tokens": "%s::tsvector"}
# Columns the migration writes (the sealed row plus the non-secret row facts it keeps).
WRITE_COLS = [*INSERT_COLS, *SEARCH_COLS, "created_at", "updated_at", "deleted_at"]
PLAIN_COLS = (
    "id, namespace, entry_type, title_plain, content_plain, source_plain, metadata_plain,"
    " tags_plain, verified, archived, created_at, updated_at, version, deleted_at,"
    " embedding_plain, embed_model, fingerprint, import_key"
)


def _upsert(table: str) -> str:
    cols = ", ".join(WRITE_COLS)
    values = ", ".join(_CASTS.get(c, "%s") for c in WRITE_COLS)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in WRITE_COLS if c != "id")
    return (
        f"INSERT INTO {table} ({cols}) VALUES ({values}) ON CONFLICT (id) DO UPDATE SET {updates}"
    )


UPSERT_SHADOW = _upsert(SHADOW)
INSERT_ENTRY = (
    f"INSERT INTO {ENTRIES} ({', '.join(WRITE_COLS)})"
    f" VALUES ({', '.join(_CASTS.get(c, '%s') for c in WRITE_COLS)})"
    " ON CONFLICT (id) DO NOTHING"
)


def row_values(row: EntryRow, cols: SearchColumns, facts: Mapping[str, Any]) -> list[Any]:
    """Parameters for UPSERT_SHADOW / INSERT_ENTRY from an EntryRow, its SearchColumns
    and the row facts (created_at, updated_at, deleted_at) to keep."""
    values = insert_values(row)
    values.extend(getattr(cols, c) for c in SEARCH_COLS)
    values.extend([facts.get("created_at"), facts.get("updated_at"), facts.get("deleted_at")])
    return values


# --- in place: shadow table ------------------------------------------------------


def table_exists(conn: Connection[TupleRow], name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
    return bool(row and row[0] is not None)


def create_shadow(conn: Connection[TupleRow]) -> None:
    """``sealedkb_mig_entries`` like ``kb_entries`` (columns, defaults, checks,
    generated columns, storage, table options) with only its primary key, and the
    extra check that every row is sealed. Idempotent."""
    if table_exists(conn, SHADOW):
        return
    conn.execute(
        f"CREATE TABLE {SHADOW} (LIKE {ENTRIES} INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
        " INCLUDING GENERATED INCLUDING STORAGE)"
    )
    conn.execute(f"ALTER TABLE {SHADOW} ADD PRIMARY KEY (id)")
    conn.execute(
        f"ALTER TABLE {SHADOW} ADD CONSTRAINT kb_entries_sealed_only CHECK (doc_sealed IS NOT NULL)"
    )
    row = conn.execute(
        "SELECT array_to_string(reloptions, ', ') FROM pg_class WHERE oid = %s::regclass",
        (ENTRIES,),
    ).fetchone()
    if row and row[0]:
        if not re.fullmatch(r"[a-z_]+=[0-9a-z_.]+(, [a-z_]+=[0-9a-z_.]+)*", row[0]):
            raise ValueError("unexpected table options on kb_entries")
        conn.execute(f"ALTER TABLE {SHADOW} SET ({row[0]})")
    create_rows_table(conn)


def create_rows_table(conn: Connection[TupleRow]) -> None:
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {ROWS} (id uuid PRIMARY KEY, source_key text NOT NULL,"
        " digest text NOT NULL)"
    )


def _indexes(conn: Connection[TupleRow], table: str) -> list[tuple[str, str, bool]]:
    """(name, definition, is primary key) of a table's indexes."""
    rows = conn.execute(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisprimary FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s::regclass"
        " ORDER BY c.relname",
        (table,),
    ).fetchall()
    return [(r[0], r[1], bool(r[2])) for r in rows]


def _shadow_index_name(name: str) -> str:
    return f"mig_{name}"[:63]


def build_shadow_indexes(conn: Connection[TupleRow]) -> int:
    """The secondary indexes of ``kb_entries``, built on the shadow under temporary
    names (after the bulk copy: one build instead of 10k incremental inserts)."""
    have = {n for n, _, _ in _indexes(conn, SHADOW)}
    conn.execute(f"SET LOCAL maintenance_work_mem = '{INDEX_BUILD_MEMORY}'")
    built = 0
    for name, definition, primary in _indexes(conn, ENTRIES):
        new = _shadow_index_name(name)
        if primary or new in have:
            continue
        head, sep, tail = definition.partition(f" INDEX {name} ON ")
        if not sep:
            raise ValueError("unexpected index definition")
        on_table, _, rest = tail.partition(" USING ")
        if on_table.split(".")[-1] != ENTRIES:
            raise ValueError("unexpected index definition")
        conn.execute(f"{head} INDEX {new} ON {SHADOW} USING {rest}")
        built += 1
    return built


CHANGES = "sealedkb_mig_changes"
_LOG_FN = "sealedkb_mig_log"
# Index builds of the migration get more memory than the server default (64 MB): an
# HNSW build slows down ~10x per row once its graph outgrows maintenance_work_mem.
INDEX_BUILD_MEMORY = "512MB"
INDEX_BUILD_MEMORY_BYTES = 512 << 20


def install_change_log(conn: Connection[TupleRow]) -> None:
    """Log the id of every row written to ``kb_entries`` from now on (a row trigger
    into ``sealedkb_mig_changes``), so catching up costs as much as the changes, not a
    comparison of both tables, and the switch's lock is held briefly. Idempotent;
    installed before the bulk copy reads its first row."""
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {CHANGES} (seq bigserial PRIMARY KEY, id uuid NOT NULL)"
    )
    conn.execute(
        f"CREATE OR REPLACE FUNCTION {_LOG_FN}() RETURNS trigger LANGUAGE plpgsql AS $$"
        f" BEGIN INSERT INTO {CHANGES} (id) VALUES"
        " (CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END); RETURN NULL; END $$"
    )
    exists = conn.execute(
        "SELECT 1 FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname = %s",
        (ENTRIES, _LOG_FN),
    ).fetchone()
    if not exists:
        conn.execute(
            f"CREATE TRIGGER {_LOG_FN} AFTER INSERT OR UPDATE OR DELETE ON {ENTRIES}"
            f" FOR EACH ROW EXECUTE FUNCTION {_LOG_FN}()"
        )


def pending_changes(conn: Connection[TupleRow], limit: int) -> list[tuple[int, uuid.UUID]]:
    """(seq, id) of logged writes, oldest first."""
    rows = conn.execute(f"SELECT seq, id FROM {CHANGES} ORDER BY seq LIMIT %s", (limit,))
    return [(int(r[0]), r[1]) for r in rows.fetchall()]


def forget_changes(conn: Connection[TupleRow], seqs: Sequence[int]) -> None:
    """Delete exactly the log rows that were handled (a write committed meanwhile
    keeps its own, newer row)."""
    conn.execute(f"DELETE FROM {CHANGES} WHERE seq = ANY(%s)", (list(seqs),))


def count_rows(conn: Connection[TupleRow], table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def plain_rows_after(
    conn: Connection[TupleRow], after: uuid.UUID | None, limit: int
) -> list[tuple[Any, ...]]:
    """Source rows of an in-place migration in id order (keyset pagination)."""
    if after is None:
        stmt = f"SELECT {PLAIN_COLS} FROM {ENTRIES} ORDER BY id LIMIT %s"
        return conn.execute(stmt, (limit,), binary=True).fetchall()
    stmt = f"SELECT {PLAIN_COLS} FROM {ENTRIES} WHERE id > %s ORDER BY id LIMIT %s"
    return conn.execute(stmt, (after, limit), binary=True).fetchall()


def plain_rows_by_id(conn: Connection[TupleRow], ids: Sequence[uuid.UUID]) -> list[tuple[Any, ...]]:
    stmt = f"SELECT {PLAIN_COLS} FROM {ENTRIES} WHERE id = ANY(%s) ORDER BY id"
    return conn.execute(stmt, (list(ids),), binary=True).fetchall()


def delete_shadow_rows(conn: Connection[TupleRow], ids: Sequence[uuid.UUID]) -> None:
    conn.execute(f"DELETE FROM {SHADOW} WHERE id = ANY(%s)", (list(ids),))
    conn.execute(f"DELETE FROM {ROWS} WHERE id = ANY(%s)", (list(ids),))


def source_stats(conn: Connection[TupleRow]) -> tuple[int, int, int]:
    """(rows, plaintext rows, bytes of the table with its TOAST and indexes)."""
    row = conn.execute(
        f"SELECT count(*), count(*) FILTER (WHERE content_plain IS NOT NULL),"
        f" pg_total_relation_size('{ENTRIES}') FROM {ENTRIES}"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def has_sealed_rows(conn: Connection[TupleRow]) -> bool:
    """Whether kb_entries holds any sealed row (a plaintext table holds none)."""
    return (
        conn.execute(f"SELECT 1 FROM {ENTRIES} WHERE doc_sealed IS NOT NULL LIMIT 1").fetchone()
        is not None
    )


def swap_in_shadow(conn: Connection[TupleRow]) -> None:
    """Inside the switch transaction: the shadow becomes ``kb_entries`` (indexes and
    primary key under their usual names); the plaintext table is dropped."""
    old = _indexes(conn, ENTRIES)
    conn.execute(f"LOCK TABLE {ENTRIES} IN ACCESS EXCLUSIVE MODE")
    conn.execute(f"DROP TABLE {ENTRIES}")
    conn.execute(f"ALTER TABLE {SHADOW} RENAME TO {ENTRIES}")
    for name, _definition, primary in old:
        if primary:
            conn.execute(
                sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                    sql.Identifier(ENTRIES),
                    sql.Identifier(f"{SHADOW}_pkey"),
                    sql.Identifier(name),
                )
            )
        else:
            conn.execute(
                sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    sql.Identifier(_shadow_index_name(name)), sql.Identifier(name)
                )
            )


def drop_working_tables(conn: Connection[TupleRow], *, keep_rows: bool = False) -> None:
    if table_exists(conn, ENTRIES):
        conn.execute(f"DROP TRIGGER IF EXISTS {_LOG_FN} ON {ENTRIES}")
    conn.execute(f"DROP TABLE IF EXISTS {CHANGES}")
    conn.execute(f"DROP FUNCTION IF EXISTS {_LOG_FN}()")
    conn.execute(f"DROP TABLE IF EXISTS {SHADOW}")
    if not keep_rows:
        conn.execute(f"DROP TABLE IF EXISTS {ROWS}")


# --- digests of migrated rows ------------------------------------------------------


def record_digests(conn: Connection[TupleRow], items: Sequence[tuple[uuid.UUID, str, str]]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {ROWS} (id, source_key, digest) VALUES (%s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET source_key = EXCLUDED.source_key,"
            " digest = EXCLUDED.digest",
            items,
        )


def digests_after(
    conn: Connection[TupleRow], after: uuid.UUID | None, limit: int
) -> list[tuple[uuid.UUID, str, str]]:
    if after is None:
        rows = conn.execute(
            f"SELECT id, source_key, digest FROM {ROWS} ORDER BY id LIMIT %s", (limit,)
        ).fetchall()
    else:
        rows = conn.execute(
            f"SELECT id, source_key, digest FROM {ROWS} WHERE id > %s ORDER BY id LIMIT %s",
            (after, limit),
        ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def count_digests(conn: Connection[TupleRow]) -> int:
    if not table_exists(conn, ROWS):
        return 0
    row = conn.execute(f"SELECT count(*) FROM {ROWS}").fetchone()
    return int(row[0]) if row else 0


# --- scrubbing the data directory -----------------------------------------------------


@dataclass
class ScrubReport:
    vacuumed: list[str]
    checkpoints: int
    wal_switches: int
    wal_recycle_off: bool
    notes: list[str]


def is_superuser(conn: Connection[TupleRow]) -> bool:
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    return bool(row and row[0])


def kb_tables(conn: Connection[TupleRow]) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname LIKE 'kb\\_%'"
        " ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def scrub(conn: Connection[TupleRow], *, switches: int = 3) -> ScrubReport:
    """Rewrite the other sealedkb tables and the statistics catalog (no dead tuple keeps
    an old row version), then retire the WAL that saw plaintext: with ``wal_recycle`` off
    the checkpointer deletes old segments instead of renaming them for reuse (a
    recycled segment keeps its old bytes until overwritten). ``conn`` must be in
    autocommit mode (VACUUM cannot run in a transaction)."""
    notes: list[str] = []
    superuser = is_superuser(conn)
    vacuumed = []
    for name in kb_tables(conn):
        if name == ENTRIES:
            # Built from sealed rows only (the plaintext table was dropped whole):
            # its dead tuples are superseded ciphertext, not worth a second rebuild.
            continue
        conn.execute(sql.SQL("VACUUM FULL {}").format(sql.Identifier(name)))
        vacuumed.append(name)
    conn.execute(f"VACUUM (ANALYZE) {ENTRIES}")
    if superuser:
        # ANALYZE of the plaintext table left most-common values and histograms of
        # its columns in pg_statistic: the dropped table's rows are dead tuples there.
        conn.execute("VACUUM FULL pg_statistic")
        vacuumed.append("pg_statistic")
    else:
        notes.append("not a superuser: pg_statistic was not rewritten")
    recycle_off = False
    checkpoints = switches_done = 0
    if superuser:
        previous = conn.execute("SHOW wal_recycle").fetchone()
        conn.execute("ALTER SYSTEM SET wal_recycle = off")
        conn.execute("SELECT pg_reload_conf()")
        recycle_off = True
        try:
            # The checkpointer reads the reloaded setting before its next checkpoint.
            conn.execute("SELECT pg_sleep(0.2)")
            for _ in range(switches):
                conn.execute("SELECT pg_switch_wal()")
                switches_done += 1
                conn.execute("CHECKPOINT")
                checkpoints += 1
        finally:
            if previous and previous[0] == "on":
                conn.execute("ALTER SYSTEM RESET wal_recycle")
                conn.execute("SELECT pg_reload_conf()")
    else:
        notes.append(
            "not a superuser: WAL segments were not switched and retired; old segments "
            "keep plaintext until the server recycles and overwrites them"
        )
    return ScrubReport(vacuumed, checkpoints, switches_done, recycle_off, notes)


# --- foreign source -------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type: str  # format_type(): text, character varying(200), text[], vector(1536) ...
    not_null: bool


def describe_table(conn: Connection[TupleRow], schema: str, table: str) -> list[ColumnInfo]:
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull"
        " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p', 'v', 'm')"
        " AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (schema, table),
    ).fetchall()
    return [ColumnInfo(r[0], r[1], bool(r[2])) for r in rows]


def unique_columns(conn: Connection[TupleRow], schema: str, table: str) -> set[str]:
    """Columns that alone carry a primary key or unique constraint/index."""
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]"
        " WHERE n.nspname = %s AND c.relname = %s AND i.indisunique AND i.indnatts = 1"
        " AND i.indpred IS NULL",
        (schema, table),
    ).fetchall()
    return {r[0] for r in rows}


def foreign_stats(
    conn: Connection[TupleRow], schema: str, table: str, content_col: str
) -> tuple[int, int]:
    """(rows, bytes of the content column)."""
    q = sql.SQL("SELECT count(*), coalesce(sum(octet_length({})), 0) FROM {}.{}").format(
        sql.Identifier(content_col), sql.Identifier(schema), sql.Identifier(table)
    )
    row = conn.execute(q).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def foreign_rows(
    conn: Connection[TupleRow],
    schema: str,
    table: str,
    key_col: str,
    columns: Sequence[str],
    *,
    after: Any = None,
    limit: int = 500,
    key_is_text: bool = False,
) -> list[tuple[Any, ...]]:
    """Source rows in key order after ``after`` (keyset pagination); the key first.
    Text keys compare with COLLATE "C" so the order is stable across collations."""
    key = sql.Identifier(key_col)
    order = sql.SQL('{} COLLATE "C"').format(key) if key_is_text else key
    cols = sql.SQL(", ").join([key, *(sql.Identifier(c) for c in columns)])
    base = sql.SQL("SELECT {} FROM {}.{}").format(
        cols, sql.Identifier(schema), sql.Identifier(table)
    )
    if after is None:
        q = sql.SQL("{} ORDER BY {} LIMIT %s").format(base, order)
        return conn.execute(q, (limit,)).fetchall()
    q = sql.SQL("{} WHERE {} > %s ORDER BY {} LIMIT %s").format(base, order, order)
    return conn.execute(q, (after, limit)).fetchall()
