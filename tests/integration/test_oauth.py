"""OAuth 2.1 for hosted MCP clients, over real HTTP against `sealedkb serve`: the
SDK's OAuth client (dynamic registration, PKCE S256, the consent form posted by the
test) reaches kb_search; a refresh token works once and its reuse revokes the
family; expired, revoked, wrong-audience and wrong-scope tokens are refused; the
consent form refuses cross-site posts and grants no wider than the signing-in
token; forged or widened OAuth rows in PostgreSQL are refused (attacker tests)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx2 as httpx
import psycopg
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)
from tests.mcp_helpers import http_client, http_server

from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode

REDIRECT = "http://127.0.0.1:9/callback"


class MemoryStorage(TokenStorage):
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def _field(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, f"no {name} field in the consent page"
    return found.group(1)


async def consent(
    base: str,
    authorize_url: str,
    bearer: str,
    role: str = "writer",
    namespaces: str = "default",
    *,
    origin: str | None = None,
) -> httpx.Response:
    """What the user does in the browser: open the authorization URL, sign in on the
    consent page with their bearer token, allow. Returns the consent POST's answer."""
    async with httpx.AsyncClient() as browser:
        r = await browser.get(authorize_url)
        assert r.status_code == 302, r.text
        consent_url = r.headers["location"]
        assert consent_url.startswith(base + "/oauth/consent?")
        page = await browser.get(consent_url)
        assert page.status_code == 200
        assert page.headers["x-frame-options"] == "DENY"
        return await browser.post(
            base + "/oauth/consent",
            data={
                "request": _field(page.text, "request"),
                "csrf": _field(page.text, "csrf"),
                "token": bearer,
                "role": role,
                "namespaces": namespaces,
                "action": "allow",
            },
            headers={"Origin": origin or base},
        )


def _code_of(response: httpx.Response) -> tuple[str, str | None]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT)
    query = parse_qs(urlparse(location).query)
    return query["code"][0], query.get("state", [None])[0]


def sdk_auth(
    base: str, bearer: str, role: str = "writer"
) -> tuple[OAuthClientProvider, MemoryStorage]:
    storage = MemoryStorage()
    result: dict[str, AuthorizationCodeResult] = {}

    async def redirect_handler(url: str) -> None:
        code, state = _code_of(await consent(base, url, bearer, role))
        result["code"] = AuthorizationCodeResult(code=code, state=state)

    async def callback_handler() -> AuthorizationCodeResult:
        return result.pop("code")

    provider = OAuthClientProvider(
        base + "/mcp",
        OAuthClientMetadata(
            redirect_uris=[REDIRECT],  # type: ignore[list-item]
            client_name="hosted test client",
            grant_types=["authorization_code", "refresh_token"],
        ),
        storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    return provider, storage


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.decode().rstrip("=")


def register(base: str, **extra: Any) -> dict[str, Any]:
    body = {"redirect_uris": [REDIRECT], "client_name": "raw client", **extra}
    r = httpx.post(base + "/register", json=body, timeout=10)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def raw_grant(
    base: str, client: dict[str, Any], bearer: str, role: str = "writer"
) -> dict[str, Any]:
    """Authorization code + PKCE by hand: authorize, consent, token."""
    verifier, challenge = pkce()
    query = httpx.QueryParams(
        {
            "response_type": "code",
            "client_id": client["client_id"],
            "redirect_uri": REDIRECT,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": "st-1",
            "scope": role,
            "resource": base + "/mcp",
        }
    )
    code, state = _code_of(await consent(base, f"{base}/authorize?{query}", bearer, role))
    assert state == "st-1"
    r = httpx.post(
        base + "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
            "code_verifier": verifier,
        },
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def raw_mcp(base: str, token: str) -> httpx.Response:
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
    return httpx.post(
        base + "/mcp",
        json=body,
        headers={
            "Accept": "application/json, text/event-stream",
            "Authorization": f"Bearer {token}",
        },
        timeout=10,
    )


@pytest.fixture
def seeded(make_settings: Callable[..., Settings]) -> tuple[str, str]:
    """An encrypted knowledge base with one entry; a writer and a reader bearer token."""
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON)
    kb.add("The deploy runbook: blue green with a canary", title="Deploy runbook")
    _, writer = kb.create_token("alice", "writer", ["default"])
    _, reader = kb.create_token("bob", "reader", ["default"])
    kb.close()
    return writer, reader


def audit_actions(database_url: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        return [r[0] for r in conn.execute("SELECT action FROM kb_audit ORDER BY seq")]


def test_sdk_oauth_client_registers_consents_and_searches(
    seeded: tuple[str, str], home: Path, database_url: str
) -> None:
    writer, _ = seeded
    with http_server(home, database_url) as (base, _):
        # Discovery: RFC 9728 and RFC 8414 metadata; a 401 points at the former.
        unauth = httpx.post(base + "/mcp", json={}, timeout=10)
        assert unauth.status_code == 401
        assert "resource_metadata=" in unauth.headers["www-authenticate"]
        prm = httpx.get(base + "/.well-known/oauth-protected-resource", timeout=10).json()
        assert prm["resource"] == base + "/mcp"
        asm = httpx.get(base + "/.well-known/oauth-authorization-server", timeout=10).json()
        assert asm["code_challenge_methods_supported"] == ["S256"]
        assert asm["registration_endpoint"] == base + "/register"
        assert asm["revocation_endpoint"] == base + "/revoke"

        async def flow() -> Any:
            provider, storage = sdk_auth(base, writer)
            async with (
                create_mcp_http_client(auth=provider) as hc,
                Client(streamable_http_client(base + "/mcp", http_client=hc)) as client,
            ):
                found = await client.call_tool("kb_search", {"query": "canary deploy"})
            assert storage.tokens is not None
            assert storage.tokens.access_token.startswith("skba_")
            return found

        found = asyncio.run(flow())
        assert not found.is_error
        assert [h["title"] for h in found.structured_content["hits"]] == ["Deploy runbook"]

        async def static() -> Any:  # static bearer tokens keep working
            async with http_client(base, writer) as c:
                return await c.call_tool("kb_search", {"query": "canary"})

        assert not asyncio.run(static()).is_error
    actions = audit_actions(database_url)
    for action in ("RegisterOAuthClient", "GrantOAuth", "IssueOAuthToken"):
        assert action in actions
