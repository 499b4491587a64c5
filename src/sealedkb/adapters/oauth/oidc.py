"""Access tokens of an external OpenID Connect issuer (``SEALEDKB_OAUTH=oidc``).

A JWT is checked with PyJWT against the issuer's JWKS (fetched over HTTP, keys
cached): signature with an allowed algorithm, ``iss`` equal to the configured
issuer, ``aud`` containing the configured audience (default: this server's
resource URL), ``exp`` in the future. Its claims become a role and namespaces by
settings: ``oidc_role_claim`` holds a role (or values ``oidc_roles`` maps to roles;
the highest wins) and ``oidc_namespaces_claim`` the namespaces (else
``oidc_default_namespaces``). A token that maps to no role verifies with no scope
and is answered 403 insufficient_scope.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import httpx2
import jwt
from mcp.server.auth.provider import AccessToken

from sealedkb.config import Settings
from sealedkb.errors import ValidationError
from sealedkb.kb.access import ALL_NAMESPACES, Role
from sealedkb.model import validate_namespace

log = logging.getLogger("sealedkb.oidc")

_RANK = {Role.READER: 0, Role.WRITER: 1, Role.ADMIN: 2}
_ROLE_VALUES = frozenset(r.value for r in Role)
JWKS_SECONDS = 300
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


def _values(claim: Any) -> list[str]:
    if isinstance(claim, str):
        return claim.split()
    if isinstance(claim, Sequence):
        return [v for v in claim if isinstance(v, str)]
    return []


class OidcVerifier:
    def __init__(self, settings: Settings, resource: str) -> None:
        if not settings.oidc_issuer:
            raise ValidationError(
                "SEALEDKB_OAUTH=oidc needs SEALEDKB_OIDC_ISSUER", field="oidc_issuer"
            )
        bad = set(settings.oidc_algorithms) - ALLOWED_ALGORITHMS
        if bad or not settings.oidc_algorithms:
            raise ValidationError(
                "oidc_algorithms must be asymmetric JWS algorithms (RS256, ES256, ...)",
                field="oidc_algorithms",
            )
        for value in settings.oidc_roles.values():
            if value not in _ROLE_VALUES:
                raise ValidationError(
                    f"oidc_roles maps to {value!r}: roles are reader, writer or admin",
                    field="oidc_roles",
                )
        self.issuer = settings.oidc_issuer
        self.audience = settings.oidc_audience or resource
        self.algorithms = list(settings.oidc_algorithms)
        self.role_claim = settings.oidc_role_claim
        self.namespaces_claim = settings.oidc_namespaces_claim
        self.roles = dict(settings.oidc_roles)
        self.default_namespaces = list(settings.oidc_default_namespaces)
        self._jwks_url = settings.oidc_jwks_url
        self._client: jwt.PyJWKClient | None = None

    def _jwks(self) -> jwt.PyJWKClient:
        if self._client is None:
            url = self._jwks_url or self._discover()
            self._client = jwt.PyJWKClient(url, cache_keys=True, lifespan=JWKS_SECONDS, timeout=10)
        return self._client

    def _discover(self) -> str:
        """The jwks_uri of the issuer's OpenID configuration."""
        config = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        answer = httpx2.get(config, timeout=10, follow_redirects=False)
        answer.raise_for_status()
        uri = answer.json().get("jwks_uri")
        if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
            raise ValidationError("the issuer's OpenID configuration has no jwks_uri")
        return uri

    def _role(self, claims: dict[str, Any]) -> Role | None:
        found: list[Role] = []
        for value in _values(claims.get(self.role_claim)):
            mapped = self.roles.get(value) if self.roles else value
            if mapped in _ROLE_VALUES:
                found.append(Role(mapped))
        return max(found, key=_RANK.__getitem__) if found else None

    def _namespaces(self, claims: dict[str, Any]) -> list[str] | None:
        raw = claims.get(self.namespaces_claim)
        values = _values(raw) if raw is not None else self.default_namespaces
        out: list[str] = []
        for ns in values:
            if ns == ALL_NAMESPACES:
                return None
            try:
                out.append(validate_namespace(ns))
            except ValidationError:
                continue
        return sorted(set(out))

    def verify(self, token: str) -> AccessToken | None:
        """Blocking (the JWKS may be fetched): run it in a worker thread."""
        try:
            key = self._jwks().get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=30,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except (jwt.PyJWTError, httpx2.HTTPError, ValidationError, ValueError) as exc:
            log.warning("external token refused: %s", type(exc).__name__)
            return None
        subject = str(claims["sub"])[:200]
        role = self._role(claims)
        namespaces = self._namespaces(claims)
        return AccessToken(
            token=token,
            client_id=f"oidc:{subject}",
            scopes=[role.value] if role is not None else [],
            expires_at=int(claims["exp"]),
            resource=self.audience,
            subject=subject,
            claims={
                "iss": self.issuer,
                "role": role.value if role is not None else None,
                "namespaces": namespaces,
            },
        )
