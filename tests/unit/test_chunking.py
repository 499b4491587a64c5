"""Heading-aware chunks: each chunk's title carries the page and its section path (what
the embedded and keyword text see with the content); on request (off by default, as
measured) a long section's pieces overlap by the end of the piece before."""

from __future__ import annotations

import itertools

import pytest

from sealedkb.ingest.importer import (
    MAX_CHUNK_CHARS,
    OVERLAP_CHARS,
    TITLE_SEP,
    chunk_file,
    section_path,
)
from sealedkb.search.engine import embedding_text

MARKDOWN = """# Ops guide

Intro.

## Backups

How backups run.

### Restore

Restore from the newest snapshot.

#### Verify

Check the restored rows.

## Upgrades

Upgrade notes.
"""

HTML = """<html><head><title>t</title></head><body><div role="main">
<h1>Ops guide</h1><p>Intro.</p>
<h2 id="backups">Backups</h2><p>How backups run.</p>
<h3 id="restore">Restore</h3><p>Restore from the newest snapshot.</p>
<h4 id="verify">Verify</h4><p>Check the restored rows.</p>
<h2 id="upgrades">Upgrades</h2><p>Upgrade notes.</p>
</div></body></html>"""


def _titles(text: str, kind: str, **kw: bool) -> dict[str, str]:
    return {c.heading: c.title for c in chunk_file(text, kind, "f", "f", **kw)}  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "kind"), [(MARKDOWN, "markdown"), (HTML, "html")])
def test_titles_carry_the_section_path(text: str, kind: str) -> None:
    j = TITLE_SEP.join
    assert _titles(text, kind) == {
        "Ops guide": "Ops guide",
        "Backups": j(["Ops guide", "Backups"]),
        "Restore": j(["Ops guide", "Backups", "Restore"]),
        "Verify": j(["Ops guide", "Backups", "Restore", "Verify"]),
        "Upgrades": j(["Ops guide", "Upgrades"]),  # a heading closes the deeper ones
    }
    # without the path: the page and the section's own heading, as before
    assert _titles(text, kind, with_path=False)["Verify"] == j(["Ops guide", "Verify"])


def test_embedded_text_carries_the_path() -> None:
    c = next(c for c in chunk_file(MARKDOWN, "markdown", "f", "f") if c.heading == "Verify")
    text = embedding_text(c.title, c.content)
    for part in ("Ops guide", "Backups", "Restore", "Verify", "Check the restored rows."):
        assert part in text


def test_section_path_names_each_heading_once() -> None:
    assert section_path("Page", (), "Page") == ["Page"]
    assert section_path("Page", ("Page", "A"), "B") == ["Page", "A", "B"]
    assert section_path("Page", ("A",), "A") == ["Page", "A"]
    assert section_path("Page", (), "") == ["Page"]


def test_long_sections_overlap_by_whole_sentences() -> None:
    sentences = [f"Sentence {i} says something about tape rotation number {i}." for i in range(120)]
    body = " ".join(sentences)
    chunks = chunk_file(f"# Page\n\n## Long\n\n{body}\n", "markdown", "f", "f", overlap=200)
    assert len(chunks) >= 4
    assert all(len(c.content) <= MAX_CHUNK_CHARS for c in chunks)
    assert not chunks[0].content.startswith("…")
    for before, after in itertools.pairwise(chunks):
        assert after.content.startswith("… ")
        carried = after.content[2:].split("\n\n", 1)[0]
        assert 0 < len(carried) <= 200
        assert " ".join(before.content.split()).endswith(carried)  # the end of the one before
        assert carried[0].isupper() and carried.endswith(".")  # whole sentences
    # every sentence is in some chunk
    joined = " ".join(c.content for c in chunks)
    assert all(s in joined for s in sentences)
    # overlap off (the default, OVERLAP_CHARS): pieces as split before
    assert OVERLAP_CHARS == 0
    plain = chunk_file(f"# Page\n\n## Long\n\n{body}\n", "markdown", "f", "f")
    assert not any(c.content.startswith("…") for c in plain)
    assert all(len(c.content) <= MAX_CHUNK_CHARS for c in plain)


def test_short_sections_are_not_padded() -> None:
    assert [c.content for c in chunk_file("# P\n\nOne line.\n", "markdown", "f", "f")] == [
        "One line."
    ]
