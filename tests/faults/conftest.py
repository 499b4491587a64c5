"""Fault-injection fixtures: a dedicated PostgreSQL server per module (stopping it
must not take the shared session server down), knowledge bases on it, and a small
load generator that records every acknowledged write."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

# The external key services (one each per test process) for the key-service faults.
from tests.key_service_fixtures import kmip_server as kmip_server
from tests.key_service_fixtures import moto_kms as moto_kms
from tests.key_service_fixtures import openbao as openbao

from sealedkb.config import Settings, load_settings
from sealedkb.errors import SealedKBError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.store import db
from sealedkb.store.db import apply_migrations
from sealedkb.store.embedded import EmbeddedPostgres


@pytest.fixture(scope="module")
def fault_pg() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of this module alone: tests stop and restart it. Crash-safe
    settings (not the shared server's fsync/synchronous_commit off): an immediate
    shutdown is a crash, and a commit it may lose was never really acknowledged."""
    base = Path(tempfile.mkdtemp(prefix="sealedkb-fault-"))
    server = EmbeddedPostgres(base / "pgdata", fast=False)
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fault_db(fault_pg: EmbeddedPostgres) -> Iterator[str]:
    """A fresh, migrated database on the dedicated server; its URL."""
    fault_pg.start()  # idempotent: a previous test may have left it stopped
    name = f"f_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(fault_pg.uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(fault_pg.uri(name), autocommit=True) as conn:
        apply_migrations(conn)
    yield fault_pg.uri(name)
    fault_pg.start()
    with psycopg.connect(fault_pg.uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(autouse=True)
def _short_pool_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls fail after 1 s without a connection (5 s in production): faster tests."""
    monkeypatch.setattr(db, "POOL_WAIT_SECONDS", 1.0)


@pytest.fixture
def fault_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(database_url: str, **overrides: Any) -> Settings:
        overrides.setdefault("embedder", "hash")
        return load_settings(tmp_path / "home", database_url=database_url, **overrides)

    return make


@dataclass
class Load:
    """Writer threads adding entries until stopped; every acknowledged add is kept,
    every refused one's error code counted."""

    kb: KnowledgeBase
    writers: int = 3
    acked: dict[str, str] = field(default_factory=dict)  # entry id -> content
    codes: dict[str, int] = field(default_factory=dict)
    foreign: list[BaseException] = field(default_factory=list)
    longest: float = 0.0  # seconds of the slowest call, answered or refused
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _n: int = 0

    def _run(self, wid: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            content = f"writer {wid} note {i} {uuid.uuid4().hex}"
            started = time.monotonic()
            try:
                entry = self.kb.add(content, tags=[f"w{wid}"])
            except SealedKBError as exc:
                with self._lock:
                    self.longest = max(self.longest, time.monotonic() - started)
                    self.codes[exc.code] = self.codes.get(exc.code, 0) + 1
                self._stop.wait(0.02)
                continue
            except BaseException as exc:
                with self._lock:
                    self.foreign.append(exc)
                return
            with self._lock:
                self.longest = max(self.longest, time.monotonic() - started)
                self.acked[str(entry.id)] = content

    def start(self) -> Load:
        for w in range(self.writers):
            t = threading.Thread(target=self._run, args=(w,), name=f"fault-writer-{w}")
            t.start()
            self._threads.append(t)
        return self

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def refused(self, code: str) -> int:
        with self._lock:
            return self.codes.get(code, 0)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self._threads), "a writer thread hangs"


def assert_no_loss(kb: KnowledgeBase, database_url: str, acked: dict[str, str]) -> None:
    """Every acknowledged entry reads back whole, and every row in the table opens
    (nothing half-written: a row that fails to decrypt or parse raises here)."""
    for entry_id, content in acked.items():
        assert kb.get(entry_id).content == content, f"acknowledged entry {entry_id} changed"
    with psycopg.connect(database_url) as conn:
        rows = [str(r[0]) for r in conn.execute("SELECT id FROM kb_entries")]
    assert set(acked) <= set(rows), "an acknowledged write is missing"
    for entry_id in rows:
        kb.get(entry_id)  # opens and checks the row
