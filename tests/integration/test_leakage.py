"""What the database learns from the server-side search index (docs/SEARCH.md,
"Leakage"): the known-document attack of bench/leakage/attack.py, small.

The attacker reads kb_entries with plain SQL, runs the public tokenizer and knows the
plaintext of 70 % of the documents. On an index that keeps positions it maps the known
documents to their rows, learns blind token -> stem and reads the other rows' words in
order; on the hardened index (no positions) no order is left to read; and after
``reindex`` every token of the namespace is new, so mapped pairs stop working, while
search still finds the entries.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from leakage.attack import (
    KnownDoc,
    doc_terms,
    learn_by_positions,
    map_by_positions,
    read_rows,
    run,
)

from sealedkb.config import Settings
from sealedkb.errors import ValidationError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode
from sealedkb.search.engine import MAX_QUERY_CHARS, embedding_text

NS = "leaky"
_VOCABULARY = """
    postgres replica backup restore snapshot index vacuum analyze query planner latency
    throughput cache eviction memory buffer page checkpoint journal commit rollback
    transaction isolation deadlock lock timeout retry network socket certificate
    rotation policy audit token secret vault cluster node leader follower quorum
    partition shard migration schema column constraint trigger function cursor
    pipeline batch stream consumer producer topic offset window aggregate metric alert
    dashboard incident runbook deploy container image registry kernel thread process
    scheduler cron queue worker request response header payload compression encoding
    parser tokenizer stemmer vector embedding cosine distance neighbour graph layer
