"""Benchmark: add, get and list(50) through the service API, encrypted vs plaintext.

Both modes run in one process against one embedded PostgreSQL (durable default
settings), on the same generated corpus, interleaved in small rounds so machine
noise hits both alike. Prints p50/p95 per operation and the encrypted/plaintext
ratio of the medians (docs/DESIGN.md §9). Goal (store operations): ratio <= 1.05 for get and add.

    python bench/bench_crud.py [--entries 1500] [--gets 5000] [--lists 300] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

from measure import WORDS, pct, sentences, timed

from sealedkb.config import load_settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode
from sealedkb.store.embedded import EmbeddedPostgres


def make_text(rng: random.Random, approx_bytes: int) -> str:
    body = sentences(rng, approx_bytes)
    return "# " + " ".join(rng.choice(WORDS) for _ in range(4)) + "\n\n" + body


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entries", type=int, default=1500)
    ap.add_argument("--gets", type=int, default=5000)
    ap.add_argument("--lists", type=int, default=300)
    ap.add_argument("--size", type=int, default=2000, help="approximate content bytes")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    rng = random.Random(42)
    corpus = [make_text(rng, args.size) for _ in range(args.entries)]
    tags = [[rng.choice(WORDS) for _ in range(3)] for _ in range(args.entries)]

    with tempfile.TemporaryDirectory(prefix="sealedkb-bench-") as tmp:
        base = Path(tmp)
        server = EmbeddedPostgres(base / "pgdata")
        server.start()
        try:
            import psycopg

            with psycopg.connect(server.uri(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench_plain")
                conn.execute("CREATE DATABASE bench_enc")
            kbs: dict[str, KnowledgeBase] = {}
            for mode, dbname in (("plaintext", "bench_plain"), ("encrypted", "bench_enc")):
                # CRUD without embeddings (search has its own benchmark: bench_search_perf.py)
                settings = load_settings(
                    base / f"home-{mode}", database_url=server.uri(dbname), embedder="none"
                )
                enc = EncryptionMode.ON if mode == "encrypted" else EncryptionMode.OFF
                kbs[mode], _ = KnowledgeBase.init(settings, enc)
            results = run(kbs, corpus, tags, args, rng)
            for kb in kbs.values():
                kb.close()
        finally:
            server.stop()

    report(results, args)
    return 0


def run(
    kbs: dict[str, KnowledgeBase],
    corpus: list[str],
    tags: list[list[str]],
    args: argparse.Namespace,
    rng: random.Random,
) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {
        op: {m: [] for m in kbs} for op in ("add", "get", "list50")
    }
    ids: dict[str, list[str]] = {m: [] for m in kbs}
    modes = list(kbs)
    # Warm up: pools, prepared plans, data keys.
    for m in modes:
        kb = kbs[m]
        e = kb.add("warm up entry", tags=["warm"])
        kb.get(e.id)
        kb.list(limit=50)

    round_size = 25
    for start in range(0, len(corpus), round_size):
        order = modes if (start // round_size) % 2 == 0 else modes[::-1]
        for m in order:
            kb = kbs[m]
            for i in range(start, min(start + round_size, len(corpus))):
                holder: list[str] = []

                def do_add(i: int = i, kb: KnowledgeBase = kb, holder: list[str] = holder) -> None:
                    holder.append(str(kb.add(corpus[i], tags=tags[i], source=f"bench/{i}.md").id))

                times["add"][m].append(timed(do_add))
                ids[m].append(holder[0])

    for start in range(0, args.gets, 100):
        order = modes if (start // 100) % 2 == 0 else modes[::-1]
        picks = [rng.randrange(len(corpus)) for _ in range(min(100, args.gets - start))]
        for m in order:
            kb = kbs[m]
            for p in picks:
                times["get"][m].append(timed(lambda kb=kb, eid=ids[m][p]: kb.get(eid)))

    for start in range(0, args.lists, 20):
        order = modes if (start // 20) % 2 == 0 else modes[::-1]
        offsets = [rng.randrange(max(1, len(corpus) - 50)) for _ in range(20)]
        for m in order:
            kb = kbs[m]
            for off in offsets:
                times["list50"][m].append(
                    timed(lambda kb=kb, off=off: kb.list(limit=50, offset=off))
                )
    return times


def report(times: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    rows = []
    for op, by_mode in times.items():
        plain, enc = by_mode["plaintext"], by_mode["encrypted"]
        row = {
            "op": op,
            "n": len(enc),
            "plaintext_p50_ms": statistics.median(plain) * 1e3,
            "plaintext_p95_ms": pct(plain, 0.95) * 1e3,
            "encrypted_p50_ms": statistics.median(enc) * 1e3,
            "encrypted_p95_ms": pct(enc, 0.95) * 1e3,
        }
        row["ratio_p50"] = row["encrypted_p50_ms"] / row["plaintext_p50_ms"]
        row["ratio_p95"] = row["encrypted_p95_ms"] / row["plaintext_p95_ms"]
        rows.append(row)
    if args.json:
        json.dump(
            {"corpus": {"entries": args.entries, "bytes": args.size}, "results": rows},
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
        return
    print(
        f"corpus: {args.entries} entries of ~{args.size} bytes, 3 tags each; "
        "embedded PostgreSQL 18, durable defaults"
    )
    print(
        f"{'op':<8}{'n':>6}{'plain p50':>11}{'p95':>9}{'enc p50':>10}{'p95':>9}"
        f"{'ratio p50':>11}{'ratio p95':>11}"
    )
    for r in rows:
        print(
            f"{r['op']:<8}{r['n']:>6}{r['plaintext_p50_ms']:>9.3f}ms{r['plaintext_p95_ms']:>7.3f}ms"
            f"{r['encrypted_p50_ms']:>8.3f}ms{r['encrypted_p95_ms']:>7.3f}ms"
            f"{r['ratio_p50']:>11.3f}{r['ratio_p95']:>11.3f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
