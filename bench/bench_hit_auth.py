"""The cost of authenticating search hits (search/digest.py), paired in one run.

Every page of hits search returns is read with two extra expressions that hash the
stored keyword tokens and encrypted vector of each row; the sealed document's digest
is compared with them. This bench times the hit read of one page (11 rows, the
default limit plus one) with and without those expressions, alternating, on an
encrypted knowledge base of realistic entries (200 words, a vector each), and prints
both medians and the difference per search.

    python bench/bench_hit_auth.py [--entries 300] [--rounds 400]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from sealedkb.config import load_settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode
from sealedkb.search import digest
from sealedkb.store.embedded import EmbeddedPostgres


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=400)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="sealedkb-hitauth-"))
    base.chmod(0o755)
    server = EmbeddedPostgres(base / "pg", fast=True)
    server.start()
    try:
        settings = load_settings(base / "home", database_url=server.uri(), embedder="hash")
        kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
        rnd = random.Random(1)
        vocab = [f"word{i}" for i in range(5000)]
        ids = [
            kb.add(" ".join(rnd.choice(vocab) for _ in range(200))).id for _ in range(args.entries)
        ]
        table = kb.engine.table
        hashes = (digest.KW_HASH_SQL, digest.VEC_HASH_SQL)
        bare: list[float] = []
        checked: list[float] = []
        for i in range(args.rounds):
            page = rnd.sample(ids, 11)
            for with_hashes in (False, True) if i % 2 else (True, False):
                t0 = time.perf_counter()
                table.hit_rows(page, column_hashes=hashes if with_hashes else None)
                (checked if with_hashes else bare).append(time.perf_counter() - t0)
        b, c = statistics.median(bare) * 1e3, statistics.median(checked) * 1e3
        print(f"entries {args.entries}, rounds {args.rounds}, page of 11 hits")
        print(f"hit read without column hashes: p50 {b:.3f} ms")
        print(f"hit read with column hashes:    p50 {c:.3f} ms")
        print(f"added per search: {c - b:.3f} ms")
        kb.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
