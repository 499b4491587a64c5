"""Candidate fusions of hybrid search's two arms, scored offline by bench_quality.py
--fusions on the exact lists the engine fuses (harness.QuestionRun arms)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sealedkb.search.engine import fuse, rrf

Ranked = list[tuple[uuid.UUID, float]]


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
    "engine fuse (now)": fuse,
    "keyword only": lambda kw, sem: kw,
    "semantic only": lambda kw, sem: sem,
}
for _k in (1, 5, 10, 20, 60):
    for _w in (0.25, 0.5, 0.75, 1.0):
        CANDIDATES[f"wrrf k{_k} kw{_w}"] = weighted_rrf(_k, _w, 1.0)
for _w in (0.25, 0.5, 0.75, 1.0):
    CANDIDATES[f"minmax kw{_w}"] = minmax(_w, 1.0)
