"""Read-only questions ``sealedkb doctor`` asks the database.

Kept in ``store`` so SQL stays in one layer; every function only reads, so the
doctor never changes a database it diagnoses (no migration, no extension).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from psycopg import Connection


def server_version(conn: Connection[Any]) -> str:
    row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "unknown"


def pgvector_versions(conn: Connection[Any]) -> tuple[str | None, str | None]:
    """(version installed in this database, default version the server offers)."""
    installed = conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
    ).fetchone()
    available = conn.execute(
        "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
    ).fetchone()
    return (
        str(installed[0]) if installed else None,
        str(available[0]) if available else None,
    )


def server_clock(conn: Connection[Any]) -> dt.datetime:
    """The server's wall clock now (clock_timestamp, not the transaction start)."""
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    value = row[0]
    assert isinstance(value, dt.datetime)
    return value


def kb_meta(conn: Connection[Any]) -> dict[str, str] | None:
    """sealedkb's settings table, or None when this database has no knowledge base."""
    row = conn.execute("SELECT to_regclass('kb_meta') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    return {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM kb_meta")}
