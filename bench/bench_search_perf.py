"""Search latency and ingest throughput, encrypted vs plaintext, on >= 10k entries.

Method (docs/DESIGN.md §9): both modes in one process against one embedded
PostgreSQL 18 + pgvector (durable default settings), same entries, same
queries, interleaved in small rounds with alternating order; ratios of medians.

Entries: every chunk of the Python 3.11 documentation (Debian python3.11-doc,
chunked by sealedkb's importer, ~6,750 chunks of <= 1,500 characters) with its
real MiniLM vector (bench/.cache), topped up to ``--entries`` (default 10,000)
with variants of random real chunks: the chunk's sentences in another order
plus a marker word, and its vector plus Gaussian noise (sigma 0.02 per
dimension), re-normalised. The entries are added through the full write path
(validation, keyword tokens, DCPE, sealing, dedup check, HNSW and GIN insertion)
with the embeddings supplied by a lookup embedder in both modes, so the ingest
ratio measures what encryption costs; embedding time is measured separately
(real model, uncached). Bulk ingest (the throughput figure) goes through
``KnowledgeBase.add_many`` in batches of 50, as ``import`` writes a file's chunks;
the last 1,000 entries are added one ``add`` at a time (one durable commit each,
as an agent adds a note) and reported as single-add throughput and latency.

Queries: the FAQ questions plus section headings of the documentation
(``--queries``, default 300), their vectors precomputed (the same in both
modes), run as hybrid (the goal), keyword and semantic searches with limit 10.
Query embedding time is measured separately on the real model. Semantic recall@10
against exact plaintext search is reported for both modes, so the latency
comparison is at equal recall (ef_search / over-fetch as configured in search/engine.py). When the plaintext mode
needed a higher ef_search than shipped, the searches are also paired against it at
the shipped ef_search (``search_plaintext_shipped_ef``).

The encrypted knowledge base uses the search index named by ``--search-index``
(default: the ``search_index`` setting, i.e. ``SEALEDKB_SEARCH_INDEX``, memory when
unset): ``memory`` (each process's own BM25 + exact-cosine index, search/memory.py;
exact, so the plaintext mode keeps ef_search 40 unless its recall is lower) or
``server`` (the hardened index in PostgreSQL). The plaintext knowledge base is
always searched by PostgreSQL. The index used is recorded as ``search_index``.

    python bench/bench_search_perf.py [--entries 10000] [--queries 300]
        [--search-index memory|server] [--recall-sweep] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import EmbeddingCache, LookupEmbedder, chunk_texts, doc_chunks
from measure import pct, timed

from sealedkb.config import load_settings
from sealedkb.embed.cache import CachingEmbedder
from sealedkb.embed.minilm import MiniLMEmbedder
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode, new_entry
from sealedkb.search.engine import (
    EF_SEARCH_ENCRYPTED_MIN,
    EF_SEARCH_MIN,
    OVERSAMPLE,
    SearchMode,
    embedding_text,
)
from sealedkb.store.embedded import EmbeddedPostgres

MODES = ("plaintext", "encrypted")


def build_entries(n: int, cache: EmbeddingCache) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    chunks = doc_chunks()
    vecs = cache.vectors(chunk_texts(chunks), label="chunks")
    rng = random.Random(5)
    nrng = np.random.default_rng(5)
    entries = [
        {
            "title": c.title,
            "content": c.content,
            "source": c.source,
            "vector": vecs[i],
            "real": True,
        }
        for i, c in enumerate(chunks)
    ]
    while len(entries) < n:
        i = rng.randrange(len(chunks))
        c = chunks[i]
        sents = c.content.split(". ")
        rng.shuffle(sents)
        v = vecs[i] + nrng.normal(0, 0.02, vecs.shape[1]).astype(np.float32)
        entries.append(
            {
                "title": f"{c.title} (variant {len(entries)})",
                "content": ". ".join(sents) + f" variant{len(entries)}",
                "source": c.source,
                "vector": v / np.linalg.norm(v),
                "real": False,
            }
        )
    rng.shuffle(entries)
    info = {"real_chunks": len(chunks), "variants": n - len(chunks), "entries": n}
    return entries, info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=6, help="passes over the queries per mode")
    ap.add_argument("--batch", type=int, default=50, help="entries per add_many (bulk ingest)")
    ap.add_argument("--single", type=int, default=1000, help="entries added one by one at the end")
    ap.add_argument(
        "--search-index",
        choices=("memory", "server"),
        default=None,
        help="the encrypted knowledge base's search index (default: the search_index setting)",
    )
    ap.add_argument(
        "--recall-sweep",
        action="store_true",
        help="server index: also the encrypted mode's semantic recall@10 at other "
        "over-fetch / ef_search settings (set on the engine for the sweep only)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    cache = EmbeddingCache()
    entries, info = build_entries(args.entries, cache)
    table = {}
    for e in entries:
        table[embedding_text(e["title"], e["content"])] = e["vector"]

    class Supplied(LookupEmbedder):
        def embed(self, texts):  # type: ignore[no-untyped-def]
            return np.stack([table[t] for t in texts])

    supplied = Supplied(cache)

    chunks = doc_chunks(["faq"])
    faq_q = sorted({c.heading for c in chunks if c.heading.endswith("?")})
    others = sorted({e["title"].split(" › ")[-1] for e in entries if e["real"]})
    rng = random.Random(9)
    queries = faq_q + rng.sample(others, max(0, args.queries - len(faq_q)))
    queries = queries[: args.queries]
    qvecs = cache.vectors(queries, label="queries")
    for q, v in zip(queries, qvecs, strict=True):
        table[q] = v
    query_embedder = CachingEmbedder(supplied, max_entries=100_000)

    # query embedding time, real model, uncached (identical in both modes)
    model = MiniLMEmbedder()
    model.load()
    emb_times = [timed(lambda q=q: model.embed([q])) for q in queries[:100]]
    sample = [embedding_text(e["title"], e["content"]) for e in entries[:64]]
    t0 = time.perf_counter()
    model.embed(sample)
    chunk_embed_s = (time.perf_counter() - t0) / len(sample)

    results: dict[str, Any] = {
        "commit": git_commit(),
        "loadavg_start": os.getloadavg(),  # 2 shared cores: load moves absolute times
        "corpus": info,
        "queries": len(queries),
    }
    with tempfile.TemporaryDirectory(prefix="sealedkb-pbench-") as tmp:
        base = Path(tmp)
        server = EmbeddedPostgres(base / "pgdata")  # durable defaults, as users run it
        server.start()
        try:
            with psycopg.connect(server.uri(), autocommit=True) as conn:
                for m in MODES:
                    conn.execute(f"CREATE DATABASE perf_{m}")
            kbs: dict[str, KnowledgeBase] = {}
            for m in MODES:
                settings = load_settings(base / f"home-{m}", database_url=server.uri(f"perf_{m}"))
                kb, _ = KnowledgeBase.init(
                    settings,
                    EncryptionMode.ON if m == "encrypted" else EncryptionMode.OFF,
                    search_index=args.search_index if m == "encrypted" else None,
                )
                kb.embedder = kb.indexer.embedder = supplied
                kb.engine.embedder = query_embedder
                kbs[m] = kb
            results["search_index"] = kbs["encrypted"].search_index
            results["ingest"] = ingest(kbs, entries, min(args.single, len(entries)), args.batch)
            for m in MODES:
                with psycopg.connect(server.uri(f"perf_{m}"), autocommit=True) as conn:
                    conn.execute("VACUUM ANALYZE kb_entries")
            for q in queries:  # warm: query vectors cached, plans, data keys
                for m in MODES:
                    kbs[m].search(q, limit=10)
            # Equal recall (docs/DESIGN.md §9): the encrypted mode runs with the shipped
            # settings; the plaintext mode's ef_search is raised until its semantic
            # recall@10 against exact search is at least the encrypted mode's.
            recall = semantic_recall(kbs, queries, qvecs, entries)
            tuning = [{"plaintext_ef_search": EF_SEARCH_MIN, "recall@10": recall["plaintext"]}]
            for ef in (48, 64, 80, 100, 128, 160, 200):
                if recall["plaintext"] >= recall["encrypted"]:
                    break
                kbs["plaintext"].engine.ef_search_min = ef
                recall["plaintext"] = semantic_recall(
                    {"plaintext": kbs["plaintext"]}, queries, qvecs, entries
                )["plaintext"]
                tuning.append({"plaintext_ef_search": ef, "recall@10": recall["plaintext"]})
            results["semantic_recall@10"] = recall
            if args.recall_sweep and results["search_index"] == "server":
                results["encrypted_recall_sweep"] = recall_sweep(
                    kbs["encrypted"], queries, qvecs, entries
                )
            results["plaintext_ef_tuning"] = tuning
            results["search"] = latency(kbs, queries, args.rounds)
            if kbs["plaintext"].engine.ef_search_min != EF_SEARCH_MIN:
                # an exact index (memory) out-recalls plaintext HNSW at any ef_search
                # tried: also pair against plaintext as shipped (ef_search 40)
                kbs["plaintext"].engine.ef_search_min = EF_SEARCH_MIN
                results["search_plaintext_shipped_ef"] = latency(kbs, queries, args.rounds)
            for kb in kbs.values():
                kb.close()
        finally:
            server.stop()
    results["loadavg_end"] = os.getloadavg()
    results["embedding"] = {
        "query_p50_ms": statistics.median(emb_times) * 1e3,
        "query_p95_ms": pct(emb_times, 0.95) * 1e3,
        "chunk_ms_batch64": chunk_embed_s * 1e3,
    }
    results["settings"] = {
        "oversample": OVERSAMPLE,
        "encrypted_ef_search": f"max({EF_SEARCH_ENCRYPTED_MIN}, candidates)",
        "plaintext_ef_search": tuning[-1]["plaintext_ef_search"],
    }
    if args.json:
        json.dump(results, sys.stdout, indent=2, default=float)
        sys.stdout.write("\n")
    else:
        report(results)
    return 0


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def ingest(
    kbs: dict[str, KnowledgeBase], entries: list[dict[str, Any]], single: int, batch: int
) -> dict[str, Any]:
    """Bulk then single adds, paired. Bulk (the throughput figure): all but the last
    ``single`` entries through ``add_many`` in batches of ``batch`` (one transaction
    each, the import path), every batch added to both knowledge bases back to back,
    the mode that goes first alternating. Single: the last ``single`` entries one
    ``add`` (one durable commit) each, paired per entry the same way (the latency an
    agent sees per add)."""
    modes = list(kbs)
    bulk, tail = entries[: len(entries) - single], entries[len(entries) - single :]
    bulk_s = dict.fromkeys(kbs, 0.0)
    for j, start in enumerate(range(0, len(bulk), batch)):
        news = [
            new_entry(e["content"], title=e["title"], source=e["source"], entry_type="doc")
            for e in bulk[start : start + batch]
        ]
        for m in modes if j % 2 == 0 else modes[::-1]:
            t0 = time.perf_counter()
            kbs[m].add_many(news)
            bulk_s[m] += time.perf_counter() - t0
    per: dict[str, list[float]] = {m: [] for m in kbs}
    for i, e in enumerate(tail):
        for m in modes if i % 2 == 0 else modes[::-1]:
            t0 = time.perf_counter()
            kbs[m].add(e["content"], title=e["title"], source=e["source"], entry_type="doc")
            per[m].append(time.perf_counter() - t0)
    out: dict[str, Any] = {"bulk_entries": len(bulk), "batch": batch, "single_entries": len(tail)}
    for m in kbs:
        out[m] = {
            "entries_per_s": len(bulk) / bulk_s[m],
            "single_entries_per_s": len(tail) / sum(per[m]),
            "add_p50_ms": statistics.median(per[m]) * 1e3,
            "add_p95_ms": pct(per[m], 0.95) * 1e3,
        }
    enc, plain = out["encrypted"], out["plaintext"]
    out["throughput_ratio"] = enc["entries_per_s"] / plain["entries_per_s"]
    out["single_throughput_ratio"] = enc["single_entries_per_s"] / plain["single_entries_per_s"]
    out["single_p50_ratio"] = plain["add_p50_ms"] / enc["add_p50_ms"]
    return out


def latency(kbs: dict[str, KnowledgeBase], queries: list[str], rounds: int) -> dict[str, Any]:
    """Paired: each query runs in both modes back to back, the mode that goes first
    alternating by query and round (a slow moment of the shared machine hits both)."""
    out: dict[str, Any] = {}
    modes = list(kbs)
    for mode in (SearchMode.HYBRID, SearchMode.KEYWORD, SearchMode.SEMANTIC):
        times: dict[str, list[float]] = {m: [] for m in kbs}
        for r in range(rounds):
            for i, q in enumerate(queries):
                for m in modes if (i + r) % 2 == 0 else modes[::-1]:
                    kb = kbs[m]
                    times[m].append(
                        timed(lambda kb=kb, q=q, mode=mode: kb.search(q, mode=mode, limit=10))
                    )
        row = {}
        for m in kbs:
            row[f"{m}_p50_ms"] = statistics.median(times[m]) * 1e3
            row[f"{m}_p95_ms"] = pct(times[m], 0.95) * 1e3
        row["ratio_p50"] = row["encrypted_p50_ms"] / row["plaintext_p50_ms"]
        row["ratio_p95"] = row["encrypted_p95_ms"] / row["plaintext_p95_ms"]
        out[mode.value] = row
    return out


def semantic_recall(
    kbs: dict[str, KnowledgeBase],
    queries: list[str],
    qvecs: np.ndarray,
    entries: list[dict[str, Any]],
) -> dict[str, float]:
    """recall@10 of each mode's semantic search against exact plaintext search."""
    data = np.stack([e["vector"] for e in entries])
    titles = [e["title"] for e in entries]
    out = {}
    for m, kb in kbs.items():
        hits = 0
        for q, v in zip(queries, qvecs, strict=True):
            truth = {titles[i] for i in np.argsort(-(data @ v))[:10]}
            got = {h.title for h in kb.search(q, mode="semantic", limit=10).hits}
            hits += len(truth & got)
        out[m] = hits / (10 * len(queries))
    return out


