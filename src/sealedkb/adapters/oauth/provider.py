"""The MCP SDK's authorization-server interface, answered from the knowledge base.

:class:`KnowledgeBaseAuthProvider` implements the SDK's
``OAuthAuthorizationServerProvider`` over the ``kb`` facade (kb/oauth.py keeps the
state); :class:`ClientSecretCheck` authenticates clients at ``/token`` and
``/revoke`` against the keyed hash of their secret (the SDK's own authenticator
compares a stored plaintext secret, which sealedkb never keeps).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
from typing import Any
from urllib.parse import unquote, urlencode, urlparse

import anyio.to_thread
from mcp.server.auth.middleware.client_auth import AuthenticationError, ClientAuthenticator
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    AuthorizeError,
    RefreshToken,
    RegistrationError,
    TokenError,
)
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from pydantic import AnyUrl
from starlette.requests import Request

from sealedkb.errors import SealedKBError
from sealedkb.kb.access import Role
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.oauth import ACCESS_PREFIX, OAuthTokens

log = logging.getLogger("sealedkb.oauth")

CONSENT_PATH = "/oauth/consent"
SCOPES = [r.value for r in Role]  # a scope is a role; namespaces are chosen at consent
MAX_REDIRECT_URIS = 10


def same_resource(a: str, b: str) -> bool:
    """RFC 8707 resource URLs compared as the SDK does: a trailing slash aside."""
    return a.removesuffix("/") == b.removesuffix("/")


def _loopback(host: str | None) -> bool:
    if host in (None, ""):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_redirect_uri(uri: str) -> None:
    """OAuth 2.1 §2.3.1: https, http on a loopback host (native apps), or a private
    scheme of a native app; no fragment."""
    parsed = urlparse(uri)
    if parsed.fragment:
        raise RegistrationError("invalid_redirect_uri", "a redirect URI must not have a fragment")
    if parsed.scheme == "https" and parsed.netloc:
        return
    if parsed.scheme == "http":
        if _loopback(parsed.hostname):
            return
        raise RegistrationError(
            "invalid_redirect_uri", "plain http redirect URIs must be on a loopback host"
        )
    if parsed.scheme in ("", "javascript", "data", "file", "vbscript"):
        raise RegistrationError("invalid_redirect_uri", "unsupported redirect URI scheme")
    if "." not in parsed.scheme:  # RFC 8252 §7.1: reverse domain name schemes
        raise RegistrationError(
            "invalid_redirect_uri", "a private-use scheme must be a reverse domain name"
        )


def _oauth_token(tokens: OAuthTokens) -> OAuthToken:
    return OAuthToken(
        access_token=tokens.access_token,
        token_type="Bearer",  # noqa: S106 - the token type, not a secret
        expires_in=tokens.expires_in,
        scope=tokens.scope,
        refresh_token=tokens.refresh_token,
    )


class KnowledgeBaseAuthProvider:
    """OAuthAuthorizationServerProvider (structurally) over the ``kb`` facade."""

    def __init__(self, kb: KnowledgeBase, issuer: str, resource: str) -> None:
        self.kb = kb
        self.issuer = issuer.rstrip("/")
        self.resource = resource

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args)

    # --- clients ---------------------------------------------------------------

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        try:
            client = await self._run(self.kb.oauth_client, client_id)
        except SealedKBError as exc:
            log.warning("oauth client lookup failed: %s", exc.code)
            return None
        if client is None:
            return None
        return OAuthClientInformationFull.model_validate(
            {**client.metadata, "client_id": client.client_id}
        )

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        uris = [str(u) for u in client_info.redirect_uris or []]
        if not uris or len(uris) > MAX_REDIRECT_URIS:
            raise RegistrationError(
                "invalid_redirect_uri", f"give 1 to {MAX_REDIRECT_URIS} redirect URIs"
            )
        for uri in uris:
            check_redirect_uri(uri)
        if client_info.client_name is not None and len(client_info.client_name) > 100:
            raise RegistrationError("invalid_client_metadata", "client_name is too long")
        metadata = client_info.model_dump(
            mode="json",
            exclude_none=True,
            exclude={"client_id", "client_secret", "client_secret_expires_at"},
        )
        try:
            await self._run(
                self.kb.oauth_register_client,
                client_info.client_id,
                client_info.client_secret,
                metadata,
            )
        except SealedKBError as exc:
            raise RegistrationError("invalid_client_metadata", exc.code) from None

    # --- authorization -----------------------------------------------------------

    async def authorize(
        self, client: OAuthClientInformationFull, params: AuthorizationParams
    ) -> str:
        resource = params.resource or self.resource
        if not same_resource(resource, self.resource):
            raise AuthorizeError(
                "invalid_target", "this server issues tokens for its own resource only"
            )
        request: str = await self._run(
            lambda: self.kb.oauth_begin(
                client.client_id,
                redirect_uri=str(params.redirect_uri),
                redirect_uri_explicit=params.redirect_uri_provided_explicitly,
                state=params.state,
                scopes=params.scopes or [],
                code_challenge=params.code_challenge,
                resource=self.resource,
            )
        )
        return f"{self.issuer}{CONSENT_PATH}?{urlencode({'request': request})}"

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> AuthorizationCode | None:
        code = await self._run(self.kb.oauth_load_code, client.client_id, authorization_code)
        if code is None:
            return None
        return AuthorizationCode(
            code=authorization_code,
            scopes=list(code.scopes),
            expires_at=code.expires_at,
            client_id=code.client_id,
            code_challenge=code.code_challenge,
            redirect_uri=AnyUrl(code.redirect_uri),
            redirect_uri_provided_explicitly=code.redirect_uri_explicit,
            resource=code.resource,
            subject=code.subject,
        )

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: AuthorizationCode
    ) -> OAuthToken:
        try:
            tokens = await self._run(
                self.kb.oauth_exchange_code, client.client_id, authorization_code.code
            )
        except SealedKBError as exc:
            raise TokenError("invalid_grant", exc.message) from None
        return _oauth_token(tokens)

    # --- refresh, access, revocation ---------------------------------------------

    async def load_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: str
    ) -> RefreshToken | None:
        found = await self._run(self.kb.oauth_load_refresh, client.client_id, refresh_token)
        if found is None:
            return None
        return RefreshToken(
            token=refresh_token,
            client_id=found.client_id,
            scopes=list(found.scopes),
            expires_at=found.expires_at,
            resource=found.resource,
            subject=found.subject,
        )

    async def exchange_refresh_token(
        self,
        client: OAuthClientInformationFull,
        refresh_token: RefreshToken,
        scopes: list[str],
    ) -> OAuthToken:
        try:
            tokens = await self._run(
                self.kb.oauth_exchange_refresh, client.client_id, refresh_token.token
            )
        except SealedKBError as exc:
            raise TokenError("invalid_grant", exc.message) from None
        return _oauth_token(tokens)

    async def load_access_token(self, token: str) -> AccessToken | None:
        if not token.startswith(ACCESS_PREFIX):
            return None
        access = await self._run(self.kb.oauth_authenticate, token)
        if access is None:
            return None
        return AccessToken(
            token=token,
            client_id=access.client_id,
            scopes=list(access.scopes),
            expires_at=access.expires_at,
            resource=access.resource,
        )

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        await self._run(self.kb.oauth_revoke, token.client_id, token.token)

    async def exchange_identity_assertion(self, client: Any, params: Any) -> OAuthToken:
        raise TokenError("unsupported_grant_type", "the JWT bearer grant is not supported")


class ClientSecretCheck(ClientAuthenticator):
    """Client authentication at /token and /revoke against the stored keyed hash:
    ``client_secret_basic``, ``client_secret_post`` or ``none`` (public clients, PKCE)."""

    def __init__(self, provider: KnowledgeBaseAuthProvider) -> None:
        super().__init__(provider)
        self.kb_provider = provider

    async def authenticate_request(self, request: Request) -> OAuthClientInformationFull:
        form = await request.form()
        client_id = form.get("client_id")
        if not isinstance(client_id, str) or not client_id:
            raise AuthenticationError("Missing client_id")
        client = await self.kb_provider.get_client(client_id)
        if client is None:
            raise AuthenticationError("Invalid client_id")
        secret: str | None = None
        method = client.token_endpoint_auth_method
        if method == "client_secret_basic":
            header = request.headers.get("Authorization", "")
            if not header.startswith("Basic "):
                raise AuthenticationError("Missing or invalid Basic authentication")
            try:
                decoded = base64.b64decode(header[6:], validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError, binascii.Error):
                raise AuthenticationError("Invalid Basic authentication header") from None
            basic_id, sep, basic_secret = decoded.partition(":")
            if not sep or unquote(basic_id) != client_id:
                raise AuthenticationError("Client ID mismatch in Basic auth")
            secret = unquote(basic_secret)
        elif method == "client_secret_post":
            raw = form.get("client_secret")
            secret = raw if isinstance(raw, str) else None
        elif method != "none":
            raise AuthenticationError("Unsupported client authentication method")
        if method != "none" and not secret:
            raise AuthenticationError("Client secret is required")
        ok = await anyio.to_thread.run_sync(
            self.kb_provider.kb.oauth_check_client_secret, client_id, secret
        )
        if not ok:
            raise AuthenticationError("Invalid client credentials")
        return client
