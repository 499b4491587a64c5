"""Choose hybrid's fusion on saved harness runs (bench_quality.py --save FILE ...).

For every candidate fusion (quality/fusions.py GRID) and every corpus x configuration:
the paired difference against the better arm there (recall@5 and reciprocal rank@10,
exact sign test). A candidate qualifies when it is never significantly worse than the
best arm (p < 0.05 with a negative mean); qualifying candidates are ordered by their
worst mean difference, then their mean MRR@10.

``--halves N``: the overfitting check. N times, the questions of every corpus are cut
in two halves at random (seeded); a fusion is chosen on one half by the rule above and
scored on the other, beside the engine's fusion, both ways round.

    python bench/quality/choose_fusion.py bench/.cache/runs-*.pkl [--top 15] [--halves 3]
"""

from __future__ import annotations

import argparse
import pickle
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from quality import fusions, harness
from quality.stats import metrics, paired, recall_at, rr_at
from sealedkb.search.engine import fuse, fusion_for

ENGINE = "engine fuse"


@dataclass(frozen=True, slots=True)
class Score:
    """A fusion on a set of runs (and questions): significant losses against the best
    arm, the worst and the mean paired difference, mean MRR@10, per-run R@5/MRR@10."""

    bad: int
    worst: float
    mean_diff: float
    mrr: float
    cells: tuple[str, ...]


def score(
    runs: list[harness.CorpusRun],
    fusion: fusions.Fusion,
    keep: Callable[[str, int], bool] = lambda _c, _i: True,
) -> Score:
    worst, bad, diffs, mrrs, cells = 1.0, 0, [], [], []
    for r in runs:
        idx = [i for i in range(len(r.questions)) if keep(r.corpus, i)]
        all_fused = harness.offline(r, fusion)
        fused = [all_fused[i] for i in idx]
        kw = [r.questions[i].ranks["keyword"] for i in idx]
        sem = [r.questions[i].ranks["semantic"] for i in idx]
        mk, ms = metrics(kw), metrics(sem)
        best = sem if (ms.mrr10, ms.recall[5]) >= (mk.mrr10, mk.recall[5]) else kw
        for fn in (rr_at, lambda x: recall_at(x, 5)):
            p = paired([fn(x) for x in fused], [fn(x) for x in best], resamples=0)
            worst = min(worst, p.mean_diff)
            diffs.append(p.mean_diff)
            bad += p.significantly_worse()
        m = metrics(fused)
        mrrs.append(m.mrr10)
        cells.append(f"{m.recall[5]:.3f}/{m.mrr10:.3f}")
    return Score(bad, worst, sum(diffs) / len(diffs), sum(mrrs) / len(mrrs), tuple(cells))


def order(s: Score) -> tuple[int, float, float]:
    return (s.bad, -round(s.worst, 3), -s.mrr)


def candidates(model_id: str) -> dict[str, fusions.Fusion]:
    grid: dict[str, fusions.Fusion] = dict(fusions.GRID)
    params = fusion_for(model_id)
    grid[ENGINE] = lambda kw, sem: fuse(kw, sem, *params)
    return grid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--halves", type=int, default=0, help="random half splits to check")
    ap.add_argument(
        "--model", default=fusions.MODEL_ID, help="model whose engine fusion to compare"
    )
    args = ap.parse_args()
    runs: list[harness.CorpusRun] = []
    for p in args.runs:
        runs += pickle.loads(p.read_bytes())
    grid = candidates(args.model)
    print("configs: " + ", ".join(f"{r.corpus}:{r.encryption}" for r in runs))
    scored = sorted(((order(s := score(runs, f)), n, s) for n, f in grid.items()))
    for _o, name, s in scored[: args.top]:
        print(
            f"{name:<26} worse-significant {s.bad}  worst diff {s.worst:+.3f}  "
            f"mean MRR {s.mrr:.3f}  " + " ".join(s.cells)
        )
    for seed in range(1, args.halves + 1):
        rng = random.Random(seed)
        sizes = {r.corpus: len(r.questions) for r in runs}
        first = {c: set(rng.sample(range(n), n // 2)) for c, n in sorted(sizes.items())}
        halves = {
            "A": lambda c, i, first=first: i in first[c],
            "B": lambda c, i, first=first: i not in first[c],
        }
        for fit, test in (("A", "B"), ("B", "A")):
            on_fit = {n: score(runs, f, halves[fit]) for n, f in grid.items()}
            chosen = min(on_fit, key=lambda n: (order(on_fit[n]), n))
            t = score(runs, grid[chosen], halves[test])
            e = score(runs, grid[ENGINE], halves[test])
            print(
                f"split {seed} fit {fit} test {test}: chose {chosen:<22} held out: "
                f"worse-significant {t.bad} worst {t.worst:+.3f} MRR {t.mrr:.3f} | "
                f"{ENGINE}: worse-significant {e.bad} worst {e.worst:+.3f} MRR {e.mrr:.3f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
