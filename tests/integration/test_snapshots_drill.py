"""The restore drill, and the audit event of every snapshot operation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.cli_helpers import Cli
from tests.cli_helpers import initialised_cli as initialised_cli  # the module's cli ran init
from tests.integration.test_tamper_cli import expect
from tests.snapshot_helpers import (
    SECRET,
    audit_rows,
    db_exists,
)

from sealedkb.store.embedded import EmbeddedPostgres

pytest_plugins = ["tests.snapshot_fixtures"]


def test_drill(cli: Cli, database_url: str, pg_server: EmbeddedPostgres, home: Path) -> None:
    for i in range(4):
        expect(cli("add", f"{SECRET} {i}"), 0)
    report = json.loads(expect(cli("snapshot", "drill", "--json"), 0).stdout)
    assert report["ok"] is True
    assert [s["step"] for s in report["steps"]] == ["create", "restore", "verify", "drop"]
    assert all(s["seconds"] >= 0 for s in report["steps"])
    assert report["row_counts"]["kb_entries"] == 4
    assert not db_exists(pg_server, report["scratch_database"])
    assert report["kept"] is False
    assert json.loads(expect(cli("snapshot", "list", "--json"), 0).stdout) == []
    drills = audit_rows(database_url, "DrillSnapshot")
    assert drills[-1]["outcome"] == "success"
    assert drills[-1]["details"]["snapshot_id"] == report["snapshot_id"]
    assert {"create_ms", "restore_ms", "verify_ms", "drop_ms"} <= set(drills[-1]["details"])
    # an existing snapshot, kept
    sid = json.loads(expect(cli("snapshot", "create", "--json"), 0).stdout)["id"]
    again = json.loads(expect(cli("snapshot", "drill", "--snapshot", sid, "--json"), 0).stdout)
    assert [s["step"] for s in again["steps"]] == ["restore", "verify", "drop"]
    assert [s["id"] for s in json.loads(expect(cli("snapshot", "list", "--json"), 0).stdout)] == [
        sid
    ]
    assert "drill passed" in expect(cli("snapshot", "drill"), 0).stdout


def test_every_operation_is_audited(
    cli: Cli, database_url: str, scratch_names: Callable[[], str]
) -> None:
    expect(cli("add", f"{SECRET} 1"), 0)
    sid = json.loads(expect(cli("snapshot", "create", "--json"), 0).stdout)["id"]
    expect(cli("snapshot", "verify", sid), 0)
    expect(cli("snapshot", "restore", sid, "--target", scratch_names()), 0)
    other = expect(cli("key", "create"), 0).stdout.strip()
    copy_id = expect(cli("snapshot", "copy", sid, "--kms-key-id", other), 0).stdout.strip()
    expect(cli("snapshot", "delete", copy_id), 0)
    expect(cli("snapshot", "drill"), 0)
    for action in (
        "CreateSnapshot",
        "VerifySnapshot",
        "RestoreSnapshot",
        "CopySnapshot",
        "DeleteSnapshot",
        "DrillSnapshot",
    ):
        events = audit_rows(database_url, action)
        assert events, action
        for e in events:
            assert e["outcome"] == "success", (action, e)
            assert e["details"]["snapshot_id"].startswith("snap-"), (action, e)
            assert e["details"]["kind"] in ("manual", "automated"), (action, e)
            assert e["principal"] == "admin"
    copy_event = audit_rows(database_url, "CopySnapshot")[0]
    assert (
        copy_event["details"]["snapshot_id"] == sid and copy_event["details"]["copy_id"] == copy_id
    )
    assert copy_event["key_uri"] == other
    # failures are recorded too, with the error code
    bad = Path(json.loads(expect(cli("snapshot", "describe", sid, "--json"), 0).stdout)["path"])
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 1
    bad.write_bytes(bytes(data))
    expect(cli("snapshot", "verify", sid), 6)
    failed = audit_rows(database_url, "VerifySnapshot")[-1]
    assert (failed["outcome"], failed["error_code"]) == ("failure", "INTEGRITY_ERROR")
    assert failed["details"]["snapshot_id"] == sid
    # and the trail still verifies
    assert json.loads(expect(cli("audit", "verify", "--json"), 0).stdout)["ok"] is True
