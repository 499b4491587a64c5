"""End-to-end recall@10 of semantic search on the encrypted server index, as search
runs it (HNSW on the DCPE ciphertexts, over-fetch, perturbed queries, exact re-rank),
against exact plaintext search, on real MiniLM vectors of python3.11-doc.

    python bench/leakage/recall_e2e.py [--betas 2.5] [--oversamples 8,12]

Rows: the FAQ and library chunks (bench/corpus.py), added in batches; queries: 300
held-out chunk vectors, handed to search through a stub embedder (query "q<n>").
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psycopg
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from corpus import EmbeddingCache, chunk_texts, doc_chunks

from sealedkb.config import load_settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode, new_entry
from sealedkb.search import engine
from sealedkb.store.embedded import EmbeddedPostgres


class Stub:
    """Rows: their cached vector by text; queries "q<n>": the n-th held-out vector."""

    def __init__(self, by_text: dict[str, NDArray[np.float32]], queries: NDArray[np.float32]):
        self.by_text, self.queries = by_text, queries

    model_id = "all-MiniLM-L6-v2"
    dim = 384

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return np.stack(
            [
                self.queries[int(t[1:])]
                if t.startswith("q") and t[1:].isdigit()
                else self.by_text[t]
                for t in texts
            ]
        )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--betas", default="2.5")
    ap.add_argument("--oversamples", default="8,12")
    args = ap.parse_args()
    chunks = doc_chunks(["faq", "library"])
    texts = chunk_texts(chunks)
    vecs = EmbeddingCache().vectors(texts, label="chunks")
    rng = np.random.default_rng(5)
    order = rng.permutation(len(chunks))
    q_idx, row_idx = order[:300], order[300:]
    queries = vecs[q_idx]
    stub = Stub(dict(zip(texts, vecs, strict=True)), queries)
    with tempfile.TemporaryDirectory(prefix="sealedkb-e2e-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pgdata", fast=True)
        server.start()
        try:
            for beta in [float(b) for b in args.betas.split(",")]:
                db = f"e2e_{str(beta).replace('.', '_')}"
                with psycopg.connect(server.uri(), autocommit=True) as c:
                    c.execute(f"CREATE DATABASE {db}")
                settings = load_settings(
                    Path(tmp) / f"home-{db}", database_url=server.uri(db), search_index="server"
                )
                kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
                kb.embedder = kb.indexer.embedder = kb.engine.embedder = stub
                engine.DCPE_BETA = beta
                ids = []
                sel = list(row_idx)
                for i in range(0, len(sel), 500):
                    part = [chunks[j] for j in sel[i : i + 500]]
                    got = kb.add_many(
                        [new_entry(c.content, title=c.title) for c in part], force=True
                    )
                    ids.extend(str(e.id) for e in got)
                with psycopg.connect(server.uri(db), autocommit=True) as c:
                    c.execute("VACUUM ANALYZE kb_entries")
                data = vecs[row_idx]
                truth = np.argsort(-(queries @ data.T), axis=1)[:, :10]
                for o in [int(x) for x in args.oversamples.split(",")]:
                    kb.engine.oversample = o
                    hits = 0
                    times = []
                    for qi in range(len(queries)):
                        t0 = time.perf_counter()
                        r = kb.search(f"q{qi}", mode="semantic", limit=10)
                        times.append(time.perf_counter() - t0)
                        want = {ids[j] for j in truth[qi]}
                        hits += len(want & {str(h.id) for h in r.hits})
                    print(
                        f"beta {beta} oversample x{o}: recall@10 {hits / (10 * len(queries)):.4f}"
                        f", p50 {1000 * float(np.median(times)):.2f} ms"
                        f" ({len(ids)} rows, {len(queries)} queries, HNSW, perturbed queries)",
                        flush=True,
                    )
                kb.close()
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
