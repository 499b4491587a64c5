"""sealedkb reaching PostgreSQL through a faulty network (tests/faults/proxy.py):
added latency, dropped connections, a black hole. Calls fail within a bounded time
with DATABASE_ERROR while it lasts, the pool recovers on its own afterwards, no
acknowledged write is lost, and no thread or connection is left behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import psycopg
import pytest
from tests.faults.conftest import Load, assert_no_loss
from tests.faults.proxy import FaultProxy, sockets_to

from sealedkb.config import Settings
from sealedkb.errors import DatabaseError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode
from sealedkb.store import db
from sealedkb.store.embedded import EmbeddedPostgres


@pytest.fixture(scope="module")
def proxy(fault_pg: EmbeddedPostgres) -> Iterator[FaultProxy]:
    p = FaultProxy(fault_pg.socket_dir / ".s.PGSQL.5432").start()
    yield p
    p.stop()


@pytest.fixture
def proxied(
    proxy: FaultProxy, fault_db: str, fault_settings: Callable[..., Settings]
) -> Iterator[tuple[KnowledgeBase, str]]:
    proxy.latency, proxy.blackhole = 0.0, False
    dbname = urlsplit(fault_db).path.lstrip("/")
    threads_before = threading.active_count()
    kb, _ = KnowledgeBase.init(
        fault_settings(proxy.url(dbname), pool_max_size=4), EncryptionMode.ON
    )
    yield kb, dbname
    proxy.latency, proxy.blackhole = 0.0, False
    kb.close()
    # nothing left behind: no thread, no connection (through the proxy or on the server)
    _wait_for(lambda: threading.active_count() <= threads_before, 10, "threads leaked")
    _wait_for(lambda: proxy.live() == 0, 10, "proxied connections leaked")
    assert sockets_to(proxy.port) == 0, "this process still holds a socket to the proxy"
    with psycopg.connect(fault_db.replace(f"/{dbname}?", "/postgres?"), autocommit=True) as c:
        _wait_for(
            lambda: (
                c.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (dbname,)
                ).fetchone()
                == (0,)
            ),
            10,
            "server connections leaked",
        )


def _wait_for(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _refused_within(kb: KnowledgeBase, seconds: float) -> None:
    started = time.monotonic()
    with pytest.raises(DatabaseError) as refused:
        kb.add(f"during the fault {time.monotonic()}")
    assert refused.value.code == "DATABASE_ERROR"
    assert time.monotonic() - started < seconds, "the call was not bounded"


def test_latency_slows_but_loses_nothing(
    proxy: FaultProxy, proxied: tuple[KnowledgeBase, str], fault_db: str
) -> None:
    kb, _ = proxied
    proxy.latency = 0.02
    load = Load(kb, writers=3).start()
    try:
        _wait_for(lambda: load.acked_count() >= 15, 30, "no progress under latency")
    finally:
        load.stop()
    assert not load.foreign and not load.codes, (load.foreign, load.codes)
    assert kb.db.pool.get_stats()["pool_size"] <= 4
    proxy.latency = 0.0
    assert_no_loss(kb, fault_db, load.acked)


def test_dropped_connections_recover(
    proxy: FaultProxy, proxied: tuple[KnowledgeBase, str], fault_db: str
) -> None:
    kb, _ = proxied
    load = Load(kb, writers=3).start()
    try:
        _wait_for(lambda: load.acked_count() >= 10, 30, "no writes before the fault")
        for _ in range(3):
            proxy.drop_all()
            time.sleep(0.3)
        mark = load.acked_count()
        _wait_for(lambda: load.acked_count() >= mark + 20, 15, "no recovery after drops")
    finally:
        load.stop()
    assert not load.foreign, load.foreign
    assert set(load.codes) <= {"DATABASE_ERROR"}, load.codes
    assert_no_loss(kb, fault_db, load.acked)


def test_black_hole_is_bounded_then_recovers(
    proxy: FaultProxy, proxied: tuple[KnowledgeBase, str], fault_db: str
) -> None:
    kb, _ = proxied
    load = Load(kb, writers=2).start()
    try:
        _wait_for(lambda: load.acked_count() >= 10, 30, "no writes before the fault")
        proxy.blackhole = True
        proxy.drop_all()  # the partition: live connections die, new ones go nowhere
        acked = load.acked_count()
        _refused_within(kb, 3.0)
        _wait_for(lambda: load.codes.get("DATABASE_ERROR", 0) >= 2, 10, "writers not refused")
        assert load.acked_count() == acked
        proxy.blackhole = False
        _wait_for(lambda: load.acked_count() >= acked + 20, 20, "no recovery after the hole")
    finally:
        load.stop()
    assert not load.foreign, load.foreign
    assert set(load.codes) <= {"DATABASE_ERROR"}, load.codes
    assert_no_loss(kb, fault_db, load.acked)


def test_timed_out_connect_leaves_no_socket(proxy: FaultProxy, fault_db: str) -> None:
    """A connect the black hole swallows times out and closes its socket at once,
    even while something (here the test, in production a log handler that keeps
    records) still holds the exception: psycopg's timeout keeps the aborted attempt
    reachable through its context."""
    dbname = urlsplit(fault_db).path.lstrip("/")
    proxy.blackhole = True
    try:
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as failed:
            db.ReleasingConnection.connect(proxy.url(dbname), connect_timeout=1)
        assert time.monotonic() - started < 3.0, "the connect was not bounded"
        kept = failed.value  # still referenced, as a kept log record would
        _wait_for(lambda: proxy.live() == 0, 5, "the timed-out attempt's socket stays open")
        assert sockets_to(proxy.port) == 0
        assert kept is not None
    finally:
        proxy.blackhole = False


def test_pooled_connections_get_tcp_timeouts() -> None:
    """A TCP URL without its own settings gets keepalives and a user timeout (a
    partition fails a connection in 30 s, not the kernel's ~15 min); a URL's own
    values win."""
    given = db._connect_kwargs("postgresql://u@db.example:5432/kb?keepalives_idle=5")
    assert given["tcp_user_timeout"] == db.TCP_SETTINGS["tcp_user_timeout"]
    assert given["connect_timeout"] == db.CONNECT_TIMEOUT_SECONDS
    assert "keepalives_idle" not in given  # the URL names it
