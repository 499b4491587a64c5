"""Shared fixtures: one real PostgreSQL + pgvector per test session (the embedded
wheel, run as an unprivileged user when we are root), a migrated template
database, and a fresh database per test cloned from it (file_copy, ~50 ms)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sealedkb.config import Settings, load_settings
from sealedkb.domain import EncryptionMode
from sealedkb.service import KnowledgeBase
from sealedkb.store.db import apply_migrations
from sealedkb.store.embedded import EmbeddedPostgres

TEMPLATE = "kb_template"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SEALEDKB_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    # Not under pytest's basetemp: as root, a second pytest session resets
    # /tmp/pytest-of-root to 0700 and cuts the server user off from its files.
    base = Path(tempfile.mkdtemp(prefix="sealedkb-test-"))
    server = EmbeddedPostgres(base / "pgdata", fast=True)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_server: EmbeddedPostgres) -> str:
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    with psycopg.connect(pg_server.uri(TEMPLATE), autocommit=True) as conn:
        apply_migrations(conn)
    return TEMPLATE


@pytest.fixture
def database_url(pg_server: EmbeddedPostgres, template_db: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db} STRATEGY file_copy")
    yield pg_server.uri(name)
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def make_settings(home: Path, database_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        overrides.setdefault("database_url", database_url)
        # The deterministic hashing embedder keeps tests fast; tests of the real
        # model ask for embedder="minilm".
        overrides.setdefault("embedder", "hash")
        return load_settings(home, **overrides)

    return make


@pytest.fixture
def kb(make_settings: Callable[..., Settings]) -> Iterator[KnowledgeBase]:
    knowledge_base, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON)
    yield knowledge_base
    knowledge_base.close()


@pytest.fixture
def plain_kb(make_settings: Callable[..., Settings]) -> Iterator[KnowledgeBase]:
    knowledge_base, _ = KnowledgeBase.init(make_settings(), EncryptionMode.OFF)
    yield knowledge_base
    knowledge_base.close()


@pytest.fixture(params=[EncryptionMode.ON, EncryptionMode.OFF], ids=["encrypted", "plaintext"])
def any_kb(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
) -> Iterator[KnowledgeBase]:
    knowledge_base, _ = KnowledgeBase.init(make_settings(), request.param)
    yield knowledge_base
    knowledge_base.close()
