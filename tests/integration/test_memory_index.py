"""The memory search index (kb_meta search_index = memory, search/memory.py): rows hold
no searchable column, search answers from the process's own index with the same
filters, fusion and snippets, writes of other processes are seen through the change
feed (store/changes.py), the index is bounded, and the setting cannot be flipped by
a database writer."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.mcp_helpers import http_server, search_titles

from sealedkb.config import Settings, load_settings
from sealedkb.errors import IntegrityError, KeyUnavailableError, ValidationError
from sealedkb.kb import knowledge_base as kbmod
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode, EntryPatch, new_entry
from sealedkb.search import memory
from sealedkb.search.memory import IndexCapacityError
from sealedkb.store.changes import ChangeFeed
from sealedkb.store.embedded import EmbeddedPostgres

# kb_entries columns that may hold a value in memory mode: bookkeeping and sealed bytes.
ALLOWED_ENTRY_COLUMNS = {
    "id",
    "namespace",
    "entry_type",
    "doc_sealed",
    "verified",
    "archived",
    "created_at",
    "updated_at",
    "version",
    "deleted_at",
    "data_key_id",
    "embedding_sealed",
    "embedding_key_id",
    "embed_model",
    "embed_dim",
    "import_key",
    "import_hash",
}
SEARCHABLE = {
    "kw_tokens",
    "kw_plain",
    "embedding_enc",
    "embedding_plain",
    "tag_tokens",
    "fingerprint",
    "title_plain",
    "content_plain",
    "source_plain",
    "metadata_plain",
    "tags_plain",
}


@pytest.fixture
def mem_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def mem_kb(mem_settings: Settings) -> Iterator[KnowledgeBase]:
    kb, _ = KnowledgeBase.init(mem_settings, EncryptionMode.ON, search_index="memory")
    yield kb
    kb.close()


def sql(url: str, stmt: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(stmt, args)
        return cur.fetchall() if cur.description else []


def add_corpus(kb: KnowledgeBase, marker: str) -> list[uuid.UUID]:
    ids = []
    for i in range(8):
        e = kb.add(
            f"Body {i} of the {marker} story: rotating keys every quarter keeps auditors calm."
            if i % 2
            else f"Note {i}: postgres vacuum tuning and {marker} checkpoints.",
            title=f"{marker} title {i}",
            entry_type="runbook" if i % 2 else "note",
            tags=[f"{marker}-tag", f"t{i % 3}"],
            source=f"https://wiki.test/{marker}/{i}",
            metadata={"marker": marker},
            namespace="default" if i < 6 else "other",
        )
        ids.append(e.id)
    return ids


def test_no_searchable_column_holds_a_value(
    mem_kb: KnowledgeBase, database_url: str, tmp_path: Path
) -> None:
    marker = "Mmark" + uuid.uuid4().hex[:10]
    ids = add_corpus(mem_kb, marker)
    mem_kb.add_many(
        [new_entry(f"batch {marker} {i}", title=f"b{i}", tags=["batch"]) for i in range(3)]
    )
    mem_kb.update(ids[0], EntryPatch(content=f"rewritten {marker} content", tags=("x",)))
    mem_kb.delete(ids[1])
    folder = tmp_path / "imp"
    folder.mkdir()
    (folder / "a.md").write_text(f"# Imported {marker}\n\nThe {marker} in a file.\n")
    assert mem_kb.import_paths([str(folder)]).chunks_added == 1
    mem_kb.reembed(redo_all=True)
    assert mem_kb.search(marker, mode="keyword").hits

    tables = [
        r[0]
        for r in sql(
            database_url,
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
        )
    ]
    assert "kb_entries" in tables and "kb_changes" in tables
    held: dict[str, set[str]] = {}
    for table in tables:
        cols = [
            r[0]
            for r in sql(
                database_url,
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = %s",
                (table,),
            )
        ]
        for col in cols:
            (n,) = sql(
                database_url,
                f'SELECT count(*) FROM "{table}" WHERE "{col}" IS NOT NULL'
                f" AND (pg_typeof(\"{col}\")::text NOT LIKE '%%[]'"
                f' OR cardinality("{col}"::text::text[]) > 0)',
            )[0]
            if n:
                held.setdefault(table, set()).add(col)
            # and no column of any table holds the marker in clear
            (m,) = sql(
                database_url,
                f'SELECT count(*) FROM "{table}" WHERE position(%s in "{col}"::text) > 0',
                (marker.lower(),),
            )[0]
            assert m == 0, f"{table}.{col} holds the marker"
    assert held["kb_entries"] <= ALLOWED_ENTRY_COLUMNS, held["kb_entries"] - ALLOWED_ENTRY_COLUMNS
    assert not held["kb_entries"] & SEARCHABLE
    assert {"doc_sealed", "embedding_sealed"} <= held["kb_entries"]
    for table, cols in held.items():
        assert not cols & SEARCHABLE, (table, cols & SEARCHABLE)


def test_search_filters_fusion_and_snippets(mem_kb: KnowledgeBase) -> None:
    marker = "Sq" + uuid.uuid4().hex[:8]
    add_corpus(mem_kb, marker)
    for mode in ("keyword", "semantic", "hybrid"):
        res = mem_kb.search(f"{marker} rotating keys", mode=mode, limit=10)
        assert res.mode.value == mode and res.hits, mode
        assert all(h.namespace == "default" for h in res.hits)
    kw = mem_kb.search("rotating auditors", mode="keyword", limit=10).hits
    assert kw and all(h.entry_type.value == "runbook" for h in kw)
    assert "rotating" in kw[0].snippet
    typed = mem_kb.search(marker, mode="hybrid", entry_type="note", limit=20).hits
    assert typed and all(h.entry_type.value == "note" for h in typed)
    tagged = mem_kb.search(marker, mode="keyword", tags=["t1"], limit=20).hits
    assert tagged and all("t1" in h.tags for h in tagged)
    assert len(tagged) == 2  # entries 1 and 4 of "default"
    later = mem_kb.search(
        marker, mode="keyword", since=datetime.now(UTC) + timedelta(days=1), limit=20
    )
    assert later.hits == []
    assert mem_kb.search(marker, namespace="other", mode="keyword").hits
    page = mem_kb.search(marker, mode="keyword", limit=2)
    assert page.next_offset == 2
    nxt = mem_kb.search(marker, mode="keyword", limit=2, offset=2)
    assert {h.id for h in nxt.hits}.isdisjoint(h.id for h in page.hits)


def test_dedup_list_by_tag_and_stats(mem_kb: KnowledgeBase) -> None:
    a = mem_kb.add("the same   content\n", tags=["dup"])
    assert mem_kb.add("the same content", tags=["other"]).id == a.id
    assert mem_kb.add("the same content", force=True).id != a.id
    batch = mem_kb.add_many(
        [
            new_entry("fresh one", tags=["dup"]),
            new_entry("fresh one"),
            new_entry("the same content"),
        ]
    )
    assert batch[0].id == batch[1].id and batch[2].id == a.id
    assert mem_kb.add("the same content", namespace="elsewhere").id != a.id
    listed = mem_kb.list(namespace="default", tag="dup")
    assert [e.id for e in listed] == [batch[0].id, a.id]  # newest first
    stats = mem_kb.stats()
    assert stats["namespaces"]["default"]["top_tags"]["dup"] == 2


def test_writes_of_another_process_are_seen(mem_kb: KnowledgeBase, mem_settings: Settings) -> None:
    reader = KnowledgeBase.open(mem_settings)
    try:
        assert reader.memory_index is not None
        first = mem_kb.add("alpha bravo charlie", title="first")
        assert [h.id for h in reader.search("bravo", mode="keyword").hits] == [first.id]
        second = mem_kb.add("delta echo foxtrot", title="second")
        assert [h.id for h in reader.search("echo", mode="keyword").hits] == [second.id]
        mem_kb.update(second.id, EntryPatch(content="golf hotel"))
        assert reader.search("echo", mode="keyword").hits == []
        assert [h.id for h in reader.search("hotel", mode="keyword").hits] == [second.id]
        mem_kb.delete(first.id)
        assert reader.search("bravo", mode="keyword").hits == []
        # a duplicate added through the reader is found through the writer's index
        assert reader.add("golf hotel").id == second.id
    finally:
        reader.close()


def test_a_transaction_that_commits_late_is_not_missed(
    mem_kb: KnowledgeBase, mem_settings: Settings
) -> None:
    e = mem_kb.add("india juliet", tags=["late"])
    reader = KnowledgeBase.open(mem_settings)
    try:
        assert [x.id for x in reader.list(namespace="default", tag="late")] == [e.id]
        with mem_kb.db.transaction("test") as conn:
            # draws a change seq now, commits after a later change was read
            conn.execute("UPDATE kb_entries SET archived = true WHERE id = %s", (e.id,))
            other = mem_kb.add("kilo lima", tags=["late"])  # another connection, commits first
            assert {x.id for x in reader.list(namespace="default", tag="late")} == {e.id, other.id}
        archived_out = reader.list(namespace="default", tag="late", include_archived=False)
        assert [x.id for x in archived_out] == [other.id]
    finally:
        reader.close()


def test_the_index_is_bounded(make_settings: Callable[..., Settings]) -> None:
    kb, _ = KnowledgeBase.init(
        make_settings(memory_index_max_entries=3), EncryptionMode.ON, search_index="memory"
    )
    try:
        for i in range(3):
            kb.add(f"entry number {i}")
        assert len(kb.search("entry", mode="keyword").hits) == 3
        kb.add("entry number 3", force=True)
        with pytest.raises(IndexCapacityError) as err:
            kb.search("entry", mode="keyword")
        assert err.value.code == "INDEX_CAPACITY"
        assert "memory_index_max_entries" in err.value.message
    finally:
        kb.close()
    again = KnowledgeBase.open(make_settings(memory_index_max_entries=3))
    try:  # a fresh process refuses before building anything
        with pytest.raises(IndexCapacityError):
            again.search("entry", mode="hybrid")
    finally:
        again.close()


def test_a_forged_row_is_left_out_and_counted(mem_kb: KnowledgeBase, database_url: str) -> None:
    good = mem_kb.add("mike november oscar")
    bad = mem_kb.add("mike papa quebec")
    sql(
        database_url,
        "UPDATE kb_entries SET doc_sealed = overlay(doc_sealed placing"
        " decode(lpad(to_hex(get_byte(doc_sealed, 60) # 1), 2, '0'), 'hex') from 61 for 1)"
        " WHERE id = %s",
        (bad.id,),
    )
    before = mem_kb.telemetry.integrity_failures
    hits = mem_kb.search("mike", mode="keyword").hits
    assert [h.id for h in hits] == [good.id]
    assert mem_kb.telemetry.integrity_failures > before


# --- the setting: defaults, init, and a database writer flipping it ------------


def test_defaults_and_init_option(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.delenv("SEALEDKB_SEARCH_INDEX")
    kb, created = KnowledgeBase.init(make_settings(), EncryptionMode.ON)
    try:
        assert created and kb.search_index == "memory"  # new knowledge bases: memory
        with pytest.raises(ValidationError) as err:
            KnowledgeBase.init(make_settings(), search_index="server")
        assert err.value.field == "search_index"
        again, created = KnowledgeBase.init(make_settings(), search_index="memory")
        assert not created and again.search_index == "memory"
        again.close()
    finally:
        kb.close()


def test_existing_knowledge_base_without_the_setting_is_server(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON, search_index="server")
    kb.add("a server-indexed entry")
    kb.close()
    sql(database_url, "DELETE FROM kb_meta WHERE key LIKE 'search_index%%'")
    kb = KnowledgeBase.open(make_settings())
    try:
        assert kb.search_index == "server" and kb.memory_index is None
        assert kb.search("server", mode="keyword").hits
    finally:
        kb.close()


def test_plaintext_knowledge_base_cannot_use_memory(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(ValidationError) as err:
        KnowledgeBase.init(make_settings(), EncryptionMode.OFF, search_index="memory")
    assert err.value.field == "search_index"


def _no_server_columns(url: str) -> None:
    (n,) = sql(
        url,
        "SELECT count(*) FROM kb_entries WHERE kw_tokens IS NOT NULL OR embedding_enc IS NOT NULL"
        " OR fingerprint IS NOT NULL OR cardinality(tag_tokens) > 0",
    )[0]
    assert n == 0


@pytest.mark.parametrize(
    "forgery",
    [
        "UPDATE kb_meta SET value = 'server' WHERE key = 'search_index'",
        "DELETE FROM kb_meta WHERE key = 'search_index'",
        "DELETE FROM kb_meta WHERE key LIKE 'search_index%%'",
        "UPDATE kb_meta SET value = 'server' WHERE key = 'search_index';"
        " UPDATE kb_meta SET value = '00' WHERE key = 'search_index_mac'",
    ],
    ids=["flipped", "value-deleted", "both-deleted", "flipped-new-mac"],
)
def test_attacker_cannot_switch_to_server_side_columns(
    mem_kb: KnowledgeBase, mem_settings: Settings, database_url: str, forgery: str
) -> None:
    mem_kb.add("secret roadmap for the year", tags=["plans"])
    for stmt in forgery.split(";"):
        sql(database_url, stmt)
    with pytest.raises(IntegrityError):
        KnowledgeBase.open(mem_settings)
    with pytest.raises(IntegrityError):
        KnowledgeBase.init(mem_settings)
    _no_server_columns(database_url)


def test_attacker_cannot_replay_another_knowledge_bases_server_setting(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    database_url: str,
    pg_server: EmbeddedPostgres,
    template_db: str,
) -> None:
    """A MAC of 'server' made for another knowledge base (another keystore) is refused."""
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON, search_index="memory")
    kb.add("secret roadmap for the year")
    kb.close()
    name = f"t_{uuid.uuid4().hex[:12]}"
    sql(pg_server.uri(), f"CREATE DATABASE {name} TEMPLATE {template_db}")
    other_url = pg_server.uri(name)
    try:
        other, _ = KnowledgeBase.init(
            load_settings(tmp_path / "other", database_url=other_url, embedder="hash"),
            EncryptionMode.ON,
            search_index="server",
        )
        other.close()
        meta = dict(sql(other_url, "SELECT key, value FROM kb_meta"))
    finally:
        sql(pg_server.uri(), f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    value, mac = meta["search_index"], meta["search_index_mac"]
    assert value == "server"
    sql(database_url, "UPDATE kb_meta SET value = %s WHERE key = 'search_index'", (value,))
    sql(database_url, "UPDATE kb_meta SET value = %s WHERE key = 'search_index_mac'", (mac,))
    with pytest.raises(IntegrityError):
        KnowledgeBase.open(make_settings())
    _no_server_columns(database_url)


# --- processes: the CLI and a real HTTP server ----------------------------------


def test_cli_init_option_and_http_server_sees_cli_writes(
    cli: Callable[..., Any],
    home: Path,
    database_url: str,
    make_settings: Callable[..., Settings],
) -> None:
    r = cli("init", "--search-index", "memory", env={"SEALEDKB_EMBEDDER": "hash"})
    assert r.exit_code == 0, r.output
    r = cli("init", "--search-index", "server", env={"SEALEDKB_EMBEDDER": "hash"})
    assert r.exit_code == 2, r.output
    r = cli("add", "romeo sierra tango", "--title", "first", env={"SEALEDKB_EMBEDDER": "hash"})
    assert r.exit_code == 0, r.output
    kb = KnowledgeBase.open(make_settings())
    assert kb.search_index == "memory"
    _, token = kb.create_token("agent", "writer", ["default"])
    kb.close()

    with http_server(home, database_url) as (base, _):
        assert search_titles(base, token, "sierra") == ["first"]
        r = cli("add", "uniform victor whiskey", "--title", "second",
                env={"SEALEDKB_EMBEDDER": "hash"})  # fmt: skip
        assert r.exit_code == 0, r.output
        assert search_titles(base, token, "victor") == ["second"]
    r = cli("search", "whiskey", "--mode", "keyword", env={"SEALEDKB_EMBEDDER": "hash"})
    assert r.exit_code == 0 and "second" in r.output, r.output


def test_the_change_feed_is_pruned_and_a_stale_index_rebuilt(
    mem_kb: KnowledgeBase,
    mem_settings: Settings,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    e = mem_kb.add("xray yankee")
    sql(database_url, "UPDATE kb_changes SET changed_at = now() - interval '8 days'")
    recent = mem_kb.add("zulu alpha")
    assert ChangeFeed(mem_kb.db).prune(memory.FEED_KEEP_SECONDS) >= 1
    left = sql(database_url, "SELECT entry_id FROM kb_changes")
    assert left == [(recent.id,)]
    reader = KnowledgeBase.open(mem_settings)
    try:
        assert [h.id for h in reader.search("yankee", mode="keyword").hits] == [e.id]
        mem_kb.update(e.id, EntryPatch(content="bravo charlie"))
        sql(database_url, "DELETE FROM kb_changes")  # pruned while the reader slept
        later = time.monotonic() + memory.REBUILD_AFTER_SECONDS + 1
        monkeypatch.setattr(memory.time, "monotonic", lambda: later)
        (hit,) = reader.search("charlie", mode="keyword").hits
        assert hit.id == e.id and "charlie" in hit.snippet
    finally:
        reader.close()


def test_concurrent_adds_of_one_content_store_one_entry(
    mem_kb: KnowledgeBase, mem_settings: Settings
) -> None:
    """Two processes (two knowledge base objects, four threads each way) add the same
    content at once: the per-namespace lock lets exactly one of them store it."""
    other = KnowledgeBase.open(mem_settings)
    try:
        with ThreadPoolExecutor(8) as pool:
            ids = list(
                pool.map(lambda i: (mem_kb if i % 2 else other).add("one shared text").id, range(8))
            )
        assert len(set(ids)) == 1
        assert len(mem_kb.list(limit=100)) == 1
    finally:
        other.close()


def test_a_setting_unchecked_at_open_is_checked_before_the_first_write(
    mem_kb: KnowledgeBase,
    mem_settings: Settings,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the key provider unavailable at open (status must still work), the
    knowledge base opens on the stored setting unchecked; a flipped one is refused
    at the first write, before anything is sealed or stored."""
    mem_kb.add("secret roadmap for the year")
    sql(database_url, "UPDATE kb_meta SET value = 'server' WHERE key = 'search_index'")
    real = kbmod.verified_search_index
    calls = {"n": 0}

    def flaky(*args: Any) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyUnavailableError("the key service is down")
        return real(*args)

    monkeypatch.setattr(kbmod, "verified_search_index", flaky)
    opened = KnowledgeBase.open(mem_settings)
    try:
        assert opened.search_index == "server" and calls["n"] == 1
        with pytest.raises(IntegrityError):
            opened.add("a new secret plan")
        with pytest.raises(IntegrityError):
            opened.add_many([new_entry("another secret plan")])
    finally:
        opened.close()
    _no_server_columns(database_url)
    assert len(mem_kb.list(limit=10)) == 1


