"""Scale curve: ingest, search latency, recall, memory, cold start, database size and
snapshot throughput of one knowledge base at a given size, per mode.

Modes: ``memory`` (encrypted, the in-process BM25 + exact-cosine index,
search/memory.py), ``server`` (encrypted, the hardened index in PostgreSQL: pgvector
HNSW over DCPE vectors + GIN over keyed tokens) and ``plaintext`` (no encryption,
PostgreSQL's own full-text and HNSW indexes). One knowledge base (its own embedded
PostgreSQL 18, durable defaults) per size and mode under ``--data``; a rerun reuses
it when it already holds the size (``--reuse``), so the measurements can be repeated
without ingesting again.

Entries: real chunks of the Python 3.11 documentation (Debian python3.11-doc, chunked
by sealedkb's importer, <= 1,500 characters) with their real MiniLM vectors: those
whose vectors bench/.cache already holds (the list is kept in ``--data`` as
corpus-keys.json, so a ``--reuse`` rerun uses the same corpus -- as long as the
chunker still makes those chunks; in the run of 2026-12-03: 6,964 chunks at 10k, but
1,615 at 100k, filled while the importer's new chunking was in bench/corpus.py and
only those of its chunks had cached vectors). The
bulk are variants of a random one of them: its sentences in another order plus a
marker word, and as vector a cheap deterministic embedder -- the real chunk's MiniLM
vector plus Gaussian noise (sigma 0.02 per dimension, seeded by the entry number),
re-normalised. So the text sizes are real and the vectors cluster the way real ones
do (uniform random vectors would make HNSW recall meaningless), but only the sample's
vectors come from the model.

Ingest goes through ``KnowledgeBase.add_many`` (batches of 500: validation, keyword
tokens, DCPE, sealing, dedup check), the embeddings supplied by a lookup. With
``--defer-indexes`` (used for 1M) the GIN and HNSW indexes of kb_entries are dropped
before the load and built once after it with the same definitions
(``maintenance_work_mem`` 2 GB), as an operator would for a bulk load; the build
time is reported and counted in the ingest throughput. Nothing else is bypassed:
every row is sealed by the product's own sealer on its ordinary write path.

Queries: the FAQ questions plus section headings of the documentation (``--queries``),
their real MiniLM vectors; hybrid, keyword and semantic searches, limit 10, in this
process (``--rounds`` passes after a warm pass). recall@10: semantic search against
exact cosine top-10 over all vectors (kept while ingesting). Then a real ``sealedkb
serve --transport http`` (the real MiniLM query embedder) is started on the knowledge
base: cold start = process start to the first kb_search answered over MCP (for the
memory mode this includes building the index), and its resident memory (VmRSS)
after 20 more searches. Database size: pg_database_size. Snapshots (encrypted modes):
create and verify, MB/s of the snapshot file.

    nice -n 19 ionice -c3 python bench/bench_scale.py --size 100000 \
        --modes memory,server,plaintext [--defer-indexes] [--no-snapshot] \
        [--data /tmp/sealedkb-scale] [--out bench/results/scale-DATE.json]

    python bench/bench_scale.py --plot bench/results/scale-2026-12-03.json \
        --png docs/images/scale.png   # the plot, and the table printed
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import EmbeddingCache, LookupEmbedder, chunk_texts, doc_chunks, text_key
from measure import pct

MODES = ("memory", "server", "plaintext")
BATCH = 500
SIGMA = 0.02
ROOT = Path(__file__).resolve().parents[1]


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Corpus:
    """Entry i, deterministic: the real chunks first, then seeded variants."""

    def __init__(self, cache: EmbeddingCache, keyfile: Path) -> None:
        chunks = doc_chunks()
        keys = [text_key(t) for t in chunk_texts(chunks)]
        if keyfile.exists():  # the same corpus as the knowledge bases already filled
            chosen = json.loads(keyfile.read_text())
        else:  # the chunks whose real vectors are cached (all, once bench/corpus.py ran)
            chosen = sorted({k for k in keys if k in cache.table})
            keyfile.write_text(json.dumps(chosen))
        by_key = dict(zip(keys, chunks, strict=True))
        self.chunks = [by_key[k] for k in chosen if k in by_key]
        if len(self.chunks) != len(chosen):
            raise SystemExit(f"{keyfile}: the chunking changed since; use another --data")
        self.vecs = cache.vectors(chunk_texts(self.chunks), label="chunks")

    def batch(self, start: int, stop: int) -> list[tuple[str, str, str, NDArray[np.float32]]]:
        out = []
        for i in range(start, stop):
            if i < len(self.chunks):
                c = self.chunks[i]
                out.append((c.title, c.content, c.source, self.vecs[i]))
                continue
            rng = random.Random(i)
            k = rng.randrange(len(self.chunks))
            c = self.chunks[k]
            sents = c.content.split(". ")
            rng.shuffle(sents)
            noise = np.random.default_rng(i).normal(0, SIGMA, self.vecs.shape[1])
            v = (self.vecs[k] + noise).astype(np.float32)
            out.append(
                (
                    f"{c.title} (variant {i})",
                    ". ".join(sents) + f" variant{i}",
                    c.source,
                    v / np.linalg.norm(v),
                )
            )
        return out


class TopK:
    """Exact cosine top-k of every query over the vectors seen so far."""

    def __init__(self, qvecs: NDArray[np.float32], k: int = 10) -> None:
        self.q = qvecs
        self.k = k
        self.scores = np.full((len(qvecs), k), -np.inf, dtype=np.float32)
        self.idx = np.full((len(qvecs), k), -1, dtype=np.int64)

    def add(self, start: int, vecs: NDArray[np.float32]) -> None:
        s = self.q @ vecs.T  # (queries, batch)
        ids = np.broadcast_to(np.arange(start, start + len(vecs)), s.shape)
        alls = np.concatenate([self.scores, s], axis=1)
        alli = np.concatenate([self.idx, ids], axis=1)
        top = np.argsort(-alls, axis=1)[:, : self.k]
        self.scores = np.take_along_axis(alls, top, axis=1)
        self.idx = np.take_along_axis(alli, top, axis=1)


def supplied_embedder(cache: EmbeddingCache, table: dict[str, NDArray[np.float32]]) -> Any:
    class Supplied(LookupEmbedder):
        def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
            return np.stack([table[t] for t in texts])

    return Supplied(cache)


def open_kb(home: Path, mode: str, size: int, *, create: bool) -> Any:
    from sealedkb.config import load_settings
    from sealedkb.kb.knowledge_base import KnowledgeBase
    from sealedkb.model import EncryptionMode

    settings = load_settings(home, memory_index_max_entries=max(size + 1000, 200_000))
    if create:
        kb, _ = KnowledgeBase.init(
            settings,
            EncryptionMode.OFF if mode == "plaintext" else EncryptionMode.ON,
            search_index=None if mode == "plaintext" else mode,
        )
        return settings, kb
    return settings, KnowledgeBase.open(settings)


def search_indexes(conn: Any) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'kb_entries'"
        " AND (indexdef ILIKE '%USING gin%' OR indexdef ILIKE '%USING hnsw%')"
    ).fetchall()
    return [(str(n), str(d)) for n, d in rows]


def ingest(
    kb: Any,
    corpus: Corpus,
    size: int,
    truth: TopK,
    table: dict[str, NDArray[np.float32]],
    defer: bool,
) -> tuple[dict[str, Any], list[uuid.UUID]]:
    from sealedkb.model import new_entry
    from sealedkb.search.engine import embedding_text

    dropped: list[tuple[str, str]] = []
    if defer:
        with kb.db.transaction("bench: drop search indexes") as conn:
            dropped = search_indexes(conn)
            for name, _ in dropped:
                conn.execute(f'DROP INDEX "{name}"')
    ids: list[uuid.UUID] = []
    spent = 0.0
    t_start = time.monotonic()
    for start in range(0, size, BATCH):
        rows = corpus.batch(start, min(size, start + BATCH))
        vecs = np.stack([r[3] for r in rows])
        truth.add(start, vecs)
        table.clear()
        news = []
        for title, content, source, v in rows:
            table[embedding_text(title, content)] = v
            news.append(new_entry(content, title=title, source=source, entry_type="doc"))
        t0 = time.perf_counter()
        added = kb.add_many(news)
        spent += time.perf_counter() - t0
        ids.extend(e.id for e in added)
        if (start // BATCH) % 200 == 0:
            print(
                f"  {start + len(rows)}/{size} in {time.monotonic() - t_start:.0f} s "
                f"({(start + len(rows)) / spent:.0f}/s in add_many)",
                file=sys.stderr,
                flush=True,
            )
    build = 0.0
    if dropped:
        t0 = time.perf_counter()
        with kb.db.transaction("bench: build search indexes") as conn:
            conn.execute("SET LOCAL maintenance_work_mem = '2GB'")
            for _, ddl in dropped:
                conn.execute(ddl)
        build = time.perf_counter() - t0
    table.clear()
    out = {
        "add_many_seconds": round(spent, 1),
        "index_build_seconds": round(build, 1),
        "deferred_indexes": [n for n, _ in dropped],
        "entries_per_s": round(size / (spent + build), 1),
        "add_many_entries_per_s": round(size / spent, 1),
    }
    return out, ids


def latency(kb: Any, queries: list[str], rounds: int) -> dict[str, Any]:
    from sealedkb.search.engine import SearchMode

    out: dict[str, Any] = {}
    for mode in (SearchMode.HYBRID, SearchMode.KEYWORD, SearchMode.SEMANTIC):
        times = []
        for _ in range(rounds):
            for q in queries:
                t0 = time.perf_counter()
                kb.search(q, mode=mode, limit=10)
                times.append(time.perf_counter() - t0)
        out[mode.value] = {
            "p50_ms": round(statistics.median(times) * 1e3, 2),
            "p95_ms": round(pct(times, 0.95) * 1e3, 2),
            "n": len(times),
        }
    return out


def recall(kb: Any, queries: list[str], truth: TopK, ids: list[uuid.UUID]) -> float:
    hits = 0
    for qi, q in enumerate(queries):
        want = {ids[i] for i in truth.idx[qi] if i >= 0}
        got = {h.id for h in kb.search(q, mode="semantic", limit=10).hits}
        hits += len(want & got)
    return round(hits / (10 * len(queries)), 4)


def serve_probe(home: Path, token: str, size: int, queries: list[str]) -> dict[str, Any]:
    """Start the real server, time the first search, then its RSS after 20 more."""
    import httpx2 as httpx
    from bench_mcp_load import free_port
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    port = free_port()
    env = dict(
        os.environ,
        SEALEDKB_HOME=str(home),
        SEALEDKB_MEMORY_INDEX_MAX_ENTRIES=str(max(size + 1000, 200_000)),
        SEALEDKB_HTTP_RATE_PER_SECOND="10000",
        SEALEDKB_HTTP_RATE_BURST="100000",
    )
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sealedkb", "serve", "--transport", "http", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {}
    try:
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise SystemExit(f"server exited: {err[-2000:]}")
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > 1800:
                raise SystemExit("server did not come up")
            time.sleep(0.05)
        out["healthz_s"] = round(time.monotonic() - t0, 2)
        out["rss_idle_mib"] = round(rss_mib(proc.pid), 1)

        async def calls() -> list[float]:
            hc = create_mcp_http_client(
                headers={"Authorization": f"Bearer {token}"}, timeout=httpx.Timeout(1800)
            )
            lat = []
            async with Client(streamable_http_client(base + "/mcp", http_client=hc)) as c:
                for q in queries[:21]:
                    t = time.perf_counter()
                    r = await c.call_tool("kb_search", {"query": q, "limit": 10})
                    if r.is_error:
                        raise SystemExit(f"kb_search failed: {r.content[0].text[:200]}")
                    lat.append(time.perf_counter() - t)
                    if len(lat) == 1:
                        out["cold_start_s"] = round(time.monotonic() - t0, 2)
            return lat

        lat = asyncio.run(calls())
        out["first_search_s"] = round(lat[0], 2)
        out["mcp_search_p50_ms"] = round(statistics.median(lat[1:]) * 1e3, 1)
        out["rss_mib"] = round(rss_mib(proc.pid), 1)
    finally:
        proc.terminate()
        proc.wait(60)
    return out


def snapshot(settings: Any, kb: Any) -> dict[str, Any]:
    from sealedkb.kb.snapshotting import snapshots_for

    snaps = snapshots_for(settings, kb)
    t0 = time.perf_counter()
    info = snaps.create(name="scale")
    create_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    snaps.verify(info.id)
    verify_s = time.perf_counter() - t0
    mb = info.size_bytes / 1e6
    return {
        "size_mb": round(mb, 1),
        "create_s": round(create_s, 1),
        "verify_s": round(verify_s, 1),
        "create_mb_per_s": round(mb / create_s, 1),
        "verify_mb_per_s": round(mb / verify_s, 1),
    }


def run_mode(
    args: argparse.Namespace, mode: str, corpus: Corpus, cache: EmbeddingCache
) -> dict[str, Any]:
    from sealedkb.embed.cache import CachingEmbedder
    from sealedkb.store.embedded import EmbeddedPostgres

    size = args.size
    home = args.data / f"{size}-{mode}"
    table: dict[str, NDArray[np.float32]] = {}
    supplied = supplied_embedder(cache, table)
    queries = query_set(corpus, args.queries)
    qvecs = cache.vectors(queries, label="queries")
    qtable = dict(zip(queries, qvecs, strict=True))
    truth = TopK(qvecs)
    res: dict[str, Any] = {
        "size": size,
        "mode": mode,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "commit": git(["rev-parse", "--short", "HEAD"]),
        "uncommitted_src": git(["status", "--short", "--", "src"]).split("\n"),
        "loadavg_start": os.getloadavg(),
    }

    def save(stage: str) -> None:  # partial results survive a long run cut short
        if args.out:
            merge_out(args.out, {**res, "done": stage})

    state = home / "bench-state.json"
    reuse = args.reuse and state.exists()
    settings, kb = open_kb(home, mode, size, create=not reuse)
    try:
        kb.embedder = kb.indexer.embedder = supplied
        kb.engine.embedder = CachingEmbedder(supplied_embedder(cache, qtable), max_entries=10_000)
        if reuse:
            saved = json.loads(state.read_text())
            ids = [uuid.UUID(x) for x in saved["ids"]]
            res["ingest"] = saved["ingest"]
            for start in range(0, size, 5000):
                rows = corpus.batch(start, min(size, start + 5000))
                truth.add(start, np.stack([r[3] for r in rows]))
        else:
            res["ingest"], ids = ingest(kb, corpus, size, truth, table, args.defer_indexes)
            state.write_text(json.dumps({"ingest": res["ingest"], "ids": [str(i) for i in ids]}))
        save("ingest")
        with kb.db.transaction("bench: analyze") as conn:
            conn.execute("ANALYZE kb_entries")
        with kb.db.transaction("bench: size") as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            res["database_mb"] = round(int(row[0]) / 1e6, 1)
        t0 = time.perf_counter()
        kb.search(queries[0], mode="hybrid", limit=10)  # memory mode: builds the index
        res["first_search_in_process_s"] = round(time.perf_counter() - t0, 2)
        res["bench_process_rss_mib"] = round(rss_mib(), 1)
        for q in queries:
            kb.search(q, mode="hybrid", limit=10)
        res["search"] = latency(kb, queries, args.rounds)
        res["recall@10"] = recall(kb, queries, truth, ids)
        save("search")
        _, token = kb.create_token(f"scale-{os.getpid()}", "reader", ["default"])
    finally:
        kb.close()
    res["serve"] = serve_probe(home, token, size, queries)
    save("serve")
    if mode != "plaintext" and not args.no_snapshot:
        settings, kb = open_kb(home, mode, size, create=False)
        try:
            res["snapshot"] = snapshot(settings, kb)
        finally:
            kb.close()
    res["loadavg_end"] = os.getloadavg()
    save("all")
    if not args.keep_running:
        EmbeddedPostgres(settings.pgdata).stop()
    return res


def git(argv: list[str]) -> str:
    r = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
    return r.stdout.strip()


def query_set(corpus: Corpus, n: int) -> list[str]:
    faq = sorted({c.heading for c in corpus.chunks if c.heading.endswith("?")})
    others = sorted({c.title.split(" › ")[-1] for c in corpus.chunks} - set(faq))
    rng = random.Random(9)
    return (faq + rng.sample(others, max(0, n - len(faq))))[:n]


def merge_out(path: Path, res: dict[str, Any]) -> None:
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"runs": []}
    data["runs"] = [
        r for r in data["runs"] if (r["size"], r["mode"]) != (res["size"], res["mode"])
    ] + [res]
    data["runs"].sort(key=lambda r: (r["size"], MODES.index(r["mode"])))
    path.write_text(json.dumps(data, indent=1, default=float) + "\n")


def plot(path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = json.loads(path.read_text())["runs"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, style, color in zip(MODES, ("o-", "s-", "^--"), ("C0", "C1", "C2"), strict=True):
        rs = sorted(
            (r for r in runs if r["mode"] == mode and "search" in r), key=lambda r: r["size"]
        )
        if not rs:
            continue
        xs = [r["size"] for r in rs]
        p50 = [r["search"]["hybrid"]["p50_ms"] for r in rs]
        p95 = [r["search"]["hybrid"]["p95_ms"] for r in rs]
        ax1.plot(xs, p50, style, color=color, label=f"{mode} p50")
        ax1.plot(xs, p95, style, color=color, alpha=0.35, label=f"{mode} p95")
        served = [r for r in rs if "serve" in r]
        ax2.plot(
            [r["size"] for r in served],
            [r["serve"]["rss_mib"] for r in served],
            style,
            color=color,
            label=mode,
        )
    ax1.axhline(50, color="grey", lw=0.8, ls=":")
    ax1.set(xscale="log", yscale="log", xlabel="entries", ylabel="hybrid search ms")
    ax1.set_title("hybrid search latency (limit 10, in process)")
    ax2.set(xscale="log", xlabel="entries", ylabel="MiB", ylim=(0, None))
    ax2.set_title("resident memory of serve after 21 searches")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    loads = []
    for size in sorted({r["size"] for r in runs}):
        ls = [x for r in runs if r["size"] == size for x in (r["loadavg_start"][0],)]
        ls += [r["loadavg_end"][0] for r in runs if r["size"] == size and "loadavg_end" in r]
        loads.append(f"{size:,} at load {min(ls):.0f}-{max(ls):.0f}")
    fig.suptitle(
        "sealedkb scale curve, 2 shared cores (nice 19); "
        + ", ".join(loads)
        + " (1-min load average: part of the slope is load)",
        fontsize=9,
    )
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def table(path: Path) -> str:
    """The results as the Markdown table of docs/PERFORMANCE.md."""
    runs = json.loads(path.read_text())["runs"]
    head = (
        "| entries | mode | ingest /s | hybrid p50 / p95 ms | keyword p50 / p95 | "
        "semantic p50 / p95 | recall@10 | serve RSS MiB | cold start s | database MB | "
        "snapshot create / verify MB/s | load avg |\n"
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [head]
    for r in runs:
        se, sv, sn = r.get("search", {}), r.get("serve", {}), r.get("snapshot")

        def pp(k: str, se: dict[str, Any] = se) -> str:
            return f"{se[k]['p50_ms']:.0f} / {se[k]['p95_ms']:.0f}" if k in se else "-"

        load = f"{r['loadavg_start'][0]:.0f}-{r.get('loadavg_end', r['loadavg_start'])[0]:.0f}"
        rows.append(
            f"| {r['size']:,} | {r['mode']} | {r['ingest']['entries_per_s']:.0f} | "
            f"{pp('hybrid')} | {pp('keyword')} | {pp('semantic')} | "
            f"{r.get('recall@10', '-')} | {sv.get('rss_mib', '-')} | "
            f"{sv.get('cold_start_s', '-')} | {r.get('database_mb', '-')} | "
            + (f"{sn['create_mb_per_s']} / {sn['verify_mb_per_s']}" if sn else "-")
            + f" | {load} |"
        )
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=10_000)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--data", type=Path, default=Path("/tmp/sealedkb-scale"))
    ap.add_argument("--reuse", action="store_true", help="reuse a knowledge base already filled")
    ap.add_argument("--defer-indexes", action="store_true", help="build GIN/HNSW after the load")
    ap.add_argument("--no-snapshot", action="store_true")
    ap.add_argument("--keep-running", action="store_true", help="leave PostgreSQL running")
    ap.add_argument("--out", type=Path, default=None, help="merge results into this JSON")
    ap.add_argument("--plot", type=Path, default=None, help="only plot this results JSON")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "images" / "scale.png")
    args = ap.parse_args()
    if args.plot:
        plot(args.plot, args.png)
        print(table(args.plot))
        return 0
    cache = EmbeddingCache()
    args.data.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(cache, args.data / "corpus-keys.json")
    print(f"corpus: {len(corpus.chunks)} real chunks with MiniLM vectors", file=sys.stderr)
    for mode in args.modes.split(","):
        if mode not in MODES:
            raise SystemExit(f"unknown mode {mode}")
        print(f"== {args.size} entries, {mode}", file=sys.stderr, flush=True)
        res = run_mode(args, mode, corpus, cache)
        print(json.dumps(res, default=float), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