"""
WORDS = tuple(_VOCABULARY.split())


def _docs(n: int = 40, seed: int = 5) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(len(WORDS))]  # Zipf-like, as real text
    out = []
    for i in range(n):
        title = " ".join(rng.choices(WORDS, weights, k=3)).capitalize()
        body = []
        for _ in range(rng.randint(3, 6)):
            s = rng.choices(WORDS, weights, k=rng.randint(6, 14))
            body.append(" ".join(s).capitalize() + ".")
        out.append((f"{title} {i}", " ".join(body)))
    return out


@pytest.fixture
def server_kb(make_settings: Callable[..., Settings]) -> Iterator[KnowledgeBase]:
    kb, _ = KnowledgeBase.init(make_settings(search_index="server"), EncryptionMode.ON)
    yield kb
    kb.close()


def _load(kb: KnowledgeBase, *, positions: bool) -> list[KnownDoc]:
    kb.indexer.keyword_positions = positions
    truth = []
    for title, content in _docs():
        e = kb.add(content, title=title, namespace=NS, force=True)
        truth.append(KnownDoc(str(e.id), title, content, None))
    return truth


def _attack(url: str, truth: list[KnownDoc], known: float = 0.7) -> Any:
    with psycopg.connect(url) as conn:
        rows = read_rows(conn, NS)
    order = list(range(len(truth)))
    random.Random(1).shuffle(order)
    n = round(known * len(truth))
    return run(rows, [truth[i] for i in order[:n]], [truth[i] for i in order[n:]])


def test_the_attack_reads_words_and_order_from_an_index_with_positions(
    server_kb: KnowledgeBase, database_url: str
) -> None:
    truth = _load(server_kb, positions=True)
    r = _attack(database_url, truth)
    assert r.mapped == r.mapped_correct >= 0.9 * r.known  # no key needed to map them
    assert r.tokens_correct == r.tokens_mapped > 0
    assert r.recovered_fraction > 0.9  # most private word occurrences
    assert r.order_recovered
    assert r.ordered_bigrams > 0.8  # and in order


def test_the_hardened_index_holds_no_order(server_kb: KnowledgeBase, database_url: str) -> None:
    truth = _load(server_kb, positions=False)  # what new rows get
    with psycopg.connect(database_url) as conn:
        left = conn.execute(
            "SELECT count(*) FROM kb_entries, unnest(kw_tokens) u WHERE namespace = %s"
            " AND u.positions <> '{}' AND u.positions <> '{1}'",
            (NS,),
        ).fetchone()
    assert left == (0,)  # no positions (title lexemes: weight A at position 1 only)
    r = _attack(database_url, truth)
    assert not r.order_recovered
    assert r.ordered_bigrams == 0.0
    # still found by keyword search (ranked without positions)
    title, content = _docs()[3]
    hits = server_kb.search(f"{title} {content[:60]}", mode="keyword", namespace=NS).hits
    assert title in [h.title for h in hits]


def test_reindex_changes_every_token_and_search_still_finds_entries(
    server_kb: KnowledgeBase, database_url: str
) -> None:
    truth = _load(server_kb, positions=True)
    with psycopg.connect(database_url) as conn:
        before = read_rows(conn, NS)
    server_kb.indexer.keyword_positions = False

    class Stop(Exception):
        pass

    def stop_after_first_batch(done: int, total: int) -> None:
        raise Stop

    with pytest.raises(Stop):  # killed after one batch
        server_kb.reindex(NS, batch_size=8, progress=stop_after_first_batch)
    with psycopg.connect(database_url) as conn:
        pending = {
            str(r[0])
            for r in conn.execute(
                "SELECT id FROM kb_entries WHERE namespace = %s AND index_key_id IS NULL", (NS,)
            )
        }
    assert len(pending) == len(truth) - 8
    # online: while the reindex is unfinished, rows not yet rebuilt are still found
    # (search queries under the retired keys too), by every arm
    waiting = [d for d in truth if d.id in pending][:4]
    for d in waiting:
        for mode in ("keyword", "hybrid"):
            hits = server_kb.search(f"{d.title} {d.content[:60]}", mode=mode, namespace=NS).hits
            assert d.id in [str(h.id) for h in hits], (mode, d.title)
        query = embedding_text(d.title, d.content)[:MAX_QUERY_CHARS]
        hits = server_kb.search(query, mode="semantic", namespace=NS, limit=3).hits
        assert d.id in [str(h.id) for h in hits], d.title
    (res,) = server_kb.reindex(NS, batch_size=8)  # the rerun continues
    assert not res.rotated
    assert res.reindexed == len(truth) - 8 and res.remaining == 0 and res.failed == 0
    with psycopg.connect(database_url) as conn:
        after = read_rows(conn, NS)
        marks = conn.execute(
            "SELECT count(DISTINCT index_key_id), count(*) FILTER (WHERE index_key_id IS NULL)"
            " FROM kb_entries WHERE namespace = %s",
            (NS,),
        ).fetchone()
        events = conn.execute(
            "SELECT count(*) FROM kb_audit WHERE action = 'ReindexEntries' AND namespace = %s",
            (NS,),
        ).fetchone()
    assert marks == (1, 0)
    assert events is not None and events[0] >= 2
    old = {t for r in before for t in r.lexemes}
    new = {t for r in after for t in r.lexemes}
    assert old and new and not old & new  # every token of the namespace changed
    by_id = {r.id: r for r in before}
    for r in after:
        # converted to the form without positions (a title lexeme: "1A" only)
        assert all(ps in ((), (1,)) for ps in r.lexemes.values())
        old_vec, new_vec = by_id[r.id].vector, r.vector
        assert old_vec is not None and new_vec is not None
        assert (old_vec != new_vec).any()
    # what an attacker learned before (token -> stem from 70 % known documents) reads
    # nothing of the rebuilt rows
    known = [doc_terms(d) for d in truth[:28]]
    learned = learn_by_positions(before, known, map_by_positions(before, known))
    assert len(learned) > 50
    assert not any(t in learned for r in after for t in r.lexemes)
    # search still finds the entries, and their columns pass the digest check
    failures = server_kb.telemetry.integrity_failures
    for title, content in _docs()[:5]:
        for mode in ("keyword", "hybrid"):
            hits = server_kb.search(f"{title} {content[:60]}", mode=mode, namespace=NS).hits
            assert title in [h.title for h in hits], (mode, title)
    assert server_kb.telemetry.integrity_failures == failures
    got = server_kb.get(truth[0].id)
    assert got.content == truth[0].content


def test_reindex_through_the_cli(
    make_cli: Callable[..., Any], home: Path, database_url: str
) -> None:
    cli = make_cli(home, database_url, env={"SEALEDKB_EMBEDDER": "hash"})
    assert cli("init", "--search-index", "server").exit_code == 0
    for i in range(3):
        r = cli("add", "--title", f"Lighthouse {i}", "--namespace", NS, f"keeper log {i} fog")
        assert r.exit_code == 0, r.output
    r = cli("reindex", "--namespace", NS, "--json")
    assert r.exit_code == 0, r.output
    (one,) = json.loads(r.stdout)["namespaces"]
    assert one["rotated"] and one["reindexed"] == 3 and one["remaining"] == 0
    r = cli("search", "lighthouse keeper", "--namespace", NS, "--json")
    assert r.exit_code == 0 and len(json.loads(r.stdout)["hits"]) == 3
    r = cli("reindex", "--namespace", NS)
    assert r.exit_code == 0 and "reindexed 3 entries (new keys); 0 remaining" in r.stdout

    with psycopg.connect(database_url) as conn:
        keys_before = conn.execute("SELECT count(*) FROM kb_data_keys").fetchone()
    # bad input: a clear error with its code, and nothing rotated or rebuilt
    r = cli("reindex", "--namespace", NS, "--batch-size", "0")
    assert r.exit_code == 2 and "VALIDATION_ERROR" in r.stderr
    r = cli("reindex", "--namespace", "nowhere")
    assert r.exit_code == 3 and "NOT_FOUND" in r.stderr
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM kb_data_keys").fetchone() == keys_before


def test_reindex_refuses_a_plaintext_knowledge_base(plain_kb: KnowledgeBase) -> None:
    with pytest.raises(ValidationError) as exc:
        plain_kb.reindex()
    assert exc.value.field == "encryption"


def test_reindex_refuses_a_memory_index(make_settings: Callable[..., Settings]) -> None:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON, search_index="memory")
    try:
        kb.add("nothing searchable is stored", title="Memory", namespace=NS)
        with pytest.raises(ValidationError) as exc:
            kb.reindex(NS)
        assert exc.value.field == "search_index"
    finally:
        kb.close()
