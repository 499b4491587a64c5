"""migrate plan's duration model (calibrated by bench/bench_migrate.py)."""

from __future__ import annotations

from sealedkb.migrate.estimate import estimate as _estimate
from sealedkb.migrate.estimate import hnsw_seconds as _hnsw_seconds

MB = 1 << 20


def _facts(rows: int, mem: int = 64 * MB) -> dict[str, int]:
    return {"vector_rows": rows, "vector_dim": 384, "maintenance_work_mem": mem}


def test_hnsw_build_slows_down_past_maintenance_work_mem() -> None:
    small, large = _hnsw_seconds(_facts(10_000)), _hnsw_seconds(_facts(100_000))
    assert large > 10 * small * 3  # the rows beyond the in-memory graph cost more
    assert _hnsw_seconds(_facts(100_000, mem=1024 * MB)) == 10 * small
    assert _hnsw_seconds({"vector_rows": 0, "vector_dim": 384}) == 0.0


def test_in_place_estimate_parts() -> None:
    est = _estimate(100_000, 860_000_000, 0.0003, in_place=True, db=_facts(100_000, 512 * MB))
    parts = est["estimate_breakdown_seconds"]
    assert parts["indexes"] > parts["seal"] > 0
    assert 0 < parts["scrub"] < parts["indexes"]  # no second index build any more
    assert abs(sum(parts.values()) - est["estimate_seconds"]) < 1.0
    # the switch seals only the last changes (change log) and counts rows
    assert 20 < est["expected_downtime_ms"] < 500
    foreign = _estimate(100_000, 860_000_000, 0.0003, in_place=False)
    assert foreign["estimate_breakdown_seconds"]["scrub"] == 0.0
    assert foreign["expected_downtime_ms"] == 0
