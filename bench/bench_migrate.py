"""Benchmark: ``migrate plan``'s estimate vs the measured ``migrate run``.

For each size in ``--sizes`` (default 10k and 100k entries) this script:

1. starts a fresh PostgreSQL from the embedded wheel (durable defaults) in a temp
   dir, with a fresh sealedkb home, and initialises a *plaintext* knowledge base
   (``--encryption off``, embedder ``hash`` so every row has ``embedding_plain``);
2. fills it with synthetic entries of ~1-2 KB (measure.sentences), a title, 3 tags,
   metadata and a source. ``--build batched`` (default) runs ``add``'s own pipeline
   (validation, ``_store_columns``, ``indexer.embed``/``columns``, the same dedup
   INSERT of ``search_table.insert``) with 500 inserts per transaction instead of
   one: the rows are exactly what plaintext mode writes. ``--build index-after``
   does the same with the plaintext HNSW index dropped during the fill and created
   again after it (same rows, one index build instead of 100k incremental inserts:
   a 100k fill takes ~12 min otherwise). ``--build add`` calls
   ``KnowledgeBase.add`` per entry (~3-8 ms each);
3. runs ``Migrator.plan()`` (the estimate), then times ``Migrator.run()`` end to end
   (wall clock) with the time of each phase taken from the progress callback, then
   ``Migrator.verify()``;
4. prints estimate vs measured seconds and their ratio, the estimate's breakdown vs
   the measured phases, the switch downtime, rows/s, verify's verdict, and the load
   average of the (shared) machine before and after.

    PYTHONPATH=src:bench python bench/bench_migrate.py [--sizes 10000,100000] [--json]

Goal: estimate / measured between 0.5 and 2.0 at 10k and 100k entries.
Nothing secret is printed or saved: no key material, no content.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from measure import WORDS, sentences

from sealedkb.config import load_settings
from sealedkb.formats.entry_doc import EntryDoc
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.migrating import Migrator
from sealedkb.model import (
    EncryptionMode,
    derive_title,
    validate_content,
    validate_metadata,
    validate_tags,
    validate_title,
)
from sealedkb.store.embedded import EmbeddedPostgres
from sealedkb.store.entries import EntryRow

TEAMS = ["platform", "data", "payments", "search", "infra", "mobile"]


def synthetic(rng: random.Random, i: int) -> dict[str, Any]:
    """One realistic entry: ~1-2 KB of sentences, a title, 3 tags, metadata, a source."""
    topic = " ".join(rng.choice(WORDS) for _ in range(4))
    return {
        "content": f"# {topic}\n\n{sentences(rng, rng.randint(1000, 2000))}",
        "title": f"{topic.capitalize()} ({i})",
        "tags": rng.sample(WORDS, 3),
        "metadata": {"team": rng.choice(TEAMS), "seq": i, "reviewed": bool(i % 3)},
        "source": f"docs/{rng.choice(TEAMS)}/{i}.md",
        "entry_type": "note" if i % 4 else "decision",
    }


def build_add(kb: KnowledgeBase, n: int, rng: random.Random) -> None:
    for i in range(n):
        e = synthetic(rng, i)
        kb.add(
            e["content"],
            title=e["title"],
            tags=e["tags"],
            metadata=e["metadata"],
            source=e["source"],
            entry_type=e["entry_type"],
        )


def build_batched(
    kb: KnowledgeBase, n: int, rng: random.Random, *, batch: int = 500, index_after: bool = False
) -> None:
    """``KnowledgeBase.add_entry`` step by step, many inserts per transaction. With
    ``index_after`` the HNSW index on ``embedding_plain`` is dropped for the fill and
    created again after it, from its own definition (same rows; at 100k entries the
    incremental HNSW inserts are most of a 12-minute fill)."""
    hnsw: list[tuple[str, str]] = []
    if index_after:
        with kb.db.transaction("bench fill") as conn:
            hnsw = [
                (str(r[0]), str(r[1]))
                for r in conn.execute(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'kb_entries'"
                    " AND indexdef LIKE '%%USING hnsw (embedding_plain%%'"
                ).fetchall()
            ]
            for name, _ in hnsw:
                conn.execute(f"DROP INDEX {name}")
    for start in range(0, n, batch):
        items = [synthetic(rng, i) for i in range(start, min(n, start + batch))]
        docs = []
        for e in items:
            content = validate_content(e["content"])
            title = validate_title(e["title"]) if e["title"] else derive_title(content)
            docs.append(
                EntryDoc(
                    title,
                    content,
                    e["source"],
                    validate_metadata(e["metadata"]),
                    validate_tags(e["tags"]),
                )
            )
        vectors = kb.indexer.embed([(d.title, d.content) for d in docs])
        with kb.db.transaction("bench fill") as conn:
            for j, (e, doc) in enumerate(zip(items, docs, strict=True)):
                eid = uuid.uuid4()
                cols = kb.sealer.store_columns("default", eid, doc)
                search_cols = kb.indexer.columns(
                    "default", eid, doc, vectors[j] if vectors is not None else None
                )
                row = EntryRow(
                    id=eid, namespace="default", entry_type=e["entry_type"], verified=False, **cols
                )
                kb.search_table.insert(row, search_cols, dedup=True, conn=conn)
    if hnsw:
        with kb.db.transaction("bench fill") as conn:
            for _, definition in hnsw:
                conn.execute(definition)


class PhaseClock:
    """Progress callback that attributes wall time to migration phases.

    The callback is called after each batch (``copy``) and at the start (done=0)
    and end of the one-shot phases. The time up to an end/batch call belongs to
    that phase; the time up to a start call is the gap before it (catch-up rounds
    or bookkeeping)."""

    ONE_SHOT = ("snapshot", "indexes", "switch", "scrub")

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.last = self.t0
        self.prev_phase = "prepare"
        self.phases: dict[str, float] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if phase in self.ONE_SHOT and done == 0:
            label = "catch-up" if self.prev_phase == "copy" else f"before-{phase}"
            if self.prev_phase == "prepare":
                label = "prepare"
        else:
            label = phase
        self.phases[label] = self.phases.get(label, 0.0) + (now - self.last)
        self.last = now
        self.prev_phase = phase

    def finish(self) -> dict[str, float]:
        now = time.perf_counter()
        self.phases["finish"] = self.phases.get("finish", 0.0) + (now - self.last)
        return {k: round(v, 2) for k, v in self.phases.items()}


def one_size(n: int, args: argparse.Namespace, base: Path) -> dict[str, Any]:
    rng = random.Random(1000 + n)
    server = EmbeddedPostgres(base / f"pgdata-{n}")
    server.start()
    try:
        import psycopg

        with psycopg.connect(server.uri(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE bench_mig_{n}")
        settings = load_settings(
            base / f"home-{n}", database_url=server.uri(f"bench_mig_{n}"), embedder="hash"
        )
        kb, _ = KnowledgeBase.init(settings, EncryptionMode.OFF)
        t = time.perf_counter()
        if args.build == "add":
            build_add(kb, n, rng)
        else:
            build_batched(kb, n, rng, index_after=args.build == "index-after")
        build_s = time.perf_counter() - t
        rows = kb.status().get("entries_total")
        kb.close()
        print(f"[{n}] built in {build_s:.1f} s ({rows} entries)", file=sys.stderr)

        load_before = os.getloadavg()
        t = time.perf_counter()
        plan = Migrator(settings).plan()
        plan_s = time.perf_counter() - t
        clock = PhaseClock()
        t = time.perf_counter()
        result = Migrator(settings, progress=clock).run()
        run_s = time.perf_counter() - t
        phases = clock.finish()
        load_after = os.getloadavg()
        t = time.perf_counter()
        ver = Migrator(settings).verify()
        verify_s = time.perf_counter() - t
        print(
            f"[{n}] estimate {plan['estimate_seconds']} s, run {run_s:.1f} s, "
            f"verify ok={ver['ok']} in {verify_s:.1f} s",
            file=sys.stderr,
        )
    finally:
        server.stop()
    return {
        "rows": plan["rows"],
        "bytes": plan["bytes"],
        "build": args.build,
        "build_seconds": round(build_s, 1),
        "plan_seconds": round(plan_s, 2),
        "seal_ms_per_row": plan["seal_ms_per_row"],
        "estimate_seconds": plan["estimate_seconds"],
        "estimate_breakdown_seconds": plan["estimate_breakdown_seconds"],
        "plan_measured": {k: plan[k] for k in plan if k.startswith("db_") or k.endswith("_per_s")},
        "expected_downtime_ms": plan["expected_downtime_ms"],
        "measured_seconds": round(run_s, 2),
        "ratio": round(plan["estimate_seconds"] / run_s, 2),
        "phases_seconds": phases,
        "downtime_ms": result["downtime_ms"],
        "rows_per_s": round(plan["rows"] / run_s, 1),
        "verify_ok": ver["ok"],
        "verify_problems": ver["problems"],
        "verify_seconds": round(verify_s, 1),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated entry counts")
    ap.add_argument(
        "--build",
        choices=("batched", "index-after", "add"),
        default="batched",
        help="how the plaintext knowledge base is filled (see the module docstring)",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--save", type=Path, help="also write the JSON results to this file")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    results = []
    with tempfile.TemporaryDirectory(prefix="sealedkb-bench-mig-") as tmp:
        for n in sizes:
            results.append(one_size(n, args, Path(tmp)))
    doc = {
        "server": "embedded PostgreSQL, durable defaults",
        "cpus": os.cpu_count(),
        "results": results,
    }
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(doc, indent=2) + "\n")
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    report(results)
    return 0


def report(results: list[dict[str, Any]]) -> None:
    print(
        f"{'rows':>8}{'MB':>7}{'estimate s':>12}{'measured s':>12}{'ratio':>7}"
        f"{'downtime ms':>13}{'rows/s':>9}{'verify':>8}  load before/after"
    )
    for r in results:
        print(
            f"{r['rows']:>8}{r['bytes'] / 1e6:>7.0f}{r['estimate_seconds']:>12.1f}"
            f"{r['measured_seconds']:>12.1f}{r['ratio']:>7.2f}{r['downtime_ms']:>13.1f}"
            f"{r['rows_per_s']:>9.0f}{'ok' if r['verify_ok'] else 'FAIL':>8}"
            f"  {r['loadavg_before'][0]:.1f}/{r['loadavg_after'][0]:.1f}"
        )
    for r in results:
        est = ", ".join(f"{k} {v}" for k, v in r["estimate_breakdown_seconds"].items())
        got = ", ".join(f"{k} {v}" for k, v in r["phases_seconds"].items())
        print(f"{r['rows']:>8}  estimate: {est}")
        print(f"{'':>8}  measured: {got}")


if __name__ == "__main__":
    raise SystemExit(main())
