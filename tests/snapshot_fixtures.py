"""Fixtures of the snapshot tests (tests/integration/test_snapshots_*.py), which load
this module with ``pytest_plugins``; their plain helpers are in tests/snapshot_helpers.py."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from sealedkb.config import Settings
from sealedkb.store.embedded import EmbeddedPostgres


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def scratch_names(pg_server: EmbeddedPostgres) -> Iterator[Callable[[], str]]:
    """Fresh database names for restores; whatever exists at the end is dropped."""
    names: list[str] = []

    def new() -> str:
        names.append(f"r_{uuid.uuid4().hex[:12]}")
        return names[-1]

    yield new
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        for n in names:
            conn.execute(f"DROP DATABASE IF EXISTS {n} WITH (FORCE)")


@pytest.fixture
def empty_database(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """An existing, empty, unmigrated database (as an operator would create one)."""
    name = f"e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield pg_server.uri(name)
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def second_database(pg_server: EmbeddedPostgres, template_db: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db} STRATEGY file_copy")
    yield pg_server.uri(name)
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
