"""Benchmark: what verified TLS to PostgreSQL costs, against a Unix socket.

One embedded PostgreSQL (durable defaults) reached three ways, all in
encrypted mode, in one process, interleaved in small rounds so machine noise
hits each alike (docs/DESIGN.md §9):

- ``socket``: the server's Unix socket (the embedded default);
- ``tcp``: pgbouncer on 127.0.0.1 without TLS (the proxy and TCP hop alone);
- ``tls``: the same pgbouncer setup with TLS, ``sslmode=verify-full``.

``tls/socket`` is the cost an operator sees moving from the embedded server to
a TLS-protected one (proxy + TCP + TLS); ``tls/tcp`` isolates TLS itself.
``connect`` is one new connection (TCP + TLS handshake + startup), paid by
every CLI command and every new pool connection; ``add`` and ``get`` reuse
pooled connections. Search latency can be added when search exists.

    PYTHONPATH=src:. python bench/bench_tls.py [--adds 1000] [--gets 3000] [--connects 300] [--json]

Needs pgbouncer (apt-get install pgbouncer) and trustme (the dev extra).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import psycopg
from measure import WORDS as ALL_WORDS
from measure import pct, timed
from tests.tlsserver import TlsEndpoints, find_pgbouncer

from sealedkb.config import load_settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode
from sealedkb.store.db import connect
from sealedkb.store.embedded import EmbeddedPostgres
from sealedkb.store.tls import session_of

TRANSPORTS = ("socket", "tcp", "tls")
WORDS = ALL_WORDS[:11]  # deploy ... cache


def make_text(rng: random.Random, approx_bytes: int) -> str:
    out: list[str] = []
    while sum(len(s) + 1 for s in out) < approx_bytes:
        out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + ".")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--adds", type=int, default=1000)
    ap.add_argument("--gets", type=int, default=3000)
    ap.add_argument("--connects", type=int, default=300)
    ap.add_argument("--size", type=int, default=2000, help="approximate content bytes")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if find_pgbouncer() is None:
        print("pgbouncer is not installed (apt-get install -y pgbouncer)", file=sys.stderr)
        return 2

    rng = random.Random(42)
    corpus = [make_text(rng, args.size) for _ in range(args.adds)]
    with tempfile.TemporaryDirectory(prefix="sealedkb-bench-tls-") as tmp:
        base = Path(tmp)
        server = EmbeddedPostgres(base / "pgdata")
        server.start()
        endpoints = TlsEndpoints(base / "tls", server.socket_dir)
        try:
            with psycopg.connect(server.uri(), autocommit=True) as conn:
                for t in TRANSPORTS:
                    conn.execute(f"CREATE DATABASE bench_{t}")
            urls = {
                "socket": server.uri("bench_socket"),
                "tcp": endpoints.get("plaintext").url(
                    "bench_tcp", host="localhost", sslmode="disable"
                ),
                "tls": endpoints.get("good").url("bench_tls", ca=endpoints.certs.ca),
            }
            kbs: dict[str, KnowledgeBase] = {}
            for t, url in urls.items():
                root_key = base / f"root-{t}.key"
                root_key.write_bytes(random.randbytes(32))
                root_key.chmod(0o600)
                settings = load_settings(
                    base / f"home-{t}", database_url=url, root_key_file=root_key
                )
                kbs[t], _ = KnowledgeBase.init(settings, EncryptionMode.ON)
            tls = session_of_url(urls["tls"])
            times = run(kbs, urls, corpus, args, rng)
            for kb in kbs.values():
                kb.close()
        finally:
            endpoints.close()
            server.stop()
    report(times, args, tls)
    return 0


def session_of_url(url: str) -> str:
    with connect(url) as conn:
        s = session_of(conn.pgconn)
    return f"{s.protocol} {s.cipher}" if s else "none"


def run(
    kbs: dict[str, KnowledgeBase],
    urls: dict[str, str],
    corpus: list[str],
    args: argparse.Namespace,
    rng: random.Random,
) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {
        op: {t: [] for t in TRANSPORTS} for op in ("connect", "add", "get")
    }
    ids: dict[str, list[str]] = {t: [] for t in TRANSPORTS}
    for kb in kbs.values():  # warm up: pools, data keys, plans
        kb.get(kb.add("warm up", tags=["warm"]).id)

    def rotate(i: int) -> list[str]:
        k = i % len(TRANSPORTS)
        return list(TRANSPORTS[k:] + TRANSPORTS[:k])

    for r, start in enumerate(range(0, len(corpus), 25)):
        for t in rotate(r):
            kb = kbs[t]
            for i in range(start, min(start + 25, len(corpus))):
                holder: list[str] = []

                def do_add(i: int = i, kb: KnowledgeBase = kb, holder: list[str] = holder) -> None:
                    holder.append(str(kb.add(corpus[i], tags=["bench", "tls"]).id))

                times["add"][t].append(timed(do_add))
                ids[t].append(holder[0])

    for r, start in enumerate(range(0, args.gets, 100)):
        picks = [rng.randrange(len(corpus)) for _ in range(min(100, args.gets - start))]
        for t in rotate(r):
            kb = kbs[t]
            for p in picks:
                times["get"][t].append(timed(lambda kb=kb, eid=ids[t][p]: kb.get(eid)))

    for r, start in enumerate(range(0, args.connects, 20)):
        for t in rotate(r):
            for _ in range(min(20, args.connects - start)):
                times["connect"][t].append(timed(lambda url=urls[t]: connect(url).close()))
    return times


def report(times: dict[str, dict[str, list[float]]], args: argparse.Namespace, tls: str) -> None:
    rows = []
    for op, by in times.items():
        row: dict[str, Any] = {"op": op, "n": len(by["tls"])}
        for t in TRANSPORTS:
            row[f"{t}_p50_ms"] = statistics.median(by[t]) * 1e3
            row[f"{t}_p95_ms"] = pct(by[t], 0.95) * 1e3
        row["tls_over_socket_p50"] = row["tls_p50_ms"] / row["socket_p50_ms"]
        row["tls_over_tcp_p50"] = row["tls_p50_ms"] / row["tcp_p50_ms"]
        row["tls_over_socket_p95"] = row["tls_p95_ms"] / row["socket_p95_ms"]
        rows.append(row)
    if args.json:
        json.dump({"tls": tls, "content_bytes": args.size, "results": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print(
        f"encrypted mode, ~{args.size}-byte entries; embedded PostgreSQL 18 (durable defaults); "
        f"pgbouncer 127.0.0.1, session pool; TLS: {tls}, verify-full"
    )
    print(
        f"{'op':<8}{'n':>6}{'socket p50':>12}{'tcp p50':>10}{'tls p50':>10}{'tls p95':>10}"
        f"{'tls/socket':>12}{'tls/tcp':>9}{'tls/socket p95':>16}"
    )
    for r in rows:
        print(
            f"{r['op']:<8}{r['n']:>6}{r['socket_p50_ms']:>10.3f}ms{r['tcp_p50_ms']:>8.3f}ms"
            f"{r['tls_p50_ms']:>8.3f}ms{r['tls_p95_ms']:>8.3f}ms"
            f"{r['tls_over_socket_p50']:>12.2f}{r['tls_over_tcp_p50']:>9.2f}"
            f"{r['tls_over_socket_p95']:>16.2f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
