"""The SQL side of snapshots: which tables, in what order, COPY out and in,
databases to restore into. Bytes only: no crypto, no keys (the snapshots package joins
this with snapshots/fileformat.py and the key provider).

Every sealedkb table is found in the catalog (``kb_%`` in the current schema,
which includes ``kb_schema_migrations``), with its columns, so tables and
columns added by later migrations are copied without a change here. A table
is copied as ``COPY (SELECT <columns> FROM t ORDER BY <primary key>) TO STDOUT``:

- generated columns are left out (PostgreSQL recomputes them on restore, and
  refuses values for them);
- rows come in primary-key order, text keys compared with ``COLLATE "C"``, so
  the bytes (and their SHA-256) do not depend on the database's collation and
  can be recomputed after a restore; a table without a primary key is ordered
  by its whole row as text;
- the binary format is used (exact, and ~10x faster than text for vectors),
  except for a table with a column whose binary form embeds a type OID that
  differs between databases (arrays or composites of extension types), which
  goes as text;
- session settings that shape the text format (time zone, date style, float
  digits) are pinned, so text output is stable too.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from psycopg import Connection, sql
from psycopg.rows import TupleRow

from sealedkb.model import KeyPurpose, WrappedDataKey

MIGRATIONS_TABLE = "kb_schema_migrations"
FIRST_USER_OID = 16384  # FirstNormalObjectId: OIDs below are built in, the same everywhere

SESSION_SETTINGS = (
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
)


class ColumnMeta(TypedDict):
    name: str
    type: str  # as format_type() spells it


class OrderMeta(TypedDict):
    column: str
    collate_c: bool


class TableMeta(TypedDict):
    """A table as a snapshot header records it (:meth:`TableInfo.to_dict`)."""

    name: str
    columns: list[ColumnMeta]
    order_by: list[OrderMeta]
    format: str  # binary | text


@dataclass(frozen=True)
class TableInfo:
    name: str
    columns: tuple[tuple[str, str], ...]  # (name, type as format_type() spells it)
    order_by: tuple[tuple[str, bool], ...]  # (column, compare with COLLATE "C")
    format: str  # binary | text

    def to_dict(self) -> TableMeta:
        return {
            "name": self.name,
            "columns": [{"name": n, "type": t} for n, t in self.columns],
            "order_by": [{"column": c, "collate_c": bool(k)} for c, k in self.order_by],
            "format": self.format,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TableInfo:
        return cls(
            name=str(d["name"]),
            columns=tuple((str(c["name"]), str(c["type"])) for c in d["columns"]),
            order_by=tuple((str(o["column"]), bool(o["collate_c"])) for o in d["order_by"]),
            format=str(d["format"]),
        )

    def select(self) -> sql.Composed:
        """``SELECT <columns> FROM t ORDER BY <key>``: the query whose COPY output is
        stored and hashed."""
        cols = sql.SQL(", ").join(sql.Identifier(c) for c, _ in self.columns)
        if self.order_by:
            keys = sql.SQL(", ").join(
                sql.SQL('{} COLLATE "C"').format(sql.Identifier(c))
                if collate
                else sql.Identifier(c)
                for c, collate in self.order_by
            )
        else:
            keys = sql.SQL('ROW({})::text COLLATE "C"').format(cols)
        return sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
            cols, sql.Identifier(self.name), keys
        )

    def copy_options(self) -> sql.Composable:
        return sql.SQL("(FORMAT binary)" if self.format == "binary" else "(FORMAT text)")


def pin_session(conn: Connection[TupleRow]) -> None:
    for name, value in SESSION_SETTINGS:
        conn.execute(sql.SQL("SET {} TO {}").format(sql.Identifier(name), sql.Literal(value)))


def begin_consistent_read(conn: Connection[TupleRow]) -> None:
    """One snapshot of the whole database for every table's COPY (autocommit conn)."""
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")


def _columns(conn: Connection[TupleRow], oid: int) -> tuple[list[tuple[str, str]], bool]:
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod),"
        "  bt.typtype = 'c'"
        "  OR (bt.typcategory = 'A' AND (bt.typelem >= %s OR et.typtype = 'c'))"
        " FROM pg_attribute a"
        " JOIN pg_type t ON t.oid = a.atttypid"
        " JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END"
        " LEFT JOIN pg_type et ON et.oid = bt.typelem"
        " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped"
        "   AND a.attgenerated = ''"
        " ORDER BY a.attnum",
        (FIRST_USER_OID, oid),
    ).fetchall()
    return [(r[0], r[1]) for r in rows], any(r[2] for r in rows)


