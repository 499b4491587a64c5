"""PostgreSQL access: connection pool, schema migrations, error mapping.

The store handles bytes and keyed tokens only; it never imports crypto or keys.
Database errors are mapped to :class:`sealedkb.errors.DatabaseError` with a
message free of SQL and values; the SQLSTATE goes to the debug log.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import select
import traceback
from collections.abc import Collection, Iterator
from importlib import resources
from typing import Any, Self

import psycopg
from pgvector.psycopg import register_vector
from psycopg import Connection
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from sealedkb.errors import DatabaseError, SealedKBError
from sealedkb.store.tls import TlsSession, session_of
from sealedkb.store.transport import Transport as Transport  # re-exported: rules live there
from sealedkb.store.transport import check_connection as check_connection
from sealedkb.store.transport import classify_transport as classify_transport
from sealedkb.store.transport import explain_connect_failure

log = logging.getLogger("sealedkb.store")

_MIGRATION_RE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_MIGRATION_LOCK = 0x5EA1ED_0001  # pg_advisory_xact_lock key for schema changes


@contextlib.contextmanager
def mapped_errors(action: str) -> Iterator[None]:
    """Turn driver errors into DatabaseError without leaking SQL or values."""
    try:
        yield
    except SealedKBError:
        raise
    except psycopg.OperationalError as exc:
        log.debug("database %s failed: %s sqlstate=%s", action, type(exc).__name__, exc.sqlstate)
        if exc.sqlstate is not None and exc.sqlstate.startswith("53"):  # insufficient resources
            raise DatabaseError(
                f"the database server ran out of space or memory during {action} "
                f"(sqlstate {exc.sqlstate})"
            ) from None
        raise DatabaseError(f"database unavailable during {action}") from None
    except psycopg.Error as exc:
        log.debug("database %s failed: %s sqlstate=%s", action, type(exc).__name__, exc.sqlstate)
        raise DatabaseError(f"database error during {action} (sqlstate {exc.sqlstate})") from None


def _release_frames(exc: BaseException) -> None:
    """Drop the finished frames an exception chain keeps alive.

    psycopg's ConnectionTimeout carries (as its context) the timeout raised inside
    its wait loop, whose traceback holds the aborted attempt's connection generator
    and with it a half-open libpq connection: its socket stays open for as long as
    anything keeps the exception (a log handler that keeps records does, and the
    pool logs every failed attempt). Clearing the frames closes it now."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if current.__traceback__ is not None:
            traceback.clear_frames(current.__traceback__)  # skips the running frame
        current = current.__cause__ or current.__context__
    exc.__cause__ = exc.__context__ = None


class ReleasingConnection(Connection[TupleRow]):
    """A psycopg connection whose failed connect leaves no socket behind."""

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        try:
            return super().connect(conninfo, **kwargs)
        except psycopg.Error as exc:
            _release_frames(exc)
            raise


def _configure(conn: Connection[TupleRow], *, allow_insecure: bool = False) -> None:
    try:
        check_connection(conn, allow_insecure=allow_insecure)  # every pooled connection, too
        register_vector(conn)
        conn.commit()
    except BaseException:
        conn.close()  # the pool discards it: close it now, not when it is collected
        raise


def connect(url: str, *, allow_insecure: bool = False) -> Connection[TupleRow]:
    """One autocommit connection, checked against the transport rule.

    A TLS failure becomes a TransportRefusedError (exit 7) that names its cause;
    other failures stay psycopg errors for :func:`mapped_errors`.
    """
    try:
        conn = ReleasingConnection.connect(url, autocommit=True, **_connect_kwargs(url))
    except psycopg.OperationalError as exc:
        refused = explain_connect_failure(url, exc)
        if refused is not None:
            raise refused from None
        raise
    check_connection(conn, allow_insecure=allow_insecure)
    return conn


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


