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
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
from tests.mcp_helpers import error_of, http_client, http_server

from sealedkb.config import Settings, load_settings
from sealedkb.errors import NotFoundError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode
from sealedkb.store.embedded import EmbeddedPostgres

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


@dataclass(frozen=True)
class Served:
    """One `sealedkb serve --transport http` for the HTTP tests of this module (a server
    start costs seconds): its own database and home, an entry, alice's writer and
    bob's reader bearer tokens. Each test registers clients of its own."""

    base: str
    home: Path
    database_url: str
    writer: str
    reader: str

    def settings(self, **overrides: Any) -> Settings:
        overrides.setdefault("database_url", self.database_url)
        overrides.setdefault("embedder", "hash")
        overrides.setdefault("search_index", "server")
        return load_settings(self.home, **overrides)


@pytest.fixture(scope="module")
def served(
    pg_server: EmbeddedPostgres, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db} STRATEGY file_copy")
    url = pg_server.uri(name)
    home = tmp_path_factory.mktemp("oauth") / "home"
    try:
        kb, _ = KnowledgeBase.init(
            load_settings(home, database_url=url, embedder="hash", search_index="server"),
            EncryptionMode.ON,
        )
        kb.add("The deploy runbook: blue green with a canary", title="Deploy runbook")
        _, writer = kb.create_token("alice", "writer", ["default"])
        _, reader = kb.create_token("bob", "reader", ["default"])
        kb.close()
        # Unauthenticated OAuth requests share the loopback address's bucket.
        with http_server(home, url, SEALEDKB_HTTP_RATE_BURST="1000") as (base, _):
            yield Served(base, home, url, writer, reader)
    finally:
        with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def audit_actions(database_url: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        return [r[0] for r in conn.execute("SELECT action FROM kb_audit ORDER BY seq")]


def test_sdk_oauth_client_registers_consents_and_searches(served: Served) -> None:
    writer = served.writer
    base = served.base
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
    actions = audit_actions(served.database_url)
    for action in ("RegisterOAuthClient", "GrantOAuth", "IssueOAuthToken"):
        assert action in actions


def test_refresh_token_works_once_and_reuse_revokes_the_family(served: Served) -> None:
    writer = served.writer
    base = served.base
    client = register(base)
    first = asyncio.run(raw_grant(base, client, writer))
    assert first["token_type"] == "Bearer" and first["scope"] == "writer"
    assert raw_mcp(base, first["access_token"]).status_code == 200

    def refresh(token: str) -> httpx.Response:
        return httpx.post(
            base + "/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": token,
                "client_id": client["client_id"],
                "client_secret": client["client_secret"],
            },
            timeout=10,
        )

    second = refresh(first["refresh_token"])
    assert second.status_code == 200, second.text
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    assert raw_mcp(base, rotated["access_token"]).status_code == 200
    # The old refresh token again: refused, and the whole family is revoked, so
    # the tokens its thief (or the rightful client) got from it stop working.
    again = refresh(first["refresh_token"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert raw_mcp(base, rotated["access_token"]).status_code == 401
    assert refresh(rotated["refresh_token"]).status_code == 400
    # Another client cannot use someone else's refresh token either.
    other = register(base)
    grant = asyncio.run(raw_grant(base, other, writer))
    stolen = httpx.post(
        base + "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": grant["refresh_token"],
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
        },
        timeout=10,
    )
    assert stolen.status_code == 400
    actions = audit_actions(served.database_url)
    assert "RefreshOAuthToken" in actions and "OAuthRefreshReuse" in actions


def test_expired_revoked_wrong_audience_and_wrong_scope_tokens_are_refused(
    served: Served,
) -> None:
    writer, reader = served.writer, served.reader
    make_settings = served.settings
    base = served.base
    client = register(base)
    # Expired: a token issued an hour ago (clock of the issuing process), row intact.
    past = datetime.now(UTC) - timedelta(hours=1)
    old_kb = KnowledgeBase.open(make_settings(), now=lambda: past)
    try:
        expired = old_kb.oauth_grant(
            client["client_id"], writer, "writer", ["default"], base + "/mcp"
        )
    finally:
        old_kb.close()
    r = raw_mcp(base, expired.access_token)
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    kb = KnowledgeBase.open(make_settings())
    try:  # wrong audience: issued for another resource server
        elsewhere = kb.oauth_grant(
            client["client_id"], writer, "writer", ["default"], "http://127.0.0.1:1/mcp"
        )
        fresh = kb.oauth_grant(client["client_id"], writer, "writer", ["default"], base + "/mcp")
    finally:
        kb.close()
    assert raw_mcp(base, elsewhere.access_token).status_code == 401
    assert raw_mcp(base, fresh.access_token).status_code == 200
    # Revoked (RFC 7009): the access token and its refresh token stop working.
    rv = httpx.post(
        base + "/revoke",
        data={
            "token": fresh.access_token,
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
        },
        timeout=10,
    )
    assert rv.status_code == 200
    assert raw_mcp(base, fresh.access_token).status_code == 401
    refreshed = httpx.post(
        base + "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": fresh.refresh_token,
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
        },
        timeout=10,
    )
    assert refreshed.status_code == 400
    # Wrong scope: a scope the server does not define is refused at /authorize; a
    # reader grant cannot write; a refresh cannot widen the scope.
    verifier, challenge = pkce()
    bad = httpx.get(
        base + "/authorize",
        params={
            "response_type": "code",
            "client_id": client["client_id"],
            "redirect_uri": REDIRECT,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": "s",
            "scope": "superuser",
        },
        timeout=10,
    )
    assert bad.status_code == 302
    assert parse_qs(urlparse(bad.headers["location"]).query)["error"] == ["invalid_scope"]
    plain = httpx.get(
        base + "/authorize",
        params={
            "response_type": "code",
            "client_id": client["client_id"],
            "redirect_uri": REDIRECT,
            "code_challenge": verifier,
            "code_challenge_method": "plain",
        },
        timeout=10,
    )
    assert "error=invalid_request" in plain.headers["location"]  # S256 only
    read_grant = asyncio.run(raw_grant(base, client, reader, role="reader"))
    assert read_grant["scope"] == "reader"

    async def write_with(token: str) -> Any:
        async with http_client(base, token) as c:
            return await c.call_tool("kb_add", {"content": "not allowed"})

    assert error_of(asyncio.run(write_with(read_grant["access_token"])))["code"] == (
        "ACCESS_DENIED"
    )
    widened = httpx.post(
        base + "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": read_grant["refresh_token"],
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
            "scope": "admin",
        },
        timeout=10,
    )
    assert widened.status_code == 400 and widened.json()["error"] == "invalid_scope"
    # PKCE: the code without its verifier is refused.
    _, challenge = pkce()
    query = httpx.QueryParams(
        {
            "response_type": "code",
            "client_id": client["client_id"],
            "redirect_uri": REDIRECT,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": "x",
            "scope": "writer",
        }
    )
    code, _ = _code_of(asyncio.run(consent(base, f"{base}/authorize?{query}", writer)))
    wrong = httpx.post(
        base + "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
            "code_verifier": pkce()[0],
        },
        timeout=10,
    )
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"


