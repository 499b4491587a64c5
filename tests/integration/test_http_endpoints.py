"""Attacks on the HTTP endpoints beside /mcp, and on the rate limiter, over real HTTP:
/readyz flooding (key unwraps and audit rows), /metrics without a token, rate-limit
buckets dodged by spelling "Bearer" differently or reset by spraying headers."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import httpx2 as httpx
import psycopg
from tests.mcp_helpers import free_port, http_server

from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"},
    },
}
ACCEPT = "application/json, text/event-stream"


def setup_kb(make_settings: Callable[..., Settings]) -> KnowledgeBase:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON)
    return kb


def audit_rows(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM kb_audit").fetchone()
    assert row is not None
    return int(row[0])


def post_mcp(client: httpx.Client, base: str, authorization: str | None) -> int:
    headers = {"Accept": ACCEPT}
    if authorization is not None:
        headers["Authorization"] = authorization
    return client.post(base + "/mcp", json=INITIALIZE, headers=headers, timeout=10).status_code


def test_readyz_flood_neither_unwraps_keys_nor_writes_audit_rows(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    kb = setup_kb(make_settings)
    kb.add("something sealed, so the namespace has a data key")
    kb.close()
    with http_server(home, database_url) as (base, _), httpx.Client() as client:
        first = client.get(base + "/readyz")
        assert first.status_code == 200 and first.json() == {"status": "available"}
        before = audit_rows(database_url)
        codes = [client.get(base + "/readyz").status_code for _ in range(1000)]
        after = audit_rows(database_url)
    assert after - before <= 5, f"{after - before} audit rows for 1,000 /readyz calls"
    assert set(codes) <= {200, 429}
    assert 429 in codes  # rate limited by client address


def test_metrics_needs_a_token_with_the_metrics_scope(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    kb = setup_kb(make_settings)
    kb.add("counted, never shown")
    _, reader = kb.create_token("agent", "reader", ["default"])
    _, admin = kb.create_token("prometheus", "admin", ["*"])
    kb.close()
    with http_server(home, database_url) as (base, _):
        anonymous = httpx.get(base + "/metrics")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].lower().startswith("bearer")
        assert "sealedkb_" not in anonymous.text
        bad = httpx.get(base + "/metrics", headers={"Authorization": "Bearer skb_forged"})
        assert bad.status_code == 401
        denied = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {reader}"})
        assert denied.status_code == 403 and "sealedkb_" not in denied.text
        ok = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {admin}"})
        assert ok.status_code == 200
        assert "sealedkb_entries 1.0" in ok.text and "counted" not in ok.text


def test_metrics_on_their_own_bind_address(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    setup_kb(make_settings).close()
    port = free_port()
    with http_server(home, database_url, SEALEDKB_METRICS_BIND=f"127.0.0.1:{port}") as (base, _):
        own = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert own.status_code == 200 and "sealedkb_available 1.0" in own.text
        assert httpx.get(f"http://127.0.0.1:{port}/mcp").status_code == 404  # metrics only
        assert httpx.get(base + "/metrics").status_code == 401  # the main listener still asks


def test_spellings_of_bearer_share_one_bucket(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    kb = setup_kb(make_settings)
    _, token = kb.create_token("agent", "reader", ["default"])
    kb.close()
    variants = [
        "".join(c.upper() if up else c for c, up in zip("bearer", mask, strict=True))
        for mask in itertools.product((False, True), repeat=6)
    ]
    assert len(set(variants)) == 64
    with (
        http_server(
            home, database_url, SEALEDKB_HTTP_RATE_PER_SECOND="0.001", SEALEDKB_HTTP_RATE_BURST="3"
        ) as (base, _),
        httpx.Client() as client,
    ):
        codes = [post_mcp(client, base, f"{v} {token}") for v in variants]
    assert codes[:3] == [200, 200, 200]  # the SDK accepts every spelling
    assert codes.count(200) <= 4, codes
    assert set(codes[4:]) == {429}


def test_spraying_bad_headers_does_not_reset_a_limited_token(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    kb = setup_kb(make_settings)
    _, token = kb.create_token("agent", "reader", ["default"])
    kb.close()
    with (
        http_server(
            home, database_url, SEALEDKB_HTTP_RATE_PER_SECOND="0.001", SEALEDKB_HTTP_RATE_BURST="3"
        ) as (base, _),
        httpx.Client() as client,
    ):
        good = f"Bearer {token}"
        assert [post_mcp(client, base, good) for _ in range(3)] == [200, 200, 200]
        assert post_mcp(client, base, good) == 429
        # Past the 10,000 keys at which an earlier table was cleared whole.
        sprayed = {post_mcp(client, base, f"Bearer skb_spray-{i}") for i in range(10_500)}
        assert sprayed <= {401, 429}
        # Still limited, also after the request that finds the table overfull.
        assert [post_mcp(client, base, good) for _ in range(3)] == [429, 429, 429]
