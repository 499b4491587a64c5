"""Benchmark: what metrics instrumentation costs per operation (goal: < 2 %).

One encrypted knowledge base on an embedded PostgreSQL (durable defaults), one
corpus, operations run with instrumentation **off** and **on** in the same run,
interleaved in small rounds with alternating order so machine noise hits both
alike (docs/DESIGN.md §9). "on" is what ``serve`` does (monitoring.metrics.register_kb): every
operation timed into a Prometheus histogram and key-provider calls observed;
"off" is ``SEALEDKB_METRICS_ENABLED=false`` (monitor.uninstrument_kb). The
plain-integer counters (data-key cache hits, key calls, integrity failures) are
always on and so are in both figures; their cost is in the micro figure below.

Besides the end-to-end ratios, prints the added cost per call of the timing
wrapper itself, measured on a no-op (noise-free, in nanoseconds).

Operations are a table (OPS): ``search`` is picked up automatically when the
knowledge base has it (hybrid search), with queries drawn from the corpus words.

    python bench/bench_metrics_overhead.py [--entries 1000] [--rounds 100] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from measure import WORDS, pct, sentences

from sealedkb.config import load_settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode
from sealedkb.monitoring import metrics as monitor
from sealedkb.store.embedded import EmbeddedPostgres

MODES = ("off", "on")

Op = Callable[[KnowledgeBase, random.Random], Any]


def make_text(rng: random.Random, approx_bytes: int) -> str:
    return sentences(rng, approx_bytes)


def build_ops(kb: KnowledgeBase, ids: list[str], size: int) -> dict[str, tuple[Op, int]]:
    """Operation name -> (one call, how many calls per round)."""
    ops: dict[str, tuple[Op, int]] = {
        "add": (lambda kb, rng: kb.add(make_text(rng, size), tags=[rng.choice(WORDS)]), 10),
        "get": (lambda kb, rng: kb.get(rng.choice(ids)), 40),
        "list50": (lambda kb, rng: kb.list(limit=50, offset=rng.randrange(len(ids) - 50)), 4),
    }
    if hasattr(kb, "search"):  # knowledge bases with search
        ops["search"] = (lambda kb, rng: kb.search(" ".join(rng.sample(WORDS, 2))), 10)  # type: ignore[attr-defined]
    return ops


def set_mode(kb: KnowledgeBase, mode: str) -> None:
    if mode == "on":
        monitor.register_kb(kb)  # instruments unless metrics_enabled is false
        monitor.instrument_kb(kb)
    else:
        monitor.uninstrument_kb(kb)


def micro_wrapper_ns(n: int = 200_000) -> float:
    """Added cost of timing one call (histogram observe + two perf_counter calls)."""

    def noop() -> None:
        return None

    timed = monitor._timed(noop, "bench")
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            noop()
        plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(n):
            timed()
        best = min(best, (time.perf_counter() - t0 - plain) / n)
    return best * 1e9


def run(kb: KnowledgeBase, args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    rng = random.Random(7)
    ids = [
        str(kb.add(make_text(rng, args.size), tags=[rng.choice(WORDS)]).id)
        for _ in range(args.entries)
    ]
    ops = build_ops(kb, ids, args.size)
    times: dict[str, dict[str, list[float]]] = {op: {m: [] for m in MODES} for op in ops}
    for mode in MODES:  # warm up both paths
        set_mode(kb, mode)
        for fn, _ in ops.values():
            fn(kb, rng)
    for r in range(args.rounds):
        order = MODES if r % 2 == 0 else MODES[::-1]
        for mode in order:
            set_mode(kb, mode)
            seed = rng.randrange(1 << 30)
            for name, (fn, per_round) in ops.items():
                op_rng = random.Random(seed + hash(name) % 1000)  # same picks in both modes
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    fn(kb, op_rng)
                    times[name][mode].append(time.perf_counter() - t0)
    set_mode(kb, "off")
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entries", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--size", type=int, default=2000, help="approximate content bytes")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="sealedkb-bench-") as tmp:
        base = Path(tmp)
        server = EmbeddedPostgres(base / "pgdata")
        server.start()
        try:
            settings = load_settings(base / "home", database_url=server.uri("postgres"))
            kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
            try:
                times = run(kb, args)
            finally:
                kb.close()
        finally:
            server.stop()

    rows = []
    for op, by_mode in times.items():
        off, on = by_mode["off"], by_mode["on"]
        row = {
            "op": op,
            "n": len(on),
            "off_p50_ms": statistics.median(off) * 1e3,
            "off_p95_ms": pct(off, 0.95) * 1e3,
            "on_p50_ms": statistics.median(on) * 1e3,
            "on_p95_ms": pct(on, 0.95) * 1e3,
        }
        row["ratio_p50"] = row["on_p50_ms"] / row["off_p50_ms"]
        row["ratio_p95"] = row["on_p95_ms"] / row["off_p95_ms"]
        rows.append(row)
    wrapper_ns = micro_wrapper_ns()
    if args.json:
        out = {
            "corpus": {"entries": args.entries, "bytes": args.size},
            "rounds": args.rounds,
            "timing_wrapper_ns": wrapper_ns,
            "results": rows,
        }
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(
        f"corpus: {args.entries} encrypted entries of ~{args.size} bytes; {args.rounds} rounds, "
        "instrumentation off/on interleaved; embedded PostgreSQL 18"
    )
    print(
        f"{'op':<8}{'n':>6}{'off p50':>10}{'p95':>9}{'on p50':>10}{'p95':>9}"
        f"{'ratio p50':>11}{'ratio p95':>11}"
    )
    for r in rows:
        print(
            f"{r['op']:<8}{r['n']:>6}{r['off_p50_ms']:>8.3f}ms{r['off_p95_ms']:>7.3f}ms"
            f"{r['on_p50_ms']:>8.3f}ms{r['on_p95_ms']:>7.3f}ms{r['ratio_p50']:>11.3f}{r['ratio_p95']:>11.3f}"
        )
    print(f"timing wrapper: +{wrapper_ns:.0f} ns per call (histogram observe, on a no-op)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
