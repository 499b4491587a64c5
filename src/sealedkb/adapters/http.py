"""The HTTP transport: MCP at ``/mcp`` (bearer tokens), ``/healthz``, ``/readyz``,
``/metrics`` (a bearer token with the metrics scope, or its own listener).

One uvicorn process. TLS when given a certificate (optionally mutual TLS with a
client CA); a non-loopback bind without TLS is refused unless ``insecure``.
Rate limiting answers 429 before a request reaches the MCP layer: per verified
token (its principal), or per client address for requests without a valid token.
``/readyz`` answers from a cached probe, so polling it touches no key.
"""

from __future__ import annotations

import contextlib
import contextvars
import hmac
import ipaddress
import logging
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.routes import build_resource_metadata_url
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sealedkb.adapters.mcp.server import principal_of
from sealedkb.adapters.oauth import authorization_server_routes, protected_resource_handler
from sealedkb.adapters.oauth.oidc import OidcVerifier
from sealedkb.adapters.oauth.provider import same_resource
from sealedkb.adapters.ui import build_ui
from sealedkb.config import Settings
from sealedkb.errors import SealedKBError, TransportRefusedError, ValidationError
from sealedkb.kb.access import Action, Role
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.oauth import ACCESS_PREFIX
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


# The verification of this request's bearer token, made once by the rate limiter and
# reused by the MCP layer's verifier (the same task, microseconds later).
_verified: contextvars.ContextVar[tuple[str, AccessToken | None] | None] = contextvars.ContextVar(
    "sealedkb_verified_token", default=None
)


class TokenVerifier:
    """Checks bearer tokens: static ones against kb_tokens (keyed-hash lookup and row
    MAC); with OAuth, access tokens of the built-in authorization server (kb/oauth.py:
    the same, and issued for this resource) or JWTs of an external OpenID Connect
    issuer (adapters/oauth/oidc.py)."""

    def __init__(self, kb: KnowledgeBase, opts: HttpOptions | None = None) -> None:
        self.kb = kb
        self.mode = kb.settings.oauth
        self.resource = resource_url(opts or HttpOptions(), kb.settings)
        self.oidc = OidcVerifier(kb.settings, self.resource) if self.mode == "oidc" else None

    async def verify_token(self, token: str) -> AccessToken | None:
        done = _verified.get()
        if done is not None and hmac.compare_digest(done[0].encode(), token.encode()):
            return done[1]
        return await self._verify(token)

    async def _verify(self, token: str) -> AccessToken | None:
        if token.startswith(ACCESS_PREFIX):
            return await self._verify_oauth(token) if self.mode == "builtin" else None
        if self.oidc is not None and token.count(".") == 2:
            return await anyio.to_thread.run_sync(self.oidc.verify, token)
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

    async def _verify_oauth(self, token: str) -> AccessToken | None:
        try:
            access = await anyio.to_thread.run_sync(self.kb.oauth_authenticate, token)
        except SealedKBError as exc:
            log.warning("oauth token check failed: %s", exc.code)
            return None
        if access is None:
            return None
        if not same_resource(access.resource, self.resource):  # another audience
            log.warning("oauth token for another resource refused")
            return None
        principal = access.principal
        return AccessToken(
            token=token,
            client_id=principal.name,
            scopes=list(access.scopes),
            expires_at=access.expires_at,
            resource=access.resource,
            claims={
                "role": principal.role.value,
                "namespaces": None
                if principal.namespaces is None
                else sorted(principal.namespaces),
            },
        )

    async def verify_request(self, scope: Scope) -> AccessToken | None:
        """The verified token of a request's ``Authorization: Bearer`` header (the
        scheme in any case, as the SDK reads it), remembered for the rest of the
        request; None without a header or for a token that does not verify."""
        header = _header(scope, b"authorization")
        if header is None or header[:7].lower() != b"bearer ":
            return None
        token = header[7:].decode("latin-1")
        access = await self._verify(token)
        _verified.set((token, access))
        return access


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value)
    return None


class Buckets:
    """Token buckets in a bounded table: past ``max_keys`` the least recently used
    bucket goes, never the whole table (so spraying keys cannot reset a busy one)."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._table: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._table)

    def take(self, key: str, now: float | None = None) -> float:
        """0 when allowed (one token taken), else seconds until a request would be."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._table.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._table[key] = (tokens, now)
            self._table.move_to_end(key)
            while len(self._table) > self.max_keys:
                self._table.popitem(last=False)
            return wait


ROLE_SCOPES = frozenset(r.value for r in Role)


