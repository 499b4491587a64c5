"""Alarm engine pieces without a database: datapoints, settings overrides, and the
notifier against a real local webhook receiver and a real command."""

from __future__ import annotations

import hmac
import json
import logging
import sys
from hashlib import sha256
from pathlib import Path

import pytest
from tests.webhook import receiver

from sealedkb.config import load_settings
from sealedkb.errors import ConfigError
from sealedkb.monitoring.alarms import AlarmStore, Series, load_specs
from sealedkb.monitoring.notify import Notification, Notifier

NOTE = Notification(
    alarm="KeyDisabled",
    state="ALARM",
    previous_state="OK",
    reason="2 attempt(s) to use the disabled KMS key over 60 s; threshold 0 crossed",
    time="2025-01-01T00:00:00+00:00",
    runbook_url="docs/ENCRYPTION-KEY-MANAGEMENT.md#alarm-keydisabled",
)


def test_counter_datapoints_are_increases_per_window() -> None:
    s = Series(counter=True, keep_seconds=600)
    s.add(0, 5)
    assert s.datapoint(-60, 0) is None  # nothing known before the first sample
    s.add(60, 7)
    s.add(120, 7)
    assert s.datapoint(60, 120) == 0
    assert s.datapoint(0, 60) == 2
    assert s.datapoint(-60, 60) == 2  # window began before the first sample
    assert s.datapoint(-120, -60) is None


def test_gauge_datapoints_are_the_maximum_in_the_window() -> None:
    s = Series(counter=False, keep_seconds=600)
    for t, v in ((0, 0), (30, 1), (60, 0), (90, 0)):
        s.add(t, v)
    assert s.datapoint(0, 60) == 1
    assert s.datapoint(60, 120) == 0
    assert s.datapoint(120, 180) is None


def test_series_is_bounded() -> None:
    s = Series(counter=True, keep_seconds=100)
    for t in range(0, 10_000, 10):
        s.add(t, t)
    assert len(s.samples) <= 12


def test_overrides_are_validated() -> None:
    specs = {s.name: s for s in load_specs({"SnapshotStale": {"threshold": 3600, "period": 60}})}
    assert specs["SnapshotStale"].threshold == 3600 and specs["SnapshotStale"].period == 60
    for bad in (
        {"NoSuchAlarm": {"period": 60}},
        {"KeyDisabled": {"period": 0}},
        {"KeyDisabled": {"colour": "red"}},
        {"KeyDisabled": {"treat_missing_data": "sometimes"}},
        {"KeyDisabled": {"evaluation_periods": 1, "datapoints_to_alarm": 2}},
        {"KeyDisabled": {"enabled": "yes"}},
        {"KeyCallVolumeAnomaly": {"factor": 0}},
    ):
        with pytest.raises(ConfigError):
            load_specs(bad)  # type: ignore[arg-type]


def test_overrides_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEALEDKB_ALARMS", '{"AuditCheckpointStale": {"threshold": 900}}')
    settings = load_settings(tmp_path)
    (spec,) = [s for s in load_specs(settings.alarms) if s.name == "AuditCheckpointStale"]
    assert spec.threshold == 900


def test_webhook_retries_then_delivers_signed() -> None:
    waits: list[float] = []
    with receiver(fail_first=2) as hook:
        n = Notifier(webhook_url=hook.url, webhook_secret=b"k", retries=3, sleep=waits.append)
        assert n.send(NOTE).webhook is True
    assert hook.attempts == 3 and waits == [0.5, 1.0]
    assert hook.notes == [NOTE.to_dict()]
    want = "sha256=" + hmac.new(b"k", hook.raw[0], sha256).hexdigest()
    assert hook.headers[0]["x-sealedkb-signature"] == want
    assert hook.headers[0]["content-type"] == "application/json"


def test_webhook_gives_up_without_raising(caplog: pytest.LogCaptureFixture) -> None:
    with receiver(fail_first=100) as hook:
        url = hook.url + "?token=do-not-log-me"
        n = Notifier(webhook_url=url, retries=3, sleep=lambda s: None)
        with caplog.at_level(logging.WARNING, logger="sealedkb.monitoring.alarms"):
            assert n.send(NOTE).webhook is False
    assert hook.attempts == 4
    assert "not delivered after 4 attempts" in caplog.text
    assert "do-not-log-me" not in caplog.text  # the URL may hold a token


def test_webhook_unreachable_and_timeout_do_not_raise() -> None:
    n = Notifier(webhook_url="http://127.0.0.1:9/x", retries=1, timeout=0.5, sleep=lambda s: None)
    assert n.send(NOTE).webhook is False


def test_webhook_url_must_be_http() -> None:
    with pytest.raises(ConfigError):
        Notifier(webhook_url="file:///etc/passwd")


def test_command_hook_gets_the_json_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "note.json"
    script = f"import sys; open({str(out)!r}, 'wb').write(sys.stdin.buffer.read())"
    n = Notifier(command=f"{sys.executable} -c {json.dumps(script)}")
    assert n.send(NOTE).command is True
    assert json.loads(out.read_bytes()) == NOTE.to_dict()
    failing = Notifier(command=f"{sys.executable} -c 'raise SystemExit(3)'")
    assert failing.send(NOTE).command is False
    missing = Notifier(command="/nonexistent/notify-me")
    assert missing.send(NOTE).command is False


def test_state_file_is_private_and_history_bounded(tmp_path: Path) -> None:
    store = AlarmStore(tmp_path / "alarms")
    with store.locked() as doc:
        doc.record("KeyDisabled").state = "OK"
        doc.history.extend({"alarm": "KeyDisabled", "n": i} for i in range(1500))
    assert store.path.stat().st_mode & 0o777 == 0o600
    loaded = store.load()
    assert loaded.alarms["KeyDisabled"].state == "OK" and len(loaded.history) == 1000
    store.path.write_text("{not json")
    assert store.load().alarms == {}  # a damaged file does not stop the evaluator
