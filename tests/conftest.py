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
from tests import cli_helpers
from tests.cli_helpers import Cli
from tests.tlsserver import TlsEndpoints, find_pgbouncer

from sealedkb.config import Settings, load_settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode
from sealedkb.store.db import apply_migrations
from sealedkb.store.embedded import EmbeddedPostgres

TEMPLATE = "kb_template"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SEALEDKB_"):
            monkeypatch.delenv(name)
    # Knowledge bases made by tests use the server-side search index unless a test asks
    # for the memory one (init(search_index="memory"), tests/integration/test_memory_index*.py).
    monkeypatch.setenv("SEALEDKB_SEARCH_INDEX", "server")


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
def database_url(
    pg_server: EmbeddedPostgres, template_db: str, db_transport: str, request: pytest.FixtureRequest
) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db} STRATEGY file_copy")
    if db_transport == "tls":  # through the pgbouncer TLS endpoint, verify-full
        endpoints: TlsEndpoints = request.getfixturevalue("tls_endpoints")
        yield endpoints.get("good").url(name, ca=endpoints.certs.ca)
    else:
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


# --- the CLI and other shared helpers (tests/cli_helpers.py) -------------------


@pytest.fixture
def make_cli() -> Callable[..., Cli]:
    """``make_cli(home, url, env=None)``: a CLI runner on another home or database."""
    return cli_helpers.make_cli


@pytest.fixture
def cli(home: Path, database_url: str) -> Cli:
    """``cli(*args, input=, env=, url=)`` runs ``sealedkb --home <home> ...`` in-process
    (typer's CliRunner) on this test's home and database; nothing initialised yet."""
    return cli_helpers.make_cli(home, database_url)


@pytest.fixture
def cli_env(database_url: str) -> dict[str, str]:
    """The environment of a ``python -m sealedkb`` child process on this test's database."""
    return cli_helpers.subprocess_env(database_url)


@pytest.fixture
def all_entries() -> Callable[[KnowledgeBase], dict[str, dict[str, Any]]]:
    """``all_entries(kb)``: every live entry by id, for before/after comparisons."""
    return cli_helpers.all_entries


@pytest.fixture(params=[EncryptionMode.ON, EncryptionMode.OFF], ids=["encrypted", "plaintext"])
def any_kb(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
) -> Iterator[KnowledgeBase]:
    knowledge_base, _ = KnowledgeBase.init(make_settings(), request.param)
    yield knowledge_base
    knowledge_base.close()


# --- database transport: Unix socket or TLS endpoint (verified TLS) ------------
#
# ``database_url`` reaches the test server over its Unix socket, or through a
# pgbouncer TLS endpoint with sslmode=verify-full (tests/tlsserver.py). Choose:
#   - per module: ``pytestmark = pytest.mark.db_transports("socket", "tls")``
#     runs each test of the module both ways (test ids get [socket]/[tls]);
#   - for the whole run: ``pytest --db-transport=tls`` (or the environment
#     variable SEALEDKB_TEST_DB_TRANSPORT=tls).
# Without pgbouncer the TLS tests are skipped, unless SEALEDKB_TEST_REQUIRE_PGBOUNCER=1
# (set by .ci/run) turns the skip into a failure.

_DEFAULT_TRANSPORT = os.environ.get("SEALEDKB_TEST_DB_TRANSPORT", "socket")
_REQUIRE_PGBOUNCER = os.environ.get("SEALEDKB_TEST_REQUIRE_PGBOUNCER") == "1"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--db-transport",
        choices=("socket", "tls"),
        default=_DEFAULT_TRANSPORT,
        help="how database_url reaches PostgreSQL (default: socket)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "db_transports(*kinds): run the test over each transport (socket, tls)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("db_transports")
    if marker is not None and "db_transport" in metafunc.fixturenames:
        metafunc.parametrize("db_transport", marker.args or ("socket", "tls"), indirect=True)


@pytest.fixture
def db_transport(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", None) or request.config.getoption("--db-transport"))


@pytest.fixture(scope="session")
def tls_endpoints(pg_server: EmbeddedPostgres) -> Iterator[TlsEndpoints]:
    """pgbouncer TLS endpoints in front of ``pg_server`` (started per variant on first use)."""
    if find_pgbouncer() is None:
        message = "pgbouncer is not installed (apt-get install -y pgbouncer; .ci/run does)"
        if _REQUIRE_PGBOUNCER:
            pytest.fail(message)
        pytest.skip(message)
    folder = Path(tempfile.mkdtemp(prefix="sealedkb-tls-"))
    endpoints = TlsEndpoints(folder, pg_server.socket_dir)
    try:
        yield endpoints
    finally:
        endpoints.close()
        shutil.rmtree(folder, ignore_errors=True)
