"""Attacks on bearer-token rows by someone who can write to the database: mint a
token, widen one, un-revoke one. Each must fail, over real HTTP, and be recorded."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psycopg
import pytest
from tests.mcp_helpers import error_of, http_client, http_server

from sealedkb.config import Settings
from sealedkb.crypto.tokens import new_token
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode


def _post(base: str, token: str) -> int:
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
    headers = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {token}"}
    return httpx.post(base + "/mcp", json=body, headers=headers, timeout=10).status_code


async def _call(base: str, token: str, tool: str, args: dict[str, Any]) -> Any:
    async with http_client(base, token) as c:
        return await c.call_tool(tool, args)


def _sql(url: str, query: str, *params: Any) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query, params)


@pytest.fixture
def sealed_kb(make_settings: Callable[..., Settings]) -> KnowledgeBase:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON)
    kb.add("the secret runbook", namespace="team-b")
    return kb


@pytest.mark.parametrize("scheme", [1, 2])
def test_a_minted_row_is_refused(
    sealed_kb: KnowledgeBase, database_url: str, scheme: int, make_settings: Callable[..., Settings]
) -> None:
    secret = new_token()
    _sql(
        database_url,
        "INSERT INTO kb_tokens (id, name, token_hash, role, namespaces, hash_scheme, mac)"
        " VALUES (%s, 'evil', %s, 'admin', '{*}', %s, %s)",
        uuid.uuid4(),
        hashlib.sha256(secret.encode()).digest(),
        scheme,
        os.urandom(32) if scheme == 2 else None,
    )
    assert sealed_kb.authenticate(secret) is None
    sealed_kb.close()


def test_minted_widened_and_unrevoked_rows_fail_over_http(
    sealed_kb: KnowledgeBase, database_url: str, home: Path, make_settings: Callable[..., Settings]
) -> None:
    kb = sealed_kb
    _, reader = kb.create_token("reader", "reader", ["team-a"])
    _, gone = kb.create_token("gone", "admin", ["*"])
    kb.revoke_token("gone")
    # The attacker: a forged admin row for a token they chose (plain SHA-256, as before).
    minted = new_token()
    _sql(
        database_url,
        "INSERT INTO kb_tokens (id, name, token_hash, role, namespaces, hash_scheme, mac)"
        " VALUES (%s, 'evil', %s, 'admin', '{*}', 2, %s)",
        uuid.uuid4(),
        hashlib.sha256(minted.encode()).digest(),
        os.urandom(32),
    )
    kb.close()
    with http_server(home, database_url) as (base, _):
        assert _post(base, reader) == 200
        r = asyncio.run(_call(base, reader, "kb_list", {"namespace": "team-b"}))
        assert error_of(r)["code"] == "ACCESS_DENIED"
        assert _post(base, minted) == 401
        assert _post(base, gone) == 401
        # Widen the reader's row and clear the revocation of the other one.
        _sql(
            database_url,
            "UPDATE kb_tokens SET role = 'admin', namespaces = '{*}' WHERE name = 'reader'",
        )
        _sql(database_url, "UPDATE kb_tokens SET revoked_at = NULL WHERE name = 'gone'")
        assert _post(base, reader) == 401  # refused outright, never elevated
        assert _post(base, gone) == 401
    kb = KnowledgeBase.open(make_settings())
    try:
        actions = [(e["action"], e["outcome"]) for e in kb.audit.events(limit=1000)]
        assert ("CreateToken", "success") in actions
        assert ("RevokeToken", "success") in actions
        assert ("AuthenticateToken", "denied") in actions
    finally:
        kb.close()


def test_rows_of_earlier_versions_need_rekey(sealed_kb: KnowledgeBase, database_url: str) -> None:
    kb = sealed_kb
    secret = new_token()
    # What an earlier version stored: the unkeyed hash, no MAC.
    _sql(
        database_url,
        "INSERT INTO kb_tokens (id, name, token_hash, role, namespaces)"
        " VALUES (%s, 'old', %s, 'reader', '{default}')",
        uuid.uuid4(),
        hashlib.sha256(secret.encode()).digest(),
    )
    try:
        assert kb.authenticate(secret) is None
        assert [r.name for r in kb.rekey_tokens()] == ["old"]
        principal = kb.authenticate(secret)
        assert principal is not None and principal.name == "old"
        assert kb.rekey_tokens() == []
    finally:
        kb.close()


def test_plaintext_knowledge_base_tokens_still_work(
    make_settings: Callable[..., Settings],
) -> None:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.OFF)
    try:
        _, secret = kb.create_token("w", "writer", ["default"])
        principal = kb.authenticate(secret)
        assert principal is not None and principal.role.value == "writer"
    finally:
        kb.close()


def test_token_rekey_command(sealed_kb: KnowledgeBase, database_url: str, home: Path) -> None:
    from tests.cli_helpers import make_cli
    from tests.integration.test_tamper_cli import expect

    secret = new_token()
    _sql(
        database_url,
        "INSERT INTO kb_tokens (id, name, token_hash, role, namespaces)"
        " VALUES (%s, 'old', %s, 'writer', '{default}')",
        uuid.uuid4(),
        hashlib.sha256(secret.encode()).digest(),
    )
    sealed_kb.close()
    cli = make_cli(home, database_url)
    out = expect(cli("token", "rekey", "--json"), 0)
    assert [r["name"] for r in json.loads(out.stdout)] == ["old"]
    assert "no token needed re-keying" in expect(cli("token", "rekey"), 0).stdout


class _CountingMac:
    """The key provider's MAC, counted (what a key-service call would cost)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def generate_mac(self, message: bytes) -> bytes:
        self.calls += 1
        return bytes(self.inner.generate_mac(message))

    def verify_mac(self, message: bytes, mac: bytes) -> bool:
        self.calls += 1
        return bool(self.inner.verify_mac(message, mac))


def test_a_known_token_costs_no_key_service_call(sealed_kb: KnowledgeBase) -> None:
    from sealedkb.kb.tokens import TokenService
    from sealedkb.store.tokens import TokenTable

    kb = sealed_kb
    _, secret = kb.create_token("w", "writer", ["default"])
    mac = _CountingMac(kb.provider)
    service = TokenService(TokenTable(kb.db), kb.audit, mac, kb.telemetry)
    try:
        assert service.authenticate(secret) is not None
        first = mac.calls
        for _ in range(20):
            assert service.authenticate(secret) is not None
        assert mac.calls == first  # cached lookup hash and verified row
        # A forged row is checked (and refused) every time, never cached as good.
        _sql_url = kb.target.url
        _sql(_sql_url, "UPDATE kb_tokens SET role = 'admin' WHERE name = 'w'")
        assert service.authenticate(secret) is None
        assert service.authenticate(secret) is None
    finally:
        kb.close()
