"""Benchmark: single-entry add throughput, encrypted vs plaintext (paired).

One embedded PostgreSQL (durable default settings), two knowledge bases (encrypted
and plaintext) with the deterministic hashing embedder, so embeddings cost the same
in both and the difference is what encryption adds (seal, blind tokens, fingerprint,
data-key use, audit). Each run interleaves rounds of ``kb.add`` between the two
modes (alternating which goes first) and prints its throughput ratio
encrypted/plaintext; the figure is the median of the runs' ratios. Goal: >= 0.95.

``--profile`` also prints the top cumulative-time functions of encrypted adds.
``--search-index`` picks the encrypted knowledge base's search index (default: the
``search_index`` setting, memory when SEALEDKB_SEARCH_INDEX is unset); it is printed.

    python bench/bench_single_add.py [--runs 5] [--adds 300] [--size 2000]
        [--search-index memory|server] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import statistics
import tempfile
import time
from pathlib import Path

import psycopg
from measure import WORDS, sentences

from sealedkb.config import load_settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode
from sealedkb.store.embedded import EmbeddedPostgres

ROUND = 20


def _texts(rng: random.Random, n: int, size: int, tag: str) -> list[str]:
    return [f"# {tag} {i} {rng.choice(WORDS)}\n\n{sentences(rng, size)}" for i in range(n)]


def one_run(kbs: dict[str, KnowledgeBase], rng: random.Random, adds: int, size: int) -> float:
    """Encrypted/plaintext throughput ratio of one paired run."""
    spent = {m: 0.0 for m in kbs}
    texts = {m: _texts(rng, adds, size, f"{m}-{rng.random()}") for m in kbs}
    modes = list(kbs)
    for start in range(0, adds, ROUND):
        order = modes if (start // ROUND) % 2 == 0 else modes[::-1]
        for m in order:
            kb = kbs[m]
            t0 = time.perf_counter()
            for text in texts[m][start : start + ROUND]:
                kb.add(text, tags=["bench", "single"], source="bench/single.md")
            spent[m] += time.perf_counter() - t0
    plain_rate = adds / spent["plaintext"]
    enc_rate = adds / spent["encrypted"]
    print(
        f"  run: plaintext {plain_rate:7.1f} adds/s, encrypted {enc_rate:7.1f} adds/s, "
        f"ratio {enc_rate / plain_rate:.3f}",
        flush=True,
    )
    return enc_rate / plain_rate


def profile(kb: KnowledgeBase, rng: random.Random, adds: int, size: int) -> None:
    texts = _texts(rng, adds, size, f"profile-{rng.random()}")
    prof = cProfile.Profile()
    prof.enable()
    for text in texts:
        kb.add(text, tags=["bench", "single"], source="bench/single.md")
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
    print(out.getvalue())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--adds", type=int, default=300, help="adds per mode per run")
    ap.add_argument("--size", type=int, default=2000, help="approximate content bytes")
    ap.add_argument("--search-index", choices=("memory", "server"), default=None)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="sealedkb-bench-") as tmp:
        base = Path(tmp)
        server = EmbeddedPostgres(base / "pgdata")
        server.start()
        try:
            with psycopg.connect(server.uri(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE single_plain")
                conn.execute("CREATE DATABASE single_enc")
            kbs: dict[str, KnowledgeBase] = {}
            for mode, db in (("plaintext", "single_plain"), ("encrypted", "single_enc")):
                settings = load_settings(
                    base / f"home-{mode}", database_url=server.uri(db), embedder="hash"
                )
                enc = EncryptionMode.ON if mode == "encrypted" else EncryptionMode.OFF
                kbs[mode], _ = KnowledgeBase.init(
                    settings, enc, search_index=args.search_index if mode == "encrypted" else None
                )
            for kb in kbs.values():  # warm up: pool, plans, data keys, embedder
                for i in range(20):
                    kb.add(f"warm up {i}", tags=["warm"])
            print(
                f"single add, ~{args.size} bytes, hashing embedder, {args.adds} adds/mode/run; "
                f"encrypted search index {kbs['encrypted'].search_index}; "
                f"load average {os.getloadavg()[0]:.1f}"
            )
            ratios = [one_run(kbs, rng, args.adds, args.size) for _ in range(args.runs)]
            print(
                f"median ratio encrypted/plaintext: {statistics.median(ratios):.3f} "
                f"(runs: {', '.join(f'{r:.3f}' for r in ratios)})"
            )
            print(f"load average at the end {os.getloadavg()[0]:.1f}")
            if args.profile:
                profile(kbs["encrypted"], rng, args.adds, args.size)
            for kb in kbs.values():
                kb.close()
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
