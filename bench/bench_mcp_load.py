"""Load: N concurrent MCP clients over streamable HTTP for D seconds, mixed calls.

Starts a real `sealedkb serve --transport http` on an embedded PostgreSQL in a
temporary home, seeds entries, then runs clients that loop over a mix of
kb_search (when the server has it), kb_get, kb_list and kb_add. Reports
throughput and p50/p95 per tool, fails loudly on any failed call, and checks
that every acknowledged add is in the database afterwards (nothing lost).

    python bench/bench_mcp_load.py [--clients 8] [--duration 60] [--seed-entries 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from measure import pct

from sealedkb.config import load_settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode

WORDS = [
    "deploy",
    "rollback",
    "vacuum",
    "replica",
    "schema",
    "token",
    "cache",
    "runbook",
    "incident",
    "retry",
    "queue",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def client_loop(
    url: str, token: str, ids: list[str], until: float, rng: random.Random, out: dict[str, Any]
) -> None:
    hc = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with Client(streamable_http_client(url, http_client=hc)) as c:
        tools = {t.name for t in (await c.list_tools()).tools}
        mix = ["kb_get"] * 4 + ["kb_list"] * 1 + ["kb_add"] * 2
        if "kb_search" in tools:
            mix += ["kb_search"] * 3
        while time.monotonic() < until:
            tool = rng.choice(mix)
            if tool == "kb_get":
                args: dict[str, Any] = {"id": rng.choice(ids)}
            elif tool == "kb_list":
                args = {"limit": 20}
            elif tool == "kb_add":
                args = {"content": " ".join(rng.choice(WORDS) for _ in range(60)), "tags": ["load"]}
            else:
                args = {"query": " ".join(rng.sample(WORDS, 2)), "limit": 10}
            t0 = time.perf_counter()
            r = await c.call_tool(tool, args)
            dt = time.perf_counter() - t0
            if r.is_error:
                out["failures"].append((tool, r.content[0].text[:200]))
                continue
            out["lat"].setdefault(tool, []).append(dt)
            if tool == "kb_add":
                out["added"].append(r.structured_content["id"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--seed-entries", type=int, default=200)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="sealedkb-load-") as tmp:
        home = Path(tmp) / "home"
        settings = load_settings(home)
        kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
        rng = random.Random(7)
        ids = [
            str(kb.add(" ".join(rng.choice(WORDS) for _ in range(80)), tags=["seed"]).id)
            for _ in range(args.seed_entries)
        ]
        _, token = kb.create_token("load", "writer", ["default"])
        before = kb.stats()["entries_total"]
        kb.close()

        port = free_port()
        env = dict(
            os.environ,
            SEALEDKB_HOME=str(home),
            SEALEDKB_HTTP_RATE_PER_SECOND="10000",
            SEALEDKB_HTTP_RATE_BURST="100000",
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "sealedkb", "serve", "--transport", "http", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise SystemExit(f"server exited: {err[-2000:]}")
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            out: dict[str, Any] = {"lat": {}, "failures": [], "added": []}
            until = time.monotonic() + args.duration
            t0 = time.monotonic()

            async def run_all() -> None:
                await asyncio.gather(
                    *(
                        client_loop(base + "/mcp", token, ids, until, random.Random(i), out)
                        for i in range(args.clients)
                    )
                )

            asyncio.run(run_all())
            elapsed = time.monotonic() - t0
        finally:
            proc.terminate()
            proc.wait(30)

        kb = KnowledgeBase.open(settings)
        after = kb.stats()["entries_total"]
        missing = [i for i in out["added"] if not _exists(kb, i)]
        kb.close()
        from sealedkb.store.embedded import EmbeddedPostgres

        EmbeddedPostgres(settings.pgdata).stop()

    calls = sum(len(v) for v in out["lat"].values())
    print(
        f"{args.clients} clients x {args.duration:.0f} s over HTTP, encrypted KB "
        f"({args.seed_entries} seed entries), embedded PostgreSQL 18"
    )
    failed = len(out["failures"])
    print(f"calls ok: {calls}   failed: {failed}   throughput: {calls / elapsed:.1f} calls/s")
    print(f"{'tool':<10}{'n':>7}{'p50 ms':>9}{'p95 ms':>9}")
    for tool, xs in sorted(out["lat"].items()):
        print(
            f"{tool:<10}{len(xs):>7}{statistics.median(xs) * 1e3:>9.1f}{pct(xs, 0.95) * 1e3:>9.1f}"
        )
    print(
        f"adds acknowledged: {len(out['added'])}   entries before/after: {before}/{after}   "
        f"missing: {len(missing)}"
    )
    for f in out["failures"][:5]:
        print("failure:", f)
    ok = not out["failures"] and not missing and after == before + len(out["added"])
    print("RESULT:", "ok" if ok else "FAILED")
    return 0 if ok else 1


def _exists(kb: KnowledgeBase, entry_id: str) -> bool:
    try:
        kb.get(entry_id)
        return True
    except Exception:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
