"""Candidate fusions of hybrid search's two arms, scored offline by bench_quality.py
--fusions on the exact lists the engine fuses (harness.QuestionRun arms)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sealedkb.embed.minilm import MODEL_ID
from sealedkb.search.engine import fuse, fusion_for, rrf

Ranked = list[tuple[uuid.UUID, float]]
Fusion = Callable[[Ranked, Ranked], Ranked]


def weighted_rrf(k: float, w_kw: float, w_sem: float) -> Callable[[Ranked, Ranked], Ranked]:
    def f(kw: Ranked, sem: Ranked) -> Ranked:
        scores: dict[uuid.UUID, float] = {}
        for w, lst in ((w_kw, kw), (w_sem, sem)):
            for rank, (eid, _s) in enumerate(lst, start=1):
                scores[eid] = scores.get(eid, 0.0) + w / (k + rank)
        return sorted(scores.items(), key=lambda kv: (-kv[1], str(kv[0])))

    return f


def minmax(w_kw: float, w_sem: float) -> Callable[[Ranked, Ranked], Ranked]:
    """Scores scaled to [0, 1] per arm (best 1, the list's last 0), weighted sum."""

    def f(kw: Ranked, sem: Ranked) -> Ranked:
        scores: dict[uuid.UUID, float] = {}
        for w, lst in ((w_kw, kw), (w_sem, sem)):
            if not lst:
                continue
            hi, lo = lst[0][1], lst[-1][1]
            span = hi - lo or 1.0
            for eid, s in lst:
                scores[eid] = scores.get(eid, 0.0) + w * (s - lo) / span
        return sorted(scores.items(), key=lambda kv: (-kv[1], str(kv[0])))

    return f


CANDIDATES: dict[str, Callable[[Ranked, Ranked], Ranked]] = {
    "rrf k60 (before)": lambda kw, sem: rrf([kw, sem]),
    "engine fuse, MiniLM": lambda kw, sem: fuse(kw, sem, *fusion_for(MODEL_ID)),
    "engine fuse, other": lambda kw, sem: fuse(kw, sem, *fusion_for(None)),
    "keyword only": lambda kw, sem: kw,
    "semantic only": lambda kw, sem: sem,
}
for _k in (1, 5, 10, 20, 60):
    for _w in (0.25, 0.5, 0.75, 1.0):
        CANDIDATES[f"wrrf k{_k} kw{_w}"] = weighted_rrf(_k, _w, 1.0)
for _w in (0.25, 0.5, 0.75, 1.0):
    CANDIDATES[f"minmax kw{_w}"] = minmax(_w, 1.0)


def cosine_plus(w_kw: float) -> Callable[[Ranked, Ranked], Ranked]:
    """Semantic arm's cosine as it is, plus the keyword arm's min-max scaled score."""

    def f(kw: Ranked, sem: Ranked) -> Ranked:
        scores: dict[uuid.UUID, float] = {eid: s for eid, s in sem}
        floor = min((s for _e, s in sem), default=0.0)
        if kw:
            hi, lo = kw[0][1], kw[-1][1]
            span = hi - lo or 1.0
            for eid, s in kw:
                scores[eid] = scores.get(eid, floor) + w_kw * (s - lo) / span
        return sorted(scores.items(), key=lambda kv: (-kv[1], str(kv[0])))

    return f


def agreement(
    k: float, w_lo: float, w_hi: float, top: int = 5
) -> Callable[[Ranked, Ranked], Ranked]:
    """Weighted RRF whose keyword weight grows with the arms' agreement: the share of
    the keyword arm's first ``top`` that the semantic arm also lists."""

    def f(kw: Ranked, sem: Ranked) -> Ranked:
        in_sem = {e for e, _s in sem}
        head = kw[:top]
        share = sum(e in in_sem for e, _s in head) / len(head) if head else 0.0
        return weighted_rrf(k, w_lo + (w_hi - w_lo) * share, 1.0)(kw, sem)

    return f


def gap(values: list[float]) -> float:
    """An arm's confidence in its first answer: how far its best score stands above
    the list's mean, relative to the list's score range (0 flat, 1 one clear winner)."""
    if len(values) < 2:
        return 0.0
    hi, lo = values[0], values[-1]
    span = hi - lo
    if span <= 0:
        return 0.0
    mean = sum(values) / len(values)
    return (hi - mean) / span


def confident(k: float, base: float, scale: float) -> Callable[[Ranked, Ranked], Ranked]:
    """Weighted RRF whose keyword weight follows the arms' confidence per query:
    base x exp(scale x (gap(keyword) - gap(semantic)))."""
    import math

    def f(kw: Ranked, sem: Ranked) -> Ranked:
        d = gap([s for _e, s in kw]) - gap([s for _e, s in sem])
        return weighted_rrf(k, base * math.exp(scale * d), 1.0)(kw, sem)

    return f


def zscore(w_kw: float) -> Callable[[Ranked, Ranked], Ranked]:
    """Each arm's scores standardised over its list (mean 0, deviation 1), weighted sum;
    an entry missing from an arm gets that arm's lowest standardised score."""

    def z(lst: Ranked) -> dict[uuid.UUID, float]:
        if not lst:
            return {}
        v = [s for _e, s in lst]
        mean = sum(v) / len(v)
        sd = (sum((x - mean) ** 2 for x in v) / len(v)) ** 0.5 or 1.0
        return {e: (s - mean) / sd for e, s in lst}

    def f(kw: Ranked, sem: Ranked) -> Ranked:
        zk, zs = z(kw), z(sem)
        lk, ls = min(zk.values(), default=0.0), min(zs.values(), default=0.0)
        scores = {e: w_kw * zk.get(e, lk) + zs.get(e, ls) for e in {*zk, *zs}}
        return sorted(scores.items(), key=lambda kv: (-kv[1], str(kv[0])))

    return f


GRID: dict[str, Callable[[Ranked, Ranked], Ranked]] = {
    "rrf k60 (before)": CANDIDATES["rrf k60 (before)"],
    "semantic only": CANDIDATES["semantic only"],
    "keyword only": CANDIDATES["keyword only"],
}
for _k in (1, 3, 5, 12, 60):
    for _w in (0.1, 0.2, 0.3, 0.5):
        GRID[f"wrrf k{_k} kw{_w}"] = weighted_rrf(_k, _w, 1.0)
for _w in (0.1, 0.2, 0.4):
    GRID[f"minmax kw{_w}"] = minmax(_w, 1.0)
for _w in (0.1, 0.2, 0.3, 0.5):
    GRID[f"zscore kw{_w}"] = zscore(_w)
for _w in (0.01, 0.02, 0.03, 0.05):
    GRID[f"cosine+kw {_w}"] = cosine_plus(_w)
for _k in (5, 12, 60):
    for _b in (0.2, 0.4, 0.7, 1.0):
        for _sc in (2.0, 4.0, 8.0, 16.0):
            GRID[f"conf k{_k} kw{_b} x{_sc}"] = confident(_k, _b, _sc)
for _k in (3, 5):
    for _lo, _hi in ((0.0, 0.5), (0.1, 1.0)):
        GRID[f"agree k{_k} kw{_lo}-{_hi}"] = agreement(_k, _lo, _hi)
