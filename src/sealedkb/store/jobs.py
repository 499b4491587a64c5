"""Singleton jobs across serving replicas: leadership by PostgreSQL advisory lock.

Several ``serve`` replicas share one database. Jobs that must run once, not once
per replica (key housekeeping, alarm evaluation, automated snapshots and their
retention), are each guarded by a *session* advisory lock taken with
``pg_try_advisory_lock`` on a connection dedicated to it (never a pooled one: a
session lock belongs to the connection that took it, and a pooler in transaction
mode would hand it to someone else). The replica holding the lock is the job's
leader; the others try again every ``poll`` seconds.

When the leader dies its connection closes and PostgreSQL releases the lock at
once (process killed: the kernel closes the socket). When its host vanishes
without closing the socket, the server gives up on the session after
``idle_session_timeout`` (set on the lock connection to ``3 x poll``; the leader
touches it every ``poll`` seconds) or the TCP keepalive bound, whichever comes
first. So another replica takes over within :meth:`Leadership.takeover_bound`
seconds: ``3 x poll`` plus one poll.

Before each round the leader checks its lock connection; a leader whose
connection broke stops running the job at once and competes again like the others.

The holder and each round are recorded in ``kb_job_leaders`` and ``kb_job_runs``
(migration 010) for operators and tests. No values or SQL in logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import Connection
from psycopg.rows import TupleRow

from sealedkb.errors import SealedKBError
from sealedkb.store.db import Database, connect

__all__ = [
    "JobLeader",
    "JobRun",
    "Leadership",
    "default_replica_id",
    "job_lock_key",
    "leaders",
    "runs",
]

log = logging.getLogger("sealedkb.jobs")

RUNS_KEPT_DAYS = 7
_LOCK_NAMESPACE = b"sealedkb/singleton-job/v1|"


def job_lock_key(job: str) -> int:
    """The advisory-lock key of a job: 63 bits of SHA-256 of its name (stable, and
    apart from the schema-migration lock)."""
    digest = hashlib.sha256(_LOCK_NAMESPACE + job.encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def default_replica_id() -> str:
    return f"{socket.gethostname()[:60]}-{os.getpid()}"


@dataclass(frozen=True)
class JobLeader:
    job: str
    replica: str
    since: datetime
    heartbeat_at: datetime


@dataclass(frozen=True)
class JobRun:
    job: str
    replica: str
    ran_at: datetime
    ok: bool


class Leadership:
    """One job's leadership for this replica: :meth:`run` runs a round only while this
    replica holds the job's advisory lock."""

    def __init__(
        self,
        db: Database,
        job: str,
        replica: str,
        *,
        poll: float = 5.0,
        allow_insecure: bool = False,
    ) -> None:
        if poll <= 0:
            raise ValueError("poll must be positive")
        self.db = db
        self.job = job
        self.replica = replica
        self.poll = poll
        self.key = job_lock_key(job)
        self._allow_insecure = allow_insecure
        self._conn: Connection[TupleRow] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the lock ---------------------------------------------------------------

    @property
    def takeover_bound(self) -> float:
        """Seconds within which another replica holds the lock after this one died."""
        return 4 * self.poll

    @property
    def leading(self) -> bool:
        return self._conn is not None

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _alive(self) -> bool:
        conn = self._conn
        if conn is None:
            return False
        try:
            conn.execute("SELECT 1")
        except psycopg.Error:
            log.warning("job %s: lost the lock connection; no longer leader", self.job)
            self._drop()
            return False
        return True

    def try_lead(self) -> bool:
        """Hold the job's lock (take it if free); True while this replica leads."""
        with self._lock:
            if self._alive():
                return True
            try:
                conn = connect(self.db.url, allow_insecure=self._allow_insecure)
            except (psycopg.Error, SealedKBError):
                log.debug("job %s: lock connection failed", self.job)
                return False
            try:
                idle_ms = int(self.poll * 3000)
                conn.execute(f"SET idle_session_timeout = {idle_ms}")  # int: no injection
                conn.execute("SET tcp_keepalives_idle = 5")
                conn.execute("SET tcp_keepalives_interval = 2")
                conn.execute("SET tcp_keepalives_count = 3")
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
            except psycopg.Error:
                conn.close()
                return False
            if not row or not row[0]:
                conn.close()
                return False
            self._conn = conn
        log.info("job %s: this replica (%s) is now the leader", self.job, self.replica)
        with contextlib.suppress(SealedKBError):
            self._record_leader()
        return True

    def release(self) -> None:
        with self._lock:
            conn = self._conn
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            self._drop()

    # --- the background keeper -------------------------------------------------

    def start(self) -> Leadership:
        """Keep trying for the lock every ``poll`` seconds (and keep the leader's
        lock connection from idling out) in a daemon thread."""
        self.try_lead()
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._loop, name=f"sealedkb-leader-{self.job}", daemon=True
            )
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            self.try_lead()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.release()

    # --- guarded rounds -------------------------------------------------------

    def run(self, task: Callable[[], object]) -> bool:
        """Run one round of the job if this replica leads; True if it ran. The round
        is recorded (ok or failed); its exception propagates."""
        if not self.try_lead():
            return False
        ok = False
        try:
            task()
            ok = True
        finally:
            try:
                self._record_run(ok)
            except SealedKBError:
                log.debug("job %s: round not recorded", self.job)
        return True

    def guard(self, task: Callable[[], object]) -> Callable[[], None]:
        """``task`` as a round that runs only on the leader (for PeriodicTask)."""

        def round_() -> None:
            self.run(task)

        return round_

    # --- records --------------------------------------------------------------

    def _record_leader(self) -> None:
        with self.db.transaction("job leader") as conn:
            conn.execute(
                "INSERT INTO kb_job_leaders (job, replica) VALUES (%s, %s)"
                " ON CONFLICT (job) DO UPDATE SET replica = EXCLUDED.replica,"
                " since = now(), heartbeat_at = now()",
                (self.job, self.replica),
            )

    def _record_run(self, ok: bool) -> None:
        with self.db.transaction("job round") as conn:
            conn.execute(
                "INSERT INTO kb_job_runs (job, replica, ok) VALUES (%s, %s, %s)",
                (self.job, self.replica, ok),
            )
            conn.execute(
                "UPDATE kb_job_leaders SET heartbeat_at = now() WHERE job = %s AND replica = %s",
                (self.job, self.replica),
            )
            conn.execute(
                "DELETE FROM kb_job_runs"
                " WHERE job = %s AND ran_at < now() - make_interval(days => %s)",
                (self.job, RUNS_KEPT_DAYS),
            )


def leaders(db: Database) -> list[JobLeader]:
    """Who holds each singleton job, as recorded."""
    with db.transaction("job leaders") as conn:
        rows = conn.execute(
            "SELECT job, replica, since, heartbeat_at FROM kb_job_leaders ORDER BY job"
        ).fetchall()
    return [JobLeader(str(r[0]), str(r[1]), r[2], r[3]) for r in rows]


def runs(db: Database, job: str | None = None, limit: int = 1000) -> list[JobRun]:
    """The newest recorded rounds, newest first."""
    with db.transaction("job runs") as conn:
        rows = conn.execute(
            "SELECT job, replica, ran_at, ok FROM kb_job_runs"
            " WHERE (%s::text IS NULL OR job = %s) ORDER BY id DESC LIMIT %s",
            (job, job, limit),
        ).fetchall()
    return [JobRun(str(r[0]), str(r[1]), r[2], bool(r[3])) for r in rows]
