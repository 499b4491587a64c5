"""OAuth 2.1 state of the built-in authorization server: clients, consent requests,
authorization codes, access and refresh tokens (adapters/oauth/ speaks the protocol).

Stored like bearer tokens (kb/tokens.py): a row is found by a *keyed* hash of its
secret (a MAC under the key provider's MAC key, which PostgreSQL never sees) and
carries a MAC over every field that grants anything, so a database writer cannot
mint, widen, prolong or un-use a grant; a row whose MAC fails is refused, counted as
an integrity failure and recorded in the audit trail. A plaintext knowledge base has
no key and keeps unkeyed SHA-256 hashes without MACs.

A grant is a *family*: the consent request, its code, and every access and refresh
token issued from it. A code and a refresh token work once; presenting one again
revokes the whole family (refresh-token rotation with reuse detection, OAuth 2.1
§4.3.1). Every grant, refresh, revocation and reuse is audited.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sealedkb.audit.chain import AuditLog, MacKey
from sealedkb.crypto.digest import canonical_json
from sealedkb.errors import AccessDeniedError, NotFoundError, ValidationError
from sealedkb.kb.access import ALL_NAMESPACES, Principal, Role, parse_role
from sealedkb.kb.tokens import BoundedCache
from sealedkb.model import validate_namespace
from sealedkb.monitoring.telemetry import Telemetry
from sealedkb.store.oauth import ClientRecord, GrantRecord, OAuthTable

__all__ = [
    "ACCESS_PREFIX",
    "REFRESH_PREFIX",
    "ConsentRequest",
    "ConsentResult",
    "OAuthAccess",
    "OAuthClient",
    "OAuthCode",
    "OAuthRefresh",
    "OAuthService",
    "OAuthTokens",
    "role_at_most",
]

log = logging.getLogger("sealedkb.oauth")

ACCESS_PREFIX = "skba_"
REFRESH_PREFIX = "skbr_"
CODE_PREFIX = "skbc_"
REQUEST_PREFIX = "skbq_"
_PREFIX = {"access": ACCESS_PREFIX, "refresh": REFRESH_PREFIX, "code": CODE_PREFIX}
_PREFIX["request"] = REQUEST_PREFIX

HASH_UNKEYED = 1
HASH_KEYED = 2
_LOOKUP_LABEL = b"sealedkb/oauth/v1/lookup|"
_GRANT_LABEL = b"sealedkb/oauth/v1/grant|"
_CLIENT_LABEL = b"sealedkb/oauth/v1/client|"
_SECRET_LABEL = b"sealedkb/oauth/v1/client-secret|"

REQUEST_SECONDS = 600  # a consent page stays valid this long
CODE_SECONDS = 120  # an authorization code must be exchanged within this

_ROLE_RANK = {Role.READER: 0, Role.WRITER: 1, Role.ADMIN: 2}


def role_at_most(role: Role, ceiling: Role) -> bool:
    return _ROLE_RANK[role] <= _ROLE_RANK[ceiling]


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


@dataclass(frozen=True, slots=True)
class OAuthClient:
    """A registered client (RFC 7591 metadata as registered; never its secret)."""

    client_id: str
    metadata: dict[str, Any]
    confidential: bool


@dataclass(frozen=True, slots=True)
class ConsentRequest:
    """What the consent page shows and what a consent grants from."""

    client_id: str
    client_name: str
    redirect_uri: str
    state: str | None
    scopes: tuple[str, ...]
    resource: str


@dataclass(frozen=True, slots=True)
class ConsentResult:
    redirect_uri: str
    code: str
    state: str | None


@dataclass(frozen=True, slots=True)
class OAuthCode:
    client_id: str
    scopes: tuple[str, ...]
    expires_at: float
    code_challenge: str
    redirect_uri: str
    redirect_uri_explicit: bool
    resource: str
    subject: str | None


@dataclass(frozen=True, slots=True)
class OAuthRefresh:
    client_id: str
    scopes: tuple[str, ...]
    expires_at: int
    resource: str
    subject: str | None


@dataclass(frozen=True, slots=True)
class OAuthTokens:
    access_token: str
    refresh_token: str
    expires_in: int
    scope: str


@dataclass(frozen=True, slots=True)
class OAuthAccess:
    """A verified access token: who it stands for, for which resource, until when."""

    principal: Principal
    client_id: str
    resource: str
    expires_at: int
    scopes: tuple[str, ...]


class OAuthService:
    def __init__(
        self,
        table: OAuthTable,
        audit: AuditLog,
        mac_key: MacKey | None,
        telemetry: Telemetry,
        *,
        access_seconds: int = 900,
        refresh_days: int = 30,
        subject_active: Callable[[str], bool] | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self._table = table
        self._audit = audit
        self._mac_key = mac_key
        self._telemetry = telemetry
        self.access_seconds = access_seconds
        self.refresh_days = refresh_days
        self._now = now or (lambda: datetime.now(UTC))
        self._lookups = BoundedCache[bytes, bytes](self._now)
        self._verified = BoundedCache[bytes, bytes](self._now)
        self._reported: set[str] = set()
        self._purged_at: datetime | None = None
        # A grant lives no longer than the bearer token its user signed in with: checked
        # at each refresh, so a revoked or expired token ends its grants within one
        # access-token lifetime.
        self._subject_active = subject_active

    # --- hashes and MACs -----------------------------------------------------------

    def _lookup(self, secret: str) -> tuple[bytes, int]:
        digest = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()
        if self._mac_key is None:
            return digest, HASH_UNKEYED
        cached = self._lookups.get(digest)
        if cached is None:
            cached = self._mac_key.generate_mac(_LOOKUP_LABEL + digest)
            self._lookups.put(digest, cached)
        return cached, HASH_KEYED

    @staticmethod
    def _grant_message(rec: GrantRecord) -> bytes:
        return _GRANT_LABEL + canonical_json(
            {
                "id": str(rec.id),
                "kind": rec.kind,
                "token_hash": rec.token_hash.hex(),
                "client_id": rec.client_id,
                "family_id": str(rec.family_id),
                "subject": rec.subject,
                "role": rec.role,
                "namespaces": sorted(rec.namespaces),
                "resource": rec.resource,
                "details": rec.details,
                "expires_at": _iso(rec.expires_at),
                "used_at": _iso(rec.used_at),
                "revoked_at": _iso(rec.revoked_at),
            }
        )

    @staticmethod
    def _client_message(rec: ClientRecord) -> bytes:
        return _CLIENT_LABEL + canonical_json(
            {
                "client_id": rec.client_id,
                "secret_hash": rec.secret_hash.hex() if rec.secret_hash is not None else None,
                "metadata": rec.metadata,
            }
        )

    def _mac(self, message: bytes) -> bytes | None:
        return None if self._mac_key is None else self._mac_key.generate_mac(message)

    def _authentic(self, message: bytes, rec_id: str, scheme: int, mac: bytes | None) -> bool:
        if self._mac_key is None:
            return True
        if scheme != HASH_KEYED or mac is None:
            self._forged(rec_id)
            return False
        seen = hashlib.sha256(message + b"|" + mac).digest()
        if self._verified.get(seen):
            return True
        if self._mac_key.verify_mac(message, mac):
            self._verified.put(seen, b"1")
            return True
        self._forged(rec_id)
        return False

    def _forged(self, rec_id: str) -> None:
        """A row that fails its MAC: refused, counted, recorded (once a process)."""
        self._telemetry.integrity_failure()
        log.warning("oauth row %s failed its integrity check: refused", rec_id)
        if rec_id in self._reported:
            return
        self._reported.add(rec_id)
        self._audit.record(
            "AuthenticateOAuth",
            outcome="denied",
            error_code="INTEGRITY_ERROR",
            details={"row": rec_id},
        )

    def _grant_ok(self, rec: GrantRecord) -> bool:
        return self._authentic(self._grant_message(rec), str(rec.id), rec.hash_scheme, rec.mac)

    def _new_grant(
        self,
        kind: str,
        client_id: str,
        family_id: uuid.UUID,
        *,
        seconds: int,
        subject: str | None = None,
        role: str | None = None,
        namespaces: Sequence[str] = (),
        resource: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> tuple[GrantRecord, str]:
        secret = _PREFIX[kind] + secrets.token_urlsafe(32)
        lookup, scheme = self._lookup(secret)
        rec = GrantRecord(
            id=uuid.uuid4(),
            kind=kind,
            token_hash=lookup,
            client_id=client_id,
            family_id=family_id,
            subject=subject,
            role=role,
            namespaces=tuple(sorted(namespaces)),
            resource=resource,
            details=dict(details or {}),
            created_at=None,
            # Microseconds, UTC: what timestamptz stores, so the MAC re-computes exactly.
            expires_at=(self._now() + timedelta(seconds=seconds)).astimezone(UTC),
            hash_scheme=scheme,
        )
        return _with_mac(rec, self._mac(self._grant_message(rec))), secret

    def _find(self, kind: str, secret: str) -> GrantRecord | None:
        """An authentic row of this kind for this secret (used, revoked or expired alike)."""
        if not secret.startswith(_PREFIX[kind]) or len(secret) > 200:
            return None
        rec = self._table.find_grant(kind, self._lookup(secret)[0])
        if rec is None or not self._grant_ok(rec):
            return None
        return rec

    def _live(self, rec: GrantRecord | None) -> bool:
        return (
            rec is not None
            and rec.used_at is None
            and rec.revoked_at is None
            and rec.expires_at > self._now()
        )

    # --- clients -------------------------------------------------------------------

    def register_client(self, client_id: str, secret: str | None, metadata: dict[str, Any]) -> None:
        """Store a registered client: its metadata and a keyed hash of its secret."""
        secret_hash = self._lookup(_secret_text(secret))[0] if secret else None
        scheme = HASH_KEYED if self._mac_key is not None else HASH_UNKEYED
        rec = ClientRecord(client_id, secret_hash, metadata, hash_scheme=scheme)
        rec = dataclasses.replace(rec, mac=self._mac(self._client_message(rec)))
        with self._audit.transaction("oauth register") as conn:
            self._table.insert_client(conn, rec)
            self._audit.append(
                conn,
                "RegisterOAuthClient",
                details={
                    "client_id": client_id,
                    "client_name": str(metadata.get("client_name") or "")[:100],
                },
            )

    def get_client(self, client_id: str) -> OAuthClient | None:
        rec = self._client_record(client_id)
        if rec is None:
            return None
        return OAuthClient(rec.client_id, dict(rec.metadata), rec.secret_hash is not None)

    def _client_record(self, client_id: str) -> ClientRecord | None:
        if not client_id or len(client_id) > 100:
            return None
        rec = self._table.get_client(client_id)
        if rec is None:
            return None
        if not self._authentic(self._client_message(rec), rec.client_id, rec.hash_scheme, rec.mac):
            return None
        return rec

    def check_client_secret(self, client_id: str, secret: str | None) -> bool:
        """True when the client is public and gave no secret, or gave its own secret."""
        rec = self._client_record(client_id)
        if rec is None:
            return False
        if rec.secret_hash is None:
            return not secret
        if not secret or len(secret) > 200:
            return False
        return secrets.compare_digest(self._lookup(_secret_text(secret))[0], rec.secret_hash)

    # --- authorization: consent request, consent, code -----------------------------

    def begin(
        self,
        client_id: str,
        *,
        redirect_uri: str,
        redirect_uri_explicit: bool,
        state: str | None,
        scopes: Sequence[str],
        code_challenge: str,
        resource: str,
    ) -> str:
        """A pending consent request; returns the secret the consent page is opened with."""
        rec, secret = self._new_grant(
            "request",
            client_id,
            uuid.uuid4(),
            seconds=REQUEST_SECONDS,
            resource=resource,
            details={
                "redirect_uri": redirect_uri,
                "redirect_uri_explicit": redirect_uri_explicit,
                "state": state,
                "scopes": list(scopes),
                "code_challenge": code_challenge,
            },
        )
        with self._audit.db.transaction("oauth request") as conn:
            self._table.insert_grant(conn, rec)
        self._purge_now_and_then()
        return secret

    def _purge_now_and_then(self) -> None:
        """Rows expired a day ago grant nothing: deleted at most once an hour."""
        now = self._now()
        if self._purged_at is not None and now - self._purged_at < timedelta(hours=1):
            return
        self._purged_at = now
        self.purge_expired()

    def pending(self, request: str) -> ConsentRequest | None:
        rec = self._find("request", request)
        if rec is None or not self._live(rec):
            return None
        client = self.get_client(rec.client_id)
        if client is None:
            return None
        return ConsentRequest(
            client_id=rec.client_id,
            client_name=str(client.metadata.get("client_name") or rec.client_id)[:100],
            redirect_uri=str(rec.details["redirect_uri"]),
            state=rec.details.get("state"),
            scopes=tuple(rec.details.get("scopes") or ()),
            resource=rec.resource or "",
        )

    def consent(
        self, request: str, principal: Principal, role: str, namespaces: Sequence[str]
    ) -> ConsentResult:
        """The signed-in user grants ``role`` on ``namespaces`` (no wider than their own
        token): the request is used up and an authorization code issued."""
        granted_role = parse_role(role)
        if not role_at_most(granted_role, principal.role):
            raise AccessDeniedError(
                f"your token is {principal.role.value}: it cannot grant {granted_role.value}",
                field="role",
            )
        scopes = _grant_namespaces(namespaces, principal)
        at = self._now()
        with self._audit.transaction("oauth consent") as conn:
            rec = self._table.find_grant_in(conn, "request", self._lookup(request)[0])
            if rec is None or not self._grant_ok(rec) or not self._live(rec):
                raise NotFoundError("this consent request is unknown, used or expired")
            asked = set(rec.details.get("scopes") or ())
            if asked and granted_role.value not in asked and not _asked_above(asked, granted_role):
                raise AccessDeniedError(
                    f"the client did not ask for {granted_role.value}", field="role"
                )
            used = _replace(rec, used_at=at)
            self._table.set_used(conn, rec.id, at, self._mac(self._grant_message(used)))
            code, secret = self._new_grant(
                "code",
                rec.client_id,
                rec.family_id,
                seconds=CODE_SECONDS,
                subject=principal.name,
                role=granted_role.value,
                namespaces=scopes,
                resource=rec.resource,
                details={
                    "redirect_uri": rec.details["redirect_uri"],
                    "redirect_uri_explicit": rec.details["redirect_uri_explicit"],
                    "code_challenge": rec.details["code_challenge"],
                },
            )
            self._table.insert_grant(conn, code)
            self._audit.append(
                conn,
                "GrantOAuth",
                details={
                    "client_id": rec.client_id,
                    "family_id": str(rec.family_id),
                    "subject": principal.name,
                    "role": granted_role.value,
                    "namespaces": ",".join(scopes),
                    "resource": rec.resource,
                },
            )
        return ConsentResult(str(rec.details["redirect_uri"]), secret, rec.details.get("state"))

    def deny(self, request: str) -> ConsentRequest | None:
        """The user declined: the request is used up; returns where to send the client."""
        pending = self.pending(request)
        if pending is None:
            return None
        at = self._now()
        with self._audit.transaction("oauth deny") as conn:
            rec = self._table.find_grant_in(conn, "request", self._lookup(request)[0])
            if rec is None or not self._grant_ok(rec) or not self._live(rec):
                return None
            used = _replace(rec, used_at=at)
            self._table.set_used(conn, rec.id, at, self._mac(self._grant_message(used)))
            self._audit.append(
                conn,
                "GrantOAuth",
                outcome="denied",
                details={"client_id": rec.client_id, "family_id": str(rec.family_id)},
            )
        return pending

    def load_code(self, client_id: str, code: str) -> OAuthCode | None:
        rec = self._find("code", code)
        if rec is None or rec.client_id != client_id:
            return None
        if rec.used_at is not None:  # a replayed code: revoke what it was exchanged for
            self._revoke_family(rec.family_id, "OAuthCodeReuse", rec.client_id)
            return None
        if not self._live(rec):
            return None
        return OAuthCode(
            client_id=rec.client_id,
            scopes=(rec.role or Role.READER.value,),
            expires_at=rec.expires_at.timestamp(),
            code_challenge=str(rec.details["code_challenge"]),
            redirect_uri=str(rec.details["redirect_uri"]),
            redirect_uri_explicit=bool(rec.details["redirect_uri_explicit"]),
            resource=rec.resource or "",
            subject=rec.subject,
        )

    def exchange_code(self, client_id: str, code: str) -> OAuthTokens:
        at = self._now()
        with self._audit.transaction("oauth token") as conn:
            rec = self._table.find_grant_in(conn, "code", self._lookup(code)[0])
            if rec is None or not self._grant_ok(rec) or rec.client_id != client_id:
                raise NotFoundError("authorization code does not exist")
            if not self._live(rec):
                raise NotFoundError("authorization code is used or expired")
            used = _replace(rec, used_at=at)
            self._table.set_used(conn, rec.id, at, self._mac(self._grant_message(used)))
            tokens = self._issue(conn, rec)
            self._audit.append(
                conn,
                "IssueOAuthToken",
                details={
                    "client_id": rec.client_id,
                    "family_id": str(rec.family_id),
                    "subject": rec.subject,
                    "role": rec.role,
                    "grant_type": "authorization_code",
                },
            )
        return tokens

    def _issue(self, conn: Any, parent: GrantRecord) -> OAuthTokens:
        common: dict[str, Any] = {
            "subject": parent.subject,
            "role": parent.role,
            "namespaces": parent.namespaces,
            "resource": parent.resource,
        }
        access, access_secret = self._new_grant(
            "access", parent.client_id, parent.family_id, seconds=self.access_seconds, **common
        )
        refresh, refresh_secret = self._new_grant(
            "refresh",
            parent.client_id,
            parent.family_id,
            seconds=self.refresh_days * 86400,
            **common,
        )
        self._table.insert_grant(conn, access)
        self._table.insert_grant(conn, refresh)
        return OAuthTokens(access_secret, refresh_secret, self.access_seconds, parent.role or "")

    # --- refresh, revocation, verification -----------------------------------------

    def load_refresh(self, client_id: str, token: str) -> OAuthRefresh | None:
        rec = self._find("refresh", token)
        if rec is None or rec.client_id != client_id:
            return None
        if rec.used_at is not None and rec.revoked_at is None:
            # Reuse of a rotated refresh token: whoever holds the family now may be a
            # thief; revoke it all (the rightful client signs in again).
            self._revoke_family(rec.family_id, "OAuthRefreshReuse", rec.client_id)
            return None
        if not self._live(rec):
            return None
        return OAuthRefresh(
            client_id=rec.client_id,
            scopes=(rec.role or Role.READER.value,),
            expires_at=int(rec.expires_at.timestamp()),
            resource=rec.resource or "",
            subject=rec.subject,
        )

    def exchange_refresh(self, client_id: str, token: str) -> OAuthTokens:
        """Rotate: the refresh token is used up, a new access and refresh token issued."""
        at = self._now()
        reused: GrantRecord | None = None
        orphan: GrantRecord | None = None
        with self._audit.transaction("oauth refresh") as conn:
            rec = self._table.find_grant_in(conn, "refresh", self._lookup(token)[0])
            if rec is None or not self._grant_ok(rec) or rec.client_id != client_id:
                raise NotFoundError("refresh token does not exist")
            if rec.used_at is not None:
                reused = rec
            elif not self._live(rec):
                raise NotFoundError("refresh token is revoked or expired")
            elif self._subject_gone(rec):
                orphan = rec
            else:
                used = _replace(rec, used_at=at)
                self._table.set_used(conn, rec.id, at, self._mac(self._grant_message(used)))
                tokens = self._issue(conn, rec)
                self._audit.append(
                    conn,
                    "RefreshOAuthToken",
                    details={
                        "client_id": rec.client_id,
                        "family_id": str(rec.family_id),
                        "subject": rec.subject,
                    },
                )
        if reused is not None:  # lost a race with another use of the same token
            self._revoke_family(reused.family_id, "OAuthRefreshReuse", reused.client_id)
            raise NotFoundError("refresh token was already used")
        if orphan is not None:
            self._revoke_family(orphan.family_id, "OAuthGrantEnded", orphan.client_id)
            raise NotFoundError("the bearer token this grant was made with is revoked or expired")
        return tokens

    def _subject_gone(self, rec: GrantRecord) -> bool:
        return (
            self._subject_active is not None
            and rec.subject is not None
            and not self._subject_active(rec.subject)
        )

    def authenticate(self, token: str) -> OAuthAccess | None:
        """The access a live, authentic access token grants, or None."""
        rec = self._find("access", token)
        if rec is None or not self._live(rec) or rec.role is None:
            return None
        scopes = None if ALL_NAMESPACES in rec.namespaces else frozenset(rec.namespaces)
        name = f"oauth:{rec.subject or '-'}@{rec.client_id}"
        return OAuthAccess(
            principal=Principal(name, Role(rec.role), scopes),
            client_id=rec.client_id,
            resource=rec.resource or "",
            expires_at=int(rec.expires_at.timestamp()),
            scopes=(rec.role,),
        )

    def revoke(self, client_id: str, token: str) -> bool:
        """RFC 7009: revoke the family of an access or refresh token of this client.
        False when the token is unknown or another client's (answered 200 all the same)."""
        for kind in ("access", "refresh"):
            rec = self._find(kind, token)
            if rec is not None and rec.client_id == client_id:
                self._revoke_family(rec.family_id, "RevokeOAuthToken", client_id)
                return True
        return False

    def _revoke_family(self, family_id: uuid.UUID, action: str, client_id: str) -> None:
        at = self._now()
        with self._audit.transaction("oauth revoke") as conn:
            rows = self._table.family(conn, family_id)
            for rec in rows:
                if not self._grant_ok(rec):
                    continue  # a forged row grants nothing; leave it as evidence
                gone = _replace(rec, revoked_at=at)
                self._table.set_revoked(conn, rec.id, at, self._mac(self._grant_message(gone)))
            self._audit.append(
                conn,
                action,
                outcome="success" if action == "RevokeOAuthToken" else "denied",
                details={"client_id": client_id, "family_id": str(family_id), "rows": len(rows)},
            )

    def purge_expired(self) -> int:
        """Delete rows expired more than a day ago (housekeeping)."""
        with self._audit.db.transaction("oauth purge") as conn:
            return self._table.delete_expired(conn, self._now() - timedelta(days=1))

    def grant(
        self,
        client_id: str,
        principal: Principal,
        role: str,
        namespaces: Sequence[str],
        resource: str,
    ) -> OAuthTokens:
        """Tokens for a registered client without the browser round trip (a grant made
        by the holder of ``principal``, audited like a consent): consent and code
        exchange in one."""
        secret = self.begin(
            client_id,
            redirect_uri="urn:ietf:wg:oauth:2.0:oob",
            redirect_uri_explicit=False,
            state=None,
            scopes=(),
            code_challenge="",
            resource=resource,
        )
        result = self.consent(secret, principal, role, namespaces)
        return self.exchange_code(client_id, result.code)


