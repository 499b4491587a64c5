"""Automated snapshots: the daily window, retention and the scheduler with an injected
clock, and ``serve`` taking an automated snapshot."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.mcp_helpers import http_server
from tests.snapshot_helpers import (
    Clock,
    add_varied,
    audit_rows,
)

from sealedkb.config import Settings
from sealedkb.errors import (
    ValidationError,
)
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.snapshotting import snapshots_for
from sealedkb.snapshots import DailyWindow, SnapshotScheduler

pytest_plugins = ["tests.snapshot_fixtures"]


def test_daily_window() -> None:
    w = DailyWindow.parse("03:00-04:00")
    assert w is not None
    day = datetime(2025, 5, 1, tzinfo=UTC)
    assert w.current(day.replace(hour=3, minute=30)) == day.replace(hour=3)
    assert w.current(day.replace(hour=4)) is None
    assert w.current(day.replace(hour=2, minute=59)) is None
    wrap = DailyWindow.parse("23:30-00:30")
    assert wrap is not None
    assert wrap.current(day.replace(hour=0, minute=10)) == day - timedelta(minutes=30)
    assert wrap.current(day.replace(hour=23, minute=45)) == day.replace(hour=23, minute=30)
    assert wrap.current(day.replace(hour=12)) is None
    assert DailyWindow.parse("off") is None
    with pytest.raises(ValidationError):
        DailyWindow.parse("03:00-03:00")


def test_retention_with_an_injected_clock(
    kb: KnowledgeBase, settings: Settings, database_url: str
) -> None:
    t0 = datetime(2025, 3, 20, 12, 0, tzinfo=UTC)
    clock = Clock(t0)
    snaps = snapshots_for(settings, kb, now=clock)
    made: dict[str, str] = {}
    for label, days, kind in (
        ("auto-10d", 10, "automated"),
        ("auto-8d", 8, "automated"),
        ("auto-6d", 6, "automated"),
        ("auto-1d", 1, "automated"),
        ("manual-30d", 30, "manual"),
        ("manual-9d", 9, "manual"),
    ):
        clock.now = t0 - timedelta(days=days)
        made[label] = snaps.create(kind=kind).id
    clock.now = t0
    window = DailyWindow.parse("00:00-01:00")  # closed at noon: only retention runs
    assert window is not None
    scheduler = SnapshotScheduler(snaps, window, 7, now=clock)
    assert scheduler.tick() == "outside-window"
    left = {i.id for i in snaps.list()}
    assert left == {made["auto-6d"], made["auto-1d"], made["manual-30d"], made["manual-9d"]}
    assert scheduler.expired == 2
    deleted = audit_rows(database_url, "DeleteSnapshot")
    assert sorted(e["details"]["snapshot_id"] for e in deleted) == sorted(
        [made["auto-10d"], made["auto-8d"]]
    )
    assert all(
        e["details"] == {**e["details"], "kind": "automated", "reason": "retention"}
        for e in deleted
    )
    # a week later the other automated ones go too; manual ones stay until deleted
    clock.now = t0 + timedelta(days=7)
    scheduler.tick()
    assert {i.id for i in snaps.list()} == {made["manual-30d"], made["manual-9d"]}
    with pytest.raises(ValidationError):
        SnapshotScheduler(snaps, window, 36)


def test_scheduler_takes_one_per_window_and_retries_a_failure(
    kb: KnowledgeBase, settings: Settings, database_url: str
) -> None:
    day = datetime(2025, 6, 1, tzinfo=UTC)
    clock = Clock(day.replace(hour=3, minute=5))
    snaps = snapshots_for(settings, kb, now=clock)
    window = DailyWindow.parse("03:00-04:00")
    assert window is not None and kb.keys is not None
    scheduler = SnapshotScheduler(snaps, window, 7, now=clock, retry_after=300)
    from sealedkb.monitoring.metrics import REGISTRY

    def metric(outcome: str) -> float:
        value = REGISTRY.get_sample_value(
            "sealedkb_snapshots_automated_total", {"outcome": outcome}
        )
        return value or 0.0

    failures_before, successes_before = metric("failure"), metric("success")
    kb.keys.disable()
    assert scheduler.tick() == "failed"
    assert scheduler.failures == 1 and scheduler.last_error
    assert metric("failure") == failures_before + 1
    assert snaps.list() == []
    clock.now += timedelta(minutes=2)
    assert scheduler.tick() == "waiting"  # retried after retry_after, not at once
    kb.keys.enable()
    clock.now += timedelta(minutes=4)
    assert scheduler.tick() == "created"
    clock.now += timedelta(minutes=10)
    assert scheduler.tick() == "done"  # one per window
    assert [i.kind for i in snaps.list()] == ["automated"]
    clock.now = day.replace(hour=5)
    assert scheduler.tick() == "outside-window"
    clock.now = day.replace(hour=3, minute=1) + timedelta(days=1)
    assert scheduler.tick() == "created"  # the next day's window
    assert metric("success") == successes_before + 2
    events = audit_rows(database_url, "CreateSnapshot")
    assert [(e["outcome"], e["details"]["kind"]) for e in events] == [
        ("failure", "automated"),
        ("success", "automated"),
        ("success", "automated"),
    ]
    assert events[0]["error_code"] == "KEY_UNAVAILABLE"


def _window_around_now() -> str:
    now = datetime.now(UTC)
    start, end = now - timedelta(minutes=5), now + timedelta(minutes=30)
    return f"{start:%H:%M}-{end:%H:%M}"


def test_serve_takes_an_automated_snapshot(
    kb: KnowledgeBase, home: Path, database_url: str, settings: Settings
) -> None:
    add_varied(kb)
    kb.close()
    with http_server(home, database_url, SEALEDKB_SNAPSHOT_WINDOW=_window_around_now()):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if snapshots_for(settings).list():
                break
            time.sleep(0.2)
    listed = snapshots_for(settings).list()
    assert [i.kind for i in listed] == ["automated"]
    events = audit_rows(database_url, "CreateSnapshot")
    assert [(e["principal"], e["outcome"]) for e in events] == [("sealedkb-service", "success")]
    assert events[0]["details"]["kind"] == "automated"
    assert events[0]["details"]["snapshot_id"] == listed[0].id
