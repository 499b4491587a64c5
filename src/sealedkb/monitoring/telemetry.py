"""Process counters of one knowledge base, kept as plain integers.

Why plain integers and not Prometheus objects: the key layer and the service
must not depend on a metrics library (only ``monitoring/metrics.py`` speaks Prometheus), and
the alarm evaluator needs exact counts to take differences of. The counters
here are cumulative since the knowledge base was opened in this process; the
Prometheus collector (metrics.py) reads them at scrape time, the alarm
evaluator (alarms.py, beside it) samples them every tick.

What is counted is bounded by construction: operation names are the provider's
method names, outcomes are ``ok`` or an error code, key states are the four
KeyState values. Never an id, a key URI, a namespace or a message.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

KeyCallObserver = Callable[[str, str, float], None]


@dataclass
class Telemetry:
    """Counters of one knowledge base in this process (thread-safe where it matters).

    Key-provider calls are rare (a data-key cache miss, a probe, a lifecycle
    operation), so they are counted under a lock. Integrity failures are counted
    under the same lock; they are rarer still. The data-key cache hit/miss counters
    live on the key ring itself (crypto/keyring.py), since they sit on the hot path.
    """

    key_calls: dict[tuple[str, str], int] = field(default_factory=dict)
    key_state_refusals: dict[str, int] = field(default_factory=dict)
    integrity_failures: int = 0
    # Set by monitoring/metrics.py when metrics are enabled: (operation, outcome, seconds).
    key_call_observer: KeyCallObserver | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def key_call(
        self, operation: str, outcome: str, seconds: float, key_state: str | None = None
    ) -> None:
        with self._lock:
            k = (operation, outcome)
            self.key_calls[k] = self.key_calls.get(k, 0) + 1
            if key_state is not None:
                self.key_state_refusals[key_state] = self.key_state_refusals.get(key_state, 0) + 1
        observer = self.key_call_observer
        if observer is not None:
            observer(operation, outcome, seconds)

    def integrity_failure(self) -> None:
        with self._lock:
            self.integrity_failures += 1

    # --- totals the alarm evaluator samples ----------------------------------

    def key_calls_total(self) -> int:
        with self._lock:
            return sum(self.key_calls.values())

    def key_failures_total(self) -> int:
        with self._lock:
            return sum(n for (_, outcome), n in self.key_calls.items() if outcome != "ok")

    def refusals(self, key_state: str) -> int:
        with self._lock:
            return self.key_state_refusals.get(key_state, 0)

    def snapshot(self) -> dict[str, object]:
        """A copy for ``status`` and the collector (no lock held while formatting)."""
        with self._lock:
            return {
                "key_calls": dict(self.key_calls),
                "key_state_refusals": dict(self.key_state_refusals),
                "integrity_failures": self.integrity_failures,
            }
