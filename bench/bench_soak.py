"""Soak: N MCP clients over streamable HTTP for a long time (default 10 min) on a
real ``sealedkb serve --transport http``, with a mix of 70 % kb_search, 20 %
kb_get/kb_list and 10 % kb_add/kb_update/kb_delete. Reports failed calls, p95 per
tool, the server's resident memory over time (it should be flat after warm-up) and
whether the audit chain verifies afterwards.

    python bench/bench_soak.py [--clients 32] [--duration 600] [--sample 10]
        [--warmup 60] [--rss-bound-mib 64] [--out bench/results/soak-DATE.txt]

A call that raises (transport error, timeout) counts as a failed call like an error
answer does. The memory bound: after ``--warmup`` seconds, the server's RSS may not
rise more than ``--rss-bound-mib`` above its value at the end of warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2 as httpx
from bench_mcp_load import WORDS, free_port
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from measure import pct

from sealedkb.config import load_settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode
from sealedkb.store.embedded import EmbeddedPostgres


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _pick(rng: random.Random) -> str:
    x = rng.random()
    if x < 0.70:
        return "kb_search"
    if x < 0.80:
        return "kb_get"
    if x < 0.90:
        return "kb_list"
    return rng.choice(["kb_add", "kb_update", "kb_delete"])


async def client_loop(
    url: str, token: str, ids: list[str], until: float, rng: random.Random, out: dict[str, Any]
) -> None:
    """One client's calls until ``until``. A session that breaks (its transport raises)
    is a failed call, recorded with the time it happened, and the client reconnects."""
    mine: list[str] = []  # entries this client added: the only ones it updates or deletes
    while time.monotonic() < until:
        try:
            await session_loop(url, token, ids, until, rng, out, mine)
        except Exception as e:  # the session's transport broke: a failed call
            out["failures"].append(("session", type(e).__name__, round(time.monotonic() - until)))


async def session_loop(
    url: str,
    token: str,
    ids: list[str],
    until: float,
    rng: random.Random,
    out: dict[str, Any],
    mine: list[str],
) -> None:
    hc = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with Client(streamable_http_client(url, http_client=hc)) as c:
        while time.monotonic() < until:
            tool = _pick(rng)
            if tool in ("kb_update", "kb_delete") and not mine:
                tool = "kb_add"
            if tool == "kb_search":
                args: dict[str, Any] = {"query": " ".join(rng.sample(WORDS, 2)), "limit": 10}
            elif tool == "kb_get":
                args = {"id": rng.choice(ids)}
            elif tool == "kb_list":
                args = {"limit": 20}
            elif tool == "kb_add":
                args = {"content": _text(rng, 60), "tags": ["soak"]}
            elif tool == "kb_update":
                args = {"id": rng.choice(mine), "content": _text(rng, 60)}
            else:
                args = {"id": mine.pop(rng.randrange(len(mine)))}
            t0 = time.perf_counter()
            try:
                r = await c.call_tool(tool, args)
            except Exception as e:  # a raised call is a failed call, and the client goes on
                out["failures"].append((tool, type(e).__name__, round(time.monotonic() - until)))
                continue
            dt = time.perf_counter() - t0
            if r.is_error:
                out["failures"].append((tool, r.content[0].text[:200]))
                continue
            out["lat"].setdefault(tool, []).append(dt)
            if tool == "kb_add":
                mine.append(r.structured_content["id"])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between RSS samples")
    ap.add_argument("--seed-entries", type=int, default=300)
    ap.add_argument(
        "--warmup", type=float, default=60.0, help="seconds before the RSS bound applies"
    )
    ap.add_argument("--rss-bound-mib", type=float, default=64.0)
    ap.add_argument(
        "--pool-size",
        type=int,
        default=None,
        help="the server's pool_max_size (default: clients + 8, a connection per client)",
    )
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = ap.parse_args()
    pool_size = min(100, args.pool_size or args.clients + 8)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="sealedkb-soak-") as tmp:
        home = Path(tmp) / "home"
        settings = load_settings(home, embedder="hash")
        kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
        rng = random.Random(7)
        ids = [str(kb.add(_text(rng, 80), tags=["seed"]).id) for _ in range(args.seed_entries)]
        _, token = kb.create_token("soak", "writer", ["default"])
        kb.close()

        port = free_port()
        env = dict(
            os.environ,
            SEALEDKB_HOME=str(home),
            SEALEDKB_EMBEDDER="hash",
            SEALEDKB_HTTP_RATE_PER_SECOND="10000",
            SEALEDKB_HTTP_RATE_BURST="100000",
            SEALEDKB_POOL_MAX_SIZE=str(pool_size),
        )
        argv = [sys.executable, "-m", "sealedkb", "serve", "--transport", "http"]
        # the server's log goes to a file: a pipe nobody reads fills up and blocks it
        log = Path(tempfile.gettempdir()) / f"sealedkb-soak-serve-{os.getpid()}.log"
        logf = log.open("wb")
        proc = subprocess.Popen(
            [*argv, "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=logf
        )
        base = f"http://127.0.0.1:{port}"
        rss: list[tuple[float, int]] = []
        try:
            for _ in range(1200):
                if proc.poll() is not None:
                    err = log.read_text(errors="replace")
                    raise SystemExit(f"server exited: {err[-2000:]}")
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            out: dict[str, Any] = {"lat": {}, "failures": []}
            t0 = time.monotonic()
            until = t0 + args.duration
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    rss.append((time.monotonic() - t0, _rss_kib(proc.pid)))
                    stop.wait(args.sample)

            sampler = threading.Thread(target=sample)
            sampler.start()

            async def run_all() -> None:
                await asyncio.gather(
                    *(
                        client_loop(base + "/mcp", token, ids, until, random.Random(i), out)
                        for i in range(args.clients)
                    )
                )

            try:
                asyncio.run(run_all())
            finally:
                stop.set()
                sampler.join()
            elapsed = time.monotonic() - t0
        finally:
            proc.terminate()
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
            logf.close()

        with KnowledgeBase.open(settings) as kb:
            audit = kb.audit.verify()
        EmbeddedPostgres(settings.pgdata).stop()

    calls = sum(len(v) for v in out["lat"].values())
    failed = len(out["failures"])
    after = [k for t, k in rss if t >= args.warmup]
    base_kib = after[0] if after else 0
    growth_mib = (max(after) - base_kib) / 1024 if after else float("nan")
    bound_ok = bool(after) and growth_mib <= args.rss_bound_mib
    lines = [
        f"started {started}; load average before {load_before[0]:.2f}, "
        f"after {os.getloadavg()[0]:.2f} (1 min)",
        f"{args.clients} clients x {args.duration:.0f} s over HTTP (loopback), encrypted KB, "
        f"{args.seed_entries} seed entries, hashing embedder, pool_max_size {pool_size}",
        f"calls ok: {calls}   failed: {failed}   throughput: {calls / elapsed:.1f} calls/s",
        f"{'tool':<10}{'n':>7}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}",
    ]
    for tool, xs in sorted(out["lat"].items()):
        lines.append(
            f"{tool:<10}{len(xs):>7}{statistics.median(xs) * 1e3:>9.1f}"
            f"{pct(xs, 0.95) * 1e3:>9.1f}{max(xs) * 1e3:>9.1f}"
        )
    lines.append(
        "serve RSS (MiB) over time: " + ", ".join(f"{t:.0f}s {k / 1024:.0f}" for t, k in rss)
    )
    lines.append(
        f"RSS after {args.warmup:.0f} s warm-up: {base_kib / 1024:.0f} MiB, max "
        f"{(max(after) if after else 0) / 1024:.0f} MiB, growth {growth_mib:.1f} MiB "
        f"(bound {args.rss_bound_mib:.0f} MiB): {'held' if bound_ok else 'EXCEEDED'}"
    )
    lines.append(f"audit chain: {'verifies' if audit.ok else 'BROKEN'} ({audit.events} events)")
    kinds = Counter((f[0], str(f[1])[:80]) for f in out["failures"])
    lines += [f"failures {n}: {tool} {kind}" for (tool, kind), n in kinds.most_common(10)]
    lines += [f"failure: {f}" for f in out["failures"][:5]]
    lines.append(f"server log: {log}")
    ok = not out["failures"] and audit.ok and bound_ok
    lines.append("RESULT: " + ("ok" if ok else "FAILED"))
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
