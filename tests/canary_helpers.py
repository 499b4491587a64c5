"""The canary: entries holding a unique marker go through every path that stores
text (add, update, delete, keyword index, tags, the embedder, import, search); after
CHECKPOINT the marker is looked for everywhere under the PostgreSQL data directory
(tables, WAL, everything), in a pg_dump of the database, and in the home folder.

:func:`run_canary` is the whole run on the real product path (no database URL, so
``KnowledgeBase.init`` starts an embedded server in ``<home>/pgdata``); the canary
test (tests/integration/test_canary.py) runs it for the local provider and the
plaintext control, the provider tests (tests/providers/test_provider_e2e.py) for
every external key provider. ``embedded_home`` is the fixture both use (import it).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sealedkb.config import load_settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.wiring import EMBEDDED_DBNAME
from sealedkb.model import EncryptionMode, EntryPatch
from sealedkb.search.text import stem
from sealedkb.store.embedded import EmbeddedPostgres, pg_bin

ENTRIES = 20


@pytest.fixture
def embedded_home() -> Iterator[Path]:
    """A home of its own; whatever server starts in it is stopped afterwards.

    Not under pytest's basetemp: as root, another pytest session starting meanwhile
    resets /tmp/pytest-of-root to 0700 and cuts the server user off (PANIC on
    pg_control), as conftest.py notes for the shared server.
    """
    base = Path(tempfile.mkdtemp(prefix="sealedkb-canary-"))
    home = base / "home"
    try:
        yield home
    finally:
        EmbeddedPostgres(home / "pgdata").stop()
        shutil.rmtree(base, ignore_errors=True)


def needles(marker: str) -> list[bytes]:
    # the stem is what a keyword index would store
    forms = {marker, marker.lower(), marker.upper(), marker.casefold(), stem(marker.casefold())}
    return sorted(f.encode() for f in forms)


def files_containing(root: Path, patterns: list[bytes]) -> dict[str, list[str]]:
    """Every regular file under ``root`` holding any pattern (read in full, as root can)."""
    hits: dict[str, list[str]] = {}
    scanned = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            try:
                st = path.lstat()
                if not stat.S_ISREG(st.st_mode):
                    continue
                data = path.read_bytes()
            except FileNotFoundError:  # a temp file went away meanwhile
                continue
            scanned += 1
            found = [p.decode() for p in patterns if p in data]
            if found:
                hits[str(path.relative_to(root))] = found
    assert scanned > 100, f"scanned only {scanned} files under {root}: not a data directory?"
    return hits


def add_marked_entries(kb: KnowledgeBase, marker: str) -> None:
    ids = []
    for i in range(ENTRIES):
        e = kb.add(
            f"Entry {i} body mentions {marker} in passing.\n\nMore text {i}.",
            title=f"{marker} title {i}",
            entry_type="note" if i % 2 else "decision",
            tags=[f"{marker}-tag", f"t{i}"],
            source=f"https://wiki.test/{marker}/{i}",
            metadata={"marker": marker, f"key-{marker}": [i, marker]},
            namespace="default" if i % 3 else "canary-ns",
        )
        ids.append(e.id)
    # updates leave old row versions behind in the heap and the WAL
    kb.update(ids[0], EntryPatch(content=f"rewritten around {marker}", title=f"new {marker}"))
    kb.update(ids[1], EntryPatch(tags=(f"Updated-{marker}",), metadata={"m": marker}))
    kb.delete(ids[2])
    assert len(kb.list(limit=100)) == ENTRIES - 1


def search_and_import_marker(kb: KnowledgeBase, marker: str, folder: Path) -> None:
    """The marker goes through the keyword index, tag tokens, the embedder and import."""
    assert kb.embedder is not None and kb.embedder.model_id.startswith("all-MiniLM")
    for mode in ("keyword", "hybrid", "semantic"):
        hits = kb.search(f"{marker} passing", mode=mode, limit=20).hits
        assert hits and all(marker in h.title for h in hits[:5]), mode
    tagged = kb.search("entry", tags=[f"{marker}-tag"], mode="keyword", limit=50).hits
    assert len(tagged) == 11  # 13 in "default", less #1 (re-tagged) and #2 (deleted)
    folder.mkdir()
    (folder / f"{marker}.md").write_text(
        f"# Imported {marker}\n\n## Section {marker}\n\nThe {marker} appears in a file.\n"
    )
    summary = kb.import_paths([str(folder)], tags=[f"{marker}-import"])
    assert summary.imported == 1 and summary.chunks_added == 1
    (hit,) = kb.search(marker, tags=[f"{marker}-import"], mode="keyword").hits
    assert hit.source is not None and marker in hit.source


def checkpoint(uri: str) -> None:
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        conn.execute("SELECT pg_switch_wal()")  # the current segment is on disk either way
        conn.execute("CHECKPOINT")


def pg_dump(uri: str) -> bytes:
    out = subprocess.run(
        [str(pg_bin("pg_dump")), "--no-password", uri],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    assert b"kb_entries" in out.stdout
    return out.stdout


@dataclass(frozen=True)
class CanaryResult:
    """Where the marker was found (empty everywhere for an encrypted knowledge base)."""

    marker: str
    kms_key_uri: str | None
    disk_hits: dict[str, list[str]]  # data directory file -> forms found
    dump_hits: list[str]  # forms found in pg_dump
    home_hits: dict[str, list[str]]  # the whole home folder (keystore, sockets, logs)
    dump: bytes


def run_canary(
    home: Path, mode: EncryptionMode, search_index: str = "server", **settings: Any
) -> CanaryResult:
    """Init a knowledge base in ``home`` (embedded PostgreSQL; ``settings`` as
    overrides, e.g. a key provider's), put the marker through every path, close it,
    CHECKPOINT and look for the marker on disk, in a dump and in the home folder."""
    marker = "CanaryMark" + uuid.uuid4().hex[:12].upper()
    kb, created = KnowledgeBase.init(
        load_settings(home, **settings), mode, search_index=search_index
    )
    try:
        assert created and kb.search_index == search_index
        assert kb.target.kind == "embedded"
        assert kb.target.transport.kind == "unix-socket"
        key_uri = kb.kms_key_uri
        add_marked_entries(kb, marker)
        search_and_import_marker(kb, marker, home.parent / "import-src")
        # the entries still read back whole
        e = kb.list(namespace="canary-ns", limit=100)[-1]
        assert marker in e.content and marker in e.title and e.metadata["marker"] == marker
    finally:
        kb.close()

    server = EmbeddedPostgres(home / "pgdata")
    assert server.is_running()
    uri = server.uri(EMBEDDED_DBNAME)
    checkpoint(uri)
    patterns = needles(marker)
    dump = pg_dump(uri)
    return CanaryResult(
        marker=marker,
        kms_key_uri=key_uri,
        disk_hits=files_containing(server.pgdata, patterns),
        dump_hits=[p.decode() for p in patterns if p in dump],
        home_hits=files_containing(home, patterns),
        dump=dump,
    )
