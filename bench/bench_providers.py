"""Key providers paired against plaintext in one run: add, get and hybrid search
latency (p50 / p95) of a knowledge base sealed under each provider — local, AWS
KMS (moto server), Vault Transit (OpenBao), PKCS#11 (SoftHSM2), KMIP (PyKMIP) —
beside a plaintext knowledge base on the same PostgreSQL, same data and queries,
interleaved in rounds (the order rotates each round); and the key-service calls
per 1,000 operations of each kind, counted by keys/instrumented.py (the
knowledge base's ``telemetry.key_calls``), with a warm data-key cache.

The key services start the way the tests start them (tests/providers/services.py,
tests/providers_hsm/services.py): all on 127.0.0.1, so a call costs a loopback
round trip (AWS KMS from EC2 in the same region is ~5-15 ms, which the cache
hides the same way). The hashing embedder keeps embedding out of the figures
(identical in every mode).

    python bench/bench_providers.py [--adds 300 --gets 600 --searches 300]
        [--providers local,aws-kms,vault,pkcs11,kmip] [--out FILE]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from measure import WORDS, pct, sentences, timed  # noqa: E402

from sealedkb.config import load_settings  # noqa: E402
from sealedkb.kb.knowledge_base import KnowledgeBase  # noqa: E402
from sealedkb.keys.registry import provider_for  # noqa: E402
from sealedkb.model import EncryptionMode  # noqa: E402
from sealedkb.store.embedded import EmbeddedPostgres  # noqa: E402

PROVIDERS = ["local", "aws-kms", "vault", "pkcs11", "kmip"]
OPS = ["add", "get", "hybrid"]
ANY_KEY = {
    "aws-kms": "aws-kms:alias/x",
    "vault": "vault:transit/transit/x",
    "pkcs11": "pkcs11:token=t;object=o",
    "kmip": "kmip:0",
}


def provider_settings(name: str) -> tuple[dict[str, Any], Callable[[], None]]:
    """Settings overrides for a provider and how to stop what was started for it."""
    if name == "aws-kms":
        from tests.providers import services

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
        kms = services.moto_server()
        return kms.settings(aws_mac_key_id=kms.mac_key()), kms.stop
    if name == "vault":
        from tests.providers import services

        bao = services.openbao_server()
        return bao.settings(), bao.stop
    if name == "pkcs11":
        from tests.providers_hsm import services as hsm

        return hsm.softhsm().settings(), lambda: None
    if name == "kmip":
        from tests.providers_hsm import services as hsm

        server = hsm.kmip_server()
        return server.settings(), server.stop
    return {}, lambda: None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--adds", type=int, default=300)
    ap.add_argument("--gets", type=int, default=600)
    ap.add_argument("--searches", type=int, default=300)
    ap.add_argument("--size", type=int, default=1500, help="approximate content bytes")
    ap.add_argument("--round", type=int, default=25, help="operations per mode per round")
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--out", type=Path, help="also write the report here")
    args = ap.parse_args()
    chosen = [p.strip() for p in args.providers.split(",") if p.strip()]
    unknown = set(chosen) - set(PROVIDERS)
    if unknown:
        ap.error(f"unknown providers: {sorted(unknown)}")

    rng = random.Random(7)
    corpus = [sentences(rng, args.size) for _ in range(args.adds)]
    queries = [" ".join(rng.sample(WORDS, 3)) for _ in range(args.searches)]
    stops: list[Callable[[], None]] = []
    with tempfile.TemporaryDirectory(prefix="sealedkb-bench-providers-") as tmp:
        base = Path(tmp)
        os.chmod(base, 0o755)  # the embedded server's user must reach its data folder
        server = EmbeddedPostgres(base / "pgdata")
        server.start()
        kbs: dict[str, KnowledgeBase] = {}
        try:
            import psycopg

            modes = ["plaintext", *chosen]
            with psycopg.connect(server.uri(), autocommit=True) as conn:
                for m in modes:
                    conn.execute(f'CREATE DATABASE "bench_{m.replace("-", "_")}"')
            for m in modes:
                home = base / f"home-{m}"
                url = server.uri(f"bench_{m.replace('-', '_')}")
                extra: dict[str, Any] = {}
                if m not in ("plaintext", "local"):
                    extra, stop = provider_settings(m)
                    stops.append(stop)
                    probe = load_settings(home, database_url=url, embedder="hash", **extra)
                    extra["kms_key_uri"] = (
                        provider_for(probe, ANY_KEY[m]).create_key("bench").key_id
                    )
                settings = load_settings(home, database_url=url, embedder="hash", **extra)
                mode = EncryptionMode.OFF if m == "plaintext" else EncryptionMode.ON
                kbs[m], _ = KnowledgeBase.init(settings, mode)
            times, calls = run(kbs, corpus, queries, args, rng)
        finally:
            for kb in kbs.values():
                kb.close()
            for stop in stops:
                stop()
            server.stop()
    text = report(times, calls, args)
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)
    return 0


def _calls(kb: KnowledgeBase) -> int:
    return sum(kb.telemetry.key_calls.values())


def run(
    kbs: dict[str, KnowledgeBase],
    corpus: list[str],
    queries: list[str],
    args: argparse.Namespace,
    rng: random.Random,
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, int]]]:
    modes = list(kbs)
    times: dict[str, dict[str, list[float]]] = {op: {m: [] for m in modes} for op in OPS}
    calls: dict[str, dict[str, int]] = {op: dict.fromkeys(modes, 0) for op in OPS}
    ids: dict[str, list[str]] = {m: [] for m in modes}
    # Warm up: pools, prepared plans, data keys unwrapped once (the warm cache).
    for m in modes:
        kb = kbs[m]
        e = kb.add("warm up entry about deploy and rollback", title="warm")
        kb.get(e.id)
        kb.search("deploy rollback", mode="hybrid", limit=10)

    def phase(op: str, items: list[Any], do: Callable[[KnowledgeBase, str, Any], None]) -> None:
        for r, start in enumerate(range(0, len(items), args.round)):
            chunk = items[start : start + args.round]
            order = modes[r % len(modes) :] + modes[: r % len(modes)]
            for m in order:
                kb = kbs[m]
                before = _calls(kb)
                for item in chunk:
                    times[op][m].append(timed(lambda kb=kb, m=m, item=item: do(kb, m, item)))
                calls[op][m] += _calls(kb) - before

    def add(kb: KnowledgeBase, m: str, i: int) -> None:
        ids[m].append(str(kb.add(corpus[i], title=f"bench {i}", source=f"bench/{i}.md").id))

    def get(kb: KnowledgeBase, m: str, p: int) -> None:
        kb.get(ids[m][p])

    def hybrid(kb: KnowledgeBase, m: str, q: str) -> None:
        kb.search(q, mode="hybrid", limit=10)

    phase("add", list(range(len(corpus))), add)
    phase("get", [rng.randrange(len(corpus)) for _ in range(args.gets)], get)
    phase("hybrid", queries, hybrid)
    return times, calls


def report(
    times: dict[str, dict[str, list[float]]],
    calls: dict[str, dict[str, int]],
    args: argparse.Namespace,
) -> str:
    load = os.getloadavg()
    lines = [
        f"bench_providers {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{args.adds} adds, {args.gets} gets, {args.searches} hybrid searches per mode "
        f"({args.size}-byte entries, hashing embedder, rounds of {args.round}, order rotating)",
        f"load average before the report: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
        f"({os.cpu_count()} cores)",
        "",
        f"{'provider':<10} {'op':<7} {'p50 ms':>8} {'p95 ms':>8} {'/plain p50':>10} "
        f"{'/plain p95':>10} {'/local p50':>10} {'/local p95':>10} {'KMS calls/1k':>12}",
    ]
    plain = times["add"].get("plaintext")
    assert plain is not None
    for m in times["add"]:
        for op in OPS:
            t = times[op][m]
            p50, p95 = statistics.median(t) * 1e3, pct(t, 0.95) * 1e3
            base = times[op]["plaintext"]
            b50, b95 = statistics.median(base) * 1e3, pct(base, 0.95) * 1e3
            loc = times[op].get("local")
            if loc is not None and m not in ("plaintext",):
                l50 = f"{p50 / (statistics.median(loc) * 1e3):10.3f}"
                l95 = f"{p95 / (pct(loc, 0.95) * 1e3):10.3f}"
            else:
                l50 = l95 = f"{'-':>10}"
            per_k = "-" if m == "plaintext" else f"{calls[op][m] * 1000 / len(t):.1f}"
            lines.append(
                f"{m:<10} {op:<7} {p50:8.2f} {p95:8.2f} {p50 / b50:10.3f} {p95 / b95:10.3f} "
                f"{l50} {l95} {per_k:>12}"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
