"""``kb_oauth_clients`` and ``kb_oauth_grants``: OAuth state, stored only as hashes,
each row with its MAC (computed and checked by kb/oauth.py; this module moves bytes)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from sealedkb.store.db import Database

_CLIENT_COLS = "client_id, secret_hash, metadata, created_at, hash_scheme, mac"
_GRANT_COLS = (
    "id, kind, token_hash, client_id, family_id, subject, role, namespaces, resource,"
    " details, created_at, expires_at, used_at, revoked_at, hash_scheme, mac"
)


@dataclass(frozen=True, slots=True)
class ClientRecord:
    client_id: str
    secret_hash: bytes | None
    metadata: dict[str, Any]
    created_at: datetime | None = None
    hash_scheme: int = 1
    mac: bytes | None = None

    def __post_init__(self) -> None:
        if self.secret_hash is not None:
            object.__setattr__(self, "secret_hash", bytes(self.secret_hash))
        if self.mac is not None:
            object.__setattr__(self, "mac", bytes(self.mac))


@dataclass(frozen=True, slots=True)
class GrantRecord:
    """One pending consent request, authorization code, access or refresh token."""

    id: uuid.UUID
    kind: str
    token_hash: bytes
    client_id: str
    family_id: uuid.UUID
    subject: str | None
    role: str | None
    namespaces: tuple[str, ...]
    resource: str | None
    details: dict[str, Any]
    created_at: datetime | None
    expires_at: datetime
    used_at: datetime | None = None
    revoked_at: datetime | None = None
    hash_scheme: int = 1
    mac: bytes | None = field(default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "namespaces", tuple(self.namespaces))
        object.__setattr__(self, "token_hash", bytes(self.token_hash))
        if self.mac is not None:
            object.__setattr__(self, "mac", bytes(self.mac))


_CLIENTS = class_row(ClientRecord)
_GRANTS = class_row(GrantRecord)


class OAuthTable:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- clients -------------------------------------------------------------------

    def insert_client(self, conn: psycopg.Connection[Any], rec: ClientRecord) -> None:
        conn.execute(
            f"INSERT INTO kb_oauth_clients ({_CLIENT_COLS}) VALUES (%s, %s, %s, now(), %s, %s)",
            (rec.client_id, rec.secret_hash, Jsonb(rec.metadata), rec.hash_scheme, rec.mac),
        )

    def get_client(self, client_id: str) -> ClientRecord | None:
        with self.db.transaction("oauth client") as conn:
            return (
                conn.cursor(row_factory=_CLIENTS)
                .execute(
                    f"SELECT {_CLIENT_COLS} FROM kb_oauth_clients WHERE client_id = %s",
                    (client_id,),
                )
                .fetchone()
            )

    # --- grants --------------------------------------------------------------------

    def insert_grant(self, conn: psycopg.Connection[Any], rec: GrantRecord) -> None:
        conn.execute(
            f"INSERT INTO kb_oauth_grants ({_GRANT_COLS}) VALUES"
            " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), %s, %s, %s, %s, %s)",
            (
                rec.id,
                rec.kind,
                rec.token_hash,
                rec.client_id,
                rec.family_id,
                rec.subject,
                rec.role,
                list(rec.namespaces),
                rec.resource,
                Jsonb(rec.details),
                rec.expires_at,
                rec.used_at,
                rec.revoked_at,
                rec.hash_scheme,
                rec.mac,
            ),
        )

    def find_grant(self, kind: str, token_hash: bytes) -> GrantRecord | None:
        """The row with this hash, used, revoked or expired alike (the caller decides)."""
        with self.db.transaction("oauth grant") as conn:
            return self.find_grant_in(conn, kind, token_hash, lock=False)

    def find_grant_in(
        self, conn: psycopg.Connection[Any], kind: str, token_hash: bytes, *, lock: bool = True
    ) -> GrantRecord | None:
        return (
            conn.cursor(row_factory=_GRANTS)
            .execute(
                f"SELECT {_GRANT_COLS} FROM kb_oauth_grants WHERE kind = %s AND token_hash = %s"
                + (" FOR UPDATE" if lock else ""),
                (kind, token_hash),
            )
            .fetchone()
        )

    def family(self, conn: psycopg.Connection[Any], family_id: uuid.UUID) -> list[GrantRecord]:
        """Every live row of a grant family (not yet revoked), locked."""
        return (
            conn.cursor(row_factory=_GRANTS)
            .execute(
                f"SELECT {_GRANT_COLS} FROM kb_oauth_grants WHERE family_id = %s"
                " AND revoked_at IS NULL ORDER BY created_at FOR UPDATE",
                (family_id,),
            )
            .fetchall()
        )

    def set_used(
        self, conn: psycopg.Connection[Any], grant_id: uuid.UUID, at: datetime, mac: bytes | None
    ) -> None:
        conn.execute(
            "UPDATE kb_oauth_grants SET used_at = %s, mac = %s WHERE id = %s", (at, mac, grant_id)
        )

    def set_revoked(
        self, conn: psycopg.Connection[Any], grant_id: uuid.UUID, at: datetime, mac: bytes | None
    ) -> None:
        conn.execute(
            "UPDATE kb_oauth_grants SET revoked_at = %s, mac = %s WHERE id = %s",
            (at, mac, grant_id),
        )

    def delete_expired(self, conn: psycopg.Connection[Any], before: datetime) -> int:
        """Rows whose expiry passed before ``before`` (they grant nothing any more)."""
        cur = conn.execute("DELETE FROM kb_oauth_grants WHERE expires_at < %s", (before,))
        return cur.rowcount