def test_consent_grants_no_wider_than_the_token_and_refuses_cross_site_posts(
    served: Served,
) -> None:
    writer, reader = served.writer, served.reader
    base = served.base
    client = register(base)
    _, challenge = pkce()

    def authorize_url() -> str:
        query = httpx.QueryParams(
            {
                "response_type": "code",
                "client_id": client["client_id"],
                "redirect_uri": REDIRECT,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "scope": "reader writer admin",
            }
        )
        return f"{base}/authorize?{query}"

    # A reader token cannot grant writer; a default-only token cannot grant others.
    assert asyncio.run(consent(base, authorize_url(), reader, "writer")).status_code == 403
    other_ns = asyncio.run(consent(base, authorize_url(), writer, "writer", "team-b"))
    assert other_ns.status_code == 403
    every = asyncio.run(consent(base, authorize_url(), writer, "writer", "*"))
    assert every.status_code == 403
    bad_token = asyncio.run(consent(base, authorize_url(), "skb_forged", "reader"))
    assert bad_token.status_code == 403 and "skb_forged" not in bad_token.text
    # Cross-site: another Origin, or a post without the page's CSRF cookie.
    evil = asyncio.run(consent(base, authorize_url(), writer, origin="https://evil.example"))
    assert evil.status_code == 403

    async def no_cookie() -> httpx.Response:
        async with httpx.AsyncClient() as browser:
            r = await browser.get(authorize_url())
            page = await browser.get(r.headers["location"])
        async with httpx.AsyncClient() as attacker:  # a fresh jar: no cookie
            return await attacker.post(
                base + "/oauth/consent",
                data={
                    "request": _field(page.text, "request"),
                    "csrf": _field(page.text, "csrf"),
                    "token": writer,
                    "role": "writer",
                    "namespaces": "default",
                    "action": "allow",
                },
            )

    assert asyncio.run(no_cookie()).status_code == 403
    # Registration refuses a plain-http redirect to a non-loopback host.
    refused = httpx.post(
        base + "/register",
        json={"redirect_uris": ["http://evil.example/cb"]},
        timeout=10,
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_redirect_uri"
    # A used consent request cannot be replayed.
    ok = asyncio.run(consent(base, authorize_url(), writer, "reader"))
    assert ok.status_code == 302


def test_attacker_forged_or_widened_oauth_rows_are_refused(
    seeded: tuple[str, str], make_settings: Callable[..., Settings], database_url: str
) -> None:
    """A database writer edits OAuth rows: widens a reader grant to admin on every
    namespace, prolongs an expired token, un-uses a used refresh token, points a
    client at another secret, or inserts a row of their own. Every one is refused."""
    writer, reader = seeded
    kb = KnowledgeBase.open(make_settings())
    try:
        kb.oauth_register_client(
            "c1", "client-secret", {"redirect_uris": [REDIRECT], "client_name": "c"}
        )
        grant = kb.oauth_grant("c1", reader, "reader", ["default"], "http://x/mcp")
        assert kb.oauth_authenticate(grant.access_token) is not None
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE kb_oauth_grants SET role = 'admin', namespaces = '{*}'"
                " WHERE kind = 'access'"
            )
        assert kb.oauth_authenticate(grant.access_token) is None
        # Back to the honest values: the MAC matches again (no lasting damage).
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE kb_oauth_grants SET role = 'reader', namespaces = '{default}'"
                " WHERE kind = 'access'"
            )
        access = kb.oauth_authenticate(grant.access_token)
        assert access is not None and access.principal.namespaces == frozenset({"default"})
        # Prolonging: a later expiry breaks the MAC.
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE kb_oauth_grants SET expires_at = expires_at + interval '30 days'"
                " WHERE kind = 'access'"
            )
        assert kb.oauth_authenticate(grant.access_token) is None
        # Un-using a rotated refresh token.
        rotated = kb.oauth_exchange_refresh("c1", grant.refresh_token)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE kb_oauth_grants SET used_at = NULL WHERE kind = 'refresh'"
                " AND used_at IS NOT NULL"
            )
        assert kb.oauth_load_refresh("c1", grant.refresh_token) is None
        assert kb.oauth_authenticate(rotated.access_token) is not None
        # A row of the attacker's own, with a MAC copied from an honest row.
        mine = "skba_" + secrets.token_urlsafe(32)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO kb_oauth_grants (id, kind, token_hash, client_id, family_id,"
                " subject, role, namespaces, resource, details, expires_at, hash_scheme, mac)"
                " SELECT gen_random_uuid(), 'access', %s, client_id, family_id, subject,"
                " 'admin', '{*}', resource, details, now() + interval '1 hour', 2, mac"
                " FROM kb_oauth_grants WHERE kind = 'access' LIMIT 1",
                (hashlib.sha256(mine.encode()).digest(),),
            )
        assert kb.oauth_authenticate(mine) is None
        # A client whose secret hash is swapped for one the attacker knows.
        kb.oauth_register_client(
            "c2", "attacker-secret", {"redirect_uris": [REDIRECT], "client_name": "a"}
        )
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE kb_oauth_clients SET secret_hash ="
                " (SELECT secret_hash FROM kb_oauth_clients WHERE client_id = 'c2')"
                " WHERE client_id = 'c1'"
            )
        assert not kb.oauth_check_client_secret("c1", "attacker-secret")
        assert not kb.oauth_check_client_secret("c1", "client-secret")
        assert kb.oauth_client("c1") is None
        # Nothing the database holds is a usable secret.
        with psycopg.connect(database_url) as conn:
            dump = repr(conn.execute("SELECT * FROM kb_oauth_grants").fetchall())
            dump += repr(conn.execute("SELECT * FROM kb_oauth_clients").fetchall())
        for secret in (grant.access_token, grant.refresh_token, rotated.access_token):
            assert secret not in dump and secret.encode() not in dump.encode()
        assert "client-secret" not in dump and writer not in dump
    finally:
        kb.close()
    with psycopg.connect(database_url) as conn:
        denied = conn.execute(
            "SELECT count(*) FROM kb_audit WHERE action = 'AuthenticateOAuth'"
            " AND error_code = 'INTEGRITY_ERROR'"
        ).fetchone()
    assert denied is not None and denied[0] >= 3


