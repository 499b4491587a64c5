"""Benchmark: snapshot create, verify and restore throughput and peak memory.

For each size (default 10k and 100k entries of ~1.5 KB content) this script:

1. starts a PostgreSQL from the embedded wheel (``--durable``: crash-safe defaults;
   otherwise the test server's fsync/synchronous_commit/full_page_writes off),
   initialises an encrypted knowledge base and fills it with synthetic entries via
   ``tests/snapshot_helpers.bulk_add``: every entry sealed by the service exactly as
   ``add`` seals it, rows loaded by COPY in batches of 2000 (an ``add`` per entry
   would take ~2 ms each);
2. measures, each in a fresh child process (so its peak RSS is its own):
   - ``baseline``: import sealedkb, open the knowledge base (the floor of every step);
   - ``pg-copy-out``: plain COPY of every table to nowhere, no compression, no
     crypto (what PostgreSQL alone costs a snapshot);
   - ``create``, ``verify`` (no PostgreSQL: decrypt, decompress, hash, count),
     ``restore`` (into a new database, with its digest recheck and key proof);
3. prints MB/s (snapshot file bytes per second), entries/s and peak RSS per step;
   ``verify-read`` is verify without its fixed costs (the KMS unwrap of the snapshot
   key and the audit events, two commits): the streaming throughput.

    PYTHONPATH=src:. python bench/bench_snapshots.py [--sizes 10000,100000] [--durable] [--json]

Goal: verify >= 100 MB/s; create and restore bound by PostgreSQL, not by
crypto (compare create with pg-copy-out, and restore with verify: the crypto work of
a restore is what verify does).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]


def child(step: str, home: str, url: str, snapshot: str | None, target: str | None) -> None:
    """One measured step in this process; prints a JSON line with time and peak RSS."""
    from sealedkb.config import load_settings
    from sealedkb.kb.knowledge_base import KnowledgeBase
    from sealedkb.kb.snapshotting import snapshots_for
    from sealedkb.store import snapshot_io as sio

    settings = load_settings(home, database_url=url)
    kb = KnowledgeBase.open(settings)
    snaps = snapshots_for(settings, kb)
    out: dict[str, Any] = {"step": step}
    t0 = time.perf_counter()
    if step == "baseline":
        snaps.list()
    elif step == "pg-copy-out":
        total = 0

        def sink(data: Any) -> None:
            nonlocal total
            total += len(data)

        with psycopg.connect(url, autocommit=True) as conn:
            sio.pin_session(conn)
            sio.begin_consistent_read(conn)
            for table in sio.list_tables(conn):
                sio.copy_out(conn, table, sink)
            conn.execute("COMMIT")
        out["copy_bytes"] = total
    elif step == "create":
        info = snaps.create(name="bench")
        out["snapshot"] = info.id
        out["size_bytes"] = info.size_bytes
        out["payload_bytes"] = info.envelope.trailer["payload_bytes"] if info.envelope else None
    elif step == "verify":
        assert snapshot is not None
        report = snaps.verify(snapshot)
        out["read_seconds"] = report["read_seconds"]  # without the key unwrap and audit
    elif step == "restore":
        assert snapshot is not None and target is not None
        result = snaps.restore(snapshot, target)
        out["entries_opened"] = result["entries_opened"]
    out["seconds"] = time.perf_counter() - t0
    kb.close()
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.write(json.dumps(out) + "\n")


def run_child(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PATH": "/usr/bin:/bin"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"step {args[0]} failed: {proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def bench_size(server: Any, base: Path, n: int, size: int) -> dict[str, Any]:
    from tests.snapshot_helpers import bulk_add

    from sealedkb.config import load_settings
    from sealedkb.kb.knowledge_base import KnowledgeBase
    from sealedkb.model import EncryptionMode

    dbname, target = f"bench_{n}", f"bench_{n}_restored"
    with psycopg.connect(server.uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {target}")
        conn.execute(f"CREATE DATABASE {dbname}")
    url = server.uri(dbname)
    home = base / f"home-{n}"
    kb, _ = KnowledgeBase.init(load_settings(home, database_url=url), EncryptionMode.ON)
    t0 = time.perf_counter()
    bulk_add(kb, n, size=size)
    fill = time.perf_counter() - t0
    kb.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        db_bytes = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    steps: dict[str, dict[str, Any]] = {}
    steps["baseline"] = run_child("baseline", str(home), url, "-", "-")
    steps["pg-copy-out"] = run_child("pg-copy-out", str(home), url, "-", "-")
    steps["create"] = run_child("create", str(home), url, "-", "-")
    sid = steps["create"]["snapshot"]
    file_mb = steps["create"]["size_bytes"] / 1e6
    steps["verify"] = run_child("verify", str(home), url, sid, "-")
    steps["restore"] = run_child("restore", str(home), url, sid, target)
    for name in ("create", "verify", "restore"):
        s = steps[name]
        s["mb_per_s"] = round(file_mb / s["seconds"], 1)
        s["entries_per_s"] = round(n / s["seconds"])
    v = steps["verify"]
    steps["verify-read"] = {
        "seconds": v["read_seconds"],
        "mb_per_s": round(file_mb / v["read_seconds"], 1),
        "entries_per_s": round(n / v["read_seconds"]),
        "peak_rss_mb": v["peak_rss_mb"],
    }
    with psycopg.connect(server.uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {target} WITH (FORCE)")
        conn.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
    return {
        "entries": n,
        "content_bytes": size,
        "fill_seconds": round(fill, 1),
        "database_bytes": db_bytes[0] if db_bytes else None,
        "snapshot_bytes": steps["create"]["size_bytes"],
        "payload_bytes": steps["create"]["payload_bytes"],
        "copy_bytes": steps["pg-copy-out"]["copy_bytes"],
        "steps": steps,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--size", type=int, default=1500, help="approximate content bytes")
    ap.add_argument("--durable", action="store_true", help="crash-safe server settings")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=5, metavar=("STEP", "HOME", "URL", "SNAP", "TARGET"))
    args = ap.parse_args()
    if args.child:
        step, home, url, snap, target = args.child
        child(step, home, url, None if snap == "-" else snap, None if target == "-" else target)
        return 0

    from sealedkb.store.embedded import EmbeddedPostgres

    results = []
    with tempfile.TemporaryDirectory(prefix="sealedkb-bench-snap-") as tmp:
        base = Path(tmp)
        server = EmbeddedPostgres(base / "pgdata", fast=not args.durable)
        server.start()
        try:
            for n in (int(x) for x in args.sizes.split(",")):
                results.append(bench_size(server, base, n, args.size))
        finally:
            server.stop()
    if args.json:
        json.dump({"durable": args.durable, "results": results}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"server: {'durable defaults' if args.durable else 'fsync off (test server)'}")
    for r in results:
        print(
            f"\n{r['entries']} entries (~{r['content_bytes']} B content): database "
            f"{r['database_bytes'] / 1e6:.0f} MB, COPY output {r['copy_bytes'] / 1e6:.0f} MB, "
            f"snapshot {r['snapshot_bytes'] / 1e6:.0f} MB (fill {r['fill_seconds']} s)"
        )
        print(f"  {'step':<12} {'seconds':>8} {'MB/s':>8} {'entries/s':>10} {'peak RSS MB':>12}")
        for name, s in r["steps"].items():
            print(
                f"  {name:<12} {s['seconds']:>8.2f} {s.get('mb_per_s', ''):>8} "
                f"{s.get('entries_per_s', ''):>10} {s['peak_rss_mb']:>12.0f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
