"""The one bounded LRU map (sealedkb/_lru.py): size bound, recency, age on an injected
clock, and get_many agreeing with get."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sealedkb._lru import LRUCache

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> datetime:
        return self.t


def test_least_recently_used_goes_first() -> None:
    c = LRUCache[str, int](2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # a is now the most recent
    c.put("c", 3)
    assert (c.get("a"), c.get("b"), c.get("c")) == (1, None, 3)
    assert len(c) == 2


def test_items_older_than_max_age_are_gone() -> None:
    clock = Clock()
    c = LRUCache[str, int](8, max_age=60, now=clock)
    c.put("a", 1)
    clock.t = T0 + timedelta(seconds=60)
    assert c.get("a") == 1
    clock.t = T0 + timedelta(seconds=61)
    assert c.get("a") is None
    assert len(c) == 0


@pytest.mark.parametrize("seconds", [0, 30, 90])
def test_get_many_agrees_with_get(seconds: int) -> None:
    clock = Clock()
    many = LRUCache[str, int](8, max_age=60, now=clock)
    one = LRUCache[str, int](8, max_age=60, now=clock)
    for c in (many, one):
        c.put("a", 1)
        c.put("b", 2)
    clock.t = T0 + timedelta(seconds=seconds)
    assert many.get_many(["a", "x", "b"]) == [one.get("a"), one.get("x"), one.get("b")]


def test_zero_entries_keeps_nothing_and_a_clock_needs_an_age() -> None:
    c = LRUCache[str, int](0)
    c.put("a", 1)
    assert c.get("a") is None
    with pytest.raises(ValueError):
        LRUCache[str, int](1, now=Clock())
