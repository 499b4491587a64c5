"""The rate limiter's bucket table and the /readyz probe cache, without a server
(the attacks over real HTTP are in test_http_endpoints.py)."""

from __future__ import annotations

from sealedkb.adapters.http import Buckets, ReadinessProbe, parse_bind
from sealedkb.errors import KeyUnavailableError


def test_bucket_table_evicts_least_recently_used_never_all() -> None:
    b = Buckets(rate=0.001, burst=2, max_keys=100)
    assert b.take("agent", now=0.0) == 0 and b.take("agent", now=0.0) == 0
    assert b.take("agent", now=0.0) > 0  # limited
    for i in range(1000):
        b.take(f"spray-{i}", now=1.0)
        if i % 50 == 0:
            assert b.take("agent", now=1.0) > 0  # kept recent, so never evicted
    assert len(b) == 100
    assert b.take("agent", now=1.0) > 0
    b2 = Buckets(rate=0.001, burst=1, max_keys=3)
    b2.take("old", now=0.0)
    for key in ("a", "b", "c"):
        b2.take(key, now=1.0)
    assert len(b2) == 3
    assert b2.take("old", now=1.0) == 0  # evicted (the least recently used), so fresh
    assert b2.take("a", now=1.0) == 0  # "a" went to make room for "old": fresh again
    assert b2.take("c", now=1.0) > 0  # a recent one stays limited


def test_readiness_probe_is_cached_and_shares_failures() -> None:
    now = [0.0]
    calls: list[int] = []
    state = {"ok": True}

    def check() -> tuple[str, str | None]:
        calls.append(1)
        if not state["ok"]:
            return "inaccessible-encryption-credentials", "disabled"
        return "available", None

    probe = ReadinessProbe(check, max_age=5.0, clock=lambda: now[0])
    assert probe.answer() == (200, {"status": "available"})
    for _ in range(1000):
        probe.answer()
    assert len(calls) == 1
    state["ok"] = False
    now[0] = 4.9
    assert probe.answer()[0] == 200 and len(calls) == 1
    now[0] = 5.0
    status, body = probe.answer()
    assert status == 503 and body["reason"] == "KEY_UNAVAILABLE" and len(calls) == 2
    for _ in range(100):
        probe.answer()
    assert len(calls) == 2  # a failing probe is cached too: flooding reaches no KMS

    def down() -> tuple[str, str | None]:
        raise KeyUnavailableError("database down")

    gone = ReadinessProbe(down, max_age=5.0, clock=lambda: 0.0)
    assert gone.answer() == (503, {"status": "unavailable", "reason": "KEY_UNAVAILABLE"})


def test_parse_bind() -> None:
    assert parse_bind("127.0.0.1:9465") == ("127.0.0.1", 9465)
    assert parse_bind("[::1]:9465") == ("::1", 9465)