def test_plaintext_knowledge_base_grants_with_unkeyed_hashes(
    plain_kb: KnowledgeBase, database_url: str
) -> None:
    """No key to MAC with: rows hold unkeyed SHA-256 hashes (hash scheme 1), and the
    grant still works once, rotates and revokes."""
    _, bearer = plain_kb.create_token("pat", "writer", ["*"])
    plain_kb.oauth_register_client("p1", None, {"redirect_uris": [REDIRECT]})
    assert plain_kb.oauth_check_client_secret("p1", None)
    assert not plain_kb.oauth_check_client_secret("p1", "guess")
    grant = plain_kb.oauth_grant("p1", bearer, "writer", ["*"], "http://x/mcp")
    access = plain_kb.oauth_authenticate(grant.access_token)
    assert access is not None and access.principal.namespaces is None
    rotated = plain_kb.oauth_exchange_refresh("p1", grant.refresh_token)
    assert plain_kb.oauth_load_refresh("p1", grant.refresh_token) is None  # reuse
    assert plain_kb.oauth_authenticate(rotated.access_token) is None  # family revoked
    with psycopg.connect(database_url) as conn:
        schemes = {r[0] for r in conn.execute("SELECT hash_scheme FROM kb_oauth_grants")}
    assert schemes == {1}


