"""Search through the service on a real PostgreSQL, in both modes (the hashing test
embedder; one test uses the real MiniLM model): modes, ranking, filters, dedup,
pagination and caps, fallback, model change + reembed, and what is stored."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import pytest

from sealedkb.config import Settings
from sealedkb.embed.hashing import HashingEmbedder
from sealedkb.errors import EmbeddingError, IntegrityError, ValidationError
from sealedkb.formats.aad import EMBEDDING_COLUMN, ENTRIES_TABLE, field_aad
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode, EntryPatch
from sealedkb.search.engine import (
    DCPE_BETA,
    SearchMode,
    match_terms,
    rrf,
    vector_from_bytes,
)

# Search runs over the Unix socket and through the verified-TLS endpoint (database transport).
pytestmark = pytest.mark.db_transports("socket", "tls")


def sql(url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params or None)
        return cur.fetchall() if cur.description else []


def titles(kb: KnowledgeBase, query: str, **kw: Any) -> list[str]:
    return [h.title for h in kb.search(query, **kw).hits]


def seed(kb: KnowledgeBase) -> dict[str, uuid.UUID]:
    ids = {}
    ids["pool"] = kb.add(
        "Use pgbouncer in session mode; prepared statements break in transaction mode.",
        title="Connection pooling",
        entry_type="decision",
        tags=["db", "ops"],
    ).id
    ids["rotate"] = kb.add(
        "Rotate the KMS key yearly; every data key is re-wrapped under the new version.",
        title="Key rotation",
        entry_type="runbook",
        tags=["security", "ops"],
    ).id
    ids["vacuum"] = kb.add(
        "Autovacuum falls behind on hot tables; lower the scale factor for those tables.",
        title="Vacuum tuning",
        entry_type="lesson",
        tags=["db"],
    ).id
    ids["other"] = kb.add(
        "Pooling note in another namespace", title="Elsewhere", namespace="other"
    ).id
    return ids


def test_three_modes_find_the_relevant_entry(any_kb: KnowledgeBase) -> None:
    seed(any_kb)
    for mode in SearchMode:
        r = any_kb.search("connection pooling with pgbouncer", mode=mode)
        assert r.mode is mode and r.requested_mode is mode
        assert r.hits and r.hits[0].title == "Connection pooling", mode
    hit = any_kb.search("pgbouncer").hits[0]
    assert hit.entry_type.value == "decision" and hit.tags == ("db", "ops")
    assert "pgbouncer" in hit.snippet and hit.source is None and hit.namespace == "default"


def test_title_is_weighted_above_content(any_kb: KnowledgeBase) -> None:
    a = any_kb.add("Something about glaciers and ice.", title="Volcano field notes")
    b = any_kb.add("A volcano erupted near the glacier station.", title="Station diary")
    r = any_kb.search("volcano", mode="keyword")
    assert [h.id for h in r.hits] == [a.id, b.id]
    assert r.hits[0].score > r.hits[1].score


def test_filters_namespace_type_tags_since(any_kb: KnowledgeBase) -> None:
    ids = seed(any_kb)
    q = "pooling tables key"
    assert set(titles(any_kb, q, namespace="other")) == {"Elsewhere"}
    assert titles(any_kb, q, entry_type="runbook") == ["Key rotation"]
    assert set(titles(any_kb, q, tags=["db"])) == {"Connection pooling", "Vacuum tuning"}
    assert titles(any_kb, q, tags=["DB", "ops"]) == ["Connection pooling"]  # AND, normalised
    assert titles(any_kb, q, tags=["nope"]) == []
    url = any_kb.db.url
    sql(url, "UPDATE kb_entries SET created_at = now() - interval '10 days' WHERE id = %s",
        (ids["vacuum"],))  # fmt: skip
    since = (datetime.now(UTC) - timedelta(days=3)).date().isoformat()
    for mode in SearchMode:
        got = titles(any_kb, q, since=since, mode=mode)
        assert "Vacuum tuning" not in got and got, mode
    with pytest.raises(ValidationError):
        any_kb.search(q, since="last week")
    with pytest.raises(ValidationError):
        any_kb.search(q, entry_type="poem")


def test_deleted_and_updated_entries(any_kb: KnowledgeBase) -> None:
    ids = seed(any_kb)
    any_kb.delete(ids["pool"])
    assert "Connection pooling" not in titles(any_kb, "pgbouncer pooling")
    any_kb.update(ids["vacuum"], EntryPatch(content="Now about zeppelins only."))
    assert titles(any_kb, "zeppelins", mode="keyword") == ["Vacuum tuning"]
    assert titles(any_kb, "autovacuum", mode="keyword") == []
    assert titles(any_kb, "zeppelins", mode="semantic")[0] == "Vacuum tuning"


def test_dedup_returns_the_existing_entry_unless_forced(any_kb: KnowledgeBase) -> None:
    a = any_kb.add("Same words here.", title="first")
    assert any_kb.add("  Same   words\nhere. ", title="second").id == a.id  # whitespace-normalised
    assert any_kb.get(a.id).title == "first"
    assert any_kb.add("Same words here.", namespace="elsewhere").id != a.id
    forced = any_kb.add("Same words here.", force=True)
    assert forced.id != a.id
    assert any_kb.add("Same words here.").id == a.id  # the original still answers
    any_kb.delete(a.id)
    fresh = any_kb.add("Same words here.")
    assert fresh.id not in (a.id, forced.id)
    # an update may make content identical to another entry: allowed, no error
    b = any_kb.add("different words")
    any_kb.update(b.id, EntryPatch(content="Same words here."))
    assert any_kb.get(b.id).content == "Same words here."
    assert len(any_kb.list(namespace="default", limit=100)) == 3  # forced, fresh, b


def test_dedup_fingerprint_is_keyed_in_encrypted_mode(any_kb: KnowledgeBase) -> None:
    plain_sha = hashlib.sha256(b"Same words here.").hexdigest()
    e = any_kb.add("Same words here.")
    (fp,) = sql(any_kb.db.url, "SELECT fingerprint FROM kb_entries WHERE id = %s", (e.id,))[0]
    if any_kb.keyring is not None:
        assert fp == any_kb.keyring.blinder("default").fingerprint("Same words here.")
        assert fp != plain_sha and len(fp) == 32
    else:
        assert fp == plain_sha


def test_pagination_and_hard_caps(any_kb: KnowledgeBase) -> None:
    for i in range(25):
        any_kb.add(f"Shared topic word ferry number {i} alpha{i}", title=f"ferry {i}")
    first = any_kb.search("ferry", limit=10, mode="keyword")
    second = any_kb.search("ferry", limit=10, offset=10, mode="keyword")
    assert len(first.hits) == 10 and first.next_offset == 10
    assert not {h.id for h in first.hits} & {h.id for h in second.hits}
    last = any_kb.search("ferry", limit=10, offset=20, mode="keyword")
    assert len(last.hits) == 5 and last.next_offset is None
    for bad in ({"limit": 0}, {"limit": 51}, {"offset": -1}, {"offset": 195, "limit": 10}):
        with pytest.raises(ValidationError):
            any_kb.search("ferry", **bad)
    for bad_query in ("", "   ", "x" * 1001):
        with pytest.raises(ValidationError):
            any_kb.search(bad_query)
    with pytest.raises(ValidationError):
        any_kb.search("ferry", mode="fuzzy")
    # only stop words: no keyword hits, but no error either
    assert any_kb.search("the and of", mode="keyword").hits == []


class _Broken:
    model_id = "hashing-v1-384"
    dim = 384

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        raise EmbeddingError("model unavailable")


def test_hybrid_falls_back_to_keyword_when_the_embedder_fails(any_kb: KnowledgeBase) -> None:
    seed(any_kb)
    any_kb.engine.embedder = _Broken()
    r = any_kb.search("pgbouncer pooling")
    assert r.mode is SearchMode.KEYWORD and r.requested_mode is SearchMode.HYBRID
    assert r.hits[0].title == "Connection pooling"
    assert r.warnings and "keyword" in r.warnings[0]
    with pytest.raises(EmbeddingError):
        any_kb.search("pgbouncer", mode="semantic")
    # adding while the model is down still works; the entry simply has no vector yet
    any_kb.indexer.embedder = _Broken()
    e = any_kb.add("Entry written while the model was down about quokkas")
    (row,) = sql(any_kb.db.url, "SELECT embed_model FROM kb_entries WHERE id = %s", (e.id,))
    assert row == (None,)
    assert titles(any_kb, "quokkas", mode="keyword")


class _OtherModel(HashingEmbedder):
    @property
    def model_id(self) -> str:
        return "another-model-384"


def test_model_change_is_detected_and_reembed_redoes_vectors(any_kb: KnowledgeBase) -> None:
    ids = seed(any_kb)
    new = _OtherModel()
    for part in (any_kb.indexer, any_kb.engine):
        part.embedder = new
    any_kb.embedder = new
    # vectors of the old model are never compared with the new model's queries
    assert any_kb.search("pgbouncer pooling", mode="semantic").hits == []
    assert any_kb.search_table.embedding_counts(new.model_id, 384)["other_model"] == 4
    done = any_kb.reembed(namespace="default")
    assert done["reembedded"] == 3 and done["model"] == "another-model-384"
    assert any_kb.search("pgbouncer pooling", mode="semantic").hits[0].id == ids["pool"]
    assert any_kb.reembed()["reembedded"] == 1  # the other namespace
    assert any_kb.reembed()["reembedded"] == 0  # resumable: nothing left
    assert any_kb.reembed(redo_all=True)["reembedded"] == 4
    assert any_kb.get(ids["pool"]).version == 1  # vectors are not entry versions


def test_no_embedder_means_keyword_search(make_settings: Callable[..., Settings]) -> None:
    kb, _ = KnowledgeBase.init(make_settings(embedder="none"), EncryptionMode.ON)
    try:
        kb.add("Keyword only knowledge about lighthouses", title="Lighthouse")
        r = kb.search("lighthouses")
        assert r.mode is SearchMode.KEYWORD and r.hits[0].title == "Lighthouse" and r.warnings
        with pytest.raises(EmbeddingError):
            kb.reembed()
    finally:
        kb.close()


def test_encrypted_rows_hold_tokens_dcpe_and_sealed_vectors(kb: KnowledgeBase) -> None:
    e = kb.add("Zebras graze near the watering hole", title="Savanna", tags=["wildlife"])
    (row,) = sql(
        kb.db.url,
        "SELECT kw_tokens::text, kw_plain, embedding_enc, embedding_sealed, embedding_plain,"
        " embed_model, embed_dim, title_plain, content_plain FROM kb_entries WHERE id = %s",
        (e.id,),
    )
    kw, kw_plain, enc, sealed, plain, model, dim, t_plain, c_plain = row
    assert kw_plain is None and plain is None and t_plain is None and c_plain is None
    for word in ("zebra", "graze", "savanna", "water"):
        assert word not in kw
    blinder = kb.keyring.blinder("default")  # type: ignore[union-attr]
    assert f"'{blinder.word_token('savanna')}':1A" in kw
    assert blinder.word_token("zebra") in kw
    assert model == "hashing-v1-384" and dim == 384
    exact = kb.embedder.embed(["Savanna\n\nZebras graze near the watering hole"])[0]  # type: ignore[union-attr]
    aad = field_aad("default", ENTRIES_TABLE, EMBEDDING_COLUMN, str(e.id))
    opened = vector_from_bytes(kb.keyring.open(bytes(sealed), aad), 384)  # type: ignore[union-attr]
    assert np.allclose(opened, exact, atol=1e-6)
    enc_v = np.array([float(x) for x in enc.strip("[]").split(",")])  # no pgvector on this conn
    assert not np.allclose(enc_v, exact, atol=0.1)  # rotated and perturbed
    cipher = kb.keyring.vector_cipher("default", 384, DCPE_BETA)  # type: ignore[union-attr]
    assert np.linalg.norm(enc_v - cipher.rotate(exact)[0]) <= DCPE_BETA / 4 + 1e-5


def test_blind_tsvector_equals_the_grouped_pipeline_in_postgresql(kb: KnowledgeBase) -> None:
    """The write path lists every word occurrence and lets PostgreSQL merge them: the
    stored tsvector is the one the grouped literal (positioned_terms) describes,
    including the 256-position cap and clamping at 16383. (The form with positions
    that rows written before the hardening hold; new rows: see the next test.)"""
    from sealedkb.search import text

    kb.indexer.keyword_positions = True
    blinder = kb.keyring.blinder("default")  # type: ignore[union-attr]
    docs = [
        ("Running dogs", "dogs run and run, the dog runs " * 3),
        ("Alpha", " ".join(["alpha"] * 300 + ["beta", "alpha"])),
        ("Big", " ".join(["gamma"] * 300 + ["filler"] * 17000 + ["omega", "omega"])),
    ]
    for title, content in docs:
        e = kb.add(content, title=title)
        grouped = text.tsvector_literal(
            [(blinder.word_token(t), p) for t, p in text.positioned_terms(title, content).items()]
        )
        (row,) = sql(
            kb.db.url,
            "SELECT kw_tokens = %s::tsvector FROM kb_entries WHERE id = %s",
            (grouped, e.id),
        )
        assert row[0] is True


def test_blind_tsvector_holds_no_positions(kb: KnowledgeBase) -> None:
    """New rows: each lexeme once, no positions; a title lexeme has weight A at the one
    position 1 (docs/SEARCH.md, "Leakage")."""
    blinder = kb.keyring.blinder("default")  # type: ignore[union-attr]
    e = kb.add("dogs run and bark, the dog runs " * 3, title="Running dogs")
    run, dog, bark = (blinder.word_token(w) for w in ("run", "dog", "bark"))
    want = f"{run}:1A {dog}:1A {bark}"
    (row,) = sql(
        kb.db.url,
        "SELECT kw_tokens = %s::tsvector, kw_tokens::text FROM kb_entries WHERE id = %s",
        (want, e.id),
    )
    assert row[0] is True, row[1]


def test_plaintext_rows_hold_to_tsvector_and_plain_vectors(plain_kb: KnowledgeBase) -> None:
    e = plain_kb.add("Zebras graze near the watering hole", title="Savanna")
    (row,) = sql(
        plain_kb.db.url,
        "SELECT kw_plain::text, kw_tokens, embedding_enc, embedding_sealed, embedding_plain"
        " FROM kb_entries WHERE id = %s",
        (e.id,),
    )
    assert "'zebra'" in row[0] and "'savanna':1A" in row[0]
    assert row[1] is None and row[2] is None and row[3] is None and row[4] is not None


def test_rrf_fuses_by_reciprocal_rank() -> None:
    a, b, c = (uuid.UUID(int=i) for i in (1, 2, 3))
    fused = rrf([[(a, 9.0), (b, 5.0)], [(b, 0.9), (c, 0.8)]])
    assert [i for i, _ in fused] == [b, a, c]
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)


def test_real_model_semantic_search(make_settings: Callable[..., Settings]) -> None:
    kb, _ = KnowledgeBase.init(make_settings(embedder="minilm"), EncryptionMode.ON)
    try:
        kb.add("To make a script executable, add a shebang line and run chmod +x.", title="Scripts")
        kb.add("Our cafeteria serves lunch from noon until two.", title="Lunch")
        r = kb.search("How do I run my Python program directly on Unix?", mode="semantic")
        assert r.hits[0].title == "Scripts"
        assert r.hits[0].score > r.hits[1].score + 0.2
    finally:
        kb.close()


def test_match_terms_keeps_the_rarest_within_budget() -> None:
    assert match_terms(["a", "b", "c"], [None, None, None]) == ["a", "b", "c"]
    assert match_terms(["common", "rare", "mid"], [0.5, None, 0.04]) == ["rare", "mid"]
    assert match_terms(["x", "y"], [0.6, 0.7]) == ["x"]  # at least one: the rarest


def test_keyword_search_with_statistics(any_kb: KnowledgeBase) -> None:
    for i in range(60):
        any_kb.add(f"Every object here is number {i}, filler{i}.", title=f"Object {i}")
    target = any_kb.add("Object lifetime and the rare word zygote.", title="Lifetimes")
    sql(any_kb.db.url, "ANALYZE kb_entries")
    column = "kw_tokens" if any_kb.encrypted else "kw_plain"
    freqs = any_kb.search_table.term_frequencies(column, max_age=0)
    assert max(freqs.values()) > 0.9  # "object" is everywhere
    r = any_kb.search("zygote object", mode="keyword")
    assert r.hits[0].id == target.id
    assert len(r.hits) == 1  # rows holding only the everywhere-word are not ranked
    assert len(any_kb.search("object", mode="keyword", limit=50).hits) == 50  # still answered


def test_keyword_search_on_dotted_names(any_kb: KnowledgeBase) -> None:
    # PostgreSQL's parser keeps 'sys.path' as one lexeme; the blind pipeline splits it
    e = any_kb.add("Append the folder to sys.path before importing.", title="Module search")
    assert any_kb.search("sys.path", mode="keyword").hits[0].id == e.id


@pytest.mark.parametrize("column", ["doc_sealed", "embedding_sealed"])
def test_a_tampered_hit_or_candidate_fails_naming_its_entry(kb: KnowledgeBase, column: str) -> None:
    """Hits' documents and over-fetched vectors are opened in batches; a value that fails
    to open still fails the search with the entry's id, and is counted."""
    ids = seed(kb)
    target = ids["pool"]
    sql(
        kb.db.url,
        f"UPDATE kb_entries SET {column} = set_byte({column}, 60,"
        f" get_byte({column}, 60) # 1) WHERE id = %s",
        (target,),
    )
    before = kb.keyring.open_failures  # type: ignore[union-attr]
    mode = "keyword" if column == "doc_sealed" else "semantic"
    with pytest.raises(IntegrityError, match=str(target)):
        kb.search("pgbouncer session prepared statements pooling", mode=mode, limit=10)
    assert kb.keyring.open_failures == before + 1  # type: ignore[union-attr]


