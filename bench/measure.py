"""Shared by the benchmarks: percentiles, timing and the synthetic word corpus.

Imported as ``from measure import ...``: benchmarks run as ``python bench/X.py``,
so this folder is on ``sys.path`` (as for corpus.py).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

# Operations vocabulary for generated entries (no real text; sizes are what matter).
WORDS = [
    "deploy", "rollback", "cluster", "index", "vacuum", "replica", "schema", "migration",
    "token", "latency", "cache", "runbook", "incident", "decision", "pattern", "retry",
    "backoff", "timeout", "queue", "worker", "lease", "shard", "partition", "snapshot",
    "restore", "verify", "rotate", "policy", "audit", "alarm", "threshold", "baseline",
]  # fmt: skip


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``."""
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sentences(rng: random.Random, approx_bytes: int, words: list[str] = WORDS) -> str:
    """Capitalised sentences of 6-14 random words, one a line, to about ``approx_bytes``."""
    lines = []
    size = 0
    while size < approx_bytes:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(6, 14))).capitalize() + "."
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)