def test_a_replayed_code_revokes_its_tokens_and_a_grant_ends_with_its_bearer_token(
    seeded: tuple[str, str], make_settings: Callable[..., Settings], database_url: str
) -> None:
    writer, _ = seeded
    kb = KnowledgeBase.open(make_settings())
    try:
        kb.oauth_register_client("c1", None, {"redirect_uris": [REDIRECT]})
        request = kb.oauth_begin(
            "c1",
            redirect_uri=REDIRECT,
            redirect_uri_explicit=True,
            state="s",
            scopes=["writer"],
            code_challenge="c",
            resource="http://x/mcp",
        )
        result = kb.oauth_consent(request, writer, "writer", ["default"])
        with pytest.raises(NotFoundError, match="unknown, used or expired"):
            kb.oauth_consent(request, writer, "writer", ["default"])  # a request works once
        tokens = kb.oauth_exchange_code("c1", result.code)
        assert kb.oauth_authenticate(tokens.access_token) is not None
        assert kb.oauth_load_code("c1", result.code) is None  # replayed
        assert kb.oauth_authenticate(tokens.access_token) is None
        # A grant lives no longer than the bearer token it was made with: once alice's
        # token is revoked, the next refresh fails and ends the grant.
        live = kb.oauth_grant("c1", writer, "writer", ["default"], "http://x/mcp")
        kb.revoke_token("alice")
        with pytest.raises(NotFoundError, match="revoked or expired"):
            kb.oauth_exchange_refresh("c1", live.refresh_token)
        assert kb.oauth_authenticate(live.access_token) is None
    finally:
        kb.close()
    actions = audit_actions(database_url)
    assert "OAuthCodeReuse" in actions and "OAuthGrantEnded" in actions
