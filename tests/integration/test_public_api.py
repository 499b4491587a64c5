"""The public Python API: everything a program needs comes from ``sealedkb`` alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sealedkb
from sealedkb import (
    Entry,
    EntryPatch,
    EntryType,
    KnowledgeBase,
    NotFoundError,
    SearchMode,
    SearchResult,
    Settings,
)


def test_open_add_search_close_through_the_public_api(home: Path, database_url: str) -> None:
    settings = Settings(home=home, database_url=database_url, embedder="hash")
    kb, created = KnowledgeBase.init(settings)
    assert created
    kb.close()
    with KnowledgeBase.open(settings) as kb:
        added = kb.add("Use pgbouncer in session mode", entry_type=EntryType.DECISION, tags=["db"])
        assert isinstance(added, Entry)
        result = kb.search("pgbouncer session", mode=SearchMode.KEYWORD, limit=5)
        assert isinstance(result, SearchResult)
        assert [h.id for h in result.hits] == [added.id]
        changed = kb.update(added.id, EntryPatch(title="Pooling"), expected_version=added.version)
        assert changed.title == "Pooling"
        kb.delete(added.id)
        try:
            kb.get(added.id)
        except NotFoundError as exc:
            assert exc.code == "NOT_FOUND"
        else:
            raise AssertionError("a deleted entry was found")


def test_every_public_name_resolves() -> None:
    for name in sealedkb.__all__:
        assert getattr(sealedkb, name) is not None
    assert sealedkb.errors.SealedKBError is sealedkb.SealedKBError


def test_import_sealedkb_is_light() -> None:
    code = (
        "import sys, sealedkb; "
        "heavy = {'numpy', 'onnxruntime', 'mcp', 'psycopg'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
