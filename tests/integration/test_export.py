"""``sealedkb export``: plaintext on purpose, so it asks first, refuses a folder in
the sealedkb home or the data directory (an attacker's symbolic links included),
writes a new folder 0700 with files 0600, is audited, and leaves nothing behind
when it fails; its JSON Lines are what ``import --from jsonl`` reads."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from tests.cli_helpers import (
    Cli,
    initialised_cli,  # noqa: F401  (fixture)
)
from tests.integration.test_tamper_cli import expect

from sealedkb.errors import DatabaseError, ValidationError
from sealedkb.ingest.export import AUDIT_ACTION, export_entries
from sealedkb.kb.knowledge_base import KnowledgeBase

CONTENT = "The failover runbook: promote the replica, then repoint PgBouncer."


def seed(cli: Cli) -> None:
    expect(cli("add", CONTENT, "--title", "Failover", "--tag", "ops", "--type", "runbook"), 0)
    expect(cli("add", "Second entry, in another namespace.", "-n", "team-b"), 0)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_export_refuses_without_yes_and_writes_nothing(cli: Cli, tmp_path: Path) -> None:
    seed(cli)
    target = tmp_path / "out"
    r = expect(cli("export", str(target)), 2)
    assert "error[VALIDATION_ERROR] (yes): export writes every entry as plaintext" in r.output
    assert not target.exists()


@pytest.mark.parametrize("fmt", ["jsonl", "markdown"])
def test_export_writes_a_new_private_folder_and_is_audited(
    cli: Cli, tmp_path: Path, home: Path, fmt: str
) -> None:
    seed(cli)
    target = tmp_path / "out"
    old = os.umask(0)  # permissions do not depend on the caller's umask
    try:
        got = json.loads(
            expect(cli("export", "--format", fmt, str(target), "--yes", "--json"), 0).stdout
        )
    finally:
        os.umask(old)
    assert got["entries"] == 2 and got["format"] == fmt
    assert mode(target) == 0o700
    written = [p for p in target.rglob("*") if p.is_file()]
    assert len(written) == (1 if fmt == "jsonl" else 2)
    assert all(mode(p) == 0o600 for p in written)
    assert all(mode(p) == 0o700 for p in target.rglob("*") if p.is_dir())
    assert any(CONTENT in p.read_text() for p in written)
    events = json.loads(expect(cli("audit", "list", "--action", AUDIT_ACTION, "--json"), 0).stdout)
    rows = events["events"] if isinstance(events, dict) else events
    assert len(rows) == 1
    assert rows[0]["outcome"] == "success"
    assert rows[0]["details"] == {"format": fmt, "entries": 2, "files": len(written)}
    assert CONTENT not in json.dumps(rows)  # the audit trail carries no plaintext


def test_export_refuses_the_home_the_data_directory_and_links_into_them(
    cli: Cli, tmp_path: Path, home: Path
) -> None:
    seed(cli)
    link = tmp_path / "innocent"
    link.symlink_to(home, target_is_directory=True)  # an attacker's way into the home
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    for target, env in (
        (home / "export", {}),
        (home / "keys" / "export", {}),
        (link / "export", {}),
        (pgdata / "export", {"PGDATA": str(pgdata)}),
    ):
        r = expect(cli("export", str(target), "--yes", env=env), 2)
        assert "inside the sealedkb home or the database's data directory" in r.output, target
        assert not target.exists()
    # a link planted where the export is to be created is not followed
    trap = tmp_path / "trap"
    trap.symlink_to(tmp_path / "elsewhere")
    r = expect(cli("export", str(trap), "--yes"), 2)
    assert "must not exist yet" in r.output
    assert not (tmp_path / "elsewhere").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    expect(cli("export", str(existing), "--yes"), 2)
    assert list(existing.iterdir()) == []
    r = expect(cli("export", str(tmp_path / "x"), "--format", "csv", "--yes"), 2)
    assert "unknown export format" in r.output


def test_export_leaves_nothing_when_the_audit_event_cannot_be_written(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    kb.add(CONTENT, title="Failover")

    def refuse(action: str, ns: str | None, details: dict[str, Any]) -> None:
        raise DatabaseError("the audit trail is unavailable")

    target = tmp_path / "out"
    with pytest.raises(DatabaseError):
        export_entries(kb, target, fmt="markdown", protected=[kb.settings.home], record=refuse)
    assert not target.exists()  # no unaudited plaintext left behind
    with pytest.raises(ValidationError, match="unknown export format"):
        export_entries(kb, target, fmt="xml", protected=[], record=refuse)


def test_exported_jsonl_imports_back_with_every_field(cli: Cli, tmp_path: Path) -> None:
    seed(cli)
    expect(cli("export", str(tmp_path / "a"), "--yes"), 0)
    lines = [json.loads(x) for x in (tmp_path / "a" / "entries.jsonl").read_text().splitlines()]
    assert {x["namespace"] for x in lines} == {"default", "team-b"}
    moved = tmp_path / "moved.jsonl"
    moved.write_text("".join(json.dumps({**x, "namespace": "restored"}) + "\n" for x in lines))
    got = json.loads(expect(cli("import", "--from", "jsonl", str(moved), "--json"), 0).stdout)
    assert got["added"] == 2
    expect(cli("export", str(tmp_path / "b"), "-n", "restored", "--yes"), 0)
    again = [json.loads(x) for x in (tmp_path / "b" / "entries.jsonl").read_text().splitlines()]
    keep = ("title", "content", "type", "tags", "source", "verified", "archived")
    assert sorted(tuple(x[k] for k in keep) for x in again) == sorted(
        tuple(x[k] for k in keep) for x in lines
    )
    for x in again:  # the first export's identity and times travel in metadata
        record = x["metadata"]["imported"]
        assert record["key"].startswith("jsonl:")
        assert record["created_at"] in {y["created_at"] for y in lines}
    got = json.loads(expect(cli("import", "--from", "jsonl", str(moved), "--json"), 0).stdout)
    assert got["added"] == 0  # a second import adds nothing


def test_both_formats_round_trip_every_field_in_both_modes(
    any_kb: KnowledgeBase, tmp_path: Path
) -> None:
    from sealedkb.ingest.peers import import_items, read_peer
    from sealedkb.model import EntryPatch

    kb = any_kb
    kb.add(
        CONTENT,
        title="Failover",
        tags=["ops", "db"],
        entry_type="runbook",
        verified=True,
        source="wiki://ops/failover",
        metadata={"owner": "sre", "n": 3},
    )
    old = kb.add("An archived decision about TLS.", title="Old TLS", entry_type="decision")
    kb.update(old.id, EntryPatch(archived=True))

    def record(action: str, ns: str | None, details: dict[str, Any]) -> None:
        kb.audit.record(action, namespace=ns, details=details)

    def fields(namespace: str) -> list[tuple[Any, ...]]:
        got = kb.list(namespace=namespace, limit=100)
        return sorted(
            (
                e.title,
                e.content,
                e.entry_type.value,
                e.tags,
                e.source,
                e.verified,
                e.archived,
                {k: v for k, v in e.metadata.items() if k != "imported"},
            )
            for e in got
        )

    export_entries(kb, tmp_path / "j", fmt="jsonl", protected=[], record=record)
    export_entries(kb, tmp_path / "m", fmt="markdown", protected=[], record=record)
    lines = (tmp_path / "j" / "entries.jsonl").read_text().splitlines()
    moved = tmp_path / "moved.jsonl"
    moved.write_text("".join(json.dumps({**json.loads(x), "namespace": "j"}) + "\n" for x in lines))
    assert import_items(kb, read_peer("jsonl", moved)).added == 2
    md = import_items(kb, read_peer("basic-memory", tmp_path / "m" / "default"), namespace="m")
    assert (md.added, md.failed) == (2, [])
    assert fields("j") == fields("default")
    assert fields("m") == fields("default")