def _primary_key(conn: Connection[TupleRow], oid: int) -> list[tuple[str, bool]]:
    rows = conn.execute(
        "SELECT a.attname, a.attcollation <> 0"
        " FROM pg_index i"
        " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        " WHERE i.indrelid = %s AND i.indisprimary"
        " ORDER BY k.ord",
        (oid,),
    ).fetchall()
    return [(r[0], bool(r[1])) for r in rows]


def list_tables(conn: Connection[TupleRow]) -> list[TableInfo]:
    """Every sealedkb table, parents before the tables whose foreign keys point at them."""
    found = conn.execute(
        "SELECT c.oid, c.relname FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')"
        "   AND NOT c.relispartition AND c.relname LIKE 'kb\\_%%'"
        " ORDER BY c.relname"
    ).fetchall()
    tables: dict[str, TableInfo] = {}
    for oid, name in found:
        columns, needs_text = _columns(conn, oid)
        tables[name] = TableInfo(
            name=name,
            columns=tuple(columns),
            order_by=tuple(_primary_key(conn, oid)),
            format="text" if needs_text else "binary",
        )
    deps: dict[str, set[str]] = {name: set() for name in tables}
    for child, parent in conn.execute(
        "SELECT cl.relname, pl.relname FROM pg_constraint c"
        " JOIN pg_class cl ON cl.oid = c.conrelid JOIN pg_class pl ON pl.oid = c.confrelid"
        " WHERE c.contype = 'f'"
    ).fetchall():
        if child in deps and parent in tables and parent != child:
            deps[child].add(parent)
    ordered: list[TableInfo] = []
    placed: set[str] = set()
    while len(ordered) < len(tables):
        ready = sorted(n for n in tables if n not in placed and deps[n] <= placed)
        if not ready:  # a foreign-key cycle: keep name order, the loads are checked anyway
            ready = sorted(n for n in tables if n not in placed)
        for name in ready:
            ordered.append(tables[name])
            placed.add(name)
    return ordered


def copy_out(
    conn: Connection[TupleRow],
    table: TableInfo,
    sink: Callable[[bytes | bytearray | memoryview], None],
) -> int:
    """Stream the table's COPY output into ``sink``; returns the row count the
    server reports."""
    query = sql.SQL("COPY ({}) TO STDOUT {}").format(table.select(), table.copy_options())
    cur = conn.cursor()
    with cur.copy(query) as copy:
        for data in copy:
            sink(data)
    return cur.rowcount


def copy_in(conn: Connection[TupleRow], table: TableInfo, blocks: Iterable[bytes]) -> int:
    """Load COPY data into the table (its snapshot columns); returns the row count."""
    query = sql.SQL("COPY {} ({}) FROM STDIN {}").format(
        sql.Identifier(table.name),
        sql.SQL(", ").join(sql.Identifier(c) for c, _ in table.columns),
        table.copy_options(),
    )
    cur = conn.cursor()
    with cur.copy(query) as copy:
        for block in blocks:
            copy.write(block)
    return cur.rowcount


def count_rows(conn: Connection[TupleRow], name: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))).fetchone()
    return int(row[0]) if row else 0


def applied_migrations(conn: Connection[TupleRow]) -> list[int]:
    """Versions in kb_schema_migrations ([] when the table does not exist)."""
    exists = conn.execute("SELECT to_regclass(%s)", (MIGRATIONS_TABLE,)).fetchone()
    if not exists or exists[0] is None:
        return []
    return [int(r[0]) for r in conn.execute(f"SELECT version FROM {MIGRATIONS_TABLE} ORDER BY 1")]


def tables_with_rows(conn: Connection[TupleRow]) -> list[str]:
    """sealedkb tables that hold rows (kb_schema_migrations aside): a database
    with any is not empty and is never restored into."""
    return [
        t.name
        for t in list_tables(conn)
        if t.name != MIGRATIONS_TABLE
        and conn.execute(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(t.name))
        ).fetchone()
        == (True,)
    ]


