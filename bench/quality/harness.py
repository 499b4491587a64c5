"""Runs a corpus through real knowledge bases and scores every search mode.

For each question the harness searches in keyword, semantic and hybrid mode (what
``sealedkb search`` and the MCP ``search`` tool run) and records the rank of the first
relevant document. It also keeps both arms' candidate lists at the depth hybrid fuses
(``MIN_FUSION_DEPTH`` + 1), so fusion functions can be compared offline on exactly the
lists the engine fuses (:func:`offline`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from quality.corpora import Corpus
from quality.stats import first_rank
from sealedkb.config import load_settings
from sealedkb.embed import Embedder
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import MAX_ADD_BATCH, EncryptionMode, new_entry
from sealedkb.search.engine import MIN_FUSION_DEPTH, SearchMode
from sealedkb.store.embedded import EmbeddedPostgres

MODES = (SearchMode.KEYWORD, SearchMode.SEMANTIC, SearchMode.HYBRID)
ARM_DEPTH = MIN_FUSION_DEPTH + 1  # hybrid's arms for a first page of 10
Ranked = list[tuple[uuid.UUID, float]]
CONFIGS = ("encrypted-memory", "encrypted-server", "plaintext")


@dataclass(frozen=True, slots=True)
class QuestionRun:
    text: str
    relevant: frozenset[str]
    ranks: dict[str, int | None]  # mode -> rank of the first relevant hit (top 10)
    keyword_arm: Ranked  # the lists hybrid fuses, with their arms' scores
    semantic_arm: Ranked


@dataclass(frozen=True, slots=True)
class CorpusRun:
    corpus: str
    encryption: str  # encrypted | plaintext (+ the encrypted index mode: memory | server)
    entries: int
    questions: tuple[QuestionRun, ...]
    labels: dict[uuid.UUID, str]  # entry id -> document label, for offline fusion


def use_embedder(kb: KnowledgeBase, emb: Embedder) -> None:
    kb.embedder = emb
    kb.indexer.embedder = emb
    kb.engine.embedder = emb


@contextmanager
def server(tmp: Path) -> Iterator[EmbeddedPostgres]:
    srv = EmbeddedPostgres(tmp / "pgdata", fast=True)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@contextmanager
def knowledge_base(
    srv: EmbeddedPostgres,
    tmp: Path,
    db: str,
    mode: EncryptionMode,
    embedder: Embedder | None,
    index: str = "memory",
) -> Iterator[KnowledgeBase]:
    """A new knowledge base whose embedder is ``embedder`` (the memory index is built
    for the configured model's id, so the setting names the same model)."""
    with psycopg.connect(srv.uri(), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {db}")
        c.execute(f"CREATE DATABASE {db}")
    name = "hash" if embedder is None or "hash" in embedder.model_id else "minilm"
    settings = load_settings(
        tmp / f"home-{db}", database_url=srv.uri(db), embedder=name, search_index=index
    )
    kb, _ = KnowledgeBase.init(settings, mode)
    if embedder is not None:
        use_embedder(kb, embedder)
    try:
        yield kb
    finally:
        kb.close()


def load(kb: KnowledgeBase, corpus: Corpus, analyze_url: str | None = None) -> int:
    """Store the corpus (bulk adds, no dedup: every chunk is its own entry)."""
    docs = corpus.docs
    for i in range(0, len(docs), MAX_ADD_BATCH):
        kb.add_many(
            [
                new_entry(d.content, title=d.title, source=d.source, entry_type="doc")
                for d in docs[i : i + MAX_ADD_BATCH]
            ],
            force=True,
        )
    if analyze_url is not None:
        with psycopg.connect(analyze_url, autocommit=True) as c:
            c.execute("VACUUM ANALYZE kb_entries")  # as autovacuum would
    return len(docs)


def evaluate(kb: KnowledgeBase, corpus: Corpus, encryption: str, entries: int) -> CorpusRun:
    by_source = {d.source: d.label for d in corpus.docs}
    labels: dict[uuid.UUID, str] = {}
    runs = []
    for q in corpus.questions:
        ranks: dict[str, int | None] = {}
        arms: dict[str, Ranked] = {}
        for mode in MODES:
            limit = ARM_DEPTH if mode is not SearchMode.HYBRID else 10
            hits = kb.search(q.text, mode=mode, limit=limit).hits
            for h in hits:
                labels[h.id] = by_source.get(h.source or "", "")
            ranks[mode.value] = first_rank([labels[h.id] for h in hits[:10]], q.relevant)
            arms[mode.value] = [(h.id, h.score) for h in hits]
        runs.append(
            QuestionRun(
                q.text,
                q.relevant,
                ranks,
                arms[SearchMode.KEYWORD.value],
                arms[SearchMode.SEMANTIC.value],
            )
        )
    return CorpusRun(corpus.name, encryption, entries, tuple(runs), labels)


def run(
    srv: EmbeddedPostgres,
    tmp: Path,
    corpus: Corpus,
    embedder: Embedder,
    configs: Sequence[str] = CONFIGS,
) -> list[CorpusRun]:
    """Store and ask the corpus in each configuration: ``encrypted-memory`` (the default
    index of an encrypted knowledge base), ``encrypted-server``, ``plaintext``."""
    out = []
    for label in configs:
        mode = EncryptionMode.OFF if label == "plaintext" else EncryptionMode.ON
        index = label.removeprefix("encrypted-") if mode is EncryptionMode.ON else "server"
        db = f"q_{corpus.name.replace('-', '_')}_{label.replace('-', '_')}"
        with knowledge_base(srv, tmp, db, mode, embedder, index) as kb:
            n = load(kb, corpus, srv.uri(db))
            out.append(evaluate(kb, corpus, label, n))
    return out


Fusion = Callable[[Ranked, Ranked], Ranked]


def offline(run_: CorpusRun, fuse: Fusion) -> list[int | None]:
    """Ranks a fusion function gives on the recorded arm lists (the first 10 of its list)."""
    out = []
    for q in run_.questions:
        fused = fuse(q.keyword_arm, q.semantic_arm)[:10]
        out.append(first_rank([run_.labels.get(i, "") for i, _ in fused], q.relevant))
    return out
