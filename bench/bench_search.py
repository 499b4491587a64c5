"""Search quality on a real corpus nobody here wrote: the Python 3.11 FAQ.

Corpus: the FAQ pages of Debian's python3.11-doc package
(/usr/share/doc/python3.11/html/faq/*.html, without index.html), imported with
``KnowledgeBase.import_paths`` (the code behind ``sealedkb import``) into an
encrypted and a plaintext knowledge base on one embedded PostgreSQL. With
``--distractors`` more of the documentation (tutorial, howto, ...) is imported
too, so the FAQ answers must be found among thousands of other chunks.

Queries: every FAQ question (an h3 heading ending in '?'); the relevant entries
are the chunks of that question's answer section (same source anchor). Metrics
per mode (keyword, semantic, hybrid) x encryption: recall@5 (the answer is in
the top 5) and MRR@10.

Variants: ``titled`` imports the pages as they are, so a chunk's title holds
its question; ``answer-only`` stores each answer under its page title only, so
a query has to match the answer text (a harder, less flattering test).

Embeddings: real MiniLM for chunks and queries, cached in bench/.cache by
bench/corpus.py (identical vectors for both modes).

    python bench/bench_search.py [--distractors tutorial,howto,...] [--migrated] [--json]

``--migrated`` also migrates each plaintext knowledge base in place
(``sealedkb migrate run``) and evaluates it again: the migration's goal "search quality
holds on the migrated data".
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import EmbeddingCache, LookupEmbedder, chunk_texts, doc_chunks, ensure_python_doc

from sealedkb.config import load_settings
from sealedkb.embed import Embedder
from sealedkb.embed.cache import CachingEmbedder
from sealedkb.ingest.importer import Chunk
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.migrating import Migrator
from sealedkb.model import EncryptionMode
from sealedkb.search.engine import SearchMode
from sealedkb.store.embedded import EmbeddedPostgres

MODES = (SearchMode.KEYWORD, SearchMode.SEMANTIC, SearchMode.HYBRID)


def use_embedder(kb: KnowledgeBase, emb: Embedder) -> None:
    kb.embedder = emb
    kb.indexer.embedder = emb
    kb.engine.embedder = emb


def anchor(source: str) -> str:
    return source.split("/faq/", 1)[-1]


def load(kb: KnowledgeBase, variant: str, faq: list[Chunk], distractors: list[str]) -> None:
    root = ensure_python_doc()
    if variant == "titled":
        kb.import_paths(
            [str(p) for p in sorted((root / "faq").glob("*.html")) if p.name != "index.html"]
        )
        if distractors:
            kb.import_paths([str(root / d) for d in distractors], namespace="default")
        return
    for c in faq:
        page_title = c.title.split(" › ")[0]
        kb.add(c.content, title=page_title, source=c.source, entry_type="doc", force=True)
    if distractors:
        for c in doc_chunks(distractors):
            kb.add(c.content, title=c.title.split(" › ")[0], source=c.source, force=True)


def evaluate(kb: KnowledgeBase, questions: dict[str, str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for mode in MODES:
        r5 = 0
        rr = 0.0
        for q, want in questions.items():
            hits = kb.search(q, mode=mode, limit=10).hits
            rank = next(
                (i for i, h in enumerate(hits, 1) if h.source and anchor(h.source) == want), None
            )
            if rank is not None:
                r5 += rank <= 5
                rr += 1.0 / rank
        out[mode.value] = {"recall@5": r5 / len(questions), "mrr@10": rr / len(questions)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--distractors", default="", help="comma-separated doc sections, e.g. tutorial,howto"
    )
    ap.add_argument("--variants", default="titled,answer-only")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--migrated",
        action="store_true",
        help="also migrate the plaintext knowledge base in place and evaluate it (migration)",
    )
    args = ap.parse_args()
    distractors = [d for d in args.distractors.split(",") if d]
    faq = doc_chunks(["faq"])
    questions: dict[str, str] = {}
    for c in faq:
        if c.heading.endswith("?") and "#" in c.source:
            questions.setdefault(c.heading, anchor(c.source))
    cache = EmbeddingCache()
    cache.vectors(chunk_texts(faq), label="FAQ chunks")
    lookup = CachingEmbedder(LookupEmbedder(cache), max_entries=100_000)
    report: dict[str, Any] = {
        "corpus": "python3.11-doc FAQ" + (f" + {','.join(distractors)}" if distractors else ""),
        "questions": len(questions),
        "results": {},
    }
    with tempfile.TemporaryDirectory(prefix="sealedkb-qbench-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pgdata", fast=True)
        server.start()
        try:
            for variant in args.variants.split(","):
                for mode in (EncryptionMode.ON, EncryptionMode.OFF):
                    db = f"q_{variant.replace('-', '_')}_{mode.value}"
                    with psycopg.connect(server.uri(), autocommit=True) as c:
                        c.execute(f"CREATE DATABASE {db}")
                    settings = load_settings(Path(tmp) / f"home-{db}", database_url=server.uri(db))
                    kb, _ = KnowledgeBase.init(settings, mode)
                    use_embedder(kb, lookup)
                    t0 = time.perf_counter()
                    load(kb, variant, faq, distractors)
                    with psycopg.connect(server.uri(db), autocommit=True) as c:
                        c.execute("VACUUM ANALYZE kb_entries")  # as autovacuum would
                    entries = kb.status()["entries_total"]
                    res = evaluate(kb, questions)
                    label = "encrypted" if mode is EncryptionMode.ON else "plaintext"
                    report["results"].setdefault(variant, {})[label] = {"entries": entries, **res}
                    print(
                        f"{variant} {label}: {entries} entries, {time.perf_counter() - t0:.0f}s",
                        file=sys.stderr,
                    )
                    kb.close()
                    if mode is EncryptionMode.OFF and args.migrated:
                        # migration: the same plaintext knowledge base, migrated in place
                        t0 = time.perf_counter()
                        Migrator(settings).run()
                        kb = KnowledgeBase.open(settings)
                        use_embedder(kb, lookup)
                        res = evaluate(kb, questions)
                        entries = kb.status()["entries_total"]
                        report["results"][variant]["migrated"] = {"entries": entries, **res}
                        print(
                            f"{variant} migrated: {time.perf_counter() - t0:.0f}s", file=sys.stderr
                        )
                        kb.close()
        finally:
            server.stop()
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"corpus: {report['corpus']}; {report['questions']} questions; real MiniLM embeddings")
    for variant, by_enc in report["results"].items():
        print(f"\n{variant} ({by_enc['encrypted']['entries']} entries)")
        mig = by_enc.get("migrated")
        print(
            f"{'mode':<10}{'enc R@5':>9}{'plain R@5':>11}{'enc MRR':>9}{'plain MRR':>11}"
            + (f"{'migr R@5':>10}{'migr MRR':>10}" if mig else "")
        )
        for mode in MODES:
            e, p = by_enc["encrypted"][mode.value], by_enc["plaintext"][mode.value]
            print(
                f"{mode.value:<10}{e['recall@5']:>9.3f}{p['recall@5']:>11.3f}"
                f"{e['mrr@10']:>9.3f}{p['mrr@10']:>11.3f}"
                + (
                    f"{mig[mode.value]['recall@5']:>10.3f}{mig[mode.value]['mrr@10']:>10.3f}"
                    if mig
                    else ""
                )
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
