"""Each built-in alarm driven into ALARM by its real condition and back to OK when the
condition clears (monitoring and alarms), on a real PostgreSQL, evaluated in-process with an
injected clock; a real local webhook receiver gets exactly one notification per
change into or out of ALARM, signed, and free of plaintext, ids and key URIs."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from pathlib import Path

import psycopg
import pytest
from tests.cli_helpers import make_cli
from tests.integration.test_tamper_cli import expect
from tests.webhook import Receiver, receiver

from sealedkb.config import Settings
from sealedkb.errors import IntegrityError, KeyUnavailableError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode
from sealedkb.monitoring import alarms
from sealedkb.monitoring.alarms import ALARM, INSUFFICIENT_DATA, OK, Evaluator, Transition
from sealedkb.monitoring.notify import Notifier

SECRET = "s3cr3t-alarm-body"
HOOK_KEY = b"webhook-signing-key"
RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "ENCRYPTION-KEY-MANAGEMENT.md"


class Clock:
    def __init__(self) -> None:
        self.t = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.t

    def step(self, seconds: float) -> datetime:
        self.t += timedelta(seconds=seconds)
        return self.t


class Harness:
    """A knowledge base on an injected clock, its evaluator and the webhook receiver."""

    def __init__(
        self, kb: KnowledgeBase, clock: Clock, hook: Receiver, **spec_changes: dict[str, object]
    ) -> None:
        self.kb = kb
        self.clock = clock
        self.hook = hook
        specs = alarms.load_specs(spec_changes)
        notifier = Notifier(webhook_url=hook.url, webhook_secret=HOOK_KEY, backoff=0)
        self.ev = Evaluator(kb, specs=specs, notifier=notifier, clock=clock)
        self.changes: list[Transition] = []

    def tick(self, seconds: float = 0.0) -> dict[str, str]:
        """Advance the clock, evaluate; returns alarm -> state."""
        self.clock.step(seconds)
        self.changes += self.ev.evaluate()
        return self.states()

    def states(self) -> dict[str, str]:
        doc = self.ev.store.load()
        return {name: rec.state for name, rec in doc.alarms.items()}

    def check_notifications(self) -> None:
        """Exactly one notification per change into or out of ALARM, in order, signed."""
        expected = [
            (c.alarm, c.previous_state, c.state)
            for c in self.changes
            if ALARM in (c.state, c.previous_state)
        ]
        got = [(n["alarm"], n["previous_state"], n["state"]) for n in self.hook.notes]
        assert got == expected
        for raw, headers, note in zip(
            self.hook.raw, self.hook.headers, self.hook.notes, strict=True
        ):
            want = "sha256=" + hmac.new(HOOK_KEY, raw, sha256).hexdigest()
            assert hmac.compare_digest(headers["x-sealedkb-signature"], want)
            assert set(note) >= {
                "alarm",
                "state",
                "previous_state",
                "reason",
                "time",
                "runbook_url",
            }
            assert note["runbook_url"].endswith(f"#alarm-{note['alarm'].lower()}")
            text = raw.decode()
            assert SECRET not in text
            assert self.kb.kms_key_uri is not None
            assert self.kb.kms_key_uri.removeprefix("local:key/") not in text
            assert "SELECT" not in text


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hook() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


@pytest.fixture
def ckb(make_settings: Callable[..., Settings], clock: Clock) -> Iterator[KnowledgeBase]:
    """An encrypted knowledge base whose key provider and audit log use ``clock``."""
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON, now=clock)
    yield kb
    kb.close()


def sql(url: str, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params or None)
        return cur.fetchall() if cur.description else []


def test_disabled_key(ckb: KnowledgeBase, clock: Clock, hook: Receiver) -> None:
    entry = ckb.add(f"{SECRET} one")
    h = Harness(ckb, clock, hook)
    start = h.tick()
    assert set(start.values()) == {OK} or start["KeyCallVolumeAnomaly"] == INSUFFICIENT_DATA
    assert ckb.keys is not None
    ckb.keys.disable()
    with pytest.raises(KeyUnavailableError):
        ckb.get(entry.id)
    states = h.tick(10)
    for name in ("KeyDisabled", "KeyAccessFailures", "EncryptionCredentialsInaccessible"):
        assert states[name] == ALARM, name
    assert states["KeyUsedWhilePendingDeletion"] == OK
    h.tick(10)  # still disabled: no second notification
    assert hook.of("KeyDisabled") == [ALARM]
    ckb.keys.enable()
    states = h.tick(70)
    for name in ("KeyDisabled", "KeyAccessFailures", "EncryptionCredentialsInaccessible"):
        assert states[name] == OK, name
        assert hook.of(name) == [ALARM, OK]
    assert ckb.get(entry.id).content == f"{SECRET} one"
    h.check_notifications()
    hist = alarms.history(h.ev.store, "KeyDisabled")
    assert [(x["previous_state"], x["state"]) for x in hist] == [
        (ALARM, OK),
        (OK, ALARM),
        (INSUFFICIENT_DATA, OK),
    ]


def test_key_used_while_pending_deletion(ckb: KnowledgeBase, clock: Clock, hook: Receiver) -> None:
    entry = ckb.add(f"{SECRET} two")
    h = Harness(ckb, clock, hook)
    h.tick()
    assert ckb.keys is not None
    ckb.keys.schedule_deletion(pending_window_days=7)
    with pytest.raises(KeyUnavailableError):
        ckb.get(entry.id)
    states = h.tick(5)
    assert states["KeyUsedWhilePendingDeletion"] == ALARM
    assert states["KeyDisabled"] == OK  # refused for pending deletion, not for disabled
    ckb.keys.cancel_deletion()  # -> Disabled, as in AWS KMS
    ckb.keys.enable()
    states = h.tick(70)
    assert states["KeyUsedWhilePendingDeletion"] == OK
    assert hook.of("KeyUsedWhilePendingDeletion") == [ALARM, OK]
    assert hook.of("KeyDisabled") == []
    h.check_notifications()


def test_key_call_volume_over_learned_baseline(
    ckb: KnowledgeBase, clock: Clock, hook: Receiver
) -> None:
    h = Harness(ckb, clock, hook, KeyCallVolumeAnomaly={"floor": 5})
    period = 300

    def calls(n: int) -> None:
        for _ in range(n):  # each availability check is one real unwrap (Decrypt)
            assert ckb.availability()[0] == "available"

    assert h.tick()["KeyCallVolumeAnomaly"] == INSUFFICIENT_DATA
    states = []
    for _ in range(4):  # learn: ~10 calls per period (+1 probe by the evaluator)
        calls(10)
        states.append(h.tick(period)["KeyCallVolumeAnomaly"])
    # the first tick only starts the count; three full periods make a baseline
    assert states == [INSUFFICIENT_DATA, INSUFFICIENT_DATA, INSUFFICIENT_DATA, OK]
    snapshot = h.ev.store.load().alarms["KeyCallVolumeAnomaly"]
    assert snapshot.threshold is not None and 20 <= snapshot.threshold <= 26  # 2 x mean
    calls(18)  # below 2x the baseline: fine
    assert h.tick(period)["KeyCallVolumeAnomaly"] == OK
    calls(40)  # a burst: over 2x the rolling mean
    assert h.tick(period)["KeyCallVolumeAnomaly"] == ALARM
    calls(10)
    assert h.tick(period)["KeyCallVolumeAnomaly"] == OK
    assert hook.of("KeyCallVolumeAnomaly") == [ALARM, OK]
    h.check_notifications()


def test_call_volume_floor_ignores_near_zero_traffic(
    ckb: KnowledgeBase, clock: Clock, hook: Receiver
) -> None:
    h = Harness(ckb, clock, hook)  # default floor: 50 calls per period
    h.tick()
    for _ in range(4):
        h.tick(300)  # ~1 call per period (the evaluator's own probe)
    for _ in range(20):
        ckb.availability()
    assert h.tick(300)["KeyCallVolumeAnomaly"] == OK  # 20x the baseline, under the floor
    assert hook.of("KeyCallVolumeAnomaly") == []


def test_integrity_failure(
    ckb: KnowledgeBase, clock: Clock, hook: Receiver, database_url: str
) -> None:
    entry = ckb.add(f"{SECRET} three")
    h = Harness(ckb, clock, hook)
    h.tick()
    ((original,),) = sql(
        database_url, "SELECT doc_sealed FROM kb_entries WHERE id = %s", (entry.id,)
    )
    assert isinstance(original, bytes)
    blob = bytearray(original)
    blob[-1] ^= 0x01
    sql(
        database_url, "UPDATE kb_entries SET doc_sealed = %s WHERE id = %s", (bytes(blob), entry.id)
    )
    with pytest.raises(IntegrityError):
        ckb.get(entry.id)
    assert h.tick(5)["IntegrityFailures"] == ALARM
    note = hook.notes[-1]
    assert note["alarm"] == "IntegrityFailures" and str(entry.id) not in json.dumps(note)
    sql(database_url, "UPDATE kb_entries SET doc_sealed = %s WHERE id = %s", (original, entry.id))
    assert ckb.get(entry.id).content == f"{SECRET} three"
    assert h.tick(70)["IntegrityFailures"] == OK
    assert hook.of("IntegrityFailures") == [ALARM, OK]
    h.check_notifications()


def test_snapshot_stale(ckb: KnowledgeBase, clock: Clock, hook: Receiver) -> None:
    ckb.audit.record("CreateSnapshot", details={"kind": "automated", "snapshot_id": "snap-1"})
    h = Harness(ckb, clock, hook)
    assert h.tick()["SnapshotStale"] == OK
    assert h.tick(20 * 3600)["SnapshotStale"] == OK
    # snapshots stop: 26 h pass without an automated one
    assert h.tick(6 * 3600 + 60)["SnapshotStale"] == ALARM
    # a manual snapshot or a failed automated one does not count
    ckb.audit.record("CreateSnapshot", details={"kind": "manual", "snapshot_id": "snap-2"})
    ckb.audit.record(
        "CreateSnapshot",
        outcome="failure",
        error_code="INTERNAL_ERROR",
        details={"kind": "automated", "snapshot_id": "snap-3"},
    )
    assert h.tick(301)["SnapshotStale"] == ALARM
    ckb.audit.record("CreateSnapshot", details={"kind": "automated", "snapshot_id": "snap-4"})
    assert h.tick(301)["SnapshotStale"] == OK
    assert hook.of("SnapshotStale") == [ALARM, OK]
    h.check_notifications()


def test_snapshot_never_made_counts_from_creation(
    ckb: KnowledgeBase, clock: Clock, hook: Receiver
) -> None:
    h = Harness(ckb, clock, hook)
    assert h.tick()["SnapshotStale"] == OK
    assert h.tick(27 * 3600)["SnapshotStale"] == ALARM


def test_audit_chain_broken(
    ckb: KnowledgeBase, clock: Clock, hook: Receiver, database_url: str
) -> None:
    h = Harness(ckb, clock, hook)
    assert h.tick()["AuditChainBroken"] == OK
    ((principal,),) = sql(database_url, "SELECT principal FROM kb_audit WHERE seq = 2")
    sql(database_url, "UPDATE kb_audit SET principal = 'mallory' WHERE seq = 2")
    assert h.tick(150)["AuditChainBroken"] == ALARM
    sql(database_url, "UPDATE kb_audit SET principal = %s WHERE seq = 2", (principal,))
    assert h.tick(150)["AuditChainBroken"] == ALARM  # the broken sample is still in the period
    assert h.tick(160)["AuditChainBroken"] == OK
    assert hook.of("AuditChainBroken") == [ALARM, OK]
    h.check_notifications()


def test_audit_checkpoint_stale(ckb: KnowledgeBase, clock: Clock, hook: Receiver) -> None:
    ckb.audit.checkpoint()
    h = Harness(ckb, clock, hook)
    assert h.tick()["AuditCheckpointStale"] == OK
    ckb.audit.record("CreateToken", details={"name_len": 5})  # an event, then no checkpoint
    assert h.tick(200)["AuditCheckpointStale"] == OK
    assert h.tick(200)["AuditCheckpointStale"] == ALARM  # waited 400 s > 300 s
    ckb.audit.checkpoint()
    assert h.tick(61)["AuditCheckpointStale"] == OK
    assert hook.of("AuditCheckpointStale") == [ALARM, OK]
    h.check_notifications()


def test_evaluation_periods_and_datapoints_to_alarm(
    ckb: KnowledgeBase, clock: Clock, hook: Receiver
) -> None:
    """2 of 3 periods must breach (M of N), as in CloudWatch."""
    entry = ckb.add("x")
    h = Harness(
        ckb,
        clock,
        hook,
        KeyDisabled={"period": 60, "evaluation_periods": 3, "datapoints_to_alarm": 2},
    )
    h.tick()
    assert ckb.keys is not None
    ckb.keys.disable()
    with pytest.raises(KeyUnavailableError):
        ckb.get(entry.id)
    ckb.keys.enable()
    assert h.tick(60)["KeyDisabled"] == OK  # one breaching period of three
    ckb.keys.disable()
    with pytest.raises(KeyUnavailableError):
        ckb.get(entry.id)
    ckb.keys.enable()
    assert h.tick(60)["KeyDisabled"] == ALARM  # two of three
    assert h.tick(60)["KeyDisabled"] == ALARM  # still two of the last three
    assert h.tick(60)["KeyDisabled"] == OK
    h.check_notifications()


def test_state_survives_a_new_evaluator(ckb: KnowledgeBase, clock: Clock, hook: Receiver) -> None:
    """A restarted serve reads the persisted state: an alarm still in ALARM is not
    notified again."""
    h = Harness(ckb, clock, hook)
    h.tick()
    clock.step(27 * 3600)
    h.tick()
    assert hook.of("SnapshotStale") == [ALARM]
    again = Harness(ckb, clock, hook)
    assert again.tick(10)["SnapshotStale"] == ALARM
    assert hook.of("SnapshotStale") == [ALARM]
    # kept in PostgreSQL, shared by replicas; nothing in the home folder
    assert not (ckb.settings.home / "alarms").exists()
    with ckb.db.transaction() as conn:
        row = conn.execute(
            "SELECT record->>'state' FROM kb_alarm_state WHERE name = 'SnapshotStale'"
        ).fetchone()
    assert row is not None and row[0] == ALARM


def test_alarms_test_notifies_every_alarm_and_returns(
    home: Path, database_url: str, hook: Receiver
) -> None:
    cli = make_cli(home, database_url)
    expect(cli("init"), 0)
    env = {"SEALEDKB_ALARM_WEBHOOK_URL": hook.url, "SEALEDKB_ALARM_WEBHOOK_SECRET": "k"}
    expect(cli("alarms", "list", "--evaluate", env=env), 0)
    names = [a.name for a in alarms.DEFAULT_ALARMS]
    runbook = RUNBOOK.read_text()
    for name in names:
        result = expect(cli("alarms", "test", name, "--json", env=env), 0)
        changes = json.loads(result.stdout)
        assert changes[0]["state"] == ALARM and changes[0]["test"] is True
    assert [n["alarm"] for n in hook.notes if n["state"] == ALARM] == names
    for note in hook.notes:
        anchor = note["runbook_url"].split("#", 1)[1]
        assert (
            f"### Alarm: {note['alarm']}" in runbook and anchor == f"alarm-{note['alarm'].lower()}"
        )
    listed = json.loads(expect(cli("alarms", "list", "--json"), 0).stdout)
    by_name = {a["name"]: a for a in listed}
    # back to the evaluated state: shared alarms evaluated now, process alarms as they were
    assert by_name["SnapshotStale"]["state"] == OK
    assert by_name["AuditChainBroken"]["state"] == OK
    assert by_name["KeyDisabled"]["state"] == INSUFFICIENT_DATA
    assert all(a["state"] != ALARM for a in listed)
    hist = json.loads(expect(cli("alarms", "history", "SnapshotStale", "--json"), 0).stdout)
    assert [(x["state"], x["test"]) for x in hist[:2]] == [(OK, False), (ALARM, True)]
    expect(cli("alarms", "test", "NoSuchAlarm"), 3)
    human = expect(cli("alarms", "list"), 0).stdout
    assert "SnapshotStale" in human
    status = json.loads(expect(cli("status", "--json"), 0).stdout)
    assert status["alarms"]["SnapshotStale"] == OK
    assert status["metrics"]["sealedkb_available"] == 1.0
    assert "sealedkb_key_state" in status["metrics"]


def test_the_metrics_collector_reuses_the_running_evaluator(
    make_settings: Callable[..., Settings],
) -> None:
    """serve's evaluator is found by the /metrics collector of its knowledge base (its
    availability probe is reused) and forgotten once stopped; alarms never imports
    metrics."""
    from sealedkb.monitoring.metrics import KnowledgeBaseCollector

    kb, _ = KnowledgeBase.init(make_settings(alarm_interval=60), EncryptionMode.ON)
    try:
        collector = KnowledgeBaseCollector(kb)
        assert alarms.running_evaluator(kb) is None and collector.evaluator is None
        ev = alarms.start_evaluator(kb)
        assert ev is not None
        try:
            assert alarms.running_evaluator(kb) is ev
            assert collector.evaluator is ev
        finally:
            ev.stop()
        assert alarms.running_evaluator(kb) is None and collector.evaluator is None
    finally:
        kb.close()
