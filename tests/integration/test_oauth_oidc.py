"""An external OpenID Connect issuer: sealedkb checks its JWTs against the JWKS the
test serves over HTTP on 127.0.0.1 (issuer, audience, expiry, signature), maps the
claims to a role and namespaces by settings, and refuses the rest: 401 for a bad
token, 403 insufficient_scope for a valid one that maps to no role."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2 as httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from tests.mcp_helpers import error_of, http_client, http_server

from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode


class Issuer:
    """A signing key, the JWKS that publishes it, and an OpenID configuration."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid="k1", use="sig", alg="RS256")
        self.jwks = json.dumps({"keys": [jwk]}).encode()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/jwks.json":
                    body = issuer.jwks
                elif self.path == "/.well-known/openid-configuration":
                    body = json.dumps(
                        {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks.json"}
                    ).encode()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def token(self, audience: str, *, key: Any = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": self.url, "sub": "carol", "aud": audience, "iat": now, "exp": now + 300}
        body.update(claims)
        return jwt.encode(body, key or self.key, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    idp = Issuer()
    idp.thread.start()
    try:
        yield idp
    finally:
        idp.server.shutdown()
        idp.server.server_close()


def status(base: str, token: str) -> httpx.Response:
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
    return httpx.post(base + "/mcp", json=body, headers=headers, timeout=10)


def test_external_issuer_tokens_checked_and_mapped(
    issuer: Issuer, make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON)
    kb.add("Incident review: the cache stampede", title="Stampede")
    kb.add("Team B secret plan", namespace="team-b")
    _, static = kb.create_token("ops", "reader", ["default"])
    kb.close()
    env = {
        "SEALEDKB_OAUTH": "oidc",
        "SEALEDKB_OIDC_ISSUER": issuer.url,  # the JWKS is found by discovery
        "SEALEDKB_OIDC_ROLE_CLAIM": "groups",
        "SEALEDKB_OIDC_ROLES": json.dumps({"kb-readers": "reader", "kb-writers": "writer"}),
    }
    with http_server(home, database_url, **env) as (base, _):
        audience = base + "/mcp"
        prm = httpx.get(base + "/.well-known/oauth-protected-resource", timeout=10).json()
        assert prm["authorization_servers"] == [issuer.url]
        # No built-in authorization server in this mode.
        assert httpx.post(base + "/register", json={}, timeout=10).status_code in (404, 405)

        good = issuer.token(audience, groups=["staff", "kb-writers"])

        async def use(token: str) -> tuple[Any, Any, Any]:
            async with http_client(base, token) as c:
                found = await c.call_tool("kb_search", {"query": "stampede"})
                added = await c.call_tool("kb_add", {"content": "a lesson from carol"})
                other = await c.call_tool("kb_list", {"namespace": "team-b"})
            return found, added, other

        found, added, other = asyncio.run(use(good))
        assert [h["title"] for h in found.structured_content["hits"]] == ["Stampede"]
        assert not added.is_error  # kb-writers maps to writer
        assert error_of(other)["code"] == "ACCESS_DENIED"  # default namespaces only

        reader = issuer.token(audience, groups="kb-readers", sealedkb_namespaces=["default"])
        _, denied, _ = asyncio.run(use(reader))
        assert error_of(denied)["code"] == "ACCESS_DENIED"

        refused = {
            "wrong audience": issuer.token("https://other.example/mcp", groups=["kb-writers"]),
            "wrong issuer": issuer.token(audience, iss="https://evil.example", groups="kb-writers"),
            "expired": issuer.token(
                audience, groups="kb-writers", exp=int(time.time()) - 600, iat=0
            ),
            "foreign key": issuer.token(audience, key=issuer.other, groups="kb-writers"),
            "no subject": jwt.encode(
                {"iss": issuer.url, "aud": audience, "exp": int(time.time()) + 300},
                issuer.key,
                algorithm="RS256",
                headers={"kid": "k1"},
            ),
            "unsigned": jwt.encode(
                {"iss": issuer.url, "sub": "x", "aud": audience, "exp": int(time.time()) + 99},
                None,
                algorithm="none",
                headers={"kid": "k1"},
            ),
        }
        for why, token in refused.items():
            r = status(base, token)
            assert r.status_code == 401, why
            assert "resource_metadata=" in r.headers["www-authenticate"], why
        # Valid, but its claims map to no role: 403 insufficient_scope.
        r = status(base, issuer.token(audience, groups=["staff"]))
        assert r.status_code == 403
        assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
        # Static bearer tokens keep working beside the external issuer.
        assert status(base, static).status_code == 200
