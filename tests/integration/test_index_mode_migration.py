"""``sealedkb migrate index --to memory|server`` (migrate/index_mode.py): both directions
end to end (search finds the entries after), no searchable column holds a value after
server -> memory (and the table was rewritten), a run killed with SIGKILL halfway
completes when run again, migrating back works, and a process opened before the switch
follows it (it never writes searchable columns into a memory-mode table)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.cli_helpers import Cli, all_entries

from sealedkb.config import Settings
from sealedkb.errors import ConflictError, ValidationError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.summary import build_summary
from sealedkb.migrate.index_mode import SEARCH_INDEX_RECHECK_SECONDS
from sealedkb.model import EncryptionMode, new_entry
from sealedkb.store.index_mode import RUN_LOCK
from sealedkb.store.jobs import job_lock_key

SEARCHABLE = ("kw_tokens", "embedding_enc", "fingerprint", "index_key_id")


def sql(url: str, stmt: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(stmt, args)
        return cur.fetchall() if cur.description else []


def searchable_values(url: str) -> dict[str, int]:
    """Rows holding a value in each searchable column (every row, deleted ones too)."""
    out = {c: sql(url, f"SELECT count({c}) FROM kb_entries")[0][0] for c in SEARCHABLE}
    out["tag_tokens"] = sql(
        url, "SELECT count(*) FROM kb_entries WHERE cardinality(tag_tokens) > 0"
    )[0][0]
    return out


def fill(kb: KnowledgeBase, marker: str, n: int = 12) -> list[uuid.UUID]:
    ids = []
    for i in range(n):
        e = kb.add(
            f"Entry {i} about {marker} rotation and the vacuum of queue {i % 5}.",
            title=f"{marker} {i}",
            tags=[f"{marker}-tag", f"q{i % 3}"],
            namespace="default" if i % 4 else "other",
        )
        ids.append(e.id)
    kb.delete(ids[1])
    return ids


def finds(kb: KnowledgeBase, marker: str) -> None:
    """Keyword, semantic and hybrid search, a tag filter and dedup all answer."""
    hits = kb.search(marker, mode="keyword", limit=50).hits
    assert {h.title for h in hits} == {f"{marker} {i}" for i in range(12) if i % 4 and i != 1}
    assert kb.search(f"{marker} rotation", mode="hybrid", limit=5).hits
    assert kb.search(f"{marker} rotation vacuum", mode="semantic", limit=5).hits
    tagged = kb.search(marker, mode="keyword", tags=["q0"], limit=50).hits
    assert tagged and all("q0" in h.tags for h in tagged)
    assert kb.search(marker, mode="keyword", namespace="other", limit=50).hits
    again = kb.add(f"Entry 2 about {marker} rotation and the vacuum of queue 2.")
    assert again.title == f"{marker} 2"  # dedup: the existing entry


@pytest.fixture
def server_kb(make_settings: Callable[..., Settings]) -> Iterator[KnowledgeBase]:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON, search_index="server")
    yield kb
    kb.close()


@pytest.fixture
def memory_kb(make_settings: Callable[..., Settings]) -> Iterator[KnowledgeBase]:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON, search_index="memory")
    yield kb
    kb.close()


def test_server_to_memory_clears_every_searchable_column_and_rewrites_the_table(
    server_kb: KnowledgeBase, make_settings: Callable[..., Settings], database_url: str
) -> None:
    marker = "Srvm" + uuid.uuid4().hex[:8]
    fill(server_kb, marker)
    held = searchable_values(database_url)
    assert all(held[c] for c in ("kw_tokens", "embedding_enc", "fingerprint", "tag_tokens"))
    filenode = sql(database_url, "SELECT pg_relation_filenode('kb_entries')")[0][0]
    result = server_kb.migrate_search_index("memory", batch=5)
    assert (result.from_index, result.to_index, result.state) == ("server", "memory", "complete")
    assert result.rows == 12 and "kb_entries" in result.scrubbed
    assert searchable_values(database_url) == dict.fromkeys([*SEARCHABLE, "tag_tokens"], 0)
    # VACUUM FULL: a new file, no old row version holding a token
    assert sql(database_url, "SELECT pg_relation_filenode('kb_entries')")[0][0] != filenode
    assert server_kb.search_index == "memory"
    with KnowledgeBase.open(make_settings()) as kb:
        assert kb.search_index == "memory" and kb.memory_index is not None
        finds(kb, marker)
        assert kb.status()["search_index"]["migration"]["state"] == "complete"
    assert searchable_values(database_url) == dict.fromkeys([*SEARCHABLE, "tag_tokens"], 0)
    actions = [r[0] for r in sql(database_url, "SELECT action FROM kb_audit ORDER BY seq")]
    assert "SwitchSearchIndex" in actions and "MigrateSearchIndex" in actions


def test_memory_to_server_builds_the_columns_and_migrating_back_works(
    memory_kb: KnowledgeBase, make_settings: Callable[..., Settings], database_url: str
) -> None:
    marker = "Mems" + uuid.uuid4().hex[:8]
    fill(memory_kb, marker)
    before = all_entries(memory_kb)
    assert sum(searchable_values(database_url).values()) == 0
    result = memory_kb.migrate_search_index("server", batch=4)
    assert (result.from_index, result.to_index) == ("memory", "server")
    assert result.rows == 11 and result.failed == 0  # the live entries
    live = sql(
        database_url,
        "SELECT count(*) FROM kb_entries WHERE deleted_at IS NULL AND (kw_tokens IS NULL"
        " OR embedding_enc IS NULL OR fingerprint IS NULL OR cardinality(tag_tokens) = 0)",
    )[0][0]
    assert live == 0
    with KnowledgeBase.open(make_settings()) as kb:
        assert kb.search_index == "server" and kb.memory_index is None
        finds(kb, marker)  # server-side search checks each hit's index digest
        assert all_entries(kb) == before
    # and back: memory again, nothing searchable left, search still answers
    with KnowledgeBase.open(make_settings()) as kb:
        back = kb.migrate_search_index("memory")
        assert back.from_index == "server"
    assert searchable_values(database_url) == dict.fromkeys([*SEARCHABLE, "tag_tokens"], 0)
    with KnowledgeBase.open(make_settings()) as kb:
        assert kb.search_index == "memory"
        finds(kb, marker)
        assert all_entries(kb) == before


def test_a_process_opened_before_the_switch_follows_it(
    server_kb: KnowledgeBase, make_settings: Callable[..., Settings], database_url: str
) -> None:
    """A serving process in server mode keeps running while another migrates the index
    to memory: after the switch it writes no searchable column and searches its memory
    index; switched back, its writes get the columns again."""
    marker = "Stale" + uuid.uuid4().hex[:8]
    fill(server_kb, marker)
    with KnowledgeBase.open(make_settings()) as other:
        other.migrate_search_index("memory")
    time.sleep(SEARCH_INDEX_RECHECK_SECONDS + 0.1)
    late = server_kb.add(f"written late by {marker}", tags=["late"])
    assert server_kb.search_index == "memory"
    assert searchable_values(database_url) == dict.fromkeys([*SEARCHABLE, "tag_tokens"], 0)
    assert [h.id for h in server_kb.search(f"late {marker}", mode="keyword").hits][:1] == [late.id]
    with KnowledgeBase.open(make_settings()) as other:
        other.migrate_search_index("server")
    time.sleep(SEARCH_INDEX_RECHECK_SECONDS + 0.1)
    later = server_kb.add(f"written later by {marker}", tags=["later"])
    assert server_kb.search_index == "server" and server_kb.memory_index is None
    row = sql(
        database_url,
        "SELECT kw_tokens IS NOT NULL, fingerprint IS NOT NULL, cardinality(tag_tokens)"
        " FROM kb_entries WHERE id = %s",
        (later.id,),
    )[0]
    assert row == (True, True, 1)
    assert later.id in [h.id for h in server_kb.search(f"later {marker}", mode="keyword").hits]


def _built(url: str) -> int:
    return int(sql(url, "SELECT count(*) FROM kb_entries WHERE kw_tokens IS NOT NULL")[0][0])


def test_sigkill_halfway_then_a_rerun_completes(
    memory_kb: KnowledgeBase,
    make_settings: Callable[..., Settings],
    home: Path,
    database_url: str,
    cli_env: dict[str, str],
) -> None:
    n = 400
    memory_kb.add_many(
        [new_entry(f"crash entry {i} of queue {i % 7}", tags=[f"q{i % 7}"]) for i in range(n)]
    )
    before = all_entries(memory_kb)
    argv = [sys.executable, "-m", "sealedkb", "--home", str(home), "migrate", "index"]
    proc = subprocess.Popen(
        [*argv, "--to", "server", "--batch", "5"],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while _built(database_url) < 40:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the migration made no progress"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert 40 <= _built(database_url) < n
    with KnowledgeBase.open(make_settings()) as kb:  # halfway: still memory, still searches
        assert kb.search_index == "memory"
        assert len(kb.search("crash queue", mode="keyword", limit=50).hits) == 50
        assert kb.status()["search_index"]["migration"]["state"] == "building"
        (check,) = [c for c in build_summary(kb) if c.check == "search_index"]
        assert check.ok is None and "switching to server" in check.value
    rerun = subprocess.run(
        [*argv, "--to", "server", "--json"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout)
    assert result["state"] == "complete" and result["to"] == "server"
    assert _built(database_url) == n
    with KnowledgeBase.open(make_settings()) as kb:
        assert kb.search_index == "server"
        assert len(kb.search("crash queue", mode="keyword", limit=50).hits) == 50
        assert all_entries(kb) == before


def test_cli_refuses_bad_input_and_plaintext(
    cli: Cli, make_settings: Callable[..., Settings]
) -> None:
    env = {"SEALEDKB_EMBEDDER": "hash"}
    assert cli("init", "--search-index", "memory", env=env).exit_code == 0
    r = cli("migrate", "index", "--to", "elsewhere", env=env)
    assert r.exit_code == 2 and "VALIDATION_ERROR" in r.output, r.output
    r = cli("migrate", "index", "--to", "server", "--batch", "0", env=env)
    assert r.exit_code == 2 and "VALIDATION_ERROR" in r.output, r.output
    r = cli("migrate", "index", "--to", "server", "--json", env=env)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["to"] == "server"


def test_a_plaintext_knowledge_base_has_no_index_to_move(
    make_settings: Callable[..., Settings],
) -> None:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.OFF)
    try:
        with pytest.raises(ValidationError) as err:
            kb.migrate_search_index("memory")
        assert err.value.field == "encryption"
    finally:
        kb.close()


def test_one_run_at_a_time(server_kb: KnowledgeBase, database_url: str) -> None:
    """A second run while one holds the run lock is refused (CONFLICT), changing nothing."""
    server_kb.add("one run at a time", tags=["lock"])
    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (job_lock_key(RUN_LOCK),))
        with pytest.raises(ConflictError):
            server_kb.migrate_search_index("memory")
    assert server_kb.current_search_index() == "server"
    assert searchable_values(database_url)["kw_tokens"] == 1
