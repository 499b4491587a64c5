"""Snapshots and their KMS key: a copy under a second key restores with the first one
disabled; with the key disabled a snapshot exits 5 and leaves nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.cli_helpers import Cli
from tests.cli_helpers import initialised_cli as initialised_cli  # the module's cli ran init
from tests.integration.test_tamper_cli import expect, sql
from tests.snapshot_helpers import (
    SECRET,
    audit_rows,
    db_exists,
)

from sealedkb.config import Settings
from sealedkb.kb.snapshotting import open_restored
from sealedkb.store.embedded import EmbeddedPostgres

pytest_plugins = ["tests.snapshot_fixtures"]


def test_copy_under_a_second_key_restores_with_the_first_disabled(
    cli: Cli,
    database_url: str,
    pg_server: EmbeddedPostgres,
    scratch_names: Callable[[], str],
    make_settings: Callable[..., Settings],
) -> None:
    for i in range(5):
        expect(cli("add", f"{SECRET} {i}", "-n", f"ns{i % 2}"), 0)
    first = json.loads(expect(cli("key", "describe", "--json"), 0).stdout)["key_id"]
    second = expect(cli("key", "create", "--description", "dr"), 0).stdout.strip()
    original = json.loads(expect(cli("snapshot", "create", "--json"), 0).stdout)
    copied = json.loads(
        expect(cli("snapshot", "copy", original["id"], "--kms-key-id", second, "--json"), 0).stdout
    )
    assert copied["id"] != original["id"] and copied["kms_key_id"] == second
    assert copied["copied_from"] == original["id"] and copied["kind"] == "manual"
    assert copied["created_at"] == original["created_at"]  # same point in time
    assert copied["row_counts"] == original["row_counts"]
    expect(cli("snapshot", "verify", copied["id"]), 0)

    expect(cli("key", "disable", first), 0)
    # the original needs the first key: exit 5, nothing created
    target = scratch_names()
    result = expect(cli("snapshot", "restore", original["id"], "--target", target), 5)
    assert "KEY_UNAVAILABLE" in result.output
    assert not db_exists(pg_server, target)
    expect(cli("snapshot", "verify", original["id"]), 5)
    # the copy does not
    target = scratch_names()
    restored = json.loads(
        expect(cli("snapshot", "restore", copied["id"], "--target", target, "--json"), 0).stdout
    )
    assert restored["row_counts"]["kb_entries"] == 5
    rkb = open_restored(make_settings(), pg_server.uri(target))
    try:
        assert rkb.kms_key_uri == second
        contents = sorted(e.content for e in rkb.list(limit=100))
        assert contents == sorted(f"{SECRET} {i}" for i in range(5))
        keys = sql(pg_server.uri(target), "SELECT DISTINCT kms_key_uri FROM kb_data_keys")
        assert keys == [(second,)]
    finally:
        rkb.close()
    expect(cli("key", "enable", first), 0)


def test_snapshot_with_the_key_disabled_exits_5_and_leaves_nothing(
    cli: Cli, home: Path, database_url: str
) -> None:
    expect(cli("add", f"{SECRET} x"), 0)
    expect(cli("key", "disable"), 0)
    result = expect(cli("snapshot", "create"), 5)
    assert "KEY_UNAVAILABLE" in result.output
    folder = home / "snapshots"
    assert not folder.exists() or list(folder.iterdir()) == []
    events = audit_rows(database_url, "CreateSnapshot")
    assert [(e["outcome"], e["error_code"]) for e in events] == [("failure", "KEY_UNAVAILABLE")]
    assert events[0]["details"]["kind"] == "manual"
    assert events[0]["details"]["snapshot_id"].startswith("snap-")
    expect(cli("key", "enable"), 0)
    expect(cli("snapshot", "create"), 0)
