"""``reencrypt`` moves every sealed column of a row, the exact embedding as well as
the document: after it, no byte of any row is sealed under the retired data key, so
a compromised key can be dropped (checked on the stored bytes, as an attacker who
holds that key would read them)."""

from __future__ import annotations

from typing import Any

import psycopg

from sealedkb.crypto.sealed import key_id_of
from sealedkb.kb.knowledge_base import KnowledgeBase


def sql(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


def _keys_in_rows(url: str) -> tuple[set[bytes], set[bytes]]:
    rows = sql(url, "SELECT doc_sealed, embedding_sealed FROM kb_entries")
    docs = {key_id_of(bytes(r[0])) for r in rows}
    embeddings = {key_id_of(bytes(r[1])) for r in rows if r[1] is not None}
    return docs, embeddings


def test_reencrypt_reseals_the_exact_embedding(kb: KnowledgeBase, database_url: str) -> None:
    assert kb.keys is not None
    for i in range(5):
        kb.add(f"ferry timetable number {i}")
    gone = kb.add("a deleted entry keeps its ciphertext")
    kb.delete(gone.id)
    _, embeddings = _keys_in_rows(database_url)
    assert embeddings, "the test embedder gives every entry a vector"
    (retired,) = {
        r[0].bytes
        for r in sql(database_url, "SELECT id FROM kb_data_keys WHERE purpose = 'content'")
    }
    kb.keys.rotate_data_keys()
    assert kb.keys.rekey.counts()["embeddings_on_retired_keys"] == 6
    report = kb.keys.reencrypt()
    assert report["remaining"] == 0 and report["failed"] == 0
    docs, embeddings = _keys_in_rows(database_url)
    assert retired not in docs
    assert retired not in embeddings  # the exact embeddings moved too
    counts = kb.keys.rekey.counts()
    assert counts["on_retired_keys"] == 0 and counts["embeddings_on_retired_keys"] == 0
    # Search still opens the re-sealed embeddings.
    assert kb.search("ferry timetable", mode="semantic").hits