def source_facts(conn: Connection[TupleRow]) -> dict[str, Any]:
    """Where a snapshot comes from (autocommit connection: a refused call is harmless)."""
    row = conn.execute("SELECT current_database(), current_setting('server_version')").fetchone()
    assert row is not None
    system_id: str | None = None
    try:
        sys_row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
        system_id = str(sys_row[0]) if sys_row else None
    except Exception:  # not granted on some managed servers; it is optional
        system_id = None
    return {"database": row[0], "server_version": row[1], "system_identifier": system_id}


def meta_value(conn: Connection[TupleRow], key: str) -> str | None:
    row = conn.execute("SELECT value FROM kb_meta WHERE key = %s", (key,)).fetchone()
    return str(row[0]) if row else None


def meta_set_default(conn: Connection[TupleRow], key: str, value: str) -> str:
    conn.execute(
        "INSERT INTO kb_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
        (key, value),
    )
    got = meta_value(conn, key)
    assert got is not None
    return got


def user_trigger_tables(conn: Connection[TupleRow], names: Iterable[str]) -> list[str]:
    """Tables among ``names`` with user triggers (they would rewrite rows on COPY FROM)."""
    rows = conn.execute(
        "SELECT DISTINCT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND NOT t.tgisinternal AND c.relname = ANY(%s)",
        (list(names),),
    ).fetchall()
    return sorted(r[0] for r in rows)


def set_user_triggers(conn: Connection[TupleRow], name: str, enabled: bool) -> None:
    conn.execute(
        sql.SQL("ALTER TABLE {} {} TRIGGER USER").format(
            sql.Identifier(name), sql.SQL("ENABLE" if enabled else "DISABLE")
        )
    )


def reset_sequences(conn: Connection[TupleRow], table: TableInfo) -> None:
    """Serial and identity columns continue after the highest restored value."""
    for col, _type in table.columns:
        row = conn.execute(
            "SELECT pg_get_serial_sequence(%s, %s)",
            (sql.Identifier(table.name).as_string(conn), col),
        ).fetchone()
        if row and row[0]:
            conn.execute(
                sql.SQL("SELECT setval(%s, coalesce(max({}), 0) + 1, false) FROM {}").format(
                    sql.Identifier(col), sql.Identifier(table.name)
                ),
                (row[0],),
            )


def drop_table(conn: Connection[TupleRow], name: str) -> None:
    conn.execute(sql.SQL("DROP TABLE {} CASCADE").format(sql.Identifier(name)))


def truncate(conn: Connection[TupleRow], name: str) -> None:
    conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(name)))


def data_keys(conn: Connection[TupleRow]) -> list[WrappedDataKey]:
    rows = conn.execute(
        "SELECT id, namespace, purpose, kms_key_uri, wrapped, created_at, active"
        " FROM kb_data_keys ORDER BY created_at, id"
    ).fetchall()
    return [
        WrappedDataKey(r[0], r[1], KeyPurpose(r[2]), r[3], bytes(r[4]), r[5], r[6]) for r in rows
    ]


def sample_sealed_entries(
    conn: Connection[TupleRow], sample: int
) -> list[tuple[uuid.UUID, str, bytes]]:
    """Sealed entry documents to open after a restore: one per content data key (so
    every key is proven) and ``sample`` more at random."""
    picked: dict[uuid.UUID, tuple[uuid.UUID, str, bytes]] = {}
    keys = conn.execute(
        "SELECT id FROM kb_data_keys WHERE purpose = 'content' ORDER BY created_at, id"
    ).fetchall()
    for (kid,) in keys:
        row = conn.execute(
            "SELECT id, namespace, doc_sealed FROM kb_entries WHERE data_key_id = %s LIMIT 1",
            (kid,),
        ).fetchone()
        if row:
            picked[row[0]] = (row[0], row[1], bytes(row[2]))
    for r in conn.execute(
        "SELECT id, namespace, doc_sealed FROM kb_entries WHERE doc_sealed IS NOT NULL"
        " ORDER BY random() LIMIT %s",
        (sample,),
    ).fetchall():
        picked[r[0]] = (r[0], r[1], bytes(r[2]))
    return list(picked.values())


def plaintext_entry_count(conn: Connection[TupleRow]) -> int:
    row = conn.execute("SELECT count(*) FROM kb_entries WHERE doc_sealed IS NULL").fetchone()
    return int(row[0]) if row else 0


# --- databases ----------------------------------------------------------------------


def database_exists(conn: Connection[TupleRow], name: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
    )


def create_database(conn: Connection[TupleRow], name: str) -> None:
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(conn: Connection[TupleRow], name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