def test_an_add_soon_after_a_read_catches_up_under_its_lock(
    mem_kb: KnowledgeBase,
    mem_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An index read less than PREPARE_FRESH_SECONDS ago is not caught up before the
    add's lock (no transaction of its own), yet a duplicate another process stored in
    that moment is still found, by the catch-up under the lock."""
    other = KnowledgeBase.open(mem_settings)
    try:
        clock = [1000.0]
        monkeypatch.setattr(memory.time, "monotonic", lambda: clock[0])
        assert mem_kb.search("anything", mode="keyword").hits == []  # built and read now
        index = mem_kb.memory_index
        assert index is not None
        reads: list[bool] = []
        since = index.feed.since

        def counted(horizon: int, conn: Any = None) -> Any:
            reads.append(conn is not None)  # True: on the add's own (locking) transaction
            return since(horizon, conn)

        monkeypatch.setattr(index.feed, "since", counted)
        theirs = other.add("mike november oscar")  # the other process, just now
        clock[0] += memory.PREPARE_FRESH_SECONDS / 2
        assert mem_kb.add("mike november oscar").id == theirs.id
        assert reads == [True]
        reads.clear()
        clock[0] += memory.PREPARE_FRESH_SECONDS * 2  # read too long ago: caught up first
        mem_kb.add("papa quebec")
        assert reads == [False, True]
    finally:
        other.close()
