"""Retrieval metrics and the paired significance tests between two configurations."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

CUTOFFS = (1, 5, 10)


def first_rank(labels: Sequence[str], relevant: frozenset[str]) -> int | None:
    """1-based rank of the first relevant hit, None when none is listed."""
    return next((i for i, lab in enumerate(labels, 1) if lab in relevant), None)


def recall_at(rank: int | None, k: int) -> float:
    return 1.0 if rank is not None and rank <= k else 0.0


def rr_at(rank: int | None, k: int = 10) -> float:
    return 1.0 / rank if rank is not None and rank <= k else 0.0


@dataclass(frozen=True, slots=True)
class Metrics:
    n: int
    recall: dict[int, float]  # cutoff -> share of questions answered within it
    mrr10: float


def metrics(ranks: Sequence[int | None]) -> Metrics:
    n = len(ranks)
    if n == 0:
        return Metrics(0, {k: 0.0 for k in CUTOFFS}, 0.0)
    return Metrics(
        n,
        {k: sum(recall_at(r, k) for r in ranks) / n for k in CUTOFFS},
        sum(rr_at(r) for r in ranks) / n,
    )


@dataclass(frozen=True, slots=True)
class Paired:
    """A against B on the same questions: wins, losses, the two-sided exact sign test's
    p-value (ties dropped) and a bootstrap 95 % interval of mean(A - B)."""

    wins: int
    losses: int
    ties: int
    mean_diff: float
    p_sign: float
    ci_low: float
    ci_high: float

    def significantly_worse(self, alpha: float = 0.05) -> bool:
        return self.mean_diff < 0 and self.p_sign < alpha


def sign_test(wins: int, losses: int) -> float:
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail: float = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired(a: Sequence[float], b: Sequence[float], *, resamples: int = 2000) -> Paired:
    if len(a) != len(b):
        raise ValueError("paired scores need the same questions")
    d = [x - y for x, y in zip(a, b, strict=True)]
    wins = sum(x > 1e-12 for x in d)
    losses = sum(x < -1e-12 for x in d)
    n = len(d)
    mean = sum(d) / n if n else 0.0
    rng = random.Random(7)
    means = (
        sorted(sum(rng.choice(d) for _ in range(n)) / n for _ in range(resamples)) if n else [0.0]
    )
    means = means or [mean]
    lo = means[int(0.025 * (len(means) - 1))]
    hi = means[int(0.975 * (len(means) - 1))]
    return Paired(wins, losses, n - wins - losses, mean, sign_test(wins, losses), lo, hi)
