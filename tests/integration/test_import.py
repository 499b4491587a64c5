"""Import of a generated folder: nested Markdown, HTML, text, a binary file, a file
that is not UTF-8 and unreadable ones; re-import; replacement; atomicity; CLI."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from tests.cli_helpers import make_cli

from sealedkb.config import Settings
from sealedkb.errors import DatabaseError, NotFoundError, ValidationError
from sealedkb.ingest.importer import MAX_CHUNK_CHARS, parse_html, parse_markdown, split_long
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode
from sealedkb.store.search import SearchTable

GUIDE = """# Install guide

Intro paragraph about the guide.

## Requirements

You need Python 3.11 and PostgreSQL.

```
# not a heading: inside a fence
pip install sealedkb
```

## Upgrade steps

Run the migration, then restart.
"""

PAGE = """<!DOCTYPE html><html><head><title>Ops page</title>
<script>var secretScript = 1;</script><style>.x{}</style></head>
<body><nav>NAVIGATION LINKS</nav>
<div class="body" role="main">
<section id="ops-handbook"><h1>Ops handbook<a class="headerlink" href="#x">¶</a></h1>
<p>Welcome &amp; hello.</p>
<section id="backups"><h2>Backups</h2><p>Take a snapshot <b>daily</b>.</p>
<pre>sealedkb snapshot create
  --verify</pre></section>
