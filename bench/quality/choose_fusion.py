"""Choose hybrid's fusion on saved harness runs (bench_quality.py --save FILE ...).

For every candidate fusion (quality/fusions.py GRID) and every corpus x configuration:
the paired difference against the better arm there (recall@5 and reciprocal rank@10,
exact sign test). A candidate qualifies when it is never significantly worse than the
best arm (p < 0.05 with a negative mean); qualifying candidates are ordered by their
worst mean difference, then their mean MRR@10.

    python bench/quality/choose_fusion.py bench/.cache/runs-*.pkl [--top 15]
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from quality import fusions, harness
from quality.stats import metrics, paired, recall_at, rr_at


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    runs: list[harness.CorpusRun] = []
    for p in args.runs:
        runs += pickle.loads(p.read_bytes())
    rows = []
    for name, fuse in fusions.GRID.items():
        worst = 1.0
        bad = 0
        mrrs = []
        cells = []
        for r in runs:
            fused = harness.offline(r, fuse)
            kw = [q.ranks["keyword"] for q in r.questions]
            sem = [q.ranks["semantic"] for q in r.questions]
            mk, ms = metrics(kw), metrics(sem)
            best = sem if (ms.mrr10, ms.recall[5]) >= (mk.mrr10, mk.recall[5]) else kw
            for fn in (rr_at, lambda x: recall_at(x, 5)):
                p = paired([fn(x) for x in fused], [fn(x) for x in best], resamples=0)
                worst = min(worst, p.mean_diff)
                bad += p.significantly_worse()
            m = metrics(fused)
            mrrs.append(m.mrr10)
            cells.append(f"{m.recall[5]:.3f}/{m.mrr10:.3f}")
        rows.append((bad, -worst, -sum(mrrs) / len(mrrs), name, cells))
    rows.sort()
    print("configs: " + ", ".join(f"{r.corpus}:{r.encryption}" for r in runs))
    for bad, nworst, nmrr, name, cells in rows[: args.top]:
        print(
            f"{name:<26} worse-significant {bad}  worst diff {-nworst:+.3f}  "
            f"mean MRR {-nmrr:.3f}  " + " ".join(cells)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