def _secret_text(secret: str) -> str:
    return _SECRET_LABEL.decode() + secret


def _asked_above(asked: set[str], role: Role) -> bool:
    """A client that asked for a higher role may be granted a lower one."""
    ranks = [_ROLE_RANK[Role(s)] for s in asked if s in {r.value for r in Role}]
    return bool(ranks) and _ROLE_RANK[role] <= max(ranks)


def _grant_namespaces(namespaces: Sequence[str], principal: Principal) -> list[str]:
    if not namespaces:
        raise ValidationError("grant at least one namespace", field="namespaces")
    out: set[str] = set()
    for ns in namespaces:
        if ns == ALL_NAMESPACES:
            if principal.namespaces is not None:
                raise AccessDeniedError(
                    "your token does not cover every namespace", field="namespaces"
                )
            out.add(ns)
            continue
        name = validate_namespace(ns)
        if not principal.sees(name):
            raise AccessDeniedError(f"your token has no access to {name}", field="namespaces")
        out.add(name)
    return sorted(out)


def _replace(rec: GrantRecord, **changes: Any) -> GrantRecord:
    return dataclasses.replace(rec, **changes)


def _with_mac(rec: GrantRecord, mac: bytes | None) -> GrantRecord:
    return _replace(rec, mac=mac)
