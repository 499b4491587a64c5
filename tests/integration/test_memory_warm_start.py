"""The sealed warm-start image of the memory search index (search/warm_start.py): a
process that built a namespace's index writes it sealed in the home; the next one
loads it, applies the change feed from the image's position and answers as a
rebuild would. An image that was damaged, moved from another namespace or knowledge
base, or sealed under a retired key is refused and the index rebuilt; nothing of the
index is on disk in plaintext.

Each KnowledgeBase opened on the same settings has its own memory index, as a
separate process would; one test runs real CLI processes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode, EntryPatch
from sealedkb.search import warm_start
from sealedkb.search.memory import MemoryIndex
from sealedkb.store.embedded import EmbeddedPostgres


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def writer(settings: Settings) -> Iterator[KnowledgeBase]:
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON, search_index="memory")
    yield kb
    kb.close()


@pytest.fixture
def reopen(settings: Settings) -> Iterator[Callable[[], KnowledgeBase]]:
    """Open the knowledge base again, as another process would (closed at the end)."""
    opened: list[KnowledgeBase] = []

    def make() -> KnowledgeBase:
        kb = KnowledgeBase.open(settings)
        opened.append(kb)
        return kb

    yield make
    for kb in opened:
        kb.close()


def index_of(kb: KnowledgeBase) -> MemoryIndex:
    assert kb.memory_index is not None and kb.memory_index.warm is not None
    return kb.memory_index


def image_path(kb: KnowledgeBase, namespace: str = "default") -> Path:
    warm = index_of(kb).warm
    assert warm is not None
    return warm.path(namespace)


def fill(kb: KnowledgeBase, marker: str, n: int = 6, namespace: str = "default") -> list[uuid.UUID]:
    return [
        kb.add(
            f"{marker} body {i}: rotating keys and vacuum tuning {i}",
            title=f"{marker} title {i}",
            tags=[f"{marker}-tag", f"t{i % 2}"],
            entry_type="runbook" if i % 2 else "note",
            namespace=namespace,
        ).id
        for i in range(n)
    ]


def found(kb: KnowledgeBase, query: str, namespace: str = "default") -> list[uuid.UUID]:
    return [h.id for h in kb.search(query, mode="keyword", limit=50, namespace=namespace).hits]


def built_image(writer: KnowledgeBase, marker: str) -> tuple[list[uuid.UUID], Path]:
    ids = fill(writer, marker)
    assert set(found(writer, marker)) == set(ids)
    assert index_of(writer).builds == 1
    index_of(writer).save("default")  # as serve does when it closes
    return ids, image_path(writer)


def test_image_written_sealed_and_used_by_the_next_process(
    writer: KnowledgeBase, reopen: Callable[[], KnowledgeBase]
) -> None:
    marker = "Wsa" + uuid.uuid4().hex[:8]
    ids, path = built_image(writer, marker)
    assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes().startswith(warm_start.MAGIC)

    other = reopen()
    for mode in ("keyword", "semantic", "hybrid"):
        a = writer.search(f"{marker} rotating", mode=mode, limit=10)
        b = other.search(f"{marker} rotating", mode=mode, limit=10)
        assert [(h.id, round(h.score, 6)) for h in a.hits] == [
            (h.id, round(h.score, 6)) for h in b.hits
        ], mode
    idx = index_of(other)
    assert (idx.builds, idx.warm_loads, idx.warm.refused if idx.warm else -1) == (0, 1, 0)
    # the filters and tag answers of the loaded index
    assert set(found(other, marker)) == set(ids)
    t1 = other.search(marker, mode="keyword", tags=["t1"], limit=50).hits
    assert {h.id for h in t1} == {ids[1], ids[3], ids[5]}
    typed = other.search(marker, mode="keyword", entry_type="note", limit=50).hits
    assert {h.id for h in typed} == {ids[0], ids[2], ids[4]}
    assert dict(idx.tag_counts("default", 10))[f"{marker.lower()}-tag"] == 6
    # dedup answered by the loaded index
    assert other.add(f"{marker} body 2: rotating keys and vacuum tuning 2").id == ids[2]


def test_changes_after_the_image_are_applied(
    writer: KnowledgeBase, reopen: Callable[[], KnowledgeBase]
) -> None:
    marker = "Wch" + uuid.uuid4().hex[:8]
    ids, path = built_image(writer, marker)
    before = path.stat()
    # written by another process after the image
    late = writer.add(f"{marker} latecomer about pgvector", title="late").id
    writer.update(
        ids[0], EntryPatch(title="renamed", content="entirely different words now", tags=("x",))
    )
    writer.delete(ids[1])
    writer.update(ids[2], EntryPatch(archived=True))

    other = reopen()
    hits = found(other, marker)
    assert late in hits
    assert ids[1] not in hits  # deleted after the image: never returned
    assert ids[0] not in hits and found(other, "entirely different") == [ids[0]]
    assert ids[2] in hits  # archived, still searchable
    assert index_of(other).builds == 0 and index_of(other).warm_loads == 1
    # a few changes do not rewrite the image
    assert path.stat().st_ino == before.st_ino and path.stat().st_mtime_ns == before.st_mtime_ns
    # and a third process sees the same
    third = reopen()
    assert set(found(third, marker)) == set(hits)


def test_an_older_image_replays_to_the_same_answers(
    writer: KnowledgeBase, reopen: Callable[[], KnowledgeBase], tmp_path: Path
) -> None:
    """An attacker who puts back an earlier image of the same namespace gains nothing:
    the change feed from its position brings it up to date."""
    marker = "Wold" + uuid.uuid4().hex[:8]
    ids, path = built_image(writer, marker)
    saved = tmp_path / "old.img"
    saved.write_bytes(path.read_bytes())
    writer.delete(ids[3])
    new = writer.add(f"{marker} newer entry").id
    index_of(writer)._save("default")  # a newer image
    path.write_bytes(saved.read_bytes())  # rolled back
    other = reopen()
    hits = found(other, marker)
    assert new in hits and ids[3] not in hits
    assert index_of(other).warm_loads == 1


def test_flipped_byte_is_refused_and_rebuilt(
    writer: KnowledgeBase, reopen: Callable[[], KnowledgeBase]
) -> None:
    marker = "Wfl" + uuid.uuid4().hex[:8]
    ids, path = built_image(writer, marker)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the sealed payload
    path.write_bytes(bytes(data))
    other = reopen()
    assert set(found(other, marker)) == set(ids)
    idx = index_of(other)
    assert idx.warm is not None and idx.warm.refused == 1
    assert (idx.builds, idx.warm_loads) == (1, 0)
    assert other.keyring is not None and other.keyring.open_failures >= 1  # counted
    # the rebuild wrote a good image again
    third = reopen()
    assert set(found(third, marker)) == set(ids) and index_of(third).warm_loads == 1


@pytest.mark.parametrize("field", ["horizon", "epoch", "key_id", "v"])
def test_edited_clear_header_is_refused(
    writer: KnowledgeBase, reopen: Callable[[], KnowledgeBase], field: str
) -> None:
    marker = "Wh" + uuid.uuid4().hex[:8]
    ids, path = built_image(writer, marker)
    data = path.read_bytes()
    start = len(warm_start.MAGIC) + 4
    n = int.from_bytes(data[len(warm_start.MAGIC) : start], "little")
    header = json.loads(data[start : start + n])
    header[field] = {
        "horizon": max(int(header["horizon"]) - 1, 0),  # replay less than was missed
        "epoch": "1.2.3",
        "key_id": str(uuid.uuid4()),
        "v": 2,
    }[field]
    head = json.dumps(header).encode()
    path.write_bytes(warm_start.MAGIC + len(head).to_bytes(4, "little") + head + data[start + n :])
    other = reopen()
    assert set(found(other, marker)) == set(ids)
    idx = index_of(other)
    assert idx.warm is not None and idx.warm.refused == 1 and idx.builds == 1


def test_image_of_another_namespace_is_refused(
    writer: KnowledgeBase, reopen: Callable[[], KnowledgeBase]
) -> None:
    marker = "Wns" + uuid.uuid4().hex[:8]
    mine = fill(writer, marker, namespace="mine")
    theirs = fill(writer, marker, n=3, namespace="theirs")
    assert set(found(writer, marker, "mine")) == set(mine)
    assert set(found(writer, marker, "theirs")) == set(theirs)
    index_of(writer).save()
    # the attacker swaps the files of the two namespaces
    a, b = image_path(writer, "mine"), image_path(writer, "theirs")
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    other = reopen()
    assert set(found(other, marker, "mine")) == set(mine)
    assert set(found(other, marker, "theirs")) == set(theirs)
    idx = index_of(other)
    assert idx.warm is not None and idx.warm.refused == 2 and idx.builds == 2


@pytest.fixture
def other_database(pg_server: EmbeddedPostgres, template_db: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db} STRATEGY file_copy")
    yield pg_server.uri(name)
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_image_of_another_knowledge_base_is_refused(
    writer: KnowledgeBase,
    reopen: Callable[[], KnowledgeBase],
    make_settings: Callable[..., Settings],
    other_database: str,
    tmp_path: Path,
) -> None:
    marker = "Wkb" + uuid.uuid4().hex[:8]
    ids, path = built_image(writer, marker)
    from sealedkb.config import load_settings

    stranger_settings = load_settings(
        tmp_path / "home2", database_url=other_database, embedder="hash"
    )
    stranger, _ = KnowledgeBase.init(stranger_settings, EncryptionMode.ON, search_index="memory")
    try:
        fill(stranger, marker + "x", n=4)
        assert found(stranger, marker + "x")
        index_of(stranger).save()
        path.write_bytes(image_path(stranger).read_bytes())  # the other KB's image
    finally:
        stranger.close()
    other = reopen()
    hits = found(other, marker)
    assert set(hits) == set(ids) and not found(other, marker + "x")
    idx = index_of(other)
    assert idx.warm is not None and idx.warm.refused == 1 and idx.builds == 1


def test_image_after_content_key_rotation_is_refused(
    writer: KnowledgeBase, reopen: Callable[[], KnowledgeBase]
) -> None:
    marker = "Wrot" + uuid.uuid4().hex[:8]
    ids, _ = built_image(writer, marker)
    assert writer.keys is not None
    writer.keys.rotate_data_keys("default")
    writer.keys.reencrypt("default")
    other = reopen()
    assert set(found(other, marker)) == set(ids)
    idx = index_of(other)
    assert idx.warm is not None and idx.warm.refused == 1 and idx.builds == 1
    # rebuilt and sealed under the new key: used again
    third = reopen()
    assert set(found(third, marker)) == set(ids) and index_of(third).warm_loads == 1


def test_image_disagreeing_with_the_rows_is_rebuilt(
    writer: KnowledgeBase, reopen: Callable[[], KnowledgeBase], database_url: str
) -> None:
    """Rows changed with the change-feed trigger off (as a restore loads them) are not
    in the feed: the count check after catching up refuses the image."""
    marker = "Wcnt" + uuid.uuid4().hex[:8]
    ids, _ = built_image(writer, marker)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE kb_entries DISABLE TRIGGER USER")
        conn.execute("DELETE FROM kb_entries WHERE id = %s", (ids[4],))
        conn.execute("ALTER TABLE kb_entries ENABLE TRIGGER USER")
    other = reopen()
    hits = found(other, marker)
    assert ids[4] not in hits and set(hits) == set(ids) - {ids[4]}
    idx = index_of(other)
    assert idx.warm is not None and idx.warm.refused == 1 and idx.builds == 1


def test_image_holds_no_plaintext(writer: KnowledgeBase) -> None:
    """Mirrors the canary test's memory case for the home: the marker (in content,
    title, tags, source, metadata) and the index's stems appear in no file of it."""
    canary = "Cnry" + uuid.uuid4().hex[:12]
    writer.add(
        f"secret {canary} content about zebrafish",
        title=f"title {canary}",
        tags=[f"{canary}-tag"],
        source=f"https://wiki.test/{canary}",
        metadata={"m": canary},
    )
    fill(writer, canary)
    assert found(writer, canary)
    index_of(writer).save()
    path = image_path(writer)
    assert path.is_file()
    home = writer.settings.home
    needles = [
        canary.encode(),
        canary.lower().encode(),
        b"zebrafish",
        canary.lower().encode("utf-16-le"),
    ]
    for f in home.rglob("*"):
        if f.is_file() and not f.is_symlink():
            data = f.read_bytes()
            for needle in needles:
                assert needle not in data, f"{f.relative_to(home)} holds plaintext"