SWEEP = ((8, 40), (8, 128), (8, 200), (12, 40), (16, 40), (16, 200))


def recall_sweep(
    kb: KnowledgeBase, queries: list[str], qvecs: np.ndarray, entries: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The server index's semantic recall@10 vs exact per (over-fetch, minimum
    ef_search): what a setting would give, the shipped one restored after."""
    eng = kb.engine
    shipped = (eng.oversample, eng.ef_search_encrypted_min)
    out = []
    try:
        for over, ef in SWEEP:
            eng.oversample, eng.ef_search_encrypted_min = over, ef
            got = semantic_recall({"encrypted": kb}, queries, qvecs, entries)["encrypted"]
            out.append({"oversample": over, "ef_search_min": ef, "recall@10": got})
    finally:
        eng.oversample, eng.ef_search_encrypted_min = shipped
    return out


def report(r: dict[str, Any]) -> None:
    c = r["corpus"]
    print(
        f"corpus: {c['entries']} entries ({c['real_chunks']} real python3.11-doc chunks + "
        f"{c['variants']} variants); {r['queries']} queries; durable embedded PostgreSQL 18; "
        f"encrypted mode's search index: {r['search_index']}"
    )
    ing = r["ingest"]
    pl, en = ing["plaintext"], ing["encrypted"]
    print(
        f"bulk ingest ({ing['bulk_entries']} entries, add_many of {ing['batch']}, embeddings "
        f"supplied): plaintext {pl['entries_per_s']:.0f}/s, encrypted {en['entries_per_s']:.0f}/s"
        f" -> throughput ratio {ing['throughput_ratio']:.3f}"
    )
    print(
        f"single adds ({ing['single_entries']}, one commit each): plaintext "
        f"{pl['single_entries_per_s']:.0f}/s (p50 {pl['add_p50_ms']:.2f} ms, p95 "
        f"{pl['add_p95_ms']:.2f}), encrypted {en['single_entries_per_s']:.0f}/s (p50 "
        f"{en['add_p50_ms']:.2f} ms, p95 {en['add_p95_ms']:.2f}) -> ratio "
        f"{ing['single_throughput_ratio']:.3f}"
    )
    print(
        f"{'search':<10}{'plain p50':>10}{'p95':>8}{'enc p50':>9}{'p95':>8}{'ratio p50':>11}{'ratio p95':>11}"
    )
    for mode, row in r["search"].items():
        print(
            f"{mode:<10}{row['plaintext_p50_ms']:>8.2f}ms{row['plaintext_p95_ms']:>6.2f}ms"
            f"{row['encrypted_p50_ms']:>7.2f}ms{row['encrypted_p95_ms']:>6.2f}ms"
            f"{row['ratio_p50']:>11.3f}{row['ratio_p95']:>11.3f}"
        )
    shipped = r.get("search_plaintext_shipped_ef")
    if shipped:
        print(f"the same, plaintext at its shipped ef_search {EF_SEARCH_MIN}:")
        for mode, row in shipped.items():
            print(
                f"{mode:<10}{row['plaintext_p50_ms']:>8.2f}ms{row['plaintext_p95_ms']:>6.2f}ms"
                f"{row['encrypted_p50_ms']:>7.2f}ms{row['encrypted_p95_ms']:>6.2f}ms"
                f"{row['ratio_p50']:>11.3f}{row['ratio_p95']:>11.3f}"
            )
    rec = r["semantic_recall@10"]
    st = r["settings"]
    print(
        f"semantic recall@10 vs exact: plaintext {rec['plaintext']:.3f} (ef_search "
        f"{st['plaintext_ef_search']}), encrypted {rec['encrypted']:.3f} (oversample "
        f"{st['oversample']}, ef_search {st['encrypted_ef_search']})"
    )
    for row in r.get("encrypted_recall_sweep", []):
        print(
            f"  encrypted over-fetch x{row['oversample']}, ef_search >= {row['ef_search_min']}: "
            f"recall@10 {row['recall@10']:.3f}"
        )
    print(f"load average: start {r['loadavg_start'][0]:.1f}, end {r['loadavg_end'][0]:.1f}")
    e = r["embedding"]
    print(
        f"embedding (real MiniLM, 2 cores): query p50 {e['query_p50_ms']:.1f} ms, "
        f"p95 {e['query_p95_ms']:.1f} ms; chunk {e['chunk_ms_batch64']:.1f} ms each in batches"
    )


if __name__ == "__main__":
    raise SystemExit(main())
