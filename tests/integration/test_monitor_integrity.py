"""Every forged row a read meets is counted: the integrity-failure counter (telemetry
plus the key ring's failed opens, ``sealedkb_integrity_failures`` in /metrics and
status, the ``integrity_failures`` alarm's metric) goes up whether ``get`` or a
search meets the row, and whatever was forged with SQL."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from sealedkb.errors import IntegrityError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.monitoring.metrics import status_metrics

QUERY = "Zanzibar ferry timetables harbour tides"

# SQL a database writer could run on the target row (%(t)s) using another row (%(o)s).
FORGERIES = {
    "document bit flipped": (
        "UPDATE kb_entries SET doc_sealed = set_byte(doc_sealed, 60, get_byte(doc_sealed, 60) # 1)"
        " WHERE id = %(t)s"
    ),
    "document moved from another row": (
        "UPDATE kb_entries SET doc_sealed = (SELECT doc_sealed FROM kb_entries WHERE id = %(o)s)"
        " WHERE id = %(t)s"
    ),
    # A database administrator can drop the check that a row holds one form only.
    "plaintext written in place of the sealed document": (
        "ALTER TABLE kb_entries DROP CONSTRAINT kb_entries_one_form;"
        " UPDATE kb_entries SET doc_sealed = NULL, title_plain = 'forged',"
        " content_plain = 'forged Zanzibar ferry timetables' WHERE id = %(t)s"
    ),
    "document truncated": (
        "UPDATE kb_entries SET doc_sealed = substring(doc_sealed from 1 for 40) WHERE id = %(t)s"
    ),
}


def _sql(url: str, query: str, params: dict[str, Any]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in query.split(";"):
            conn.execute(statement.encode(), params)


def _failures(kb: KnowledgeBase) -> float:
    value = status_metrics(kb, availability="ok")["sealedkb_integrity_failures_total"]
    assert isinstance(value, float)
    return value


@pytest.fixture
def rows(kb: KnowledgeBase) -> tuple[uuid.UUID, uuid.UUID]:
    target = kb.add("Zanzibar ferry timetables and harbour tides", title="Ferries")
    other = kb.add("Quarterly budget spreadsheet for the finance team", title="Budget")
    for i in range(4):
        kb.add(f"unrelated filler note number {i} about gardening")
    return target.id, other.id


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
@pytest.mark.parametrize("mode", ["keyword", "semantic", "hybrid"])
def test_search_counts_a_forged_row(
    kb: KnowledgeBase, rows: tuple[uuid.UUID, uuid.UUID], forgery: str, mode: str
) -> None:
    target, other = rows
    assert kb.search(QUERY, mode=mode).hits[0].id == target
    _sql(kb.db.url, FORGERIES[forgery], {"t": target, "o": other})
    before = _failures(kb)
    with pytest.raises(IntegrityError, match=str(target)):
        kb.search(QUERY, mode=mode)
    assert _failures(kb) == before + 1
    with pytest.raises(IntegrityError, match=str(target)):
        kb.get(target)  # the same row met by get counts the same way
    assert _failures(kb) == before + 2


@pytest.mark.parametrize(
    "forgery",
    [
        "UPDATE kb_entries SET embedding_sealed = set_byte(embedding_sealed, 60,"
        " get_byte(embedding_sealed, 60) # 1) WHERE id = %(t)s",
        "UPDATE kb_entries SET embedding_sealed ="
        " (SELECT embedding_sealed FROM kb_entries WHERE id = %(o)s) WHERE id = %(t)s",
    ],
    ids=["bit flipped", "moved from another row"],
)
def test_search_counts_a_forged_candidate_vector(
    kb: KnowledgeBase, rows: tuple[uuid.UUID, uuid.UUID], forgery: str
) -> None:
    """The exact embeddings of the over-fetched candidates are opened to re-rank them."""
    target, other = rows
    _sql(kb.db.url, forgery, {"t": target, "o": other})
    before = _failures(kb)
    with pytest.raises(IntegrityError, match=str(target)):
        kb.search(QUERY, mode="semantic")
    assert _failures(kb) == before + 1
