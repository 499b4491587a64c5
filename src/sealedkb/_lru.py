"""One bounded least-recently-used map, thread-safe, with an optional age limit.

Used wherever a process remembers results it can recompute: key-service MAC results
for bearer tokens, OAuth rows and alarm rows (kb/tokens.py ``BoundedCache``), and
the opened exact embeddings the server search index re-ranks with
(search/engine.py). The age is measured on an injected clock, so tests need no
sleep.

No imports from the rest of sealedkb: every layer may use it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Generic, TypeVar

__all__ = ["LRUCache"]

K = TypeVar("K")
V = TypeVar("V")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class LRUCache(Generic[K, V]):
    """At most ``max_entries`` items; with ``max_age`` (seconds), an item older than
    ``max_age`` on the clock ``now`` (default: the wall clock, UTC) is gone."""

    def __init__(
        self,
        max_entries: int,
        *,
        max_age: float | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        if now is not None and max_age is None:
            raise ValueError("a clock without max_age measures nothing")
        self.max_entries = max_entries
        self._max_age = max_age
        self._now = now if now is not None or max_age is None else _utcnow
        self._items: OrderedDict[K, tuple[datetime | None, V]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        return self.get_many((key,))[0]

    def get_many(self, keys: Sequence[K]) -> list[V | None]:
        """``get`` of each key, under one lock and one reading of the clock."""
        with self._lock:
            stamp = self._now() if self._now is not None else None
            out: list[V | None] = []
            for key in keys:
                hit = self._items.get(key)
                if hit is not None and self._older(hit[0], stamp):
                    del self._items[key]
                    hit = None
                if hit is not None:
                    self._items.move_to_end(key)
                out.append(None if hit is None else hit[1])
            return out

    def put(self, key: K, value: V) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._items[key] = (self._now() if self._now is not None else None, value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def _older(self, stamp: datetime | None, now: datetime | None) -> bool:
        if stamp is None or now is None or self._max_age is None:
            return False
        return (now - stamp).total_seconds() > self._max_age
