"""Attacks on the audit trail's signed checkpoints: someone who can delete rows of
``kb_audit`` and files in ``$SEALEDKB_HOME/audit/`` (but holds no audit key) removes
the newest events together with the checkpoints that vouch for them. The record of
the highest checkpointed sequence (MACed, beside the checkpoints) still catches it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.cli_helpers import Cli
from tests.integration.test_tamper_cli import expect, sql

from sealedkb.audit.chain import HEAD_RECORD_NAME
from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase


@pytest.fixture
def cli(cli: Cli) -> Cli:
    """The shared ``cli`` (tests/conftest.py) on an initialised knowledge base."""
    expect(cli("init"), 0)
    for _ in range(3):  # each command appends events and writes a checkpoint
        expect(cli("key", "disable"), 0)
        expect(cli("key", "enable"), 0)
    return cli


def head(url: str) -> int:
    (r,) = sql(url, "SELECT coalesce(max(seq), 0) FROM kb_audit")
    return int(r[0])


def checkpoints(home: Path) -> list[Path]:
    return sorted((home / "audit").glob("checkpoint-" + "[0-9]" * 20 + ".json"))


def verify(cli: Cli, code: int) -> dict[str, Any]:
    return json.loads(expect(cli("audit", "verify", "--json"), code).stdout)


def api_report(make_settings: Callable[..., Settings]) -> Any:
    kb = KnowledgeBase.open(make_settings())
    try:
        return kb.audit.verify()
    finally:
        kb.audit.appended = 0  # close() must not sign the damaged chain
        kb.close()


def seq_of(path: Path) -> int:
    return int(json.loads(path.read_bytes())["seq"])


def test_newest_checkpoint_and_its_events_deleted(
    cli: Cli, home: Path, database_url: str, make_settings: Callable[..., Settings]
) -> None:
    files = checkpoints(home)
    assert len(files) >= 2 and seq_of(files[-1]) == head(database_url)
    newest, previous = seq_of(files[-1]), seq_of(files[-2])
    files[-1].unlink()
    sql(database_url, "DELETE FROM kb_audit WHERE seq > %s RETURNING seq", (previous,))
    report = verify(cli, 6)
    assert report["ok"] is False and report["problem"] == "truncated"
    assert report["first_bad_seq"] == previous + 1
    assert f"checkpoint-{newest:020d}.json" in report["message"]
    text = expect(cli("audit", "verify"), 6).output
    assert "INTEGRITY_ERROR" in text and "missing" in text
    api = api_report(make_settings)
    assert (api.ok, api.problem, api.first_bad_seq) == (False, "truncated", previous + 1)


def test_all_checkpoints_and_the_chain_tail_deleted(
    cli: Cli, home: Path, database_url: str, make_settings: Callable[..., Settings]
) -> None:
    n = head(database_url)
    for path in checkpoints(home):
        path.unlink()
    sql(database_url, "DELETE FROM kb_audit WHERE seq > %s RETURNING seq", (n - 3,))
    report = verify(cli, 6)
    assert report["ok"] is False and report["problem"] == "truncated"
    assert report["first_bad_seq"] == n - 2
    assert f"checkpoint-{n:020d}.json" in report["message"]
    assert "INTEGRITY_ERROR" in expect(cli("audit", "verify"), 6).output
    api = api_report(make_settings)
    assert (api.ok, api.problem) == (False, "truncated")


def test_newest_checkpoint_deleted_alone(cli: Cli, home: Path, database_url: str) -> None:
    files = checkpoints(home)
    files[-1].unlink()
    report = verify(cli, 6)
    assert report["problem"] == "checkpoint-missing"
    assert files[-1].name in report["message"]


def test_forged_or_edited_record_is_refused(cli: Cli, home: Path, database_url: str) -> None:
    record = home / "audit" / HEAD_RECORD_NAME
    doc = json.loads(record.read_bytes())
    doc["seq"] = doc["seq"] - 2  # lower the mark to hide a deletion
    record.write_text(json.dumps(doc))
    report = verify(cli, 6)
    assert report["problem"] == "checkpoint-mismatch"
    assert HEAD_RECORD_NAME in report["message"]


def test_record_follows_the_checkpoints(cli: Cli, home: Path, database_url: str) -> None:
    record = home / "audit" / HEAD_RECORD_NAME
    doc = json.loads(record.read_bytes())
    assert set(doc) == {"format", "seq", "hash", "time", "mac"}
    assert doc["seq"] == head(database_url) == seq_of(checkpoints(home)[-1])
    assert record.stat().st_mode & 0o777 == 0o600
    report = verify(cli, 0)
    assert report["ok"] is True and report["problem"] is None
