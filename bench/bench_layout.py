"""Row layout of kb_entries vs search and get latency, encrypted vs plaintext.

The question (search performance, hybrid p95): an encrypted row carries ~2.6 KB more than a
plaintext one (the sealed exact embedding, a tsvector of 20-character blind
tokens), so with everything inline (migration 001: toast_tuple_target 8160) an
encrypted row fills a heap page alone while plaintext rows share one, and a
keyword query that ranks thousands of rows reads ~1.6x more pages. Moving
columns out of line (TOAST) makes the heap denser but costs a TOAST fetch
wherever those columns are read. This script measures the trade-off on the
same data, layout by layout, so the decision rests on figures.

Layouts (applied to both databases with ALTER TABLE + VACUUM FULL, in order):

* ``inline``  — shipped: toast_tuple_target 8160, everything in the row.
* ``vectors-out`` — target 4080; keyword tsvectors and the document MAIN (kept
  in the row), vectors EXTERNAL: the DCPE / plain vector and the sealed exact
  embedding go to TOAST (semantic search fetches them: 2 TOAST reads per
  candidate in encrypted mode).
* ``sealed-out`` — target 4080; tsvectors and vectors MAIN, the sealed document
  and the sealed exact embedding EXTERNAL (TOAST): denser heap and one TOAST
  read per candidate, but every ``get`` reads its document from TOAST.

Method: 10k entries (bench_search_perf's corpus, embeddings supplied), queries =
FAQ questions + section headings, each run in both modes back to back, the mode
that goes first alternating (paired); 2,000 gets of random ids, paired the same
way. VACUUM FULL does not decompress values compressed under an earlier layout
(plaintext content compressed under a 4080 target stays compressed).

    python bench/bench_layout.py [--entries 10000] [--queries 300] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search_perf import build_entries, git_commit
from corpus import EmbeddingCache, LookupEmbedder, doc_chunks
from measure import pct

from sealedkb.config import load_settings
from sealedkb.embed.cache import CachingEmbedder
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode, new_entry
from sealedkb.search.engine import SearchMode, embedding_text
from sealedkb.store.embedded import EmbeddedPostgres

MODES = ("plaintext", "encrypted")
LAYOUTS: dict[str, tuple[int, dict[str, str]]] = {
    "inline": (
        8160,
        {
            "kw_tokens": "EXTENDED",
            "kw_plain": "EXTENDED",
            "doc_sealed": "EXTERNAL",
            "embedding_enc": "EXTERNAL",
            "embedding_sealed": "EXTERNAL",
            "embedding_plain": "EXTERNAL",
        },
    ),
    "vectors-out": (
        4080,
        {
            "kw_tokens": "MAIN",
            "kw_plain": "MAIN",
            "doc_sealed": "MAIN",
            "embedding_enc": "EXTERNAL",
            "embedding_sealed": "EXTERNAL",
            "embedding_plain": "EXTERNAL",
        },
    ),
    "sealed-out": (
        4080,
        {
            "kw_tokens": "MAIN",
            "kw_plain": "MAIN",
            "doc_sealed": "EXTERNAL",
            "embedding_enc": "MAIN",
            "embedding_sealed": "EXTERNAL",
            "embedding_plain": "MAIN",
        },
    ),
}


def apply_layout(url: str, name: str) -> dict[str, Any]:
    target, storage = LAYOUTS[name]
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"ALTER TABLE kb_entries SET (toast_tuple_target = {target})")
        for col, how in storage.items():
            c.execute(f"ALTER TABLE kb_entries ALTER COLUMN {col} SET STORAGE {how}")
        c.execute("VACUUM FULL kb_entries")
        c.execute("ANALYZE kb_entries")
        r = c.execute(
            "SELECT relpages, pg_relation_size(reltoastrelid) FROM pg_class"
            " WHERE relname = 'kb_entries'"
        ).fetchone()
    assert r is not None
    return {"heap_pages": r[0], "toast_mb": r[1] / 2**20}


def paired(kbs: dict[str, KnowledgeBase], calls: list[Any], rounds: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {m: [] for m in kbs}
    modes = list(kbs)
    for r in range(rounds):
        for i, call in enumerate(calls):
            for m in modes if (i + r) % 2 == 0 else modes[::-1]:
                t0 = time.perf_counter()
                call(kbs[m], m)
                times[m].append(time.perf_counter() - t0)
    row: dict[str, Any] = {}
    for m in kbs:
        row[f"{m}_p50_ms"] = statistics.median(times[m]) * 1e3
        row[f"{m}_p95_ms"] = pct(times[m], 0.95) * 1e3
    row["ratio_p50"] = row["encrypted_p50_ms"] / row["plaintext_p50_ms"]
    row["ratio_p95"] = row["encrypted_p95_ms"] / row["plaintext_p95_ms"]
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--gets", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    cache = EmbeddingCache()
    entries, info = build_entries(args.entries, cache)
    table = {embedding_text(e["title"], e["content"]): e["vector"] for e in entries}
    faq = sorted({c.heading for c in doc_chunks(["faq"]) if c.heading.endswith("?")})
    others = sorted({e["title"].split(" › ")[-1] for e in entries if e["real"]})
    queries = (faq + random.Random(9).sample(others, max(0, args.queries - len(faq))))[
        : args.queries
    ]
    for q, v in zip(queries, cache.vectors(queries, label="queries"), strict=True):
        table[q] = v

    class Supplied(LookupEmbedder):
        def embed(self, texts):  # type: ignore[no-untyped-def]
            return np.stack([table[t] for t in texts])

    supplied = Supplied(cache)
    results: dict[str, Any] = {
        "commit": git_commit(),
        "loadavg_start": os.getloadavg(),
        "corpus": info,
        "queries": len(queries),
        "layouts": {},
    }
    with tempfile.TemporaryDirectory(prefix="sealedkb-layout-") as tmp:
        base = Path(tmp)
        server = EmbeddedPostgres(base / "pgdata")
        server.start()
        try:
            with psycopg.connect(server.uri(), autocommit=True) as conn:
                for m in MODES:
                    conn.execute(f"CREATE DATABASE layout_{m}")
            kbs: dict[str, KnowledgeBase] = {}
            ids: dict[str, list[Any]] = {m: [] for m in MODES}
            for m in MODES:
                settings = load_settings(base / f"home-{m}", database_url=server.uri(f"layout_{m}"))
                kb, _ = KnowledgeBase.init(
                    settings, EncryptionMode.ON if m == "encrypted" else EncryptionMode.OFF
                )
                kb.embedder = kb.indexer.embedder = supplied
                kb.engine.embedder = CachingEmbedder(supplied, max_entries=100_000)
                for s in range(0, len(entries), 100):
                    news = [
                        new_entry(e["content"], title=e["title"], source=e["source"])
                        for e in entries[s : s + 100]
                    ]
                    ids[m].extend(e.id for e in kb.add_many(news))
                kbs[m] = kb
            picks = random.Random(3).sample(range(len(entries)), min(args.gets, len(entries)))
            for name in LAYOUTS:
                row: dict[str, Any] = {
                    m: apply_layout(server.uri(f"layout_{m}"), name) for m in MODES
                }
                for q in queries:  # warm caches and plans under this layout
                    for kb in kbs.values():
                        kb.search(q, limit=10)
                for mode in (SearchMode.HYBRID, SearchMode.KEYWORD, SearchMode.SEMANTIC):
                    row[mode.value] = paired(
                        kbs,
                        [
                            lambda kb, _m, q=q, mode=mode: kb.search(q, mode=mode, limit=10)
                            for q in queries
                        ],
                        args.rounds,
                    )
                row["get"] = paired(kbs, [lambda kb, m, i=i: kb.get(ids[m][i]) for i in picks], 1)
                results["layouts"][name] = row
                if not args.json:
                    report(name, row)
            for kb in kbs.values():
                kb.close()
        finally:
            server.stop()
    results["loadavg_end"] = os.getloadavg()
    if args.json:
        json.dump(results, sys.stdout, indent=2, default=float)
        sys.stdout.write("\n")
    return 0


def report(name: str, row: dict[str, Any]) -> None:
    p, e = row["plaintext"], row["encrypted"]
    print(
        f"{name}: heap pages plaintext {p['heap_pages']}, encrypted {e['heap_pages']}; "
        f"TOAST {p['toast_mb']:.1f} / {e['toast_mb']:.1f} MB"
    )
    for op in ("hybrid", "keyword", "semantic", "get"):
        r = row[op]
        print(
            f"  {op:<9} plain {r['plaintext_p50_ms']:6.2f} / {r['plaintext_p95_ms']:6.2f} ms"
            f"  enc {r['encrypted_p50_ms']:6.2f} / {r['encrypted_p95_ms']:6.2f} ms"
            f"  ratio p50 {r['ratio_p50']:.3f}  p95 {r['ratio_p95']:.3f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
