"""Encrypted-vector recall: DCPE (rotation + SAP noise) search vs exact plaintext search.

Two data sets:
* real: MiniLM vectors of every chunk of the Python 3.11 documentation (Debian
  python3.11-doc, chunked by sealedkb's importer; cached by bench/corpus.py);
  queries: the FAQ questions (embedded) + 200 random chunks.
* synthetic: N (default 100,000) clustered unit vectors in 384-d (1,000 Gaussian
  clusters around random centres, within-cluster cosine ~0.6, like related
  sentences), 500 held-out queries from the same clusters.

Truth: exact top-10 by cosine on the plaintext vectors. Measured:
1. sweep (numpy, exact search on ciphertexts): for each beta and over-fetch,
   take the top k*oversample ciphertexts by cosine to R.q, re-rank them by exact
   cosine, recall@10 against the truth. Also the mean cosine between each
   ciphertext and its rotated plaintext (how much a ciphertext still says).
2. end to end in PostgreSQL 18 + pgvector HNSW (m=16, ef_construction=64): the
   chosen beta/oversample with an HNSW index on the ciphertexts, ef_search swept,
   exact re-rank; and plaintext HNSW at the same ef_search for comparison.

    python bench/bench_vectors.py [--n 100000] [--skip-real] [--skip-pg] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from numpy.typing import NDArray
from pgvector.psycopg import register_vector

from sealedkb.crypto.vectors import VectorCipher
from sealedkb.search.engine import DCPE_BETA, OVERSAMPLE
from sealedkb.store.embedded import EmbeddedPostgres

K = 10
BETAS = (0.5, 1.0, 2.0, 2.5, 4.0)
OVERSAMPLES = (1, 2, 3, 4, 8)
EF_SEARCH = (40, 64, 100, 200)

F32 = NDArray[np.float32]


def unit(x: NDArray[Any]) -> F32:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic(n: int, n_queries: int, dim: int = 384, clusters: int = 1000) -> tuple[F32, F32]:
    rng = np.random.default_rng(7)
    centres = unit(rng.standard_normal((clusters, dim)))
    sigma = 0.065  # per-dimension spread: within-cluster cosine ~0.6

    def draw(m: int) -> F32:
        c = rng.integers(0, clusters, m)
        return unit(centres[c] + sigma * rng.standard_normal((m, dim)))

    return draw(n), draw(n_queries)


def real() -> tuple[F32, F32]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from corpus import EmbeddingCache, chunk_texts, doc_chunks

    chunks = doc_chunks()
    cache = EmbeddingCache()
    data = cache.vectors(chunk_texts(chunks), label="chunks")
    faq_q = [c.heading for c in chunks if "/faq/" in c.source and c.heading.endswith("?")]
    qv = cache.vectors(sorted(set(faq_q)), label="FAQ questions")
    rng = np.random.default_rng(11)
    extra = data[rng.choice(len(data), 200, replace=False)]
    return data, np.concatenate([qv, extra]).astype(np.float32)


def exact_topk(data: F32, queries: F32, k: int) -> NDArray[np.int64]:
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), 256):
        sims = queries[s : s + 256] @ data.T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.take_along_axis(sims, part, axis=1).argsort(axis=1)[:, ::-1]
        out[s : s + 256] = np.take_along_axis(part, order, axis=1)
    return out


def recall(found: list[list[int]] | NDArray[np.int64], truth: NDArray[np.int64]) -> float:
    hits = sum(
        len(set(map(int, f[:K])) & set(map(int, t))) for f, t in zip(found, truth, strict=True)
    )
    return hits / (K * len(truth))


def sweep(data: F32, queries: F32, truth: NDArray[np.int64]) -> list[dict[str, Any]]:
    rows = []
    key = os.urandom(32)
    for beta in BETAS:
        cipher = VectorCipher(key, data.shape[1], beta)
        enc = np.concatenate(
            [cipher.encrypt(data[s : s + 20000]) for s in range(0, len(data), 20000)]
        )
        rq = cipher.rotate(queries)
        rd = cipher.rotate(data[:2000])
        kept = float(np.mean(np.sum(unit(enc[:2000]) * rd, axis=1)))
        enc_n = unit(enc)
        row: dict[str, Any] = {"beta": beta, "mean_cos_ciphertext_plaintext": round(kept, 3)}
        deepest = exact_topk(enc_n, rq, K * max(OVERSAMPLES))
        for os_ in OVERSAMPLES:
            cand = deepest[:, : K * os_]
            found = []
            for qi in range(len(queries)):
                c = cand[qi]
                order = np.argsort(-(data[c] @ queries[qi]))[:K]
                found.append(list(c[order]))
            row[f"recall@10_x{os_}"] = round(recall(found, truth), 4)
        rows.append(row)
    return rows


def pg_end_to_end(
    server: EmbeddedPostgres, name: str, data: F32, queries: F32, truth: NDArray[np.int64]
) -> dict[str, Any]:
    cipher = VectorCipher(os.urandom(32), data.shape[1], DCPE_BETA)
    enc = np.concatenate([cipher.encrypt(data[s : s + 20000]) for s in range(0, len(data), 20000)])
    with psycopg.connect(server.uri(), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS vb_{name}")
        c.execute(f"CREATE DATABASE vb_{name}")
    out: dict[str, Any] = {"n": len(data), "queries": len(queries), "beta": DCPE_BETA}
    with psycopg.connect(server.uri(f"vb_{name}"), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
        register_vector(conn)
        conn.execute("CREATE TABLE v (id int PRIMARY KEY, enc vector(384), plain vector(384))")
        t0 = time.perf_counter()
        with conn.cursor().copy("COPY v (id, enc, plain) FROM STDIN WITH (FORMAT BINARY)") as cp:
            cp.set_types(["int4", "vector", "vector"])
            for i in range(len(data)):
                cp.write_row((i, enc[i], data[i]))
        out["copy_s"] = round(time.perf_counter() - t0, 1)
        conn.execute("SET maintenance_work_mem = '1GB'")
        for col in ("enc", "plain"):
            t0 = time.perf_counter()
            conn.execute(f"CREATE INDEX ON v USING hnsw ({col} vector_cosine_ops)")
            out[f"hnsw_build_{col}_s"] = round(time.perf_counter() - t0, 1)
        conn.execute("ANALYZE v")
        rq = cipher.rotate(queries)
        results = []
        for ef in EF_SEARCH:
            row: dict[str, Any] = {"ef_search": ef}
            for os_ in sorted({1, OVERSAMPLE, 4}):
                fetch = K * os_
                conn.execute(f"SET hnsw.ef_search = {max(ef, fetch)}")
                found, lat = [], []
                for qi in range(len(queries)):
                    t0 = time.perf_counter()
                    ids = [r[0] for r in conn.execute(
                        "SELECT id FROM v ORDER BY enc <=> %s LIMIT %s", (rq[qi], fetch)
                    )]  # fmt: skip
                    cand = np.array(ids)
                    order = np.argsort(-(data[cand] @ queries[qi]))[:K]
                    lat.append(time.perf_counter() - t0)
                    found.append(list(cand[order]))
                row[f"enc_recall@10_x{os_}"] = round(recall(found, truth), 4)
                row[f"enc_p50_ms_x{os_}"] = round(float(np.median(lat)) * 1e3, 2)
            conn.execute(f"SET hnsw.ef_search = {ef}")
            found, lat = [], []
            for qi in range(len(queries)):
                t0 = time.perf_counter()
                ids = [r[0] for r in conn.execute(
                    "SELECT id FROM v ORDER BY plain <=> %s LIMIT %s", (queries[qi], K)
                )]  # fmt: skip
                lat.append(time.perf_counter() - t0)
                found.append(ids)
            row["plain_recall@10"] = round(recall(found, truth), 4)
            row["plain_p50_ms"] = round(float(np.median(lat)) * 1e3, 2)
            results.append(row)
            print(f"  {name} {row}", file=sys.stderr)
        out["ef_sweep"] = results
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--skip-pg", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    sets: dict[str, tuple[F32, F32]] = {}
    if not args.skip_real:
        sets["real"] = real()
    sets["synthetic"] = synthetic(args.n, args.queries)
    report: dict[str, Any] = {"k": K, "chosen": {"beta": DCPE_BETA, "oversample": OVERSAMPLE}}
    server = None
    tmp = tempfile.TemporaryDirectory(prefix="sealedkb-vbench-")
    try:
        for name, (data, queries) in sets.items():
            truth = exact_topk(data, queries, K)
            t0 = time.perf_counter()
            rows = sweep(data, queries, truth)
            report[name] = {"n": len(data), "queries": len(queries), "sweep": rows}
            print(f"{name}: n={len(data)} queries={len(queries)} sweep {time.perf_counter() - t0:.0f}s",
                  file=sys.stderr)  # fmt: skip
            for r in rows:
                print(f"  {r}", file=sys.stderr)
            if not args.skip_pg:
                if server is None:
                    server = EmbeddedPostgres(Path(tmp.name) / "pgdata", fast=True)
                    server.start()
                report[name]["postgres_hnsw"] = pg_end_to_end(server, name, data, queries, truth)
    finally:
        if server is not None:
            server.stop()
        tmp.cleanup()
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_report(report)
    return 0


def print_report(report: dict[str, Any]) -> None:
    for name in ("real", "synthetic"):
        if name not in report:
            continue
        r = report[name]
        print(
            f"\n## {name}: {r['n']} vectors, {r['queries']} queries, recall@10 vs exact plaintext"
        )
        print("exact search on ciphertexts + exact re-rank (numpy):")
        heads = [f"x{o}" for o in OVERSAMPLES]
        print(f"{'beta':>5} {'cos(c,Rx)':>10} " + " ".join(f"{h:>7}" for h in heads))
        for row in r["sweep"]:
            vals = " ".join(f"{row[f'recall@10_x{o}']:>7.4f}" for o in OVERSAMPLES)
            print(f"{row['beta']:>5} {row['mean_cos_ciphertext_plaintext']:>10} {vals}")
        pg = r.get("postgres_hnsw")
        if pg:
            print(
                f"PostgreSQL HNSW (beta={pg['beta']}; build enc {pg['hnsw_build_enc_s']}s,"
                f" plain {pg['hnsw_build_plain_s']}s):"
            )
            for row in pg["ef_sweep"]:
                print("  " + ", ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    raise SystemExit(main())
