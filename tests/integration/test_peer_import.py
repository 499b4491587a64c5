"""Moving in from other servers (``import --from``): mcp-memory-service's SQLite-vec
database and basic-memory's Markdown notes, built with their real schemas
(tests/fixtures/peers/builders.py); every field the formats share survives an
import and an export back; a re-run adds nothing; bad input is a VALIDATION_ERROR
naming the file and item, with nothing of that item written."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from tests.cli_helpers import (
    Cli,
    initialised_cli,  # noqa: F401  (fixture)
)
from tests.fixtures.peers.builders import MEMORIES, NOTES, basic_memory_dir, iso, mcp_memory_db
from tests.integration.test_tamper_cli import expect

from sealedkb.errors import ValidationError
from sealedkb.ingest.export import export_entries
from sealedkb.ingest.peers import PeerImportSummary, import_items, read_peer
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import Entry

LIVE = [m for m in MEMORIES if m.deleted_at is None][:3]


def entries(kb: KnowledgeBase, namespace: str = "default") -> list[Entry]:
    return kb.list(namespace=namespace, limit=1000)


def run(kb: KnowledgeBase, fmt: str, path: Path, namespace: str = "default") -> PeerImportSummary:
    return import_items(kb, read_peer(fmt, path), namespace=namespace)


def export_jsonl(
    kb: KnowledgeBase, folder: Path, namespace: str | None = None
) -> list[dict[str, Any]]:
    def record(action: str, ns: str | None, details: dict[str, Any]) -> None:
        kb.audit.record(action, namespace=ns, details=details)

    export_entries(
        kb, folder, fmt="jsonl", protected=[kb.settings.home], record=record, namespace=namespace
    )
    text = (folder / "entries.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def shared(line: dict[str, Any]) -> dict[str, Any]:
    """The fields a round trip keeps (not the ids and sealedkb's own times)."""
    return {
        k: v for k, v in line.items() if k not in {"id", "namespace", "created_at", "updated_at"}
    }


# --- mcp-memory-service -------------------------------------------------------------


def test_mcp_memory_service_maps_content_tags_types_times_and_metadata(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    db = mcp_memory_db(tmp_path / "sqlite_vec.db")
    summary = run(kb, "mcp-memory-service", db)
    assert (summary.items, summary.added) == (5, 3)
    reasons = {p.label: (p.reason, p.code) for p in summary.skipped}
    assert reasons == {
        "sqlite_vec.db: memory id 4": ("deleted in the source", "DELETED"),
        "sqlite_vec.db: memory id 5": ("identical content already in the namespace", "DUPLICATE"),
    }
    assert summary.failed == []
    by_content = {e.content: e for e in entries(kb)}
    assert set(by_content) == {m.content for m in LIVE}
    for m in LIVE:
        e = by_content[m.content]
        assert e.tags == tuple(m.tags)
        assert e.source == f"mcp-memory-service:{m.content_hash}"
        record = e.metadata["imported"]
        assert record["key"] == f"mcp-memory-service:{m.content_hash}"
        assert record["from"] == "mcp-memory-service"
        assert record["created_at"] == iso(m.created_at)
        assert record["updated_at"] == iso(m.updated_at)
        assert record["type"] == m.memory_type
        for k, v in (m.metadata if isinstance(m.metadata, dict) else {}).items():
            assert e.metadata[k] == v
    assert by_content[LIVE[0].content].entry_type.value == "decision"
    assert by_content[LIVE[1].content].entry_type.value == "note"  # "reference" has no twin
    assert by_content[LIVE[1].content].title == "Staging rebuild"
    assert by_content[LIVE[2].content].entry_type.value == "lesson"


def test_mcp_memory_service_second_import_adds_nothing(kb: KnowledgeBase, tmp_path: Path) -> None:
    db = mcp_memory_db(tmp_path / "sqlite_vec.db")
    run(kb, "mcp-memory-service", db)
    before = {e.id for e in entries(kb)}
    again = run(kb, "mcp-memory-service", db)
    assert again.added == 0
    assert sorted(p.reason for p in again.skipped).count("already imported") == 3
    assert {e.id for e in entries(kb)} == before


def test_mcp_memory_service_round_trip_through_jsonl(kb: KnowledgeBase, tmp_path: Path) -> None:
    run(kb, "mcp-memory-service", mcp_memory_db(tmp_path / "sqlite_vec.db"))
    first = export_jsonl(kb, tmp_path / "out1")
    assert len(first) == 3
    by_content = {line["content"]: line for line in first}
    for m in LIVE:  # nothing the two formats share was lost
        line = by_content[m.content]
        assert line["tags"] == m.tags
        assert line["metadata"]["imported"]["created_at"] == iso(m.created_at)
        assert line["metadata"]["imported"]["updated_at"] == iso(m.updated_at)
        assert line["metadata"]["imported"]["type"] == m.memory_type
    # the export reads back into another namespace unchanged (a line without a
    # namespace goes to --namespace; with one, to its own, as in add-many) ...
    moved = tmp_path / "moved.jsonl"
    moved.write_text("".join(json.dumps({**x, "namespace": "copy"}) + "\n" for x in first))
    copied = run(kb, "jsonl", moved)
    assert (copied.added, copied.failed, copied.skipped) == (3, [], [])
    second = export_jsonl(kb, tmp_path / "out2", namespace="copy")
    assert sorted(map(shared, second), key=lambda x: x["content"]) == sorted(
        map(shared, first), key=lambda x: x["content"]
    )
    # ... and into the namespace it came from as nothing new: the peer's keys are kept
    back = run(kb, "jsonl", tmp_path / "out1" / "entries.jsonl")
    assert back.added == 0 and [p.reason for p in back.skipped] == ["already imported"] * 3


def test_not_an_sqlite_file_is_a_validation_error_naming_it(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    bad = tmp_path / "memories.db"
    bad.write_text("this is not a database\n")
    with pytest.raises(ValidationError, match=r"memories\.db: not an SQLite database"):
        read_peer("mcp-memory-service", bad)
    forged = tmp_path / "forged.db"  # the right magic bytes, then garbage
    forged.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)
    with pytest.raises(ValidationError, match=r"forged\.db: not an SQLite database"):
        read_peer("mcp-memory-service", forged)
    assert entries(kb) == []


def test_a_wrong_schema_is_a_validation_error_naming_the_column(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE memories (id INTEGER PRIMARY KEY, content TEXT)")
    conn.execute("INSERT INTO memories (content) VALUES ('secret words')")
    conn.commit()
    conn.close()
    with pytest.raises(
        ValidationError, match=r"other\.db: wrong schema: .* no column 'content_hash'"
    ):
        read_peer("mcp-memory-service", other)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).execute("CREATE TABLE notes (x)").connection.close()
    with pytest.raises(ValidationError, match=r"empty\.db: wrong schema: no table 'memories'"):
        read_peer("mcp-memory-service", empty)


def test_a_bad_row_is_reported_and_nothing_of_it_written(kb: KnowledgeBase, tmp_path: Path) -> None:
    from tests.fixtures.peers.builders import Memory

    rows = [
        Memory("f" * 64, "Good memory about backups.", ["ops"]),
        Memory("0" * 64, "Memory with broken metadata SECRETWORD.", [], "note", "{not json"),
        Memory("1" * 64, "x" * (1024 * 1024 + 1), [], "note", {}),
    ]
    summary = run(kb, "mcp-memory-service", mcp_memory_db(tmp_path / "m.db", rows))
    assert summary.added == 1
    failed = {p.label: (p.reason, p.code) for p in summary.failed}
    assert failed == {
        "m.db: memory id 2": ("metadata is not valid JSON", "VALIDATION_ERROR"),
        "m.db: memory id 3": ("content is larger than 1 MB (1048576 bytes)", "VALIDATION_ERROR"),
    }
    assert "SECRETWORD" not in json.dumps(summary.to_dict())
    assert [e.content for e in entries(kb)] == ["Good memory about backups."]


# --- basic-memory ----------------------------------------------------------------------


def test_basic_memory_maps_frontmatter_observations_and_relations(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    folder = basic_memory_dir(tmp_path / "bm")
    summary = run(kb, "basic-memory", folder)
    assert (summary.items, summary.added, summary.failed, summary.skipped) == (3, 3, [], [])
    by_title = {e.title: e for e in entries(kb)}
    api = by_title["API Design Decisions"]
    assert api.entry_type.value == "decision"
    assert api.tags == ("api", "architecture")
    assert api.source == "memory://decisions/api-design"
    assert api.content == NOTES["decisions/api-design.md"].split("---\n", 2)[2].lstrip("\n")
    assert api.metadata["owner"] == "platform team"
    assert api.metadata["reviewed"] == "2025-11-02"
    assert api.metadata["observations"] == [
        {"category": "decision", "content": "Use REST over GraphQL for simplicity #api"},
        {
            "category": "risk",
            "content": "Rate limiting needed for public endpoints (from the audit)",
        },
    ]
    assert api.metadata["relations"] == [
        {"type": "implements", "target": "API Specification"},
        {"type": "depends_on", "target": "Authentication System"},
    ]
    assert api.metadata["imported"]["key"] == "basic-memory:decisions/api-design"
    assert api.metadata["imported"]["type"] == "decision"
    coffee = by_title["Coffee Brewing Methods"]
    assert coffee.tags == ("coffee", "brewing") and coffee.entry_type.value == "note"
    assert coffee.source == "memory://notes/coffee"
    plain = by_title["plain"]  # no frontmatter: the file name is the title
    assert plain.content.startswith("# A note without frontmatter")
    assert "internal" not in by_title  # hidden folders are not notes
    assert run(kb, "basic-memory", folder).added == 0  # a re-run adds nothing


def test_basic_memory_round_trip_through_markdown_and_jsonl(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    run(kb, "basic-memory", basic_memory_dir(tmp_path / "bm"))
    first = export_jsonl(kb, tmp_path / "j1")

    def record(action: str, ns: str | None, details: dict[str, Any]) -> None:
        kb.audit.record(action, namespace=ns, details=details)

    export_entries(kb, tmp_path / "md", fmt="markdown", protected=[], record=record)
    notes = sorted((tmp_path / "md").rglob("*.md"))
    assert len(notes) == 3
    back = run(kb, "basic-memory", tmp_path / "md", namespace="copy")
    assert (back.added, back.failed) == (3, [])
    second = export_jsonl(kb, tmp_path / "j2", namespace="copy")
    assert sorted(map(shared, second), key=lambda x: x["title"]) == sorted(
        map(shared, first), key=lambda x: x["title"]
    )


def test_malformed_frontmatter_names_the_file_and_imports_the_rest(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    folder = basic_memory_dir(
        tmp_path / "bm",
        {
            "good.md": "---\ntitle: Good\n---\nFine body.\n",
            "broken.md": "---\ntitle: [unclosed\ntags: SECRETWORD\n---\nBody SECRETWORD.\n",
            "open.md": "---\ntitle: never closed\nBody SECRETWORD.\n",
            "list.md": "---\n- a\n- b\n---\nBody SECRETWORD.\n",
        },
    )
    summary = run(kb, "basic-memory", folder)
    assert summary.added == 1
    failed = {p.label: (p.reason, p.code) for p in summary.failed}
    assert failed == {
        "broken.md": ("malformed frontmatter: not valid YAML at line 3", "VALIDATION_ERROR"),
        "open.md": ("malformed frontmatter: no closing '---'", "VALIDATION_ERROR"),
        "list.md": ("malformed frontmatter: not a mapping of fields", "VALIDATION_ERROR"),
    }
    assert "SECRETWORD" not in json.dumps(summary.to_dict())
    assert [e.title for e in entries(kb)] == ["Good"]


def test_a_symbolic_link_in_the_folder_is_not_followed(kb: KnowledgeBase, tmp_path: Path) -> None:
    outside = tmp_path / "private.md"
    outside.write_text("---\ntitle: private\n---\nnot for import\n")
    folder = basic_memory_dir(tmp_path / "bm", {"ok.md": "# ok\n\nbody\n"})
    (folder / "link.md").symlink_to(outside)
    (folder / "linked-dir").symlink_to(tmp_path, target_is_directory=True)
    summary = run(kb, "basic-memory", folder)
    assert summary.added == 1
    assert [(p.label, p.code) for p in summary.skipped] == [("link.md", "ACCESS_DENIED")]
    assert [e.title for e in entries(kb)] == ["ok"]


# --- jsonl -------------------------------------------------------------------------------


def test_jsonl_bad_lines_are_named_by_number(kb: KnowledgeBase, tmp_path: Path) -> None:
    f = tmp_path / "in.jsonl"
    f.write_text(
        "\n".join(
            [
                json.dumps({"content": "first good line", "tags": ["a"]}),
                "{not json SECRETWORD",
                json.dumps({"content": "SECRETWORD", "type": "essay"}),
                json.dumps({"content": "SECRETWORD", "colour": "red"}),
                json.dumps({"content": "second good line", "metadata": {"k": 1}}),
            ]
        )
    )
    summary = run(kb, "jsonl", f)
    assert summary.added == 2
    assert [(p.label, p.reason) for p in summary.failed] == [
        ("in.jsonl: line 2", "not valid JSON"),
        ("in.jsonl: line 3", "unknown entry type"),
        ("in.jsonl: line 4", "unknown field 'colour'"),
    ]
    assert "SECRETWORD" not in json.dumps(summary.to_dict())
    assert run(kb, "jsonl", f).added == 0


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_import_from_each_peer(cli: Cli, tmp_path: Path) -> None:
    db = mcp_memory_db(tmp_path / "sqlite_vec.db")
    got = json.loads(
        expect(cli("import", "--from", "mcp-memory-service", str(db), "--json"), 0).stdout
    )
    assert (got["added"], len(got["skipped"])) == (3, 2)
    text = expect(cli("import", "--from", "mcp-memory-service", str(db)), 0).output
    assert "5 items from mcp-memory-service: 0 added, 5 skipped, 0 failed" in text
    assert "PgBouncer" not in text  # no content echoed
    folder = basic_memory_dir(
        tmp_path / "bm", {**NOTES, "bad.md": "---\ntitle: [x\n---\nSECRETWORD\n"}
    )
    r = expect(cli("import", "--from", "basic-memory", str(folder), "-n", "bm"), 1)
    assert "3 added" in r.output
    assert (
        "failed: bad.md: malformed frontmatter: not valid YAML at line 2 [VALIDATION_ERROR]"
        in r.output
    )
    assert "SECRETWORD" not in r.output


def test_cli_import_bad_input_exit_codes(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "x.db"
    bad.write_bytes(b"\x00\x01 not sqlite")
    r = expect(cli("import", "--from", "mcp-memory-service", str(bad)), 2)
    assert "error[VALIDATION_ERROR] (path): x.db: not an SQLite database" in r.output
    r = expect(cli("import", "--from", "evernote", str(bad)), 2)
    assert "error[VALIDATION_ERROR] (from): unknown --from" in r.output
    r = expect(cli("import", "--from", "jsonl", str(bad), str(bad)), 2)
    assert "reads one path" in r.output
