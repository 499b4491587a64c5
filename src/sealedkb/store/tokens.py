"""``kb_tokens``: bearer tokens, stored only as hashes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from sealedkb.errors import ConflictError
from sealedkb.store.db import Database

_COLS = "id, name, role, namespaces, created_at, expires_at, revoked_at, last_used_at"


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


def _row(r: tuple[Any, ...]) -> TokenRecord:
    return TokenRecord(r[0], r[1], r[2], tuple(r[3]), r[4], r[5], r[6], r[7])


class TokenTable:
    def __init__(self, db: Database) -> None:
        self.db = db

    def insert(
        self,
        name: str,
        token_hash: bytes,
        role: str,
        namespaces: list[str],
        expires_at: datetime | None,
    ) -> TokenRecord:
        try:
            with self.db.transaction("token create") as conn:
                r = conn.execute(
                    f"INSERT INTO kb_tokens (id, name, token_hash, role, namespaces, expires_at)"
                    f" VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLS}",
                    (uuid.uuid4(), name, token_hash, role, namespaces, expires_at),
                ).fetchone()
        except psycopg.errors.UniqueViolation:
            raise ConflictError(
                "an active token with this name exists; revoke it first", field="name"
            ) from None
        assert r is not None
        return _row(r)

    def find_active(self, token_hash: bytes) -> TokenRecord | None:
        """The token with this hash if it is neither revoked nor expired; marks it used."""
        with self.db.transaction("token check") as conn:
            r = conn.execute(
                f"UPDATE kb_tokens SET last_used_at = now() WHERE token_hash = %s"
                f" AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
                f" RETURNING {_COLS}",
                (token_hash,),
            ).fetchone()
        return _row(r) if r else None

    def list_all(self, include_revoked: bool = False) -> list[TokenRecord]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        with self.db.transaction("token list") as conn:
            rows = conn.execute(
                f"SELECT {_COLS} FROM kb_tokens{where} ORDER BY created_at"
            ).fetchall()
        return [_row(r) for r in rows]

    def revoke(self, name: str) -> bool:
        with self.db.transaction("token revoke") as conn:
            cur = conn.execute(
                "UPDATE kb_tokens SET revoked_at = now() WHERE name = %s AND revoked_at IS NULL",
                (name,),
            )
            return cur.rowcount > 0
