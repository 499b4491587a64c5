"""The attacker with SQL write access to the alarm tables (kb_alarm_state,
kb_alarm_history; migration 011 gave each row a MAC under the key provider's audit
key): clearing an alarm that is in ALARM, forging a state with no MAC or with another
row's MAC, and inserting a history change are all refused — the refused state reads
INSUFFICIENT_DATA, the next evaluation decides it afresh and notifies again, a wrong MAC
counts as an integrity failure, and ``alarms list`` / ``alarms history`` show none of
the forgeries. A plaintext knowledge base has no key and keeps MAC-less rows; while the
key service is down rows are read unverified and written without a MAC, and refused
(re-evaluated) once it is back."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.cli_helpers import make_cli
from tests.integration.test_alarms import Clock, Harness, ckb, clock, hook, sql
from tests.webhook import Receiver

from sealedkb.config import Settings
from sealedkb.errors import KeyUnavailableError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode
from sealedkb.monitoring.alarms import (
    ALARM,
    FORGED_REASON,
    INSUFFICIENT_DATA,
    OK,
    TableAlarmStore,
)

__all__ = ["ckb", "clock", "hook"]  # the fixtures of test_alarms.py, used here too


def _stale(h: Harness, clock: Clock) -> None:
    """SnapshotStale into ALARM (no snapshot for 27 hours), notified once."""
    h.tick()
    clock.step(27 * 3600)
    assert h.tick()["SnapshotStale"] == ALARM
    assert h.hook.of("SnapshotStale") == [ALARM]


def test_clearing_an_alarm_with_sql_is_refused_and_notified_again(
    ckb: KnowledgeBase, clock: Clock, hook: Receiver, database_url: str
) -> None:
    h = Harness(ckb, clock, hook)
    _stale(h, clock)
    failures = ckb.telemetry.integrity_failures
    # the attacker sets the alarm back to OK, keeping the row's (now wrong) MAC
    sql(
        database_url,
        "UPDATE kb_alarm_state SET record = jsonb_set(jsonb_set(record, '{state}', '\"OK\"'),"
        " '{reason}', '\"all good\"') WHERE name = 'SnapshotStale'",
    )
    rec = h.ev.store.load().alarms["SnapshotStale"]
    assert (rec.state, rec.reason) == (INSUFFICIENT_DATA, FORGED_REASON)  # not OK
    assert ckb.telemetry.integrity_failures > failures  # counted
    # a fresh reader (another replica, the CLI) refuses it too
    fresh = TableAlarmStore(ckb.db, ckb.provider, ckb.telemetry)
    assert fresh.load().alarms["SnapshotStale"].state == INSUFFICIENT_DATA
    cli = make_cli(ckb.settings.home, database_url)
    listed = {a["name"]: a for a in json.loads(cli("alarms", "list", "--json").output)}
    assert listed["SnapshotStale"]["state"] == INSUFFICIENT_DATA
    assert listed["SnapshotStale"]["reason"] == FORGED_REASON
    # the next evaluation decides afresh: in ALARM again, and the operator hears of it
    assert h.tick(10)["SnapshotStale"] == ALARM
    assert hook.of("SnapshotStale") == [ALARM, ALARM]
    # the row is rewritten with a valid MAC: read again, nothing more is counted
    counted = ckb.telemetry.integrity_failures
    fresh = TableAlarmStore(ckb.db, ckb.provider, ckb.telemetry)
    assert fresh.load().alarms["SnapshotStale"].state == ALARM
    assert ckb.telemetry.integrity_failures == counted


def test_forged_states_without_a_mac_or_with_another_rows_mac_are_refused(
    ckb: KnowledgeBase, clock: Clock, hook: Receiver, database_url: str
) -> None:
    h = Harness(ckb, clock, hook)
    _stale(h, clock)
    assert h.states()["AuditChainBroken"] == OK
    # a row copied, MAC and all, onto another alarm (the name is under the MAC) ...
    sql(
        database_url,
        "UPDATE kb_alarm_state SET record = s.record, mac = s.mac FROM kb_alarm_state s"
        " WHERE s.name = 'SnapshotStale' AND kb_alarm_state.name = 'AuditChainBroken'",
    )
    # ... and a row with its MAC removed
    sql(
        database_url,
        "UPDATE kb_alarm_state SET mac = NULL,"
        " record = jsonb_set(record, '{state}', '\"OK\"') WHERE name = 'SnapshotStale'",
    )
    states = h.states()
    assert states["AuditChainBroken"] == INSUFFICIENT_DATA
    assert states["SnapshotStale"] == INSUFFICIENT_DATA
    after = h.tick(10)  # evaluated afresh, each back to what it really is
    assert (after["AuditChainBroken"], after["SnapshotStale"]) == (OK, ALARM)
    assert hook.of("AuditChainBroken") == []  # the forged ALARM was never believed
    assert hook.of("SnapshotStale") == [ALARM, ALARM]


def test_a_history_change_inserted_with_sql_is_left_out(
    ckb: KnowledgeBase, clock: Clock, hook: Receiver, database_url: str
) -> None:
    h = Harness(ckb, clock, hook)
    _stale(h, clock)
    genuine = h.ev.store.load().history
    failures = ckb.telemetry.integrity_failures
    forged = {**genuine[-1], "state": OK, "previous_state": ALARM, "reason": "resolved"}
    sql(
        database_url,
        "INSERT INTO kb_alarm_history (alarm, change, mac) VALUES (%s, %s::jsonb, %s)",
        ("SnapshotStale", json.dumps(forged), b"\x00" * 32),
    )
    sql(  # and a genuine change altered in place
        database_url,
        "UPDATE kb_alarm_history SET change = jsonb_set(change, '{reason}', '\"nothing\"')"
        " WHERE id = (SELECT min(id) FROM kb_alarm_history)",
    )
    history = h.ev.store.load().history
    assert forged not in history and len(history) == len(genuine) - 1
    assert all(c["reason"] != "nothing" for c in history)
    assert ckb.telemetry.integrity_failures >= failures + 2
    cli = make_cli(ckb.settings.home, database_url)
    shown = json.loads(cli("alarms", "history", "SnapshotStale", "--json").output)
    assert all(c["reason"] != "resolved" for c in shown)


def test_a_plaintext_knowledge_base_keeps_rows_without_a_mac(
    make_settings: Callable[..., Settings], clock: Clock, hook: Receiver, database_url: str
) -> None:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.OFF, now=clock)
    try:
        h = Harness(kb, clock, hook)
        states = h.tick()
        macs = sql(database_url, "SELECT mac FROM kb_alarm_state")
        assert macs and all(m is None for (m,) in macs)  # no key to MAC with
        fresh = TableAlarmStore.of(kb).load()
        assert {n: r.state for n, r in fresh.alarms.items()} == states
        assert all(r.reason != FORGED_REASON for r in fresh.alarms.values())
    finally:
        kb.close()


class _Unreachable:
    """The audit key while its key service is down (what every provider raises then)."""

    def generate_mac(self, message: bytes) -> bytes:
        raise KeyUnavailableError("the key service is unreachable")

    def verify_mac(self, message: bytes, mac: bytes) -> bool:
        raise KeyUnavailableError("the key service is unreachable")


def test_alarm_rows_stay_usable_while_the_key_service_is_down(
    ckb: KnowledgeBase, clock: Clock, hook: Receiver, database_url: str
) -> None:
    """Alarms must keep working through an outage (KeyUnavailable is one of them): rows
    are read unverified and written without a MAC; once the service is back such a row
    is refused (not counted) and its alarm evaluated afresh."""
    h = Harness(ckb, clock, hook)
    _stale(h, clock)
    down = TableAlarmStore(ckb.db, _Unreachable(), ckb.telemetry)
    failures = ckb.telemetry.integrity_failures
    assert down.load().alarms["SnapshotStale"].state == ALARM  # read, unverified
    with down.locked() as doc:
        doc.record("SnapshotStale").reason = "written during the outage"
    ((mac,),) = sql(database_url, "SELECT mac FROM kb_alarm_state WHERE name = 'SnapshotStale'")
    assert mac is None
    back = TableAlarmStore(ckb.db, ckb.provider, ckb.telemetry)
    assert back.load().alarms["SnapshotStale"].reason == FORGED_REASON
    assert ckb.telemetry.integrity_failures == failures  # no MAC: refused, not counted
    assert h.tick(10)["SnapshotStale"] == ALARM