class ScopeCheck:
    """403 insufficient_scope (RFC 6750 §3.1) for a valid token that carries no role
    scope (an external issuer's token its claims map to no role), before MCP."""

    def __init__(self, app: ASGIApp, resource_metadata: str) -> None:
        self.app = app
        self.resource_metadata = resource_metadata

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        done = _verified.get()
        if (
            scope["type"] == "http"
            and str(scope.get("path", "")).startswith("/mcp")
            and done is not None
            and done[1] is not None
            and not ROLE_SCOPES.intersection(done[1].scopes)
        ):
            challenge = (
                'Bearer error="insufficient_scope", error_description="no role granted", '
                f'scope="{" ".join(r.value for r in Role)}", '
                f'resource_metadata="{self.resource_metadata}"'
            )
            response = JSONResponse(
                {"error": "insufficient_scope", "error_description": "no role granted"},
                status_code=403,
                headers={"WWW-Authenticate": challenge},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


UNLIMITED_PATHS = frozenset({"/healthz"})  # liveness: constant, and must not starve


class RateLimit:
    """Token buckets per verified token (its principal's name) and, for requests
    without a valid token, per client address; 429 with Retry-After. Separate tables,
    so spraying addresses or bad headers cannot evict a principal's bucket. Without a
    verifier (the metrics listener) every request is keyed by its address. In memory:
    per process, which is what serve is."""

    def __init__(
        self, app: ASGIApp, rate: float, burst: int, verifier: TokenVerifier | None
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.principals = Buckets(rate, burst)
        self.addresses = Buckets(rate, burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path", "") not in UNLIMITED_PATHS:
            access = None if self.verifier is None else await self.verifier.verify_request(scope)
            if access is not None:
                wait = self.principals.take(access.client_id)
            else:
                client = scope.get("client")
                wait = self.addresses.take(str(client[0]) if client else "")
            if wait > 0:
                response = JSONResponse(
                    {"code": "RATE_LIMITED", "message": "too many requests; slow down"},
                    status_code=429,
                    headers={"Retry-After": str(max(1, int(wait + 0.999)))},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ReadinessProbe:
    """``/readyz``'s answer, probed at most once per ``max_age`` seconds: polling it
    (or flooding it) unwraps no data key and writes no audit row per call. One probe
    runs at a time; callers meanwhile wait for it and share its answer."""

    def __init__(
        self,
        check: Callable[[], tuple[str, str | None]],
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.check = check
        self.max_age = max_age
        self.clock = clock
        self.probes = 0
        self._lock = threading.Lock()
        self._last: tuple[float, int, dict[str, str]] | None = None

    def answer(self) -> tuple[int, dict[str, str]]:
        with self._lock:
            if self._last is not None and self.clock() - self._last[0] < self.max_age:
                return self._last[1], self._last[2]
            status, body = self._probe()
            self._last = (self.clock(), status, body)
            return status, body

    def _probe(self) -> tuple[int, dict[str, str]]:
        self.probes += 1
        try:
            availability, reason = self.check()
        except SealedKBError as exc:  # database down
            availability, reason = "unavailable", exc.code
        if availability == "available":
            return 200, {"status": availability}
        code = "KEY_UNAVAILABLE" if availability.startswith("inaccessible") else reason
        return 503, {"status": availability, "reason": code or "UNAVAILABLE"}


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


READY_MAX_AGE = 5.0  # seconds a /readyz answer is reused (at most the data-key cache bound)


def metrics_response() -> Response:
    body = monitor.render()
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


def build_app(server: MCPServer, kb: KnowledgeBase, opts: HttpOptions) -> ASGIApp:
    """The ASGI app: MCP behind bearer auth, health endpoints, limits and headers."""
    verifier = TokenVerifier(kb, opts)
    ready = ReadinessProbe(kb.availability, min(READY_MAX_AGE, kb.settings.data_key_max_age))

    @server.custom_route("/healthz", methods=["GET"])  # type: ignore[untyped-decorator]
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @server.custom_route("/readyz", methods=["GET"])  # type: ignore[untyped-decorator]
    async def readyz(request: Request) -> Response:
        status, body = await anyio.to_thread.run_sync(ready.answer)
        return JSONResponse(body, status_code=status)

    @server.custom_route("/metrics", methods=["GET"])  # type: ignore[untyped-decorator]
    async def metrics(request: Request) -> Response:
        # Verified by the rate limiter on the way in; the same answer is reused here.
        access = await verifier.verify_request(request.scope)
        if access is None:
            return JSONResponse(
                {"code": "UNAUTHENTICATED", "message": "a bearer token is required"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="sealedkb", scope="metrics"'},
            )
        if not ROLE_SCOPES.intersection(access.scopes) or not principal_of(access).allows(
            Action.METRICS
        ):
            return JSONResponse(
                {"code": "ACCESS_DENIED", "message": "this token may not read metrics"},
                status_code=403,
            )
        return await anyio.to_thread.run_sync(metrics_response)

    resource = resource_url(opts, kb.settings)
    if server.settings.auth is not None and kb.settings.oauth != "off":
        # OAuth 2.1 (adapters/oauth/): RFC 9728 metadata at the root path too, and with
        # the built-in authorization server its endpoints and consent page.
        issuer = server.settings.auth.issuer_url
        server.custom_route("/.well-known/oauth-protected-resource", methods=["GET", "OPTIONS"])(
            protected_resource_handler(AnyHttpUrl(resource), issuer, sorted(ROLE_SCOPES))
        )
        if kb.settings.oauth == "builtin":
            for route in authorization_server_routes(kb, issuer, resource):
                server.custom_route(route.path, methods=sorted(route.methods or ()))(route.endpoint)
    monitor.register_kb(kb)
    app = server.streamable_http_app(host=opts.host, max_request_body_size=opts.max_request_bytes)
    app.mount("/ui", build_ui(kb, tls=opts.tls_cert is not None))  # the web console
    scoped = ScopeCheck(app, str(build_resource_metadata_url(AnyHttpUrl(resource))))
    limited: ASGIApp = RateLimit(scoped, opts.rate_per_second, opts.rate_burst, verifier)
    return SecurityHeaders(limited, tls=opts.tls_cert is not None)


def build_metrics_app(opts: HttpOptions) -> ASGIApp:
    """The app of the metrics listener (SEALEDKB_METRICS_BIND): /metrics only, without
    a token, rate limited per client address."""

    async def metrics(request: Request) -> Response:
        return await anyio.to_thread.run_sync(metrics_response)

    app = Starlette(routes=[Route("/metrics", metrics, methods=["GET"])])
    limited = RateLimit(app, opts.rate_per_second, opts.rate_burst, verifier=None)
    return SecurityHeaders(limited, tls=False)


def parse_bind(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) of SEALEDKB_METRICS_BIND."""
    host, _, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValidationError("metrics bind must be host:port", field="metrics_bind")
    return host, int(port)


def resource_url(opts: HttpOptions, settings: Settings | None = None) -> str:
    """This server's resource identifier (RFC 8707/9728): SEALEDKB_PUBLIC_URL + /mcp
    behind a proxy, else the bind's URL."""
    public = settings.public_url if settings is not None else None
    return public.rstrip("/") + "/mcp" if public else opts.url


def auth_settings(opts: HttpOptions, settings: Settings | None = None) -> AuthSettings:
    resource = resource_url(opts, settings)
    issuer = resource.removesuffix("/mcp")
    if settings is not None and settings.oauth == "oidc" and settings.oidc_issuer:
        issuer = settings.oidc_issuer
    # The verifier checks each token's audience itself (static bearer tokens have none;
    # OAuth tokens must name this resource), so the SDK does not compare it.
    return AuthSettings(
        issuer_url=issuer,  # type: ignore[arg-type]
        resource_server_url=resource,  # type: ignore[arg-type]
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


def _uvicorn_config(app: ASGIApp, host: str, port: int, opts: HttpOptions | None) -> Any:
    """uvicorn's config; TLS (and client certificates) as in ``opts``, none without."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        ssl_certfile=str(opts.tls_cert) if opts and opts.tls_cert else None,
        ssl_keyfile=str(opts.tls_key) if opts and opts.tls_key else None,
        ssl_ca_certs=str(opts.tls_client_ca) if opts and opts.tls_client_ca else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if opts and opts.tls_client_ca else ssl.CERT_NONE,
        timeout_graceful_shutdown=30,
        # Longer than a client's own keep-alive expiry (httpx: 5 s) and an AWS ALB's idle
        # timeout (60 s): the client (or balancer) always closes an idle connection
        # first. With uvicorn's default of 5 s a request sent on a connection the server
        # was closing at that moment failed with a read error (tests/replicas found it).
        timeout_keep_alive=75,
        server_header=False,
    )


def run_http(server: MCPServer, kb: KnowledgeBase, opts: HttpOptions) -> None:
    """Serve until SIGTERM/SIGINT; uvicorn lets in-flight requests finish. With
    SEALEDKB_METRICS_BIND, a second listener serves /metrics alone from a thread,
    stopped when the main one stops: plain HTTP for a Prometheus on an internal
    network (metrics carry no knowledge, ids or secrets; monitoring/metrics.py)."""
    import uvicorn

    check_bind(opts)
    graceful_server = _graceful_server_class()
    app = build_app(server, kb, opts)
    metrics_server: uvicorn.Server | None = None
    metrics_thread: threading.Thread | None = None
    if kb.settings.metrics_bind is not None:
        host, port = parse_bind(kb.settings.metrics_bind)
        # Signals are the main listener's (uvicorn installs none off the main thread).
        metrics_app = build_metrics_app(opts)
        metrics_server = uvicorn.Server(_uvicorn_config(metrics_app, host, port, None))
        metrics_thread = threading.Thread(
            target=metrics_server.run, name="sealedkb-metrics", daemon=True
        )
        metrics_thread.start()
        deadline = time.monotonic() + 15
        while not metrics_server.started:  # a port in use ends the thread: say so
            if not metrics_thread.is_alive() or time.monotonic() > deadline:
                metrics_server.should_exit = True
                raise TransportRefusedError(f"cannot listen for /metrics on {host}:{port}")
            time.sleep(0.05)
    try:
        graceful_server(_uvicorn_config(app, opts.host, opts.port, opts)).run()
    finally:
        if metrics_server is not None and metrics_thread is not None:
            metrics_server.should_exit = True
            metrics_thread.join(10)