def lock_schema(conn: Connection[TupleRow]) -> None:
    """Take the schema-change lock for the caller's transaction (as migrations do), so
    a process opening the database meanwhile waits instead of deadlocking with it."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))


def apply_migrations(conn: Connection[TupleRow], only: Collection[int] | None = None) -> int:
    """Apply pending migrations, each in its own transaction; safe to run concurrently.

    ``only``: apply just these versions (a snapshot restore first builds the schema
    the snapshot was taken at, loads it, then applies the rest)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS kb_schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in conn.execute("SELECT version FROM kb_schema_migrations")}
        for version, name, sql in migrations():
            if version in done or (only is not None and version not in only):
                continue
            conn.execute(sql.encode())
            conn.execute(
                "INSERT INTO kb_schema_migrations (version, name) VALUES (%s, %s)", (version, name)
            )
            log.info("applied migration %s", name)
    row = conn.execute("SELECT max(version) FROM kb_schema_migrations").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


MIN_SERVER_VERSION = 150000


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


#: Longest a call waits for a pooled connection before failing with DATABASE_ERROR.
POOL_WAIT_SECONDS = 5.0
#: libpq connect_timeout (seconds) for connections whose URL names none, so a
#: server that accepts TCP but never answers cannot hold a pool worker for ever.
CONNECT_TIMEOUT_SECONDS = 5
#: TCP settings for connections whose URL names none (libpq parameters; a Unix
#: socket ignores them). tcp_user_timeout: a write the peer has not acknowledged
#: for this long (a partition, a black-holed route) fails the connection instead of
#: waiting out the kernel's ~15 minutes of retransmissions; keepalives find a dead
#: peer under an idle connection within idle + interval x count seconds.
TCP_SETTINGS: dict[str, object] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # milliseconds
}


def _connect_kwargs(url: str) -> dict[str, object]:
    try:
        given = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return {}  # the connect itself reports the bad URL
    defaults = {"connect_timeout": CONNECT_TIMEOUT_SECONDS, **TCP_SETTINGS}
    return {k: v for k, v in defaults.items() if k not in given}


class Database:
    """A pool of connections to one database, schema migrated on open."""

    def __init__(
        self, url: str, *, max_size: int = 8, migrate: bool = True, allow_insecure: bool = False
    ) -> None:
        self.url = url
        self.schema_version = 0
        with mapped_errors("connect"):
            if migrate:
                with connect(url, allow_insecure=allow_insecure) as conn:
                    check_server(conn)
                    self.schema_version = apply_migrations(conn)
            self.pool: ConnectionPool[Connection[TupleRow]] = ConnectionPool(
                url,
                connection_class=ReleasingConnection,
                min_size=1,
                max_size=max_size,
                configure=functools.partial(_configure, allow_insecure=allow_insecure),
                # A connection the server dropped (restart, failover, proxy) is found
                # and replaced when checked out, not handed to a query that then fails.
                check=self._check_idle_connection,
                # While the database is unreachable a call fails after this long with
                # DATABASE_ERROR instead of waiting for psycopg_pool's default 30 s.
                timeout=POOL_WAIT_SECONDS,
                kwargs=_connect_kwargs(url),
                open=False,
                name="sealedkb",
            )
            self.pool.open(wait=True, timeout=15)

    def _check_idle_connection(self, conn: Connection[TupleRow]) -> None:
        """The pool's check at checkout, without a round trip on the common path.

        An idle connection has nothing to read. When its socket is readable the server
        has closed it or sent something (a shutdown notice, a notification): only then
        is it probed with a query, which raises (the pool replaces it) if it is dead.
        A dead one means the server went away, so every idle connection is probed at
        once: the pool would otherwise back off (1 s, 2 s, ...) per dead connection.
        """
        if conn.closed or conn.broken:
            raise psycopg.OperationalError("the connection is closed")
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
        if not readable:
            return
        try:
            ConnectionPool.check_connection(conn)
        except psycopg.Error:
            self.pool.check()
            raise

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

    def tls_session(self) -> TlsSession | None:
        """Negotiated TLS protocol and cipher of a pooled connection; None without TLS."""
        with mapped_errors("status"), self.pool.connection() as conn:
            return session_of(conn.pgconn)

    def pgvector_version(self) -> str | None:
        with self.transaction("status") as conn:
            row = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
            ).fetchone()
        return str(row[0]) if row else None
