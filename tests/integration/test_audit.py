"""The audit trail (docs/DESIGN.md §5): exactly the expected events per command,
hash chain and signed checkpoints, and tampering done in SQL or on the files."""

from __future__ import annotations

import dataclasses
import json
import stat
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.cli_helpers import Cli
from tests.cli_helpers import initialised_cli as initialised_cli  # the module's cli ran init
from tests.integration.test_tamper_cli import add, expect, sql

from sealedkb.audit.chain import HEAD_RECORD_NAME, event_body
from sealedkb.crypto.digest import GENESIS, chain_hash
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.store.audit import AuditTable
from sealedkb.store.db import Database

SECRET = "s3cr3t-body-text"
CHECKPOINTS = "checkpoint-" + "[0-9]" * 20 + ".json"  # not the checkpoint record


def head(url: str) -> int:
    (r,) = sql(url, "SELECT coalesce(max(seq), 0) FROM kb_audit")
    return int(r[0])


def new_events(url: str, after: int) -> list[tuple[str, str]]:
    rows = sql(url, "SELECT action, outcome FROM kb_audit WHERE seq > %s ORDER BY seq", (after,))
    return [(r[0], r[1]) for r in rows]


def verify(cli: Cli, code: int) -> dict[str, Any]:
    return json.loads(expect(cli("audit", "verify", "--json"), code).stdout)


OK = "success"


def test_each_command_produces_exactly_the_expected_events(
    cli: Cli, home: Path, database_url: str, tmp_path: Path
) -> None:
    assert new_events(database_url, 0) == [
        ("CreateKey", OK),
        ("GenerateDataKey", OK),  # default namespace: content
        ("GenerateDataKey", OK),  # and index
        ("Decrypt", OK),  # init prints the status, whose availability probe unwraps
    ]
    entry_id = add(cli, f"{SECRET} audited")  # unwraps content and index keys
    policy = tmp_path / "p.json"
    policy.write_text(
        json.dumps(
            {
                "Version": "1",
                "Statement": [{"Effect": "Allow", "Principal": "admin", "Action": "*"}],
            }
        )
    )
    steps: list[tuple[list[str], int, list[tuple[str, str]]]] = [
        (["key", "rotation", "enable", "--period-days", "90"], 0, [("EnableKeyRotation", OK)]),
        (["key", "rotation", "disable"], 0, [("DisableKeyRotation", OK)]),
        (["key", "rotate"], 0, [("RotateKey", OK), ("ReEncrypt", OK)]),
        (["key", "disable"], 0, [("DisableKey", OK)]),
        (["get", entry_id], 5, [("Decrypt", "failure")]),
        (["key", "enable"], 0, [("EnableKey", OK)]),
        (
            ["key", "schedule-deletion", "--pending-window-days", "6"],
            2,
            [("ScheduleKeyDeletion", "failure")],
        ),
        (
            ["key", "schedule-deletion", "--pending-window-days", "7"],
            0,
            [("ScheduleKeyDeletion", OK)],
        ),
        (["key", "cancel-deletion"], 0, [("CancelKeyDeletion", OK)]),
        (["key", "enable"], 0, [("EnableKey", OK)]),
        (["key", "put-policy", str(policy)], 0, [("PutKeyPolicy", OK)]),
        (["--principal", "bob", "key", "disable"], 4, [("DisableKey", "denied")]),
        (["key", "get-policy"], 0, []),  # successful reads of metadata are not recorded
        (["key", "describe"], 0, []),
        (["key", "create"], 0, [("CreateKey", OK)]),
        (["datakey", "rotate"], 0, [("GenerateDataKey", OK), ("RotateDataKey", OK)]),
        # opens the row under the retired key, seals under the new one
        (["reencrypt"], 0, [("Decrypt", OK), ("Decrypt", OK), ("ReEncryptEntries", OK)]),
        (["get", entry_id], 0, [("Decrypt", OK)]),
        (["status"], 0, [("Decrypt", OK)]),  # the availability probe unwraps
        (["audit", "list"], 0, []),
        (["audit", "verify"], 0, []),
    ]
    for args, code, expected in steps:
        before = head(database_url)
        expect(cli(*args), code)
        assert new_events(database_url, before) == expected, args
    events = json.loads(expect(cli("audit", "list", "--json", "--limit", "1000"), 0).stdout)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    for e in events:
        assert e["request_id"] and e["time"] and len(e["hash"]) == 64
        assert e["principal"] in ("admin", "bob")
    rotate = next(e for e in events if e["action"] == "RotateKey")
    assert rotate["details"] == {"version": 2, "automatic": False}
    assert rotate["key_uri"].startswith("local:key/")
    denied = next(e for e in events if e["outcome"] == "denied")
    assert (denied["principal"], denied["error_code"]) == ("bob", "ACCESS_DENIED")
    reenc = next(e for e in events if e["action"] == "ReEncryptEntries")
    assert reenc["details"] == {"rows": 1, "skipped": 0}
    # events of one command share a request id; different commands do not
    rot = [e for e in events if e["action"] in ("RotateKey", "ReEncrypt")]
    assert rot[0]["request_id"] == rot[1]["request_id"]
    assert len({e["request_id"] for e in events}) > 10
    # no plaintext and no key material anywhere in the trail
    dump = json.dumps(events)
    assert SECRET not in dump and "audited" not in dump
    keys_dir = home / "keys"
    for path in keys_dir.glob("*.json"):
        for v in json.loads(path.read_bytes()).get("versions", []):
            assert v["material"] not in dump
    assert verify(cli, 0)["ok"] is True


