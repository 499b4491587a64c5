"""PostgreSQL access: connection pool, schema migrations, error mapping.

The store handles bytes and keyed tokens only; it never imports crypto or keys.
Database errors are mapped to :class:`sealedkb.errors.DatabaseError` with a
message free of SQL and values; the SQLSTATE goes to the debug log.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources

import psycopg
from pgvector.psycopg import register_vector
from psycopg import Connection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from sealedkb.errors import DatabaseError, SealedKBError, TransportRefusedError

log = logging.getLogger("sealedkb.store")

_MIGRATION_RE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_MIGRATION_LOCK = 0x5EA1ED_0001  # pg_advisory_xact_lock key for schema changes


@dataclass(frozen=True)
class Transport:
    kind: str  # unix-socket | loopback | tls | insecure-tcp
    host: str | None
    sslmode: str | None


def classify_transport(url: str, *, allow_insecure: bool = False) -> Transport:
    """Refuse a remote database unless TLS with certificate and host verification is on."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise DatabaseError("database URL is malformed") from None
    # libpq fills what the URL leaves out from PG* variables; judge what it will use.
    for key, env in (("host", "PGHOST"), ("hostaddr", "PGHOSTADDR"), ("sslmode", "PGSSLMODE")):
        if not params.get(key) and os.environ.get(env):
            params[key] = os.environ[env]
    if params.get("service") or os.environ.get("PGSERVICE"):
        raise TransportRefusedError(
            "connection service files are not supported: put host and sslmode in the URL"
        )
    # hostaddr, when given, is where libpq really connects.
    host = str(params.get("hostaddr") or params.get("host") or "")
    sslmode = str(params["sslmode"]) if params.get("sslmode") else None
    hosts = [h for h in host.split(",") if h] or [""]
    if all(h == "" or h.startswith("/") for h in hosts):
        return Transport("unix-socket", host or None, sslmode)
    if all(_is_loopback(h) for h in hosts):
        return Transport("loopback" if sslmode != "verify-full" else "tls", host, sslmode)
    if sslmode == "verify-full":
        return Transport("tls", host, sslmode)
    if allow_insecure:
        log.warning(
            "TLS verification for the remote database is OFF (SEALEDKB_DATABASE_ALLOW_INSECURE): "
            "traffic and credentials can be read or changed in transit"
        )
        return Transport("insecure-tcp", host, sslmode)
    raise TransportRefusedError(
        f"refusing to connect to remote database host without verified TLS (sslmode="
        f"{sslmode or 'prefer'}); add sslmode=verify-full&sslrootcert=<CA file> to the URL, "
        "or set SEALEDKB_DATABASE_ALLOW_INSECURE=true to opt out"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def mapped_errors(action: str) -> Iterator[None]:
    """Turn driver errors into DatabaseError without leaking SQL or values."""
    try:
        yield
    except SealedKBError:
        raise
    except psycopg.OperationalError as exc:
        log.debug("database %s failed: %s", action, type(exc).__name__)
        raise DatabaseError(f"database unavailable during {action}") from None
    except psycopg.Error as exc:
        log.debug("database %s failed: %s sqlstate=%s", action, type(exc).__name__, exc.sqlstate)
        raise DatabaseError(f"database error during {action} (sqlstate {exc.sqlstate})") from None


def _configure(conn: Connection[TupleRow]) -> None:
    register_vector(conn)
    conn.commit()


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every bundled migration, in order."""
    out = []
    folder = resources.files("sealedkb.store") / "migrations"
    for item in folder.iterdir():
        m = _MIGRATION_RE.match(item.name)
        if m:
            out.append((int(m.group(1)), item.name, item.read_text(encoding="utf-8")))
    return sorted(out)


SCHEMA_VERSION = max(v for v, _, _ in migrations())


def apply_migrations(conn: Connection[TupleRow]) -> int:
    """Apply pending migrations, each in its own transaction; safe to run concurrently."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS kb_schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in conn.execute("SELECT version FROM kb_schema_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            conn.execute(sql.encode())
            conn.execute(
                "INSERT INTO kb_schema_migrations (version, name) VALUES (%s, %s)", (version, name)
            )
            log.info("applied migration %s", name)
    row = conn.execute("SELECT max(version) FROM kb_schema_migrations").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


MIN_SERVER_VERSION = 150000


def check_connection(conn: Connection[TupleRow], *, allow_insecure: bool = False) -> None:
    """Defence in depth after connecting: a TCP connection to a non-loopback host must
    use TLS with sslmode=verify-full, whatever the URL or environment said."""
    opts = {o.keyword.decode(): (o.val or b"").decode() for o in conn.pgconn.info}
    host = opts.get("hostaddr") or opts.get("host") or ""
    if not host or host.startswith("/") or _is_loopback(host) or allow_insecure:
        return
    if not conn.pgconn.ssl_in_use or opts.get("sslmode") != "verify-full":
        conn.close()
        raise TransportRefusedError(
            "connected to a remote database without verified TLS; use sslmode=verify-full"
        )


def check_server(conn: Connection[TupleRow]) -> None:
    """Refuse servers sealedkb cannot run on, with a message that says what to do."""
    if conn.info.server_version < MIN_SERVER_VERSION:
        raise DatabaseError("PostgreSQL 15 or newer is required")
    row = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone()
    if row is None:
        raise DatabaseError(
            "the pgvector extension is not available on this PostgreSQL server; install "
            "pgvector (https://github.com/pgvector/pgvector) or use the embedded default"
        )


class Database:
    """A pool of connections to one database, schema migrated on open."""

    def __init__(
        self, url: str, *, max_size: int = 8, migrate: bool = True, allow_insecure: bool = False
    ) -> None:
        self.url = url
        self.schema_version = 0
        with mapped_errors("connect"):
            if migrate:
                with psycopg.connect(url, autocommit=True) as conn:
                    check_connection(conn, allow_insecure=allow_insecure)
                    check_server(conn)
                    self.schema_version = apply_migrations(conn)
            self.pool: ConnectionPool[Connection[TupleRow]] = ConnectionPool(
                url,
                min_size=1,
                max_size=max_size,
                configure=_configure,
                open=False,
                name="sealedkb",
            )
            self.pool.open(wait=True, timeout=15)

    @contextlib.contextmanager
    def transaction(self, action: str = "query") -> Iterator[Connection[TupleRow]]:
        with mapped_errors(action), self.pool.connection() as conn, conn.transaction():
            yield conn

    def close(self) -> None:
        self.pool.close()

    def server_version(self) -> str:
        with self.transaction("status") as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "unknown"

    def pgvector_version(self) -> str | None:
        with self.transaction("status") as conn:
            row = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
            ).fetchone()
        return str(row[0]) if row else None
