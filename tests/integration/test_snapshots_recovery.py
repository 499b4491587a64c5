"""Disaster recovery: the live database gone, the embedded server's data directory lost,
or the keystore missing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from tests.cli_helpers import Cli, make_cli
from tests.cli_helpers import initialised_cli as initialised_cli  # the module's cli ran init
from tests.integration.test_tamper_cli import expect
from tests.snapshot_helpers import (
    SECRET,
    audit_rows,
)

from sealedkb.config import Settings, load_settings
from sealedkb.errors import (
    KeyUnavailableError,
)
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.snapshotting import snapshots_for
from sealedkb.store.embedded import EmbeddedPostgres

pytest_plugins = ["tests.snapshot_fixtures"]


def test_verify_and_restore_without_a_keystore(
    kb: KnowledgeBase, settings: Settings, tmp_path: Path, scratch_names: Callable[[], str]
) -> None:
    info = snapshots_for(settings, kb).create()
    other = load_settings(tmp_path / "no-keys", snapshot_dir=settings.snapshots_dir)
    with pytest.raises(KeyUnavailableError, match="keystore"):
        snapshots_for(other).verify(info.id)
    with pytest.raises(KeyUnavailableError):
        snapshots_for(other).restore(info.id, scratch_names())


def test_disaster_recovery_without_the_live_database(
    cli: Cli,
    home: Path,
    database_url: str,
    pg_server: EmbeddedPostgres,
    scratch_names: Callable[[], str],
) -> None:
    """The database is gone; the keystore and the snapshot folder are not."""
    for i in range(3):
        expect(cli("add", f"{SECRET} {i}"), 0)
    sid = json.loads(expect(cli("snapshot", "create", "--json"), 0).stdout)["id"]
    dbname = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {dbname} WITH (FORCE)")
    assert [s["id"] for s in json.loads(expect(cli("snapshot", "list", "--json"), 0).stdout)] == [
        sid
    ]
    result = expect(cli("snapshot", "verify", sid), 0)
    assert "no knowledge base reachable" in result.output
    target = scratch_names()
    restored = json.loads(
        expect(cli("snapshot", "restore", sid, "--target", target, "--json"), 0).stdout
    )
    assert restored["row_counts"]["kb_entries"] == 3
    # the restore is in the restored database's own trail
    events = audit_rows(pg_server.uri(target), "RestoreSnapshot")
    assert events and events[-1]["details"]["snapshot_id"] == sid
    # and that database is the knowledge base once the URL points at it
    env = {"SEALEDKB_DATABASE_URL": pg_server.uri(target)}
    listed = json.loads(expect(cli("list", "--json", env=env), 0).stdout)
    assert sorted(e["content"] for e in listed) == [f"{SECRET} {i}" for i in range(3)]
    expect(cli("snapshot", "create", env=env), 0)


def test_disaster_recovery_of_the_embedded_server(tmp_path: Path) -> None:
    """The product path: no database URL, the embedded server's data directory is lost;
    keys/ and snapshots/ survived. Restoring into the embedded database name brings
    the knowledge base back as it was."""
    import shutil

    home = tmp_path / "home"
    cli = make_cli(home, None)
    try:
        expect(cli("init"), 0)
        ids = [expect(cli("add", f"{SECRET} {i}"), 0).stdout.strip() for i in range(3)]
        sid = json.loads(expect(cli("snapshot", "create", "--json"), 0).stdout)["id"]
        EmbeddedPostgres(home / "pgdata").stop()
        shutil.rmtree(home / "pgdata")  # the disk holding the database is gone
        expect(cli("list"), 1)  # NOT_INITIALIZED
        restored = json.loads(
            expect(cli("snapshot", "restore", sid, "--target", "sealedkb", "--json"), 0).stdout
        )
        assert restored["created_database"] is True
        got = json.loads(expect(cli("get", ids[1], "--json"), 0).stdout)
        assert got["content"] == f"{SECRET} 1"
        assert len(json.loads(expect(cli("list", "--json"), 0).stdout)) == 3
        # a second restore over the (now live) database is refused
        expect(cli("snapshot", "restore", sid, "--target", "sealedkb"), 1)
        # The old chain's checkpoints vouch for events the restored chain does not have:
        # audit verify says so until audit/ is archived (runbook §22, cutting over).
        expect(cli("audit", "verify"), 6)
        (home / "audit").rename(home / "audit-before-restore")
        expect(cli("audit", "verify"), 0)
    finally:
        EmbeddedPostgres(home / "pgdata").stop()
