"""PostgreSQL stopped (fast and immediate shutdown) and started again under a load of
writer threads: while it is down every call fails with DATABASE_ERROR, /readyz says
503; once it is back the same process recovers without a restart, and no
acknowledged write is lost or half-written."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.faults.conftest import Load, assert_no_loss

from sealedkb.adapters.http import ReadinessProbe
from sealedkb.config import Settings
from sealedkb.errors import DatabaseError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode
from sealedkb.store import db
from sealedkb.store.embedded import EmbeddedPostgres

# The postmaster's shutdown signals (PostgreSQL docs, "Shutting Down the Server").
SHUTDOWN = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT}


def _postmaster_pid(server: EmbeddedPostgres) -> int:
    return int((server.pgdata / "postmaster.pid").read_text().splitlines()[0])


def _shut_down(server: EmbeddedPostgres, mode: str) -> None:
    os.kill(_postmaster_pid(server), SHUTDOWN[mode])
    deadline = time.monotonic() + 30
    while server.is_running():
        assert time.monotonic() < deadline, "PostgreSQL did not stop"
        time.sleep(0.05)


def _wait_for(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_pool_recovers_after_postgres_restart(
    mode: str,
    fault_pg: EmbeddedPostgres,
    fault_db: str,
    fault_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    kb, _ = KnowledgeBase.init(fault_settings(fault_db), EncryptionMode.ON)
    ready = ReadinessProbe(kb.availability, max_age=0.0)
    load = Load(kb, writers=3).start()
    try:
        _wait_for(lambda: load.acked_count() >= 30, 30, "no writes before the fault")
        assert ready.answer()[0] == 200

        _shut_down(fault_pg, mode)
        acked_at_stop = load.acked_count()
        _wait_for(
            lambda: load.codes.get("DATABASE_ERROR", 0) >= 3, 10, "no DATABASE_ERROR while down"
        )
        with pytest.raises(DatabaseError) as refused:
            kb.add("written while the database is down")
        assert refused.value.code == "DATABASE_ERROR"
        assert "SELECT" not in refused.value.message and "INSERT" not in refused.value.message
        status, body = ready.answer()
        assert status == 503, body
        assert load.acked_count() == acked_at_stop  # nothing acknowledged while down

        fault_pg.start()
        restarted = time.monotonic()
        _wait_for(lambda: load.acked_count() >= acked_at_stop + 30, 30, "no recovery after restart")
        recovered = time.monotonic() - restarted
        assert recovered < 15, recovered
        assert ready.answer() == (200, {"status": "available"})
    finally:
        load.stop()
    assert not load.foreign, load.foreign
    assert_no_loss(kb, fault_db, load.acked)
    # the pool is back to normal: every connection it holds works
    kb.add("after recovery")
    kb.close()


def test_idle_pool_survives_a_restart_without_a_failed_call(
    fault_pg: EmbeddedPostgres,
    fault_db: str,
    fault_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL restarted while nothing runs (a night-time upgrade): the pool's
    connections are all dead, yet the first calls after it succeed; none fails."""
    monkeypatch.setattr(db, "POOL_WAIT_SECONDS", 5.0)  # the production bound
    kb, _ = KnowledgeBase.init(fault_settings(fault_db), EncryptionMode.ON)
    load = Load(kb, writers=4).start()  # open several pooled connections
    _wait_for(lambda: load.acked_count() >= 20, 30, "no writes")
    load.stop()
    assert kb.db.pool.get_stats()["pool_size"] >= 2
    fault_pg.stop()
    fault_pg.start()
    started = time.monotonic()
    for i in range(10):
        kb.add(f"first calls after the restart {i}")
    assert time.monotonic() - started < 4.0
    assert_no_loss(kb, fault_db, load.acked)
    kb.close()
