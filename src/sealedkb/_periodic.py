"""One background thread that runs a task every ``interval`` seconds.

Used by every loop of a long-running process (``serve``): key housekeeping, alarm
evaluation, the snapshot schedule. A round that raises is logged (with its
traceback) and the next round runs as planned: a background loop survives a bad
round. ``stop`` wakes the thread at once, waits for the round in progress, and
joins it.

Tests drive it without wall-clock waits: :meth:`PeriodicTask.run_round` runs one
round in the caller's thread, and ``wait`` replaces the pause between rounds (a
function given the interval that returns True to stop, e.g. a fake clock's).

No imports from the rest of sealedkb: every layer may use it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Self

__all__ = ["PeriodicTask"]

_log = logging.getLogger(__name__)


class PeriodicTask:
    """Run ``task`` every ``interval`` seconds in a daemon thread named ``name``.

    ``run_first``: the thread's first round runs at once (True) or after one
    interval (False, for callers that ran a round themselves before starting).
    ``what`` names the round in the log line of a failure (``"<what> failed"``),
    written to ``logger`` (default: this module's).
    """

    def __init__(
        self,
        name: str,
        interval: float,
        task: Callable[[], object],
        *,
        run_first: bool = True,
        what: str | None = None,
        logger: logging.Logger | None = None,
        stop_event: threading.Event | None = None,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.name = name
        self.interval = interval
        self.task = task
        self.run_first = run_first
        self.what = what or name
        self.log = logger or _log
        self.stop_event = stop_event or threading.Event()
        self._wait = wait or self.stop_event.wait
        self._thread: threading.Thread | None = None
        self.rounds = 0
        self.failures = 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run_round(self) -> bool:
        """One round in the caller's thread: True if it completed, False if it raised
        (the exception is logged, not raised)."""
        try:
            self.task()
        except Exception:  # a background loop must survive a bad round
            self.failures += 1
            self.log.exception("%s failed", self.what)
            return False
        finally:
            self.rounds += 1
        return True

    def _stopping(self) -> bool:
        return self.stop_event.is_set() or self._wait(self.interval)

    def _loop(self) -> None:
        if not self.run_first and self._stopping():
            return
        while not self.stop_event.is_set():
            self.run_round()
            if self._stopping():
                return

    def start(self) -> Self:
        """Start the thread (once; a second call while it runs does nothing)."""
        if self.running:
            return self
        self.stop_event.clear()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Ask the thread to stop and wait up to ``timeout`` seconds for it."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
