"""The HTTP transport: MCP at ``/mcp`` (bearer tokens), ``/healthz``, ``/readyz``.

One uvicorn process. TLS when given a certificate (optionally mutual TLS with a
client CA); a non-loopback bind without TLS is refused unless ``insecure``.
Per-token rate limiting answers 429 before a request reaches the MCP layer.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sealedkb.errors import SealedKBError, TransportRefusedError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.monitoring import metrics as monitor

log = logging.getLogger("sealedkb.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class HttpOptions:
    host: str = "127.0.0.1"
    port: int = 8765
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure: bool = False
    max_request_bytes: int = 4 * 1024 * 1024
    rate_per_second: float = 20.0
    rate_burst: int = 60

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/mcp"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(opts: HttpOptions) -> None:
    """Refuse to serve tokens and knowledge in clear text to the network."""
    if bool(opts.tls_cert) != bool(opts.tls_key):
        raise TransportRefusedError("give both --tls-cert and --tls-key")
    if opts.tls_client_ca and not opts.tls_cert:
        raise TransportRefusedError("--tls-client-ca needs --tls-cert and --tls-key")
    if opts.tls_cert or is_loopback(opts.host):
        return
    if not opts.insecure:
        raise TransportRefusedError(
            f"refusing to listen on {opts.host} without TLS: bearer tokens and entries would "
            "cross the network in clear; give --tls-cert/--tls-key, or --insecure to opt out"
        )
    log.warning(
        "serving HTTP without TLS on non-loopback address %s (--insecure): tokens and "
        "entries cross the network in clear",
        opts.host,
    )


class TokenVerifier:
    """Checks bearer tokens against kb_tokens (hash lookup)."""

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            principal = await anyio.to_thread.run_sync(self.kb.authenticate, token)
        except SealedKBError as exc:
            log.warning("token check failed: %s", exc.code)
            return None
        if principal is None:
            return None
        return AccessToken(
            token=token,
            client_id=principal.name,
            scopes=[principal.role.value],
            claims={
                "role": principal.role.value,
                "namespaces": None
                if principal.namespaces is None
                else sorted(principal.namespaces),
            },
        )


class RateLimit:
    """Per-credential token bucket (keyed by a hash of the Authorization header),
    answering 429 with Retry-After. In memory: per process, which is what serve is."""

    def __init__(self, app: ASGIApp, rate: float, burst: int) -> None:
        self.app = app
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[bytes, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _take(self, key: bytes) -> float:
        """0 when allowed, else seconds until a request would be."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > 10_000:  # bound memory against header spraying
                self._buckets.clear()
            return (1.0 - tokens) / self.rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path", "").startswith("/mcp"):
            auth = b""
            for name, value in scope.get("headers", []):
                if name == b"authorization":
                    auth = value
                    break
            wait = self._take(hashlib.sha256(auth).digest())
            if wait > 0:
                response = JSONResponse(
                    {"code": "RATE_LIMITED", "message": "too many requests; slow down"},
                    status_code=429,
                    headers={"Retry-After": str(max(1, int(wait + 0.999)))},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """HSTS over TLS, and no caching or sniffing of answers that may hold knowledge."""

    def __init__(self, app: ASGIApp, tls: bool) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"cache-control", b"no-store"))
                headers.append((b"x-content-type-options", b"nosniff"))
                if self.tls:
                    headers.append(
                        (b"strict-transport-security", b"max-age=31536000; includeSubDomains")
                    )
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def build_app(server: MCPServer, kb: KnowledgeBase, opts: HttpOptions) -> ASGIApp:
    """The ASGI app: MCP behind bearer auth, health endpoints, limits and headers."""

    @server.custom_route("/healthz", methods=["GET"])  # type: ignore[untyped-decorator]
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @server.custom_route("/readyz", methods=["GET"])  # type: ignore[untyped-decorator]
    async def readyz(request: Request) -> Response:
        def check() -> tuple[str, str | None]:
            try:
                return kb.availability()
            except SealedKBError as exc:  # database down
                return "unavailable", exc.code

        availability, reason = await anyio.to_thread.run_sync(check)
        status = 200 if availability == "available" else 503
        body: dict[str, Any] = {"status": availability}
        if status != 200:
            body["reason"] = (
                "KEY_UNAVAILABLE" if availability.startswith("inaccessible") else reason
            )
        return JSONResponse(body, status_code=status)

    @server.custom_route("/metrics", methods=["GET"])  # type: ignore[untyped-decorator]
    async def metrics(request: Request) -> Response:
        body = await anyio.to_thread.run_sync(monitor.render)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    monitor.register_kb(kb)
    app = server.streamable_http_app(host=opts.host, max_request_body_size=opts.max_request_bytes)
    limited: ASGIApp = RateLimit(app, opts.rate_per_second, opts.rate_burst)
    return SecurityHeaders(limited, tls=opts.tls_cert is not None)


def auth_settings(opts: HttpOptions) -> AuthSettings:
    base = opts.url.removesuffix("/mcp")
    # Tokens are opaque and issued by this server for this server only; the verifier
    # checks them itself, so there is no audience claim to compare.
    return AuthSettings(
        issuer_url=base,  # type: ignore[arg-type]
        resource_server_url=opts.url,  # type: ignore[arg-type]
        validate_token_resource=False,
    )


def _graceful_server_class() -> type[Any]:
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, so the process
        dies by the signal; we have finished cleanly by then, so exit normally (0) and
        let serve close the database pool."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                try:
                    yield
                finally:
                    self._captured_signals.clear()

    return GracefulServer


def run_http(server: MCPServer, kb: KnowledgeBase, opts: HttpOptions) -> None:
    """Serve until SIGTERM/SIGINT; uvicorn lets in-flight requests finish."""
    import uvicorn

    check_bind(opts)
    graceful_server = _graceful_server_class()
    app = build_app(server, kb, opts)
    config = uvicorn.Config(
        app,
        host=opts.host,
        port=opts.port,
        log_level="warning",
        ssl_certfile=str(opts.tls_cert) if opts.tls_cert else None,
        ssl_keyfile=str(opts.tls_key) if opts.tls_key else None,
        ssl_ca_certs=str(opts.tls_client_ca) if opts.tls_client_ca else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if opts.tls_client_ca else ssl.CERT_NONE,
        timeout_graceful_shutdown=30,
        server_header=False,
    )
    graceful_server(config).run()
