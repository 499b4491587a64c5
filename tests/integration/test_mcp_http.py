"""HTTP MCP server: bearer auth, roles, namespace isolation, key outage and recovery,
rate limiting, TLS-less non-loopback bind refusal, graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psycopg
import pytest
from tests.mcp_helpers import error_of, http_client, http_server, server_env

from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.keys.local import URI_PREFIX
from sealedkb.model import EncryptionMode


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def setup_kb(make_settings: Callable[..., Settings]) -> KnowledgeBase:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON)
    return kb


async def call(base: str, token: str | None, tool: str, args: dict[str, Any]) -> Any:
    async with http_client(base, token) as c:
        return await c.call_tool(tool, args)


def raw_post(base: str, token: str | None) -> httpx.Response:
    headers = {"Accept": "application/json, text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "0"},
        },
    }
    return httpx.post(base + "/mcp", json=body, headers=headers, timeout=10)


def test_auth_401_revoked_expired_and_roles(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    kb = setup_kb(make_settings)
    _, writer = kb.create_token("writer", "writer", ["default"])
    _, reader = kb.create_token("reader", "reader", ["default"])
    _, revoked = kb.create_token("gone", "writer", ["default"])
    _, expired = kb.create_token("old", "writer", ["default"], expires_days=1)
    kb.revoke_token("gone")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE kb_tokens SET expires_at = now() - interval '1 minute' WHERE name = 'old'"
        )
    kb.close()
    with http_server(home, database_url) as (base, _):
        assert raw_post(base, None).status_code == 401
        assert raw_post(base, "skb_not-a-real-token").status_code == 401
        assert raw_post(base, revoked).status_code == 401
        assert raw_post(base, expired).status_code == 401
        assert raw_post(base, writer).status_code == 200
        r = run(call(base, reader, "kb_add", {"content": "x"}))
        assert error_of(r)["code"] == "ACCESS_DENIED"
        ok = run(call(base, reader, "kb_list", {}))
        assert not ok.is_error
        # Revocation takes effect on the next request, without a restart.
        kb2 = KnowledgeBase.open(make_settings())
        kb2.revoke_token("writer")
        kb2.close()
        assert raw_post(base, writer).status_code == 401


def test_namespace_isolation_over_http(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    kb = setup_kb(make_settings)
    b_entry = kb.add("B's confidential runbook", namespace="team-b")
    _, token_a = kb.create_token("a", "writer", ["team-a"])
    kb.close()
    with http_server(home, database_url) as (base, _):
        r = run(call(base, token_a, "kb_get", {"id": str(b_entry.id)}))
        err = error_of(r)
        assert err["code"] == "NOT_FOUND"
        assert "confidential" not in r.content[0].text
        listed = run(call(base, token_a, "kb_list", {}))
        assert listed.structured_content["entries"] == []


def _key_command(home: Path, database_url: str, action: str) -> None:
    """`sealedkb key disable|enable` as an operator would run it, in another process."""
    proc = subprocess.run(
        [sys.executable, "-m", "sealedkb", "key", action],
        env=server_env(home, database_url),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_key_unavailable_then_recovers_without_restart(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    kb = setup_kb(make_settings)
    entry = kb.add("survives an outage")
    _, token = kb.create_token("agent", "writer", ["default"])
    kms_key = kb.kms_key_uri
    assert kms_key is not None and kms_key.startswith(URI_PREFIX)
    kb.close()
    with http_server(home, database_url, SEALEDKB_DATA_KEY_MAX_AGE="1") as (base, _):
        assert httpx.get(base + "/readyz").status_code == 200
        assert not run(call(base, token, "kb_get", {"id": str(entry.id)})).is_error
        _key_command(home, database_url, "disable")
        time.sleep(1.5)  # the data-key cache bound
        r = run(call(base, token, "kb_get", {"id": str(entry.id)}))
        assert error_of(r)["code"] == "KEY_UNAVAILABLE"
        assert error_of(run(call(base, token, "kb_add", {"content": "x"})))["code"] == (
            "KEY_UNAVAILABLE"
        )
        found = run(call(base, token, "kb_search", {"query": "outage"}))
        assert error_of(found)["code"] == "KEY_UNAVAILABLE"
        ready = httpx.get(base + "/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "inaccessible-encryption-credentials"
        _key_command(home, database_url, "enable")
        r = run(call(base, token, "kb_get", {"id": str(entry.id)}))
        assert not r.is_error and r.structured_content["content"] == "survives an outage"
        assert httpx.get(base + "/readyz").status_code == 200


def test_rate_limit_answers_429(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    kb = setup_kb(make_settings)
    _, token = kb.create_token("agent", "reader", ["default"])
    kb.close()
    with http_server(
        home, database_url, SEALEDKB_HTTP_RATE_PER_SECOND="1", SEALEDKB_HTTP_RATE_BURST="3"
    ) as (base, _):
        codes = [raw_post(base, token).status_code for _ in range(6)]
        assert codes[:3] == [200, 200, 200]
        assert 429 in codes[3:]


def test_refuses_non_loopback_without_tls(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    setup_kb(make_settings).close()
    proc = subprocess.run(
        [sys.executable, "-m", "sealedkb", "serve", "--transport", "http", "--host", "0.0.0.0"],
        env=server_env(home, database_url),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 7
    assert b"TLS" in proc.stderr


def test_sigterm_finishes_gracefully(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    kb = setup_kb(make_settings)
    _, token = kb.create_token("agent", "writer", ["default"])
    kb.close()
    with http_server(home, database_url) as (base, proc):
        assert not run(call(base, token, "kb_add", {"content": "before stop"})).is_error
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    kb = KnowledgeBase.open(make_settings())
    assert [e.content for e in kb.list()] == ["before stop"]
    kb.close()


@pytest.mark.parametrize("bad", ["--tls-cert"])
def test_tls_flags_must_come_in_pairs(
    make_settings: Callable[..., Settings], home: Path, database_url: str, tmp_path: Path, bad: str
) -> None:
    setup_kb(make_settings).close()
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "sealedkb", "serve", "--transport", "http", bad, str(cert)],
        env=server_env(home, database_url),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 7


def test_metrics_endpoint(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    kb = setup_kb(make_settings)
    kb.add("counted")
    _, token = kb.create_token("agent", "reader", ["default"])
    _, scraper = kb.create_token("prometheus", "admin", ["*"])
    kb.close()
    with http_server(home, database_url) as (base, _):
        assert not run(call(base, token, "kb_list", {})).is_error
        assert httpx.get(base + "/metrics").status_code == 401
        text = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {scraper}"}).text
        assert "sealedkb_database_transport_info{" in text
        if "verify-full" in database_url:  # the suite run with --db-transport=tls
            assert 'transport="tls"' in text and 'tls_protocol="TLSv1.' in text
        else:
            assert 'transport="unix-socket"' in text and 'tls_protocol="none"' in text
        assert "sealedkb_available 1.0" in text
        assert "sealedkb_entries 1.0" in text
        assert 'sealedkb_tool_duration_seconds_count{outcome="ok",tool="kb_list"} 1.0' in text
        assert "counted" not in text
