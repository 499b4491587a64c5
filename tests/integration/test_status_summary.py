"""The auditor summary of ``sealedkb status`` (runbook §24) on a real PostgreSQL:
all OK for an encrypted knowledge base with a snapshot, FAIL for a plaintext one,
snapshots counted with their KMS key ids, a damaged snapshot file, a tampered
audit row, the long-trail fallback, the extension hook, and the human table."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.cli_helpers import Cli, make_cli
from tests.integration.test_tamper_cli import SECRET, expect, sql, write_key

from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.summary import CHECK_IDS, Check, build_summary, summary_ok
from sealedkb.model import EncryptionMode

pytestmark = pytest.mark.db_transports("socket")  # the transport check expects a socket


@pytest.fixture
def root_key(tmp_path: Path) -> Path:
    """A root key kept apart from the home: no development-root-key warning."""
    return write_key(tmp_path / "root.key")


@pytest.fixture
def cli(home: Path, database_url: str, root_key: Path) -> Cli:
    return make_cli(home, database_url, env={"SEALEDKB_ROOT_KEY_FILE": str(root_key)})


def status_json(cli: Cli) -> dict[str, Any]:
    result = expect(cli("status", "--json"), 0)
    assert SECRET not in result.stdout
    return dict(json.loads(result.stdout))


def checks_of(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["check"]: c for c in status["summary"]}


def no_secrets(text: str) -> None:
    assert SECRET not in text
    for word in ("SELECT", "INSERT", "UPDATE kb_", "root.key\n", "BEGIN PRIVATE"):
        assert word not in text


def snapshot(cli: Cli) -> dict[str, Any]:
    return dict(json.loads(expect(cli("snapshot", "create", "--json"), 0).stdout))


def test_encrypted_knowledge_base_all_ok(cli: Cli) -> None:
    expect(cli("init"), 0)
    for i in range(3):
        expect(cli("add", f"{SECRET} {i}", "--tag", "x"), 0)
    created = snapshot(cli)
    status = status_json(cli)
    # every existing key is still there
    for key in (
        "storage_encrypted",
        "kms_key_id",
        "key_state",
        "entries_plaintext",
        "entries_sealed",
        "data_keys",
        "audit",
        "database",
        "warnings",
        "metrics",
        "alarms",
    ):
        assert key in status, key
    checks = checks_of(status)
    assert list(checks) == list(CHECK_IDS)
    assert {c["check"]: c["ok"] for c in status["summary"]} == dict.fromkeys(CHECK_IDS, True)
    assert status["summary_ok"] is True
    for c in status["summary"]:
        assert set(c) == {"check", "ok", "value", "detail"}
        assert isinstance(c["value"], str) and len(c["value"]) <= 80, c
    assert checks["kms_key"]["detail"]["kms_key_id"] == status["kms_key_id"]
    assert checks["kms_key"]["detail"]["key_state"] == "Enabled"
    assert checks["rotation"]["detail"]["enabled"] is True
    assert checks["rotation"]["detail"]["next_rotation_date"]
    assert checks["data_keys"]["detail"]["active"] >= 1
    assert checks["entries"]["detail"] == {"total": 3, "sealed": 3, "plaintext": 0, "namespaces": 1}
    snaps = checks["snapshots"]["detail"]
    assert snaps["count"] == 1 and snaps["encrypted"] == 1
    assert snaps["kms_key_ids"] == [created["kms_key_id"]] == [status["kms_key_id"]]
    assert "snapshot verify" in snaps["checked"]
    audit = checks["audit_chain"]["detail"]
    assert audit["coverage"] == "full chain and checkpoints"
    assert audit["events_checked"] == audit["head_seq"] > 0
    assert audit["checkpoint_seq"] is not None and audit["problem"] is None
    assert checks["transport"]["detail"]["kind"] == "unix-socket"
    no_secrets(json.dumps(status["summary"]))


def test_plaintext_knowledge_base_fails_storage_encrypted(home: Path, database_url: str) -> None:
    cli = make_cli(home, database_url)
    expect(cli("init", "--encryption", "off"), 0)
    expect(cli("add", f"{SECRET} plain"), 0)
    status = status_json(cli)
    checks = checks_of(status)
    assert status["summary_ok"] is False
    assert checks["storage_encrypted"]["ok"] is False
    assert "encryption is off" in checks["storage_encrypted"]["value"]
    assert checks["kms_key"]["ok"] is False
    assert checks["entries"]["ok"] is False
    assert checks["entries"]["detail"]["plaintext"] == 1
    assert checks["rotation"]["ok"] is None and checks["data_keys"]["ok"] is None
    assert checks["snapshots"]["ok"] is None and checks["snapshots"]["detail"]["count"] == 0
    assert checks["audit_chain"]["detail"]["problem"] is None
    assert checks["transport"]["ok"] is True
    human = expect(cli("status"), 0).stdout
    assert "FAIL" in human and "storage_encrypted" in human
    no_secrets(human)


def test_snapshots_counted_with_their_key_ids(cli: Cli, home: Path) -> None:
    expect(cli("init"), 0)
    expect(cli("add", f"{SECRET} one"), 0)
    first = snapshot(cli)
    # a second KMS key and a copy under it: two snapshots, two key ids
    other = json.loads(expect(cli("key", "create", "--json"), 0).stdout)["key_id"]
    expect(cli("snapshot", "copy", first["id"], "--kms-key-id", other), 0)
    snaps = checks_of(status_json(cli))["snapshots"]
    assert snaps["ok"] is True
    assert snaps["detail"]["count"] == 2 and snaps["detail"]["encrypted"] == 2
    assert snaps["detail"]["kms_key_ids"] == sorted([first["kms_key_id"], other])
    assert snaps["value"] == "2, all encrypted, 2 KMS keys"


def test_damaged_snapshot_file_is_not_ok(cli: Cli) -> None:
    expect(cli("init"), 0)
    expect(cli("add", f"{SECRET} one"), 0)
    good = snapshot(cli)
    bad = snapshot(cli)
    path = Path(bad["path"])
    with path.open("r+b") as fh:  # flip a byte inside the header
        fh.seek(40)
        byte = fh.read(1)
        fh.seek(40)
        fh.write(bytes([byte[0] ^ 0xFF]))
    status = status_json(cli)
    snaps = checks_of(status)["snapshots"]
    assert snaps["ok"] is False and status["summary_ok"] is False
    assert snaps["detail"]["damaged"] == [bad["id"]]
    assert snaps["detail"]["encrypted"] == 1
    assert snaps["detail"]["kms_key_ids"] == [good["kms_key_id"]]
    assert "1 unreadable" in snaps["value"]
    # a truncated file, too
    path.write_bytes(b"")
    assert checks_of(status_json(cli))["snapshots"]["ok"] is False


def test_tampered_audit_row_breaks_audit_chain(cli: Cli, database_url: str) -> None:
    expect(cli("init"), 0)
    expect(cli("add", f"{SECRET} one"), 0)
    assert checks_of(status_json(cli))["audit_chain"]["ok"] is True
    sql(database_url, "UPDATE kb_audit SET principal = 'mallory' WHERE seq = 2")
    status = status_json(cli)
    audit = checks_of(status)["audit_chain"]
    assert audit["ok"] is False and status["summary_ok"] is False
    assert audit["detail"]["first_bad_seq"] == 2 and audit["detail"]["problem"] == "changed"
    assert audit["value"].startswith("broken:")
    human = expect(cli("status"), 0).stdout
    assert "audit_chain" in human and "FAIL" in human


def test_human_output_is_one_compact_table(cli: Cli) -> None:
    expect(cli("init"), 0)
    expect(cli("add", f"{SECRET} one"), 0)
    snapshot(cli)
    result = expect(cli("status"), 0)
    out = result.stdout
    lines = out.rstrip("\n").splitlines()
    assert len(lines) <= 16, out
    assert "all checks OK" in lines[0]
    for check in CHECK_IDS:
        row = next((line for line in lines if check in line), None)
        assert row is not None, check
        assert "OK" in row, row
    assert "alarms:" in out
    no_secrets(out)
    # --detail adds the field table
    detailed = expect(cli("status", "--detail"), 0).stdout
    assert "encryption_scheme" in detailed and "namespaces" in detailed


# --- API-level: fallbacks and the extension hook -------------------------------------


@pytest.fixture
def settings(make_settings: Callable[..., Settings], root_key: Path) -> Settings:
    return make_settings(root_key_file=root_key)


@pytest.fixture
def enc_kb(settings: Settings) -> Any:
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
    yield kb
    kb.close()


def test_long_audit_trail_checks_only_the_head(
    enc_kb: KnowledgeBase, settings: Settings, database_url: str
) -> None:
    enc_kb.add(f"{SECRET} entry")
    enc_kb.audit.checkpoint()
    checks = {c.check: c for c in build_summary(enc_kb, settings, audit_verify_max=1)}
    audit = checks["audit_chain"]
    assert audit.ok is None  # not verified here: WARN, and says so
    assert audit.detail["coverage"].startswith("head only")
    assert audit.detail["events_checked"] == 0
    assert "audit verify" in audit.value
    # deleting the newest events up to the checkpoint is still caught (two of them:
    # status itself appends one event, the availability probe's unwrap)
    cp = int(audit.detail["checkpoint_seq"])
    sql(database_url, "DELETE FROM kb_audit WHERE seq >= %s", (cp - 1,))
    audit = {c.check: c for c in build_summary(enc_kb, settings, audit_verify_max=1)}["audit_chain"]
    assert audit.ok is False and audit.detail["problem"] == "truncated"
    # and the full walk without a limit
    full = {c.check: c for c in build_summary(enc_kb, settings, audit_verify_max=None)}
    assert full["audit_chain"].ok is False


def test_audit_chain_without_keys_checks_the_chain_only(
    enc_kb: KnowledgeBase, settings: Settings, root_key: Path
) -> None:
    enc_kb.add(f"{SECRET} entry")
    enc_kb.audit.checkpoint()
    os.rename(root_key, root_key.with_suffix(".gone"))  # the root key is not mounted
    kb = KnowledgeBase.open(settings)
    try:
        checks = {c.check: c for c in build_summary(kb, settings)}
    finally:
        kb.close()
    assert checks["audit_chain"].ok is None
    assert checks["audit_chain"].detail["coverage"] == "full chain"
    assert checks["audit_chain"].detail["events_checked"] > 0
    assert checks["kms_key"].ok is False


def test_development_root_key_is_a_warning(make_settings: Callable[..., Settings]) -> None:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON)
    try:
        kms = {c.check: c for c in build_summary(kb)}["kms_key"]
    finally:
        kb.close()
    assert kms.ok is None and "development root key" in kms.value


def test_extra_checks_hook(enc_kb: KnowledgeBase, settings: Settings) -> None:
    def migration(kb: KnowledgeBase, status: dict[str, Any]) -> Check | None:
        return Check("migration", None, "in progress: 40 of 100 sealed", {"done": 40})

    def nothing(kb: KnowledgeBase, status: dict[str, Any]) -> Check | None:
        return None

    checks = build_summary(enc_kb, settings, extra_checks=[migration, nothing])
    assert [c.check for c in checks] == [*CHECK_IDS, "migration"]
    assert checks[-1].label == "WARN" and summary_ok(checks) is False
