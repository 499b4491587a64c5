"""The server index's re-rank cache: opened exact embeddings are remembered under the
row's version stamp (xmin), so a repeated search reads and opens no sealed embedding,
while any change of a row — an update through sealedkb or a database writer's edit —
is never answered from the cache."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import pytest

from sealedkb.errors import IntegrityError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EntryPatch

TEXTS = [
    "Zanzibar ferry timetables and harbour tides",
    "Quarterly budget spreadsheet for the finance team",
    "Sourdough starter feeding schedule",
    "Rotating the TLS certificates of the load balancer",
]


@pytest.fixture
def ids(kb: KnowledgeBase) -> list[Any]:
    return [kb.add(t, title=t.split()[0]).id for t in TEXTS]


@pytest.fixture
def reads(kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many sealed embeddings each read of the table fetched."""
    counts: list[int] = []
    real: Callable[[str, Sequence[str]], dict[str, tuple[int, bytes]]] = (
        kb.engine.table.sealed_embeddings
    )

    def counted(namespace: str, ids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        counts.append(len(ids))
        return real(namespace, ids)

    monkeypatch.setattr(kb.engine.table, "sealed_embeddings", counted)
    return counts


def test_a_repeated_search_opens_no_sealed_embedding(
    kb: KnowledgeBase, ids: list[Any], reads: list[int]
) -> None:
    first = [h.id for h in kb.search("ferry tides", mode="semantic").hits]
    assert first[0] == ids[0]
    assert reads and reads[0] >= len(ids)
    reads.clear()
    again = [h.id for h in kb.search("ferry tides", mode="semantic").hits]
    assert again[0] == first[0] and set(again) == set(first)  # ties follow the noisy order
    assert reads == []  # every candidate's exact embedding came from the cache


def test_an_update_is_ranked_by_its_new_embedding(
    kb: KnowledgeBase, ids: list[Any], reads: list[int]
) -> None:
    kb.search("ferry tides", mode="semantic")
    kb.update(ids[2], EntryPatch(content="Harbour tides and the Zanzibar ferry crossing times"))
    reads.clear()
    hits = kb.search("Harbour tides and the Zanzibar ferry crossing times", mode="semantic").hits
    assert hits[0].id == ids[2]
    assert reads == [1]  # only the updated row was read again


def test_an_edited_sealed_embedding_is_not_served_from_the_cache(
    kb: KnowledgeBase, ids: list[Any], database_url: str
) -> None:
    """A database writer swaps a cached row's sealed embedding for another row's: the
    row's stamp changes, so the edit is opened (and refused), never hidden by the cache."""
    kb.search("ferry tides", mode="semantic")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE kb_entries SET embedding_sealed ="
            " (SELECT embedding_sealed FROM kb_entries WHERE id = %s) WHERE id = %s",
            (ids[1], ids[0]),
        )
    with pytest.raises(IntegrityError):
        kb.search("ferry tides", mode="semantic")


def test_a_deleted_entry_is_not_ranked_from_the_cache(kb: KnowledgeBase, ids: list[Any]) -> None:
    kb.search("ferry tides", mode="semantic")
    kb.delete(ids[0])
    assert ids[0] not in [h.id for h in kb.search("ferry tides", mode="semantic").hits]
