"""``kb_tokens``: bearer tokens, stored only as hashes, each row with its MAC."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from sealedkb.errors import ConflictError
from sealedkb.store.db import Database

_COLS = (
    "id, name, role, namespaces, created_at, expires_at, revoked_at, last_used_at,"
    " token_hash, hash_scheme, mac"
)


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: uuid.UUID
    name: str
    role: str
    namespaces: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    token_hash: bytes = b""
    hash_scheme: int = 1
    mac: bytes | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "namespaces", tuple(self.namespaces))
        object.__setattr__(self, "token_hash", bytes(self.token_hash))
        if self.mac is not None:
            object.__setattr__(self, "mac", bytes(self.mac))

    def to_dict(self) -> dict[str, Any]:
        def iso(d: datetime | None) -> str | None:
            return d.isoformat() if d else None

        return {
            "id": str(self.id),
            "name": self.name,
            "role": self.role,
            "namespaces": list(self.namespaces),
            "created_at": self.created_at.isoformat(),
            "expires_at": iso(self.expires_at),
            "revoked_at": iso(self.revoked_at),
            "last_used_at": iso(self.last_used_at),
        }


_ROWS = class_row(TokenRecord)


class TokenTable:
    def __init__(self, db: Database) -> None:
        self.db = db

    def insert(
        self,
        token_id: uuid.UUID,
        name: str,
        token_hash: bytes,
        role: str,
        namespaces: list[str],
        expires_at: datetime | None,
        *,
        hash_scheme: int,
        mac: bytes | None,
    ) -> TokenRecord:
        try:
            with self.db.transaction("token create") as conn:
                r = (
                    conn.cursor(row_factory=_ROWS)
                    .execute(
                        "INSERT INTO kb_tokens (id, name, token_hash, role, namespaces,"
                        " expires_at, hash_scheme, mac) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                        f" RETURNING {_COLS}",
                        (
                            token_id,
                            name,
                            token_hash,
                            role,
                            namespaces,
                            expires_at,
                            hash_scheme,
                            mac,
                        ),
                    )
                    .fetchone()
                )
        except psycopg.errors.UniqueViolation:
            raise ConflictError(
                "an active token with this name exists; revoke it first", field="name"
            ) from None
        assert r is not None
        return r

    def find_active(self, token_hash: bytes) -> TokenRecord | None:
        """The token with this hash if it is neither revoked nor expired; marks it used
        (last_used_at is bookkeeping, not authenticated)."""
        with self.db.transaction("token check") as conn:
            return (
                conn.cursor(row_factory=_ROWS)
                .execute(
                    "UPDATE kb_tokens SET last_used_at = now() WHERE token_hash = %s"
                    " AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
                    f" RETURNING {_COLS}",
                    (token_hash,),
                )
                .fetchone()
            )

    def list_all(self, include_revoked: bool = False) -> list[TokenRecord]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        with self.db.transaction("token list") as conn:
            return (
                conn.cursor(row_factory=_ROWS)
                .execute(f"SELECT {_COLS} FROM kb_tokens{where} ORDER BY created_at")
                .fetchall()
            )

    def active_named(self, conn: psycopg.Connection[Any], name: str) -> list[TokenRecord]:
        """Active rows with this name, locked for the caller's transaction."""
        return (
            conn.cursor(row_factory=_ROWS)
            .execute(
                f"SELECT {_COLS} FROM kb_tokens WHERE name = %s AND revoked_at IS NULL FOR UPDATE",
                (name,),
            )
            .fetchall()
        )

    def legacy(self, conn: psycopg.Connection[Any]) -> list[TokenRecord]:
        """Active rows still on the unkeyed hash (hash_scheme 1), locked."""
        return (
            conn.cursor(row_factory=_ROWS)
            .execute(
                f"SELECT {_COLS} FROM kb_tokens WHERE hash_scheme = 1 AND revoked_at IS NULL"
                " ORDER BY created_at FOR UPDATE"
            )
            .fetchall()
        )

    def set_revoked(
        self, conn: psycopg.Connection[Any], token_id: uuid.UUID, at: datetime, mac: bytes | None
    ) -> None:
        conn.execute(
            "UPDATE kb_tokens SET revoked_at = %s, mac = %s WHERE id = %s", (at, mac, token_id)
        )

    def set_keyed(
        self, conn: psycopg.Connection[Any], token_id: uuid.UUID, token_hash: bytes, mac: bytes
    ) -> None:
        conn.execute(
            "UPDATE kb_tokens SET token_hash = %s, hash_scheme = 2, mac = %s WHERE id = %s",
            (token_hash, mac, token_id),
        )
