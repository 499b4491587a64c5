"""Attacks on import through symbolic links: whoever can write into an imported
folder (an agent's upload area under SEALEDKB_IMPORT_ROOT, a shared docs checkout)
plants a link to a server file outside it (a key file) and gets it read into the
knowledge base, where any reader of the namespace can search it; or swaps a link in
between the check and the open. Neither is read, and answers name no server path."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from mcp import Client
from tests.mcp_helpers import error_of

from sealedkb.adapters.mcp.server import build_server
from sealedkb.kb.access import Principal, Role
from sealedkb.kb.knowledge_base import KnowledgeBase

SECRET = "ROOTKEYMATERIAL0123456789abcdef"


def fake_key(tmp_path: Path) -> Path:
    keys = tmp_path / "server" / "keys"
    keys.mkdir(parents=True)
    key = keys / "root.key"
    key.write_text(f"# Root key\n\n{SECRET}\n")
    return key


def texts(kb: KnowledgeBase) -> str:
    return json.dumps(
        [[e.title, e.content, e.source] for e in kb.list(limit=100)], ensure_ascii=False
    )


def test_cli_import_skips_a_link_out_of_the_folder(kb: KnowledgeBase, tmp_path: Path) -> None:
    key = fake_key(tmp_path)
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "guide.md").write_text("# Guide\n\nHow to rotate keys.\n")
    (docs / "notes.md").symlink_to(key)
    (docs / "sub" / "root.md").symlink_to(os.path.relpath(key, docs / "sub"))
    (docs / "alias.md").symlink_to("guide.md")  # a link inside the folder is fine
    s = kb.import_paths([str(docs)])
    assert SECRET not in texts(kb)
    skipped = {o.path: o.reason for o in s.skipped}
    assert skipped == {
        "docs/notes.md": "symbolic link to a file outside the imported folder",
        "docs/sub/root.md": "symbolic link to a file outside the imported folder",
    }
    assert s.imported == 2 and not s.failed
    assert str(tmp_path) not in json.dumps(s.to_dict())  # relative to the named folder


def test_mcp_import_skips_a_link_out_of_the_import_root(kb: KnowledgeBase, tmp_path: Path) -> None:
    key = fake_key(tmp_path)
    root = tmp_path / "imports"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "guide.md").write_text("# Guide\n\nHow to rotate keys.\n")
    (root / "docs" / "root.md").symlink_to(key)
    (root / "top.md").symlink_to(key)
    kb.settings = kb.settings.model_copy(update={"import_root": root})
    writer = Principal("a", Role.WRITER, frozenset({"default"}))

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        async with Client(build_server(kb, principal=lambda: writer)) as c:
            folder = await c.call_tool("kb_import", {"paths": ["docs"]})
            named = await c.call_tool("kb_import", {"paths": ["top.md"]})
            assert not folder.is_error, folder
            return folder.structured_content, error_of(named)

    folder, named = asyncio.run(go())
    assert SECRET not in texts(kb)
    assert folder["skipped"] == [
        {
            "path": "docs/root.md",
            "reason": "symbolic link to a file outside the import root",
            "code": "ACCESS_DENIED",
        }
    ]
    assert folder["imported"] == 1
    assert named["code"] == "ACCESS_DENIED"  # a named link out of the root
    answers = json.dumps([folder, named])
    assert str(tmp_path) not in answers  # no server paths in the answers
    assert all(not (e.source or "").startswith("/") for e in kb.list(limit=100))


def test_a_link_swapped_in_after_the_check_is_not_followed(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    """a.md is imported first; then, after b.md was listed and checked as a regular
    file inside the folder, it is replaced by a link to the key file."""
    key = fake_key(tmp_path)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nfirst file\n")
    (docs / "b.md").write_text("# B\n\nharmless when checked\n")

    def swap(path: str, done: int, total: int) -> None:
        if path.endswith("a.md"):
            (docs / "b.md").unlink()
            (docs / "b.md").symlink_to(key)

    s = kb.import_paths([str(docs)], progress=swap)
    assert SECRET not in texts(kb)
    assert s.imported == 1
    (bad,) = s.failed
    assert bad.path == "docs/b.md"
    assert bad.reason is not None and "symbolic link" in bad.reason


def test_another_file_swapped_in_after_the_check_is_refused(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    """A different regular file renamed over the checked one (or a folder on the path
    swapped for a link) is another inode than the one checked: refused."""
    key = fake_key(tmp_path)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nfirst file\n")
    (docs / "b.md").write_text("# B\n\nharmless when checked\n")

    def swap(path: str, done: int, total: int) -> None:
        if path.endswith("a.md"):
            os.replace(key, docs / "b.md")

    s = kb.import_paths([str(docs)], progress=swap)
    assert SECRET not in texts(kb)
    (bad,) = s.failed
    assert bad.reason == "not read: the file was replaced after it was checked"


def test_a_folder_swapped_for_a_link_after_the_check_is_not_followed(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    """The folder holding a checked file is replaced by a link to a server folder with
    a file of the same name: the open walks down from the imported folder without
    following links, so it is refused."""
    fake_key(tmp_path)
    outside = tmp_path / "server" / "keys"
    (outside / "b.md").write_text(f"# Key\n\n{SECRET}\n")
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# A\n\nfirst file\n")
    (docs / "sub" / "b.md").write_text("# B\n\nharmless when checked\n")

    def swap(path: str, done: int, total: int) -> None:
        if path.endswith("a.md"):
            (docs / "sub").rename(tmp_path / "sub-moved")
            (docs / "sub").symlink_to(outside, target_is_directory=True)

    s = kb.import_paths([str(docs)], progress=swap)
    assert SECRET not in texts(kb)
    (bad,) = s.failed
    assert bad.path == "docs/sub/b.md" and bad.code == "ACCESS_DENIED"
