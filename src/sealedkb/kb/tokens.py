"""Bearer tokens: created, listed, revoked, re-keyed and checked.

A database writer must not be able to mint or widen a token. So in an encrypted
knowledge base a row is found by a *keyed* hash of the token (a MAC under the key
provider's audit key, which never reaches PostgreSQL) and carries a MAC over every
field that grants anything (id, name, role, namespaces, expiry, revocation). A row
whose MAC fails is refused, counted as an integrity failure and recorded in the
audit trail; token create, revoke and re-key are audited too.

Rows of earlier versions hold the unkeyed SHA-256 (hash scheme 1) and no MAC: in an
encrypted knowledge base they are refused until an administrator re-keys them with
``sealedkb token rekey`` (one step; it lists what it re-keys). A plaintext knowledge
base has no key to MAC with and keeps scheme 1 (the database holds everything in
clear there anyway).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from sealedkb._lru import LRUCache
from sealedkb.audit.chain import AuditLog, MacKey
from sealedkb.crypto.digest import canonical_json
from sealedkb.crypto.tokens import TOKEN_PREFIX, new_token, token_hash
from sealedkb.errors import NotFoundError, ValidationError
from sealedkb.kb.access import ALL_NAMESPACES, Principal, Role, parse_role
from sealedkb.model import validate_namespace
from sealedkb.monitoring.telemetry import Telemetry
from sealedkb.store.tokens import TokenRecord, TokenTable

__all__ = ["TokenService"]

log = logging.getLogger("sealedkb.tokens")

K = TypeVar("K")
V = TypeVar("V")

HASH_UNKEYED = 1
HASH_KEYED = 2
_LOOKUP_LABEL = b"sealedkb/token/v1/lookup|"
_ROW_LABEL = b"sealedkb/token/v1/row|"


CACHE_SECONDS = 60.0
CACHE_ENTRIES = 4096


class BoundedCache(LRUCache[K, V]):
    """Least-recently-used, at most CACHE_ENTRIES entries, each kept CACHE_SECONDS: what
    remembers key-service MAC results for bearer tokens and OAuth rows alike."""

    def __init__(self, now: Callable[[], datetime]) -> None:
        super().__init__(CACHE_ENTRIES, max_age=CACHE_SECONDS, now=now)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


class TokenService:
    def __init__(
        self,
        table: TokenTable,
        audit: AuditLog,
        mac_key: MacKey | None,
        telemetry: Telemetry,
        *,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self._table = table
        self._audit = audit
        self._mac_key = mac_key
        self._telemetry = telemetry
        self._now = now or (lambda: datetime.now(UTC))
        self._reported: set[uuid.UUID] = set()  # forged rows already recorded once
        # A key service's MAC is a network call (AWS KMS GenerateMac, Vault HMAC): the
        # lookup hash of a token and a row found authentic are remembered for a bounded
        # time and number, so a request costs no key-service call once its token is known.
        self._lookups = BoundedCache[bytes, bytes](self._now)
        self._verified = BoundedCache[bytes, bool](self._now)

    # --- hashes and MACs -----------------------------------------------------------

    def _lookup_hash(self, secret_hash: bytes) -> bytes:
        assert self._mac_key is not None
        cached = self._lookups.get(secret_hash)
        if cached is None:
            cached = self._mac_key.generate_mac(_LOOKUP_LABEL + secret_hash)
            self._lookups.put(secret_hash, cached)
        return cached

    @staticmethod
    def _row_message(
        token_id: uuid.UUID,
        name: str,
        role: str,
        namespaces: Sequence[str],
        expires_at: datetime | None,
        revoked_at: datetime | None,
        lookup: bytes,
    ) -> bytes:
        return _ROW_LABEL + canonical_json(
            {
                "id": str(token_id),
                "name": name,
                "role": role,
                "namespaces": sorted(namespaces),
                "expires_at": _iso(expires_at),
                "revoked_at": _iso(revoked_at),
                "token_hash": lookup.hex(),
            }
        )

    def _row_mac(self, rec: TokenRecord, *, revoked_at: datetime | None = None) -> bytes:
        assert self._mac_key is not None
        return self._mac_key.generate_mac(
            self._row_message(
                rec.id,
                rec.name,
                rec.role,
                rec.namespaces,
                rec.expires_at,
                revoked_at if revoked_at is not None else rec.revoked_at,
                rec.token_hash,
            )
        )

    def _authentic(self, rec: TokenRecord) -> bool:
        if self._mac_key is None:
            return True
        if rec.hash_scheme != HASH_KEYED or rec.mac is None:
            return False
        message = self._row_message(
            rec.id,
            rec.name,
            rec.role,
            rec.namespaces,
            rec.expires_at,
            rec.revoked_at,
            rec.token_hash,
        )
        seen = hashlib.sha256(message + b"|" + rec.mac).digest()
        if self._verified.get(seen):
            return True
        ok = self._mac_key.verify_mac(message, rec.mac)
        if ok:  # only successes: a forged row is checked (and refused) every time
            self._verified.put(seen, True)
        return ok

    # --- operations --------------------------------------------------------------

    def create(
        self, name: str, role: str, namespaces: Sequence[str], expires_days: int | None = None
    ) -> tuple[TokenRecord, str]:
        """Create a bearer token; returns its record and the token, which is not stored."""
        if not name or len(name) > 100 or not name.isprintable():
            raise ValidationError("token name must be 1-100 printable characters", field="name")
        parsed_role = parse_role(role)
        if not namespaces:
            raise ValidationError("give at least one --namespace (or '*')", field="namespace")
        scopes = sorted(
            {ns if ns == ALL_NAMESPACES else validate_namespace(ns) for ns in namespaces}
        )
        expires_at = None
        if expires_days is not None:
            if not 1 <= expires_days <= 3650:
                raise ValidationError("expires must be 1-3650 days", field="expires")
            expires_at = self._now() + timedelta(days=expires_days)
        secret = new_token()
        token_id = uuid.uuid4()
        mac: bytes | None = None
        if self._mac_key is not None:
            lookup, scheme = self._lookup_hash(token_hash(secret)), HASH_KEYED
            mac = self._mac_key.generate_mac(
                self._row_message(
                    token_id, name, parsed_role.value, scopes, expires_at, None, lookup
                )
            )
        else:
            lookup, scheme = token_hash(secret), HASH_UNKEYED
        record = self._table.insert(
            token_id,
            name,
            lookup,
            parsed_role.value,
            scopes,
            expires_at,
            hash_scheme=scheme,
            mac=mac,
        )
        self._audit.record(
            "CreateToken",
            details={"token_id": str(record.id), "name": name, "role": parsed_role.value},
        )
        return record, secret

    def list_all(self, include_revoked: bool = False) -> list[TokenRecord]:
        return self._table.list_all(include_revoked)

    def active(self, name: str) -> bool:
        """Whether an authentic token of this name is neither revoked nor expired (an
        OAuth grant made by signing in with it lives no longer than it; kb/oauth.py)."""
        now = self._now()
        return any(
            rec.name == name
            and (rec.expires_at is None or rec.expires_at > now)
            and (self._mac_key is None or self._authentic(rec))
            for rec in self._table.list_all(include_revoked=False)
        )

    def revoke(self, name: str) -> None:
        at = self._now()
        with self._audit.transaction("token revoke") as conn:
            rows = self._table.active_named(conn, name)
            if not rows:
                raise NotFoundError("no active token with this name", field="name")
            for rec in rows:
                mac = self._row_mac(rec, revoked_at=at) if self._authentic_keyed(rec) else None
                self._table.set_revoked(conn, rec.id, at, mac)
                self._audit.append(
                    conn, "RevokeToken", details={"token_id": str(rec.id), "name": name}
                )

    def _authentic_keyed(self, rec: TokenRecord) -> bool:
        return self._mac_key is not None and self._authentic(rec)

    def rekey(self) -> list[TokenRecord]:
        """Re-key the active tokens of earlier versions (unkeyed hash, no MAC): each gets
        the keyed hash and a row MAC. Returns what was re-keyed (the operator confirms
        these are the tokens they issued)."""
        if self._mac_key is None:
            raise ValidationError(
                "a plaintext knowledge base has no key to MAC tokens with", field="encryption"
            )
        with self._audit.transaction("token rekey") as conn:
            rows = self._table.legacy(conn)
            for rec in rows:
                lookup = self._lookup_hash(rec.token_hash)
                mac = self._mac_key.generate_mac(
                    self._row_message(
                        rec.id, rec.name, rec.role, rec.namespaces, rec.expires_at, None, lookup
                    )
                )
                self._table.set_keyed(conn, rec.id, lookup, mac)
                self._audit.append(
                    conn, "RekeyToken", details={"token_id": str(rec.id), "name": rec.name}
                )
        return rows

    def authenticate(self, secret: str) -> Principal | None:
        """The principal a bearer token stands for, or None (unknown, revoked, expired,
        or a row that fails its MAC)."""
        if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
            return None
        digest = token_hash(secret)
        if self._mac_key is None:
            rec = self._table.find_active(digest)
        else:
            rec = self._table.find_active(self._lookup_hash(digest))
            if rec is None:
                legacy = self._table.find_active(digest)
                if legacy is not None:
                    log.warning(
                        "token %s predates authenticated tokens; run 'sealedkb token rekey'",
                        legacy.name,
                    )
                return None
        if rec is None:
            return None
        if not self._authentic(rec):
            self._forged(rec)
            return None
        scopes = None if ALL_NAMESPACES in rec.namespaces else frozenset(rec.namespaces)
        return Principal(rec.name, Role(rec.role), scopes)

    def _forged(self, rec: TokenRecord) -> None:
        """A token row that fails its MAC: refused, counted, recorded (once a process)."""
        self._telemetry.integrity_failure()
        log.warning("token row %s failed its integrity check: refused", rec.id)
        if rec.id in self._reported:
            return
        self._reported.add(rec.id)
        self._audit.record(
            "AuthenticateToken",
            outcome="denied",
            error_code="INTEGRITY_ERROR",
            details={"token_id": str(rec.id)},
        )
