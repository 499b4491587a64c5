"""Benchmark: how long whole ``sealedkb`` processes take, start to exit.

Initialises an embedded home in a temporary folder (encryption on, the memory search
index and the default embedder, as ``sealedkb init`` makes it), fills it with
``--search-entries`` entries (default 10,000), adds a few through the CLI, then runs
each command as a fresh process: one warm-up run, then ``--runs`` counted runs,
interleaved command by command so machine noise hits all alike. Prints the median,
min and max wall time of each, against its goal (``--help`` <= 0.3 s; ``get``,
``list``, ``status`` <= 0.6 s; ``search`` <= 1.2 s).

``search`` is a hybrid search of a short question with the real default embedder
(all-MiniLM-L6-v2, loaded by every run as a user's process loads it). The warm-up
run builds the memory index from the sealed rows and writes its sealed warm-start
image; the counted runs load that image and apply the change feed (the bench checks
the image file is not rewritten, i.e. no counted run rebuilt). The cold build is
printed on its own line. How the bulk is filled, plainly: in a child process,
through ``add_many`` of a knowledge base whose configured model is the default one,
but with vectors from the model-free hashing embedder stored under the default
model's id (embedding 10,000 texts with MiniLM would take ~10 minutes here). The
stored vectors are therefore not MiniLM's, so the semantic ranking of this corpus is
meaningless; what is measured, the cost of loading the index and of embedding the
query with the real model, is the same.

The embedded PostgreSQL keeps running between commands (as it does for a user),
and bytecode is cached in a temporary folder (PYTHONPYCACHEPREFIX) as an installed
package's would be, even when the environment sets PYTHONDONTWRITEBYTECODE.

    python bench/bench_cli.py [--runs 7] [--search-entries 10000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOALS = {"--help": 0.3, "get": 0.6, "list": 0.6, "status": 0.6, "search": 1.2}
SEARCH_QUERY = "how do I rotate the keys"
FILL_BATCH = 500
WORDS_PER_ENTRY = 150
VOCAB = 20_000


def fill(home: str, count: int) -> None:
    """Runs in a child process: ``count`` synthetic entries (~150 Zipf words each)
    through ``add_many`` (see the module docstring for the vectors)."""
    from sealedkb.config import load_settings
    from sealedkb.embed.hashing import HashingEmbedder
    from sealedkb.embed.minilm import MODEL_ID
    from sealedkb.kb.knowledge_base import KnowledgeBase
    from sealedkb.model import new_entry

    class DefaultModelHashVectors:
        """Hashing vectors stored under the default model's id (bulk fill only)."""

        model_id = MODEL_ID
        dim = 384

        def __init__(self) -> None:
            self.inner = HashingEmbedder()

        def embed(self, texts: list[str]) -> object:
            return self.inner.embed(texts)

    rng = random.Random(count)

    def words(n: int) -> str:
        return " ".join(f"w{min(int(rng.paretovariate(1.0)), VOCAB)}x" for _ in range(n))

    kb = KnowledgeBase.open(load_settings(home))
    try:
        assert kb.search_index == "memory", kb.search_index
        assert kb.embedder is not None and kb.embedder.model_id == MODEL_ID
        kb.indexer.embedder = DefaultModelHashVectors()  # type: ignore[assignment]
        for start in range(0, count, FILL_BATCH):
            kb.add_many(
                [
                    new_entry(
                        f"entry {i} about keys and snapshots " + words(WORDS_PER_ENTRY),
                        title=f"title {i} " + words(5),
                        tags=[f"t{i % 20}"],
                    )
                    for i in range(start, min(count, start + FILL_BATCH))
                ],
                force=True,
            )
    finally:
        kb.close()


def image_files(home: Path) -> list[tuple[str, int, int]]:
    """(name, inode, mtime) of the memory index's warm-start images."""
    folder = home / "index"
    return sorted(
        (p.name, p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("memory-*.img")
    )


def sealedkb_argv() -> list[str]:
    script = Path(sys.executable).parent / "sealedkb"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "sealedkb"]


def run(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[-2:])} exited {done.returncode}: {done.stderr[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="counted runs per command (>= 5)")
    parser.add_argument(
        "--search-entries", type=int, default=10_000, help="entries for the search row"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--fill", nargs=2, metavar=("HOME", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fill:
        fill(args.fill[0], int(args.fill[1]))
        return
    runs = max(5, args.runs)

    base = Path(tempfile.mkdtemp(prefix="sealedkb-bench-cli-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALEDKB_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(SEALEDKB_HOME=str(base / "home"), PYTHONPYCACHEPREFIX=str(base / "pycache"))
    cli = sealedkb_argv()
    cold: float | None = None
    try:
        run([*cli, "init"], env)
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, "--fill", env["SEALEDKB_HOME"], str(args.search_entries)],
            env=env,
            check=True,
        )
        fill_s = time.perf_counter() - t0
        ids = [
            subprocess.run(
                [*cli, "add", f"benchmark entry {n}: rotate keys, verify snapshots", "--tag", "b"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            for n in range(5)
        ]
        commands = {
            "--help": ["--help"],
            "get": ["get", ids[0]],
            "list": ["list"],
            "status": ["status"],
            "search": ["search", SEARCH_QUERY],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        # The filling process (and the adds) may have written an image already: the
        # warm-up search is to build the index from the rows, so remove it.
        shutil.rmtree(base / "home" / "index", ignore_errors=True)
        for name, argv in commands.items():  # warm-up: bytecode, OS caches, server buffers
            took = run([*cli, *argv], env)
            if name == "search":
                cold = took  # built the index from the sealed rows, wrote its image
        images = image_files(base / "home")
        if not images:
            raise SystemExit("the search warm-up wrote no warm-start image")
        for _ in range(runs):
            for name, argv in commands.items():
                times[name].append(run([*cli, *argv], env))
        if image_files(base / "home") != images:
            raise SystemExit("a counted search rewrote the warm-start image (it rebuilt)")
        load = os.getloadavg()
    finally:
        subprocess.run([*cli, "db", "stop"], env=env, capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)

    report = {
        name: {
            "median_s": round(statistics.median(t), 3),
            "min_s": round(min(t), 3),
            "max_s": round(max(t), 3),
            "goal_s": GOALS[name],
            "runs": len(t),
        }
        for name, t in times.items()
    }
    extra = {
        "search_entries": args.search_entries,
        "fill_s": round(fill_s, 1),
        "search_cold_s": None if cold is None else round(cold, 3),
        "load_average": [round(x, 2) for x in load],
    }
    if args.json:
        print(json.dumps({**report, **extra}, indent=2))
        return
    print(f"whole-process wall time, {runs} warm runs each ({' '.join(cli)})")
    print(
        f"search: hybrid {SEARCH_QUERY!r} over {args.search_entries} entries (memory index, "
        f"warm-start image loaded; the cold build took {extra['search_cold_s']} s); "
        f"load average {' '.join(map(str, extra['load_average']))}"
    )
    print(f"{'command':<8} {'median':>7} {'min':>7} {'max':>7} {'goal':>6}")
    for name, r in report.items():
        print(
            f"{name:<8} {r['median_s']:>6.3f}s {r['min_s']:>6.3f}s {r['max_s']:>6.3f}s "
            f"{r['goal_s']:>5.1f}s {'ok' if r['median_s'] <= r['goal_s'] else 'OVER'}"
        )


if __name__ == "__main__":
    main()
