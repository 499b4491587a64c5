"""sealedkb._periodic.PeriodicTask: rounds, intervals, failures logged, start/stop."""

from __future__ import annotations

import logging
import threading

import pytest

from sealedkb._periodic import PeriodicTask


class FakeWait:
    """Stands in for the pause between rounds: records each interval asked for and
    says "stop" after ``pauses`` of them (no wall-clock time passes)."""

    def __init__(self, pauses: int) -> None:
        self.pauses = pauses
        self.asked: list[float] = []
        self.done = threading.Event()

    def __call__(self, interval: float) -> bool:
        self.asked.append(interval)
        if len(self.asked) > self.pauses:
            self.done.set()
            return True
        return False


def test_rounds_run_between_pauses_of_the_interval() -> None:
    calls: list[int] = []
    wait = FakeWait(pauses=3)
    task = PeriodicTask("t", 7.5, lambda: calls.append(1), wait=wait).start()
    assert wait.done.wait(10)
    task.stop()
    assert not task.running
    assert len(calls) == 4  # a first round at once, then one after each pause
    assert wait.asked == [7.5] * 4
    assert task.rounds == 4 and task.failures == 0


def test_run_first_false_waits_one_interval_before_the_first_round() -> None:
    calls: list[int] = []
    wait = FakeWait(pauses=2)
    task = PeriodicTask("t", 1.0, lambda: calls.append(1), run_first=False, wait=wait).start()
    assert wait.done.wait(10)
    task.stop()
    assert len(calls) == 2
    assert len(wait.asked) == 3


def test_a_failing_round_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []

    def flaky() -> None:
        seen.append(1)
        if len(seen) == 2:
            raise RuntimeError("bad round")

    wait = FakeWait(pauses=2)
    logger = logging.getLogger("sealedkb.test.periodic")
    task = PeriodicTask("t", 1.0, flaky, what="test round", logger=logger, wait=wait)
    with caplog.at_level(logging.ERROR, logger="sealedkb.test.periodic"):
        task.start()
        assert wait.done.wait(10)
        task.stop()
    assert len(seen) == 3
    assert task.failures == 1 and task.rounds == 3
    failed = [r for r in caplog.records if r.name == "sealedkb.test.periodic"]
    assert [r.getMessage() for r in failed] == ["test round failed"]
    assert failed[0].exc_info is not None


def test_run_round_in_the_caller_thread() -> None:
    def boom() -> None:
        raise ValueError("x")

    task = PeriodicTask("t", 1.0, boom)
    assert task.run_round() is False
    ok = PeriodicTask("t", 1.0, lambda: None)
    assert ok.run_round() is True
    assert (task.failures, ok.failures) == (1, 0)


def test_stop_wakes_a_thread_in_its_pause() -> None:
    started = threading.Event()
    task = PeriodicTask("sealedkb-test", 3600.0, started.set).start()
    assert started.wait(10)
    assert task.running
    thread_names = {t.name for t in threading.enumerate()}
    assert "sealedkb-test" in thread_names
    task.stop(timeout=10)  # an hour's pause ends at once
    assert not task.running
    assert task.rounds == 1


def test_stop_before_start_and_start_twice() -> None:
    task = PeriodicTask("t", 3600.0, lambda: None)
    task.stop()  # nothing to stop
    wait = FakeWait(pauses=10**6)
    blocker = threading.Event()
    held = PeriodicTask("t", 1.0, blocker.wait, wait=wait).start()
    assert held.start() is held  # already running: no second thread
    blocker.set()
    held.stop(timeout=10)
    assert not held.running


def test_injected_stop_event() -> None:
    stop = threading.Event()
    stop.set()
    calls: list[int] = []
    task = PeriodicTask("t", 1.0, lambda: calls.append(1), stop_event=stop)
    assert task.stop_event is stop
    task.start()  # start clears a stale stop request
    task.stop(timeout=10)
    assert stop.is_set()
    assert len(calls) <= 1


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PeriodicTask("t", 0, lambda: None)