def _run(home: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "sealedkb", "--home", str(home), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_cli_search_uses_the_image(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """Whole processes: the first search builds and writes the image; a later search
    in another process loads it (the file is not rewritten: same inode and mtime) and
    finds an entry another process added after it was written."""
    home = tmp_path / "clihome"
    env = {**cli_env, "SEALEDKB_SEARCH_INDEX": "memory"}
    _run(home, env, "init")
    marker = "Wcli" + uuid.uuid4().hex[:8]
    first = _run(home, env, "add", f"{marker} first entry", "--title", "one").strip()
    assert json.loads(_run(home, env, "search", marker, "--mode", "keyword", "--json"))["hits"]
    images = list((home / warm_start.FOLDER).glob("memory-*.img"))
    assert len(images) == 1
    st = images[0].stat()
    second = _run(home, env, "add", f"{marker} second entry", "--title", "two").strip()
    hits = json.loads(_run(home, env, "search", marker, "--mode", "keyword", "--json"))["hits"]
    assert {h["id"] for h in hits} == {first, second}
    now = images[0].stat()
    assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)  # loaded, not rebuilt
    assert os.environ.get("SEALEDKB_HOME") != str(home)


def test_image_over_the_memory_bound_is_refused(
    writer: KnowledgeBase, make_settings: Callable[..., Settings]
) -> None:
    """An image holding more entries than memory_index_max_entries allows is not
    loaded: the search fails with INDEX_CAPACITY as a build would."""
    from sealedkb.search.memory import IndexCapacityError

    marker = "Wcap" + uuid.uuid4().hex[:8]
    built_image(writer, marker)
    small = KnowledgeBase.open(make_settings(memory_index_max_entries=3))
    try:
        with pytest.raises(IndexCapacityError):
            small.search(marker, mode="keyword")
        idx = index_of(small)
        assert idx.warm is not None and idx.warm.refused == 1 and idx.warm_loads == 0
    finally:
        small.close()


def test_cli_search_failing_early_waits_for_the_model_preload(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """The model loads in a thread while the knowledge base opens: a search that fails
    before it finishes (no knowledge base here) exits with its error, not an abort of
    the runtime's half-built session."""
    env = {**cli_env, "SEALEDKB_EMBEDDER": "minilm"}
    done = subprocess.run(
        [sys.executable, "-m", "sealedkb", "--home", str(tmp_path / "none"), "search", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "NOT_INITIALIZED" in done.stderr and "terminate" not in done.stderr