<section id="long-section"><h2>Long section</h2>LONGBODY</section>
</section></div>
<footer>FOOTER TEXT</footer></body></html>
"""


def make_tree(root: Path) -> Path:
    docs = root / "docs"
    (docs / "sub" / "deeper").mkdir(parents=True)
    (docs / "guide.md").write_text(GUIDE)
    long_body = "".join(
        f"<p>Paragraph {i} about tape rotation and offsite copies.</p>" for i in range(80)
    )
    (docs / "sub" / "ops.html").write_text(PAGE.replace("LONGBODY", long_body))
    (docs / "sub" / "deeper" / "notes.txt").write_text("Plain notes about the on-call rota.\n")
    (docs / "sub" / "blob.md").write_bytes(b"# looks like markdown\x00\x01\x02binary")
    (docs / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (docs / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (docs / "dangling.md").symlink_to(root / "missing-target.md")
    (docs / ".hidden.md").write_text("# hidden\n\nnot imported")
    return docs


def count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM kb_entries WHERE deleted_at IS NULL").fetchone()
    assert row is not None
    return int(row[0])


def test_parsers() -> None:
    title, sections = parse_markdown(GUIDE)
    assert title == "Install guide"
    assert [(s.heading, s.anchor) for s in sections if s.body] == [
        ("Install guide", "install-guide"),
        ("Requirements", "requirements"),
        ("Upgrade steps", "upgrade-steps"),
    ]
    assert "# not a heading" in sections[2].body
    title, sections = parse_html(PAGE.replace("LONGBODY", "x"))
    assert title == "Ops handbook"
    text = " ".join(s.body for s in sections)
    for gone in ("NAVIGATION", "FOOTER", "secretScript", "¶"):
        assert gone not in text
    backups = next(s for s in sections if s.heading == "Backups")
    assert backups.anchor == "backups" and "Take a snapshot daily." in backups.body
    assert "snapshot create\n  --verify" in backups.body  # <pre> keeps its layout
    assert next(s for s in sections if s.heading == "Ops handbook").body == "Welcome & hello."
    pieces = split_long("word " * 1000)
    assert all(len(p) <= MAX_CHUNK_CHARS for p in pieces) and len(pieces) >= 3


def test_import_folder(any_kb: KnowledgeBase, tmp_path: Path) -> None:
    docs = make_tree(tmp_path)
    unreadable = None
    if os.geteuid() != 0:  # root reads anything; the dangling link covers that case
        unreadable = docs / "secret.md"
        unreadable.write_text("# x\n\ny")
        unreadable.chmod(0)
    s = any_kb.import_paths([str(docs)], tags=["handbook"], namespace="docs")
    failed = {Path(o.path).name: o.reason for o in s.failed}
    assert "binary" in failed.pop("blob.md")
    assert "UTF-8" in failed.pop("latin1.txt")
    assert "dangling" in failed.pop("dangling.md")
    if unreadable is not None:
        assert "permission denied" in failed.pop("secret.md")
    assert failed == {}
    assert [(Path(o.path).name, o.reason) for o in s.skipped] == [
        ("logo.png", "unsupported file type '.png' (Markdown, text and HTML are imported)")
    ]
    assert s.imported == 3 and s.unchanged == 0
    entries = any_kb.list(namespace="docs", limit=100)
    assert len(entries) == s.chunks_added
    by_title = {e.title: e for e in entries}
    req = by_title["Install guide › Requirements"]
    assert req.source == f"{docs}/guide.md#requirements"
    assert req.entry_type.value == "doc" and req.tags == ("handbook",)
    assert req.metadata["import"]["heading"] == "Requirements"
    assert by_title["Ops handbook › Backups"].source.endswith("sub/ops.html#backups")  # type: ignore[union-attr]
    longs = [e for e in entries if e.title.startswith("Ops handbook › Long section")]
    assert len(longs) >= 3 and all(len(e.content) <= MAX_CHUNK_CHARS for e in longs)
    assert "notes" in by_title  # a text file: one chunk titled by its name
    hits = any_kb.search("offsite tape rotation", namespace="docs").hits
    assert hits[0].title.startswith("Ops handbook › Long section")
    assert hits[0].source.endswith("#long-section")  # type: ignore[union-attr]

    # re-import: unchanged files add nothing
    n = count(any_kb.db.url)
    again = any_kb.import_paths([str(docs)], tags=["handbook"], namespace="docs")
    assert again.imported == 0 and again.unchanged == 3 and again.chunks_added == 0
    assert count(any_kb.db.url) == n

    # a changed file replaces its chunks (and only its chunks)
    old_ids = [e.id for e in entries if e.source and "guide.md" in e.source]
    (docs / "guide.md").write_text("# Install guide\n\n## Requirements\n\nNow needs Rust.\n")
    changed = any_kb.import_paths([str(docs / "guide.md")], namespace="docs")
    assert changed.imported == 1 and changed.chunks_added == 1
    assert changed.chunks_removed == len(old_ids) == 3
    for eid in old_ids:
        with pytest.raises(NotFoundError):
            any_kb.get(eid)
    assert count(any_kb.db.url) == n - 3 + 1
    assert [h.title for h in any_kb.search("Rust", namespace="docs", mode="keyword").hits] == [
        "Install guide › Requirements"
    ]


def test_a_failing_file_leaves_nothing_behind(
    any_kb: KnowledgeBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = make_tree(tmp_path)
    first = any_kb.import_paths([str(docs / "guide.md")])
    assert first.chunks_added == 3
    before = count(any_kb.db.url)
    (docs / "guide.md").write_text(GUIDE + "\n## New section\n\nMore.\n")
    real_statement = SearchTable._insert_statement
    calls = {"n": 0}

    def flaky(row, cols, dedup):  # type: ignore[no-untyped-def]
        # The third chunk's INSERT fails in PostgreSQL, after two were sent down the
        # pipeline: the server's error must roll the whole file back.
        calls["n"] += 1
        stmt, values = real_statement(row, cols, dedup)
        if calls["n"] == 3:
            stmt = "SELECT 1 / (%s::int - %s::int)"
            values = [1, 1]
        return stmt, values

    monkeypatch.setattr(SearchTable, "_insert_statement", staticmethod(flaky))
    with pytest.raises(DatabaseError):
        any_kb.import_paths([str(docs / "guide.md")])
    # the old chunks are still there, none of the new ones
    assert count(any_kb.db.url) == before
    titles = {e.title for e in any_kb.list(limit=100)}
    assert "Install guide › New section" not in titles
    monkeypatch.setattr(SearchTable, "_insert_statement", staticmethod(real_statement))
    assert any_kb.import_paths([str(docs / "guide.md")]).chunks_added == 4
    assert count(any_kb.db.url) == before + 1


def test_identical_chunks_in_two_files_are_both_kept(any_kb: KnowledgeBase, tmp_path: Path) -> None:
    for name in ("a.md", "b.md"):
        (tmp_path / name).write_text("# Licence\n\nSame boilerplate text.\n")
    s = any_kb.import_paths([str(tmp_path / "a.md"), str(tmp_path / "b.md")])
    assert s.imported == 2 and s.chunks_added == 2
    assert len(any_kb.list(limit=10)) == 2


def test_bad_arguments_write_nothing(any_kb: KnowledgeBase, tmp_path: Path) -> None:
    docs = make_tree(tmp_path)
    n = count(any_kb.db.url)
    for kwargs in ({"namespace": "Bad NS"}, {"entry_type": "poem"}, {"tags": ["a,b"]}):
        with pytest.raises(ValidationError):
            any_kb.import_paths([str(docs)], **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        any_kb.import_paths([str(docs), str(tmp_path / "nope")])
    assert count(any_kb.db.url) == n


def test_cli_import_and_search(
    make_settings: Callable[..., Settings], home: Path, database_url: str, tmp_path: Path
) -> None:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON)
    kb.add("[bold red]not markup[/] about ferries", title="[link=x]Title[/link] ferries")
    kb.close()
    docs = make_tree(tmp_path)
    cli = make_cli(home, database_url, env={"SEALEDKB_EMBEDDER": "hash"})

    r = cli("import", str(docs), "--tag", "ops")
    assert r.exit_code == 1, r.output  # some files failed
    assert "3 imported" in r.output and "failed" in r.output and "blob.md" in r.output
    r = cli("import", str(docs), "--json")
    data = json.loads(r.stdout)
    assert data["unchanged"] == 3 and data["chunks_added"] == 0 and len(data["failed"]) == 3
    r = cli("import", str(tmp_path / "missing"))
    assert r.exit_code == 2
    r = cli("search", "ferries")
    assert r.exit_code == 0 and "[link=x]Title[/link] ferries" in r.output  # printed as text
    assert "[bold red]not markup[/]" in r.output
    r = cli("search", "snapshot daily", "--json", "--limit", "2", "--tag", "ops", "--type", "doc")
    data = json.loads(r.stdout)
    assert data["mode"] == "hybrid" and len(data["hits"]) == 2
    assert set(data["hits"][0]) >= {
        "id",
        "title",
        "score",
        "snippet",
        "entry_type",
        "tags",
        "source",
    }
    assert data["hits"][0]["tags"] == ["ops"]
    for bad in (
        ["--limit", "0"],
        ["--mode", "fuzzy"],
        ["--since", "yesterday"],
        ["--offset", "500"],
    ):
        assert cli("search", "x", *bad).exit_code == 2, bad
    r = cli("reembed", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["reembedded"] == 0
    r = cli("add", "[bold red]not markup[/] about ferries")
    assert r.exit_code == 0
    assert cli("add", "[bold red]not markup[/] about ferries", "--force").stdout != r.stdout
