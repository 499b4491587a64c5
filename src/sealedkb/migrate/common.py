"""Small pieces every migration capability uses: connections, timestamps, opening a
knowledge base that may not exist yet."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from pgvector.psycopg import register_vector
from psycopg import Connection
from psycopg.rows import TupleRow

from sealedkb.config import Settings
from sealedkb.errors import NotInitializedError
from sealedkb.migrate.host import KnowledgeBases, OpenKnowledgeBase
from sealedkb.store.db import connect

DEFAULT_BATCH = 500

ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def connect_vectors(settings: Settings, url: str) -> Connection[TupleRow]:
    """A connection of its own (outside the pool), with pgvector's types."""
    conn = connect(url, allow_insecure=settings.database_allow_insecure)
    register_vector(conn)
    return conn


def open_if_any(host: KnowledgeBases, settings: Settings) -> OpenKnowledgeBase | None:
    try:
        return host.open(settings)
    except NotInitializedError:
        return None