def test_keyword_tokenizer_version_is_recorded_and_followed(
    any_kb: KnowledgeBase, make_settings: Callable[..., Settings]
) -> None:
    from sealedkb.search import text

    url = any_kb.db.url
    assert sql(url, "SELECT value FROM kb_meta WHERE key = 'keyword_tokenizer'") == [("2",)]
    assert any_kb.status()["keyword_tokenizer"] == 2
    release = any_kb.add("Python 3.11.4 fixes the tokenizer.", title="release notes").id
    section = any_kb.add("Section 3 lists 11 items and 4 tables.", title="counts").id
    # version 2: "3.11.4" is one word, as PostgreSQL's parser makes it one lexeme
    assert [h.id for h in any_kb.search("3.11.4", mode="keyword").hits] == [release]
    # A knowledge base indexed before version 2 existed (no kb_meta key) keeps
    # version 1, for writes and queries alike: its stored tokens stay findable.
    any_kb.close()
    sql(url, "DELETE FROM kb_meta WHERE key = 'keyword_tokenizer'")
    old = KnowledgeBase.open(make_settings())
    try:
        assert old.engine.tokenizer == old.indexer.tokenizer == text.TOKENIZER_V1
        assert old.status()["keyword_tokenizer"] == 1
        v1 = old.add("Python 3.11.4 fixes the tokenizer again.", title="v1 notes").id
        got = {h.id for h in old.search("3.11.4", mode="keyword", limit=10).hits}
        assert v1 in got
        if old.encrypted:  # blind tokens of "3", "11", "4" (plaintext: PostgreSQL's parser)
            assert section in got
    finally:
        old.close()
    sql(url, "INSERT INTO kb_meta (key, value) VALUES ('keyword_tokenizer', '9')")
    with pytest.raises(IntegrityError, match="tokenizer version"):
        KnowledgeBase.open(make_settings())
