"""Automated snapshots while ``serve`` runs: once per daily UTC window, retried
after a failure while the window lasts, and expired after the retention (1-35
days). Several serving processes share the folder: a lock file lets one of them
take it. ``sealedkb_snapshots_automated_total{outcome}`` counts the attempts, and
the SnapshotStale alarm reads the newest successful automated ``CreateSnapshot``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from sealedkb._periodic import PeriodicTask
from sealedkb.errors import SealedKBError, ValidationError
from sealedkb.snapshots.base import log
from sealedkb.snapshots.store import SnapshotFolder, SnapshotInfo
from sealedkb.store.jobs import Leadership

if TYPE_CHECKING:
    from prometheus_client import Counter


@dataclass(frozen=True)
class DailyWindow:
    """A daily UTC window ``HH:MM-HH:MM`` (may wrap past midnight)."""

    start_minute: int
    length_minutes: int

    @classmethod
    def parse(cls, text: str) -> DailyWindow | None:
        if text == "off":
            return None
        m = re.fullmatch(r"(\d\d):(\d\d)-(\d\d):(\d\d)", text)
        if not m:
            raise ValidationError("snapshot window must be HH:MM-HH:MM (UTC) or off")
        a = int(m.group(1)) * 60 + int(m.group(2))
        b = int(m.group(3)) * 60 + int(m.group(4))
        length = (b - a) % (24 * 60)
        if not 0 <= a < 24 * 60 or length == 0:
            raise ValidationError("snapshot window must be HH:MM-HH:MM (UTC) or off")
        return cls(a, length)

    def current(self, now: datetime) -> datetime | None:
        """The start of the window ``now`` falls in, or None outside it."""
        now = now.astimezone(UTC)
        start = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(
            minutes=self.start_minute
        )
        if start > now:
            start -= timedelta(days=1)
        return start if now < start + timedelta(minutes=self.length_minutes) else None


_COUNTER: Counter | None = None
_COUNTER_LOCK = threading.Lock()


def _counter() -> Counter:
    """``sealedkb_snapshots_automated_total{outcome}`` on /metrics (made on first use,
    with both outcomes at 0, so a scrape shows the series before the first window)."""
    global _COUNTER
    with _COUNTER_LOCK:
        if _COUNTER is None:
            from prometheus_client import Counter

            from sealedkb.monitoring.metrics import REGISTRY

            _COUNTER = Counter(
                "sealedkb_snapshots_automated",
                "Automated snapshot attempts by outcome (success or failure).",
                ["outcome"],
                registry=REGISTRY,
            )
            for outcome in ("success", "failure"):
                _COUNTER.labels(outcome=outcome)
        return _COUNTER


def _count(outcome: str) -> None:
    _counter().labels(outcome=outcome).inc()


class Snapshotter(Protocol):
    """What the scheduler needs of the snapshot operations."""

    @property
    def store(self) -> SnapshotFolder: ...

    def create(self, *, name: str | None = None, kind: str = "manual") -> SnapshotInfo: ...

    def expire(self, retention_days: int) -> list[str]: ...


class SnapshotScheduler:
    """Automated snapshots while ``serve`` runs: once per daily window, retried after
    a failure while the window lasts, and expired after the retention. Several
    serving processes share the folder: a lock file lets one of them take it."""

    def __init__(
        self,
        snapshots: Snapshotter,
        window: DailyWindow,
        retention_days: int,
        *,
        now: Callable[[], datetime] | None = None,
        interval: float = 60.0,
        retry_after: float = 300.0,
        leadership: Leadership | None = None,
    ) -> None:
        if not 1 <= retention_days <= 35:
            raise ValidationError("retention must be 1-35 days", field="snapshot_retention_days")
        self.snapshots = snapshots
        self.window = window
        self.retention_days = retention_days
        self._now = now or (lambda: datetime.now(UTC))
        self.interval = interval
        self.retry_after = timedelta(seconds=retry_after)
        self.created = 0
        self.failures = 0
        self.expired = 0
        self.last_error: str | None = None
        self._next_try: datetime | None = None
        self.leadership = leadership
        task = leadership.guard(self.tick) if leadership is not None else self.tick
        self._periodic = PeriodicTask(
            "sealedkb-snapshots", interval, task, what="snapshot scheduler round", logger=log
        )

    def tick(self) -> str:
        """One round: expire, then snapshot if the window is open and today's is missing.
        Returns what happened (created, failed, done, waiting, busy, outside-window)."""
        self.expired += len(self.snapshots.expire(self.retention_days))
        now = self._now()
        start = self.window.current(now)
        if start is None:
            self._next_try = None
            return "outside-window"
        if self._next_try is not None and now < self._next_try:
            return "waiting"
        store = self.snapshots.store
        with store.locked() as mine:
            if not mine:
                return "busy"
            if store.automated_since(start):
                return "done"
            try:
                info = self.snapshots.create(kind="automated")
            except SealedKBError as exc:
                self.failures += 1
                self.last_error = exc.message
                self._next_try = now + self.retry_after
                _count("failure")
                log.error(
                    "automated snapshot failed (%s: %s); retrying in %d s",
                    exc.code,
                    exc.message,
                    self.retry_after.total_seconds(),
                )
                return "failed"
        self.created += 1
        self.last_error = None
        self._next_try = None
        _count("success")
        log.info("automated snapshot %s written", info.id)
        return "created"

    def start(self) -> SnapshotScheduler:
        _counter()
        self._periodic.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._periodic.stop(timeout=timeout)
