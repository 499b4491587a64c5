"""Benchmark: how long whole ``sealedkb`` processes take, start to exit.

Initialises an embedded home in a temporary folder (encryption on, default
embedder), adds a few entries, then runs each command as a fresh process: one
warm-up run, then ``--runs`` counted runs, interleaved command by command so
machine noise hits all alike. Prints the median, min and max wall time of each,
against its goal (``--help`` <= 0.3 s; ``get``, ``list``, ``status`` <= 0.6 s).

The embedded PostgreSQL keeps running between commands (as it does for a user),
and bytecode is cached in a temporary folder (PYTHONPYCACHEPREFIX) as an installed
package's would be, even when the environment sets PYTHONDONTWRITEBYTECODE.

    python bench/bench_cli.py [--runs 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOALS = {"--help": 0.3, "get": 0.6, "list": 0.6, "status": 0.6}


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
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    runs = max(5, args.runs)

    base = Path(tempfile.mkdtemp(prefix="sealedkb-bench-cli-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALEDKB_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(SEALEDKB_HOME=str(base / "home"), PYTHONPYCACHEPREFIX=str(base / "pycache"))
    cli = sealedkb_argv()
    try:
        run([*cli, "init"], env)
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
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for argv in commands.values():  # warm-up: bytecode, OS caches, server buffers
            run([*cli, *argv], env)
        for _ in range(runs):
            for name, argv in commands.items():
                times[name].append(run([*cli, *argv], env))
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
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"whole-process wall time, {runs} warm runs each ({' '.join(cli)})")
    print(f"{'command':<8} {'median':>7} {'min':>7} {'max':>7} {'goal':>6}")
    for name, r in report.items():
        print(
            f"{name:<8} {r['median_s']:>6.3f}s {r['min_s']:>6.3f}s {r['max_s']:>6.3f}s "
            f"{r['goal_s']:>5.1f}s {'ok' if r['median_s'] <= r['goal_s'] else 'OVER'}"
        )


if __name__ == "__main__":
    main()
