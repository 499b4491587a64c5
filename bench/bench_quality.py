"""Search quality on real corpora nobody here wrote, per mode and encryption.

Corpora (bench/quality/corpora.py; Debian packages, installed by the harness when
missing): ``python-faq`` (the Python 3.11 FAQ's answers without their questions among
the tutorial and HOWTOs), ``postgresql`` (the PostgreSQL 15 manual, user questions in
bench/quality/postgresql_questions.tsv), ``manpages`` (Linux system call pages, the
NAME line as the query). Each corpus is stored in an encrypted and a plaintext
knowledge base (the same data) on one embedded PostgreSQL, and every question is asked
in keyword, semantic and hybrid mode.

Reported: recall@1/@5/@10 and MRR@10 per corpus x mode x encryption, and paired tests
(exact sign test on the per-question reciprocal ranks, bootstrap 95 % interval of the
mean difference): hybrid against each arm, encrypted against plaintext. ``--fusions``
also scores candidate fusion functions offline on the arm lists hybrid fuses.

Embeddings: the real model (``minilm``) with vectors cached in bench/.cache (gitignored;
bench/corpus.py), or ``hash`` (deterministic, instant; tests).

    python bench/bench_quality.py [--corpora python-faq,postgresql,manpages]
        [--limit N] [--embedder minilm|hash] [--fusions] [--out bench/results/quality-<date>.txt]
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import corpora, fusions, harness
from quality.stats import Paired, metrics, paired, rr_at

from sealedkb.embed import Embedder
from sealedkb.embed.cache import CachingEmbedder

ROOT = Path(__file__).resolve().parent


def make_embedder(name: str) -> Embedder:
    if name == "hash":
        from sealedkb.embed.hashing import HashingEmbedder

        return HashingEmbedder()
    from corpus import EmbeddingCache, LookupEmbedder

    return CachingEmbedder(LookupEmbedder(EmbeddingCache()), max_entries=200_000)


def _rr(ranks: Sequence[int | None]) -> list[float]:
    return [rr_at(r) for r in ranks]


def _fmt_paired(p: Paired) -> str:
    return (
        f"{p.mean_diff:+.3f} [{p.ci_low:+.3f}, {p.ci_high:+.3f}]  "
        f"{p.wins}-{p.losses} (ties {p.ties})  sign p={p.p_sign:.3f}"
    )


def _short(config: str) -> str:
    return {"encrypted-memory": "enc-mem", "encrypted-server": "enc-srv"}.get(config, "plain")


def report(runs: Sequence[harness.CorpusRun], *, with_fusions: bool) -> list[str]:
    out: list[str] = []
    by_corpus: dict[str, list[harness.CorpusRun]] = {}
    for r in runs:
        by_corpus.setdefault(r.corpus, []).append(r)
    for name, rs in by_corpus.items():
        out.append(f"\n== {name}: {rs[0].entries} entries, {len(rs[0].questions)} questions")
        out.append(f"{'config':<18}{'mode':<10}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'MRR@10':>8}")
        for r in rs:
            for mode in harness.MODES:
                m = metrics([q.ranks[mode.value] for q in r.questions])
                out.append(
                    f"{r.encryption:<18}{mode.value:<10}{m.recall[1]:>7.3f}{m.recall[5]:>7.3f}"
                    f"{m.recall[10]:>7.3f}{m.mrr10:>8.3f}"
                )
        out.append("paired, reciprocal rank@10 (mean diff [95% CI]  wins-losses  sign test):")
        for r in rs:
            ranks = {m.value: [q.ranks[m.value] for q in r.questions] for m in harness.MODES}
            for arm in ("semantic", "keyword"):
                p = paired(_rr(ranks["hybrid"]), _rr(ranks[arm]))
                out.append(f"  {r.encryption:<17} hybrid - {arm:<9} {_fmt_paired(p)}")
                r5 = paired(
                    [float(x is not None and x <= 5) for x in ranks["hybrid"]],
                    [float(x is not None and x <= 5) for x in ranks[arm]],
                )
                out.append(f"  {r.encryption:<17}   (recall@5)        {_fmt_paired(r5)}")
        enc = next((r for r in rs if r.encryption.startswith("encrypted")), None)
        pla = next((r for r in rs if r.encryption == "plaintext"), None)
        if enc is not None and pla is not None:
            for mode in harness.MODES:
                p = paired(
                    _rr([q.ranks[mode.value] for q in enc.questions]),
                    _rr([q.ranks[mode.value] for q in pla.questions]),
                )
                out.append(f"  {enc.encryption} - plaintext {mode.value:<9}{_fmt_paired(p)}")
        if with_fusions:
            out.append("offline fusions on the recorded arms (R@5 / MRR@10 per encryption):")
            for fname, fuse in fusions.CANDIDATES.items():
                cells = []
                for r in rs:
                    m = metrics(harness.offline(r, fuse))
                    cells.append(f"{_short(r.encryption)} {m.recall[5]:.3f}/{m.mrr10:.3f}")
                out.append(f"  {fname:<22}" + "  ".join(cells))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpora", default=",".join(corpora.BUILDERS))
    ap.add_argument("--limit", type=int, default=0, help="questions per corpus (0: all)")
    ap.add_argument("--embedder", choices=("minilm", "hash"), default="minilm")
    ap.add_argument(
        "--configs",
        default=",".join(harness.CONFIGS),
        help="encrypted-memory (the default index), encrypted-server, plaintext",
    )
    ap.add_argument(
        "--chunking",
        choices=tuple(corpora.CHUNKINGS),
        default="sections",
        help="how documents are chunked (sections: what sealedkb import does)",
    )
    ap.add_argument("--fusions", action="store_true", help="score candidate fusions offline")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    ap.add_argument(
        "--save",
        type=Path,
        default=None,
        help="also pickle the runs (ranks and arm lists) here, e.g. bench/.cache/runs.pkl",
    )
    args = ap.parse_args(argv)
    names = [c for c in args.corpora.split(",") if c]
    unknown = [c for c in names if c not in corpora.BUILDERS]
    if unknown:
        ap.error(f"unknown corpora {unknown}; known: {', '.join(corpora.BUILDERS)}")
    configs = [c for c in args.configs.split(",") if c]
    if not set(configs) <= set(harness.CONFIGS):
        ap.error(f"configs are {', '.join(harness.CONFIGS)}")
    corpora.CHUNKING = corpora.CHUNKINGS[args.chunking]
    emb = make_embedder(args.embedder)
    runs: list[harness.CorpusRun] = []
    t_all = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="sealedkb-quality-") as tmp,
        harness.server(Path(tmp)) as srv,
    ):
        for name in names:
            t0 = time.perf_counter()
            corpus = corpora.BUILDERS[name](args.limit)
            runs += harness.run(srv, Path(tmp), corpus, emb, configs)
            print(f"bench: {name} done in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    if args.save is not None:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_bytes(pickle.dumps(runs))
    head = [
        f"sealedkb search quality, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; embedder "
        f"{args.embedder}; chunking {args.chunking}; limit {args.limit or 'none'}; "
        f"{time.perf_counter() - t_all:.0f}s",
    ]
    for name in names:
        head.append(f"  {name}: {corpora.BUILDERS[name](args.limit).description}")
    lines = head + report(runs, with_fusions=args.fusions)
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
