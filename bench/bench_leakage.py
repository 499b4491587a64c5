"""What the database learns from the server-side search index: the known-document
attack of bench/leakage/attack.py on a real corpus nobody here wrote.

Corpus: the FAQ and library reference pages of Debian's python3.11-doc package
(/usr/share/doc/python3.11/html/{faq,library}), imported with the project's own
importer (``KnowledgeBase.import_paths``) into ONE namespace of an encrypted knowledge
base with the server-side search index. Real MiniLM embeddings (cached by
bench/corpus.py).

Configurations:

* ``before``: the index as it was written before the hardening: keyword tokens with
  positions and title weights, DCPE β = 1.0, queries rotated but not perturbed;
* ``hardened``: ``sealedkb reindex`` of the namespace with today's settings (tokens
  without positions, the chosen β, perturbed queries): new index and vector keys, every
  row rebuilt. The mapped pairs of ``before`` are also tried on the rebuilt rows.

For each known fraction (5 %, 20 %, 70 % of the rows, the attacker's known plaintext
documents, drawn at random), the attacker (SQL access, public tokenizer and model)
maps known documents to rows, learns token -> stem, recovers the other rows' words
(and order) and estimates the DCPE rotation by Procrustes.

    python bench/bench_leakage.py [--sections faq,library] [--fractions 0.05,0.2,0.7]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from corpus import EmbeddingCache, LookupEmbedder, ensure_python_doc
from leakage.attack import (
    AttackResult,
    KnownDoc,
    Row,
    decrypt_cosine,
    map_by_positions,
    procrustes,
    read_rows,
    run,
)
from leakage.attack import doc_terms as terms_of

from sealedkb.config import load_settings
from sealedkb.embed.cache import CachingEmbedder
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode
from sealedkb.search import engine
from sealedkb.search.engine import embedding_text
from sealedkb.store.embedded import EmbeddedPostgres

NAMESPACE = "pydocs"


def header() -> str:
    return (
        f"{'config':<10}{'known':>7}{'rows':>7}{'mapped':>8}{'right':>7}{'tokens':>8}"
        f"{'t.right':>8}{'occ%':>7}{'words%':>8}{'order':>7}{'bigram%':>9}{'rot.cos':>9}{'NN-id':>7}"
        f"{'c.cos':>7}"
    )


def line(config: str, frac: float, r: AttackResult) -> str:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    return (
        f"{config:<10}{frac * 100:>6.0f}%{r.known:>7}{r.mapped:>8}{r.mapped_correct:>7}"
        f"{r.tokens_mapped:>8}{r.tokens_correct:>8}{r.recovered_fraction * 100:>6.1f}%"
        f"{r.recovered_word_fraction * 100:>7.1f}%"
        f"{'yes' if r.order_recovered else 'no':>7}{r.ordered_bigrams * 100:>8.1f}%"
        f"{f(r.rotation_cosine):>9}{f(r.nn_identification):>7}{f(r.ciphertext_cosine):>7}"
    )


def attack_all(
    config: str, rows: list[Row], truth: list[KnownDoc], fractions: list[float], seed: int
) -> list[str]:
    out = []
    for frac in fractions:
        rng = random.Random(seed)
        order = list(range(len(truth)))
        rng.shuffle(order)
        n = round(frac * len(truth))
        known = [truth[i] for i in order[:n]]
        private = [truth[i] for i in order[n:]]
        t0 = time.perf_counter()
        res = run(rows, known, private)
        out.append(line(config, frac, res))
        print(out[-1], f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    return out


def stale_rotation(before: list[Row], after: list[Row], truth: list[KnownDoc]) -> float:
    """Procrustes from the before-rows mapped at 70 % known, applied to the rebuilt rows."""
    known = [terms_of(d) for d in truth]
    mapped = map_by_positions(before, known)
    pairs = [
        (truth[j].vector, before[i].vector)
        for j, i in list(mapped.items())[: round(0.7 * len(truth))]
        if truth[j].vector is not None and before[i].vector is not None
    ]
    r_hat = procrustes(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
    idx = {r.id: r for r in after}
    rows = [(d.vector, idx[d.id].vector) for d in truth if d.id in idx]
    x = np.stack([p[0] for p in rows if p[1] is not None])
    c = np.stack([p[1] for p in rows if p[1] is not None])
    return decrypt_cosine(r_hat, c, x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sections", default="faq,library")
    ap.add_argument("--fractions", default="0.05,0.2,0.7")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    fractions = [float(x) for x in args.fractions.split(",")]
    root = ensure_python_doc()
    cache = EmbeddingCache()
    lookup = CachingEmbedder(LookupEmbedder(cache), max_entries=100_000)
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sealedkb-leak-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pgdata", fast=True)
        server.start()
        try:
            with psycopg.connect(server.uri(), autocommit=True) as c:
                c.execute("CREATE DATABASE leak")
            settings = load_settings(
                Path(tmp) / "home", database_url=server.uri("leak"), search_index="server"
            )
            kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
            kb.embedder = kb.indexer.embedder = kb.engine.embedder = lookup
            # before: the index as written before the hardening
            kb.indexer.keyword_positions = True
            hardened_beta = engine.DCPE_BETA
            engine.DCPE_BETA = 1.0
            t0 = time.perf_counter()
            for sec in args.sections.split(","):
                kb.import_paths([str(root / sec)], namespace=NAMESPACE)
            print(f"imported in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
            # ground truth (scoring only): every row's plaintext and true embedding
            truth: list[KnownDoc] = []
            with psycopg.connect(server.uri("leak")) as conn:
                rows_before = read_rows(conn, NAMESPACE)
            for r in rows_before:
                e = kb.get(r.id)
                v = lookup.embed([embedding_text(e.title, e.content)])[0]
                truth.append(KnownDoc(r.id, e.title, e.content, v))
            corpus = (
                f"python3.11-doc {args.sections} ({len(truth)} chunks, one namespace), "
                "imported with KnowledgeBase.import_paths; real MiniLM embeddings"
            )
            print(corpus, file=sys.stderr)
            lines += attack_all("before", rows_before, truth, fractions, args.seed)
            # hardened: reindex with today's settings
            kb.indexer.keyword_positions = engine.KEYWORD_POSITIONS
            engine.DCPE_BETA = hardened_beta
            t0 = time.perf_counter()
            res = kb.reindex(NAMESPACE)[0]
            reindex_s = time.perf_counter() - t0
            with psycopg.connect(server.uri("leak")) as conn:
                rows_after = read_rows(conn, NAMESPACE)
            lines += attack_all("hardened", rows_after, truth, fractions, args.seed)
            # what the attacker learned before (70 % known), tried on the rebuilt rows
            stale_cos = stale_rotation(rows_before, rows_after, truth)
            old_tokens = {t for r in rows_before for t in r.lexemes}
            new_tokens = {t for r in rows_after for t in r.lexemes}
            kb.close()
        finally:
            server.stop()
    print(f"corpus: {corpus}")
    print(
        "attacker: SQL access to kb_entries, the public tokenizer and model, the plaintext of"
        " a random fraction of the rows"
    )
    print(
        f"reindex: {res.reindexed} rows in {reindex_s:.0f}s; tokens of before still present"
        f" after: {len(old_tokens & new_tokens)} of {len(old_tokens)}; the rotation"
        f" estimated before, on the rebuilt vectors: mean cosine {stale_cos:.3f}"
    )
    print(
        "columns: known fraction, known docs, mapped to a row (right), tokens learned (right),"
        " private word occurrences recovered, private distinct words (per row) recovered,"
        " order readable, private bigrams recovered in"
        " order, mean cosine decrypted/true vector, nearest-neighbour identification,"
        " mean cosine ciphertext/true vector (no attack)"
    )
    print(header())
    for ln in lines:
        print(ln)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
