"""A database writer copies one entry's search columns onto another: its keyword
tokens, encrypted vector, tag tokens or dedup fingerprint. The forged entry must not
rank, match a tag it does not carry, or swallow an add; it is dropped and counted."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EntryPatch


def _copy(url: str, column: str, src: Any, dst: Any) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"UPDATE kb_entries SET {column} = (SELECT {column} FROM kb_entries WHERE id = %s)"
            " WHERE id = %s",
            (src, dst),
        )


@pytest.fixture
def two(kb: KnowledgeBase) -> tuple[Any, Any]:
    a = kb.add("Zanzibar ferry timetables and harbour tides", title="Ferries", tags=["sea"])
    b = kb.add("Quarterly budget spreadsheet for the finance team", title="Budget")
    for i in range(5):
        kb.add(f"unrelated filler note number {i} about gardening")
    return a.id, b.id


@pytest.mark.parametrize(
    ("column", "mode"),
    [("kw_tokens", "keyword"), ("kw_tokens", "hybrid"), ("embedding_enc", "hybrid")],
)
def test_copied_search_columns_do_not_make_a_hit(
    kb: KnowledgeBase, database_url: str, two: tuple[Any, Any], column: str, mode: str
) -> None:
    a, b = two
    before = [h.id for h in kb.search("Zanzibar ferry tides", mode=mode).hits]
    assert before[0] == a
    failures = kb.telemetry.integrity_failures
    _copy(database_url, column, a, b)
    after = [h.id for h in kb.search("Zanzibar ferry tides", mode=mode).hits]
    assert b not in after  # the forged hit is dropped, never shown
    assert after[0] == a
    if b in before or column == "kw_tokens":
        assert kb.telemetry.integrity_failures > failures


def test_copied_tag_tokens_do_not_match_the_tag(
    kb: KnowledgeBase, database_url: str, two: tuple[Any, Any]
) -> None:
    a, b = two
    _copy(database_url, "tag_tokens", a, b)
    hits = kb.search("budget spreadsheet", mode="keyword", tags=["sea"]).hits
    assert b not in [h.id for h in hits]
    listed = kb.list(namespace="default", tag="sea")
    assert [e.id for e in listed] == [a]


def test_a_copied_fingerprint_does_not_swallow_an_add(
    kb: KnowledgeBase, database_url: str, two: tuple[Any, Any]
) -> None:
    _, b = two
    # The attacker learns the fingerprint of a text (here: it was added and deleted)
    # and plants it on another row.
    victim = kb.add("A note the agent will write tomorrow", title="Tomorrow")
    kb.delete(victim.id)
    _copy(database_url, "fingerprint", victim.id, b)
    failures = kb.telemetry.integrity_failures
    added = kb.add("A note the agent will write tomorrow", title="Tomorrow")
    assert added.id != b
    assert kb.get(added.id).content == "A note the agent will write tomorrow"
    assert kb.telemetry.integrity_failures == failures + 1


def test_updates_and_reembed_keep_the_digest_valid(kb: KnowledgeBase, two: tuple[Any, Any]) -> None:
    a, _ = two
    kb.update(a, EntryPatch(tags=("sea", "travel")))  # document resealed, columns kept
    assert kb.search("Zanzibar ferry", mode="hybrid").hits[0].id == a
    kb.update(a, EntryPatch(content="Zanzibar ferry timetables, updated for winter"))
    assert kb.search("winter ferry", mode="hybrid").hits[0].id == a
    kb.reembed(redo_all=True)
    failures = kb.telemetry.integrity_failures
    assert kb.search("Zanzibar ferry", mode="hybrid").hits[0].id == a
    assert kb.telemetry.integrity_failures == failures
