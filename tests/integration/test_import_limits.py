"""Per-file limits of import: a file too large or taking too long to parse is refused
with VALIDATION_ERROR and a reason, the other files are imported, and nothing of the
refused file is written (an earlier import of it keeps its chunks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sealedkb.ingest import importer
from sealedkb.kb.knowledge_base import KnowledgeBase


def titles(kb: KnowledgeBase) -> set[str]:
    return {e.title for e in kb.list(limit=100)}


def test_a_file_too_large_is_refused(
    kb: KnowledgeBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "small.md").write_text("# Small\n\nfits\n")
    (docs / "big.md").write_text("# Big\n\n" + "word " * 100)
    monkeypatch.setattr(importer, "MAX_FILE_BYTES", 200)
    s = kb.import_paths([str(docs)])
    assert s.imported == 1 and titles(kb) == {"Small"}
    (bad,) = s.to_dict()["failed"]
    assert bad["path"].endswith("big.md") and bad["code"] == "VALIDATION_ERROR"
    assert bad["reason"].startswith("file too large")


def test_a_file_over_its_parse_deadline_is_refused_and_nothing_replaced(
    kb: KnowledgeBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = tmp_path / "guide.md"
    doc.write_text("# Guide\n\n## One\n\nfirst\n")
    assert kb.import_paths([str(doc)]).chunks_added == 1
    before = titles(kb)
    doc.write_text("# Guide\n\n## One\n\nchanged\n\n## Two\n\nsecond\n")
    monkeypatch.setattr(importer, "MAX_PARSE_SECONDS", 0.0)
    s = kb.import_paths([str(doc)])
    assert s.imported == 0
    (bad,) = s.to_dict()["failed"]
    assert bad["code"] == "VALIDATION_ERROR" and "took too long" in bad["reason"]
    assert titles(kb) == before  # the earlier chunks stay, none of the new ones
    monkeypatch.setattr(importer, "MAX_PARSE_SECONDS", 30.0)
    assert kb.import_paths([str(doc)]).chunks_added == 2


def test_every_refused_file_has_a_code(kb: KnowledgeBase, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "logo.png").write_bytes(b"\x89PNG")
    (docs / "blob.md").write_bytes(b"# x\x00")
    (docs / "gone.md").symlink_to(docs / "missing.md")
    s = kb.import_paths([str(docs)]).to_dict()
    codes = {o["path"].rsplit("/", 1)[-1]: o["code"] for o in s["failed"] + s["skipped"]}
    assert codes == {
        "logo.png": "VALIDATION_ERROR",
        "blob.md": "VALIDATION_ERROR",
        "gone.md": "NOT_FOUND",
    }
