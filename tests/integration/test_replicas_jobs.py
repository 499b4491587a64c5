"""Singleton jobs across replicas (store/jobs.py): one PostgreSQL session advisory lock
per job elects the replica that runs it; when the holder's session dies another
replica takes over within the stated bound, and the old holder stops running it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from sealedkb.store.db import Database
from sealedkb.store.jobs import Leadership, job_lock_key, leaders, runs

POLL = 0.5


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url, max_size=2)
    yield database
    database.close()


def _terminate_holder(url: str, key: int) -> None:
    """What PostgreSQL does when the holder's process dies: its session ends."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
            " AND granted AND ((classid::bigint << 32) | objid::bigint) = %s",
            (key,),
        )


def test_exactly_one_replica_runs_a_job_and_another_takes_over(
    db: Database, database_url: str
) -> None:
    a = Leadership(db, "alarms", "replica-a", poll=POLL)
    b = Leadership(db, "alarms", "replica-b", poll=POLL)
    other_job = Leadership(db, "snapshots", "replica-b", poll=POLL)
    try:
        assert a.try_lead() and not b.try_lead()
        assert other_job.try_lead()  # each job has its own lock
        ran: list[str] = []
        for _ in range(3):
            a.run(lambda: ran.append("a"))
            b.run(lambda: ran.append("b"))
        assert ran == ["a", "a", "a"]
        assert {r.replica for r in runs(db, "alarms")} == {"replica-a"}
        assert [(x.job, x.replica) for x in leaders(db)] == [
            ("alarms", "replica-a"),
            ("snapshots", "replica-b"),
        ]

        b.start()  # b keeps competing in the background
        t0 = time.monotonic()
        _terminate_holder(database_url, job_lock_key("alarms"))
        while not b.leading:
            assert time.monotonic() - t0 < b.takeover_bound, "no takeover within the bound"
            time.sleep(0.05)
        # the old holder notices before its next round and does not run it
        assert not a.run(lambda: ran.append("a"))
        assert b.run(lambda: ran.append("b"))
        assert ran[-1] == "b" and ran.count("a") == 3
        assert [x.replica for x in leaders(db) if x.job == "alarms"] == ["replica-b"]
        assert runs(db, "alarms")[0].replica == "replica-b"
    finally:
        for lead in (a, b, other_job):
            lead.stop()


def test_a_stopped_leader_hands_over_at_once(db: Database) -> None:
    a = Leadership(db, "housekeeping", "replica-a", poll=POLL)
    b = Leadership(db, "housekeeping", "replica-b", poll=POLL)
    try:
        assert a.try_lead() and not b.try_lead()
        a.stop()
        assert b.try_lead()
    finally:
        a.stop()
        b.stop()


def test_a_failed_round_is_recorded_and_raised(db: Database) -> None:
    lead = Leadership(db, "alarms", "replica-a", poll=POLL)
    try:

        def boom() -> None:
            raise RuntimeError("bad round")

        with pytest.raises(RuntimeError):
            lead.run(boom)
        assert [r.ok for r in runs(db, "alarms")] == [False]
        assert lead.leading  # a bad round does not give up the lock
    finally:
        lead.stop()