def test_checkpoints_written_after_commands(cli: Cli, home: Path, database_url: str) -> None:
    folder = home / "audit"
    files = sorted(folder.glob(CHECKPOINTS))
    assert files, "init wrote events, so it must have written a checkpoint"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    latest = files[-1]
    assert stat.S_IMODE(latest.stat().st_mode) == 0o600
    doc = json.loads(latest.read_bytes())
    assert set(doc) == {"format", "seq", "hash", "time", "mac"}
    assert doc["seq"] == head(database_url)
    expect(cli("key", "disable"), 0)
    expect(cli("key", "enable"), 0)
    newest = sorted(folder.glob(CHECKPOINTS))[-1]
    assert json.loads(newest.read_bytes())["seq"] == head(database_url)
    # a read command that appends nothing writes no checkpoint
    count = len(list(folder.glob(CHECKPOINTS)))
    expect(cli("key", "describe"), 0)
    assert len(list(folder.glob(CHECKPOINTS))) == count
    report = verify(cli, 0)
    assert report["checkpoint_seq"] == head(database_url)
    assert report["events"] == head(database_url) and report["problem"] is None
    status = json.loads(expect(cli("status", "--json"), 0).stdout)
    assert status["audit"]["head_seq"] >= report["head_seq"]
    assert status["audit"]["last_checkpoint_seq"] is not None


def test_housekeeper_checkpoints_while_serving(kb: KnowledgeBase, home: Path) -> None:
    keeper = kb.start_housekeeping(interval=1.0)
    try:
        kb.audit.record("TestEvent")
        deadline = time.monotonic() + 5
        target = kb.audit.table.head()
        assert target is not None
        path = home / "audit" / f"checkpoint-{target[0]:020d}.json"
        # the round counts itself after its checkpoint is written: wait for both
        while not (path.exists() and keeper.runs >= 2) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert path.exists(), "no checkpoint within the interval while serving"
        assert keeper.runs >= 2
    finally:
        keeper.stop()


def tamper(url: str, *statements: str) -> None:
    with psycopg.connect(url) as conn:
        for s in statements:
            conn.execute(s)


@pytest.fixture
def chain(cli: Cli, database_url: str) -> int:
    """A chain of some length, all covered by a checkpoint; returns the head."""
    for _ in range(3):
        expect(cli("key", "disable"), 0)
        expect(cli("key", "enable"), 0)
    n = head(database_url)
    assert n >= 9
    assert verify(cli, 0)["checkpoint_seq"] == n
    return n


@pytest.mark.parametrize(
    ("how", "statements", "bad", "problem"),
    [
        ("edit", ["UPDATE kb_audit SET principal = 'mallory' WHERE seq = 4"], 4, "changed"),
        (
            "edit-details",
            ["UPDATE kb_audit SET details = '{\"x\": 1}' WHERE seq = 5"],
            5,
            "changed",
        ),
        ("edit-outcome", ["UPDATE kb_audit SET outcome = 'failure' WHERE seq = 6"], 6, "changed"),
        (
            "edit-time",
            ["UPDATE kb_audit SET time = time + interval '1 s' WHERE seq = 2"],
            2,
            "changed",
        ),
        ("delete", ["DELETE FROM kb_audit WHERE seq = 5"], 5, "missing"),
        ("delete-first", ["DELETE FROM kb_audit WHERE seq = 1"], 1, "missing"),
        (
            "reorder",
            [
                "UPDATE kb_audit SET seq = -1 WHERE seq = 4",
                "UPDATE kb_audit SET seq = 4 WHERE seq = 5",
                "UPDATE kb_audit SET seq = 5 WHERE seq = -1",
            ],
            4,
            "changed",
        ),
    ],
)
def test_verify_detects_tampering(
    cli: Cli,
    database_url: str,
    chain: int,
    how: str,
    statements: list[str],
    bad: int,
    problem: str,
) -> None:
    tamper(database_url, *statements)
    report = verify(cli, 6)
    assert (report["ok"], report["first_bad_seq"], report["problem"]) == (False, bad, problem)
    result = expect(cli("audit", "verify"), 6)
    assert "INTEGRITY_ERROR" in result.output and f"event {bad}" in result.output


