"""Benchmark: resident memory and cold start of the memory search index (search/memory.py).

For each size, a knowledge base with ``--search-index memory`` in an embedded
PostgreSQL (a temporary home) is filled with synthetic entries through ``add_many``
(500 per batch; ~150 Zipf-distributed words each, ~1 KB of text; vectors from the
model-free hashing embedder, which gives 384-d unit vectors as MiniLM does, so the
index costs the same; only the embedding time differs). Then a fresh process opens
it and runs the first search, which builds the index: documents and exact
embeddings are opened in batches, BM25 postings and the float32 matrix are
built. Reported per size: the build time (cold start), the process's resident
memory before and after it (VmRSS), and the median and p95 of 30 warm hybrid
searches.

    python bench/bench_memory_index.py [--sizes 10000,100000] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VOCAB = 20_000
WORDS_PER_ENTRY = 150
BATCH = 500


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def words(rng: random.Random, n: int) -> str:
    # Zipf-like: word k drawn with weight 1/k
    return " ".join(f"w{min(int(rng.paretovariate(1.0)), VOCAB)}x" for _ in range(n))


def fill(home: Path, size: int) -> float:
    from sealedkb.config import load_settings
    from sealedkb.kb.knowledge_base import KnowledgeBase
    from sealedkb.model import EncryptionMode, new_entry

    rng = random.Random(size)
    kb, _ = KnowledgeBase.init(
        load_settings(home, embedder="hash", memory_index_max_entries=max(size, 1)),
        EncryptionMode.ON,
        search_index="memory",
    )
    t0 = time.perf_counter()
    try:
        for start in range(0, size, BATCH):
            batch = [
                new_entry(
                    f"entry {i} " + words(rng, WORDS_PER_ENTRY),
                    title=f"title {i} " + words(rng, 5),
                    tags=[f"t{i % 20}"],
                )
                for i in range(start, min(size, start + BATCH))
            ]
            kb.add_many(batch, force=True)
    finally:
        kb.close()
    return time.perf_counter() - t0


def child(home: str, size: int) -> None:
    """Runs in a fresh process: open, build by the first search, then warm searches."""
    from sealedkb.config import load_settings
    from sealedkb.kb.knowledge_base import KnowledgeBase

    rng = random.Random(1)
    kb = KnowledgeBase.open(
        load_settings(Path(home), embedder="hash", memory_index_max_entries=max(size, 1))
    )
    try:
        kb.search("warm up the embedder", mode="semantic", namespace="unused")
        before = rss_mb()
        t0 = time.perf_counter()
        kb.search(words(rng, 3), mode="hybrid")
        build = time.perf_counter() - t0
        after = rss_mb()
        lat = []
        for _ in range(30):
            q = words(rng, 3)
            t = time.perf_counter()
            kb.search(q, mode="hybrid", limit=10)
            lat.append(time.perf_counter() - t)
        assert kb.memory_index is not None
        stats = kb.memory_index.stats()
    finally:
        kb.close()
    lat.sort()
    print(
        json.dumps(
            {
                "entries": stats.entries,
                "vectors": stats.vectors,
                "terms": stats.terms,
                "cold_start_s": round(build, 2),
                "rss_before_mb": round(before, 1),
                "rss_after_mb": round(after, 1),
                "index_rss_mb": round(after - before, 1),
                "search_p50_ms": round(statistics.median(lat) * 1000, 2),
                "search_p95_ms": round(lat[int(len(lat) * 0.95) - 1] * 1000, 2),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000", help="comma-separated entry counts")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--child", nargs=2, metavar=("HOME", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    from sealedkb.store.embedded import EmbeddedPostgres

    results: list[dict[str, Any]] = []
    for size in (int(s) for s in args.sizes.split(",")):
        base = Path(tempfile.mkdtemp(prefix="sealedkb-bench-mem-"))
        home = base / "home"
        try:
            fill_s = fill(home, size)
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(home), str(size)],
                capture_output=True,
                text=True,
                timeout=3600,
                check=False,
            )
            if out.returncode != 0:
                raise SystemExit(out.stderr[-2000:])
            res = {"size": size, "fill_s": round(fill_s, 1), **json.loads(out.stdout)}
            results.append(res)
            if not args.json:
                print(
                    f"{size:>7} entries: cold start {res['cold_start_s']} s, index "
                    f"{res['index_rss_mb']} MB resident ({res['rss_after_mb']} MB process), "
                    f"hybrid search p50 {res['search_p50_ms']} ms p95 {res['search_p95_ms']} ms "
                    f"(fill {res['fill_s']} s)",
                    flush=True,
                )
        finally:
            EmbeddedPostgres(home / "pgdata").stop()
            shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
