"""OAuth 2.1 for hosted MCP clients: the built-in authorization server's routes
(RFC 8414 metadata, RFC 7591 registration, authorization code + PKCE S256 with a
consent page, token with refresh rotation, RFC 7009 revocation), built from the MCP
SDK's handlers over kb/oauth.py; and the verifier of an external OpenID Connect
issuer's tokens (oidc.py). adapters/http.py mounts them."""

from __future__ import annotations

from mcp.server.auth.handlers.authorize import AuthorizationHandler
from mcp.server.auth.handlers.metadata import MetadataHandler, ProtectedResourceMetadataHandler
from mcp.server.auth.handlers.register import RegistrationHandler
from mcp.server.auth.handlers.revoke import RevocationHandler
from mcp.server.auth.handlers.token import TokenHandler
from mcp.server.auth.routes import build_metadata, cors_middleware
from mcp.server.auth.settings import ClientRegistrationOptions, RevocationOptions
from mcp.shared.auth import ProtectedResourceMetadata
from pydantic import AnyHttpUrl
from starlette.routing import Route
from starlette.types import ASGIApp

from sealedkb.adapters.oauth.consent import ConsentPage
from sealedkb.adapters.oauth.provider import (
    CONSENT_PATH,
    SCOPES,
    ClientSecretCheck,
    KnowledgeBaseAuthProvider,
)
from sealedkb.kb.knowledge_base import KnowledgeBase

__all__ = ["SCOPES", "authorization_server_routes", "protected_resource_handler"]


def authorization_server_routes(
    kb: KnowledgeBase, issuer: AnyHttpUrl, resource: str
) -> list[Route]:
    """The routes of the built-in authorization server (``issuer`` is this server)."""
    provider = KnowledgeBaseAuthProvider(kb, str(issuer), resource)
    check = ClientSecretCheck(provider)
    registration = ClientRegistrationOptions(
        enabled=True, valid_scopes=SCOPES, default_scopes=SCOPES
    )
    revocation = RevocationOptions(enabled=True)
    metadata = build_metadata(issuer, None, registration, revocation)
    metadata.token_endpoint_auth_methods_supported = [
        "client_secret_post",
        "client_secret_basic",
        "none",
    ]
    consent = ConsentPage(kb, str(issuer))
    return [
        Route(
            "/.well-known/oauth-authorization-server",
            endpoint=cors_middleware(MetadataHandler(metadata).handle, ["GET", "OPTIONS"]),
            methods=["GET", "OPTIONS"],
        ),
        Route(
            "/authorize",
            endpoint=AuthorizationHandler(provider).handle,
            methods=["GET", "POST"],
        ),
        Route(
            "/token",
            endpoint=cors_middleware(
                TokenHandler(provider, check).handle,
                ["POST", "OPTIONS"],
            ),
            methods=["POST", "OPTIONS"],
        ),
        Route(
            "/register",
            endpoint=cors_middleware(
                RegistrationHandler(provider, registration).handle,
                ["POST", "OPTIONS"],
            ),
            methods=["POST", "OPTIONS"],
        ),
        Route(
            "/revoke",
            endpoint=cors_middleware(
                RevocationHandler(provider, check).handle,
                ["POST", "OPTIONS"],
            ),
            methods=["POST", "OPTIONS"],
        ),
        Route(CONSENT_PATH, endpoint=consent.handle, methods=["GET", "POST"]),
    ]


def protected_resource_handler(
    resource: AnyHttpUrl, issuer: AnyHttpUrl, scopes: list[str]
) -> ASGIApp:
    """RFC 9728 metadata for the root well-known path (the SDK serves it at the
    path-inserted one, ``/.well-known/oauth-protected-resource/mcp``)."""
    metadata = ProtectedResourceMetadata(
        resource=resource, authorization_servers=[issuer], scopes_supported=scopes
    )
    return cors_middleware(ProtectedResourceMetadataHandler(metadata).handle, ["GET", "OPTIONS"])