def test_verify_detects_deleted_newest_events(cli: Cli, database_url: str, chain: int) -> None:
    tamper(database_url, f"DELETE FROM kb_audit WHERE seq > {chain - 2}")
    report = verify(cli, 6)
    assert (report["first_bad_seq"], report["problem"]) == (chain - 1, "truncated")
    assert report["head_seq"] == chain - 2


def test_verify_detects_a_rewritten_chain(cli: Cli, database_url: str, chain: int) -> None:
    """Someone with SQL access edits an event and recomputes every hash after it: the
    chain is consistent again, but no longer matches the signed checkpoints."""
    db = Database(database_url, migrate=False)
    try:
        rows = list(AuditTable(db).scan())
        prev = GENESIS
        with db.transaction() as conn:
            for row in rows:
                if row.seq == 6:
                    row = dataclasses.replace(row, principal="mallory")
                digest = chain_hash(prev, event_body(row))
                conn.execute(
                    "UPDATE kb_audit SET principal = %s, prev_hash = %s, hash = %s WHERE seq = %s",
                    (row.principal, prev, digest, row.seq),
                )
                prev = digest
    finally:
        db.close()
    report = verify(cli, 6)
    assert report["problem"] == "checkpoint-mismatch"
    assert report["first_bad_seq"] is not None and report["first_bad_seq"] <= 6


def test_verify_detects_a_forged_checkpoint(cli: Cli, home: Path, chain: int) -> None:
    latest = sorted((home / "audit").glob(CHECKPOINTS))[-1]
    doc = json.loads(latest.read_bytes())
    doc["hash"] = "00" * 32
    latest.write_text(json.dumps(doc))
    report = verify(cli, 6)
    assert report["problem"] == "checkpoint-mismatch"


def test_verify_without_checkpoints_warns(cli: Cli, home: Path) -> None:
    """A home with no checkpoint and no checkpoint record (a chain never checkpointed)
    verifies with a warning; checkpoints gone while the record remains do not (the
    attacks on that are in test_attack_audit_checkpoints.py)."""
    for path in (home / "audit").glob(CHECKPOINTS):
        path.unlink()
    assert verify(cli, 6)["problem"] == "checkpoint-missing"
    (home / "audit" / HEAD_RECORD_NAME).unlink()
    report = verify(cli, 0)
    assert report["checkpoints"] == 0
    assert any("no checkpoint" in w for w in report["warnings"])


def test_home_from_before_the_record_gets_one(cli: Cli, home: Path, database_url: str) -> None:
    """Checkpoints but no record (written before the record existed): verify warns and
    relies on the newest checkpoint; the next checkpoint writes the record."""
    record = home / "audit" / HEAD_RECORD_NAME
    record.unlink()
    report = verify(cli, 0)
    assert any(HEAD_RECORD_NAME in w for w in report["warnings"])
    expect(cli("key", "disable"), 0)
    assert json.loads(record.read_bytes())["seq"] == head(database_url)
    assert verify(cli, 0)["warnings"] == []


def test_audit_list_filters(cli: Cli, database_url: str) -> None:
    expect(cli("key", "disable"), 0)
    expect(cli("key", "enable"), 0)
    only = json.loads(expect(cli("audit", "list", "--action", "DisableKey", "--json"), 0).stdout)
    assert [e["action"] for e in only] == ["DisableKey"]
    assert (
        json.loads(expect(cli("audit", "list", "--since", "2999-01-01", "--json"), 0).stdout) == []
    )
    recent = json.loads(expect(cli("audit", "list", "--since", "1h", "--json"), 0).stdout)
    assert len(recent) == head(database_url)
    assert len(json.loads(expect(cli("audit", "list", "--limit", "2", "--json"), 0).stdout)) == 2
    assert "DisableKey" in expect(cli("audit", "list"), 0).stdout
    for bad in (["--since", "yesterday"], ["--limit", "0"]):
        expect(cli("audit", "list", *bad), 2)


def test_concurrent_appends_stay_gapless(kb: KnowledgeBase, database_url: str) -> None:
    import threading

    def work() -> None:
        for _ in range(20):
            kb.audit.record("TestEvent")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = kb.audit.verify()
    assert report.ok and report.events == head(database_url)


def test_details_are_refused_unless_flat_and_plain(kb: KnowledgeBase) -> None:
    with pytest.raises(TypeError):
        kb.audit.record("TestEvent", details={"nested": {"a": 1}})
    with pytest.raises(TypeError):
        kb.audit.record("TestEvent", details={"f": 1.5})
