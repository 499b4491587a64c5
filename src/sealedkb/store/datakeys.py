"""``kb_data_keys``: wrapped data keys, one active per namespace and purpose."""

from __future__ import annotations

import uuid
from typing import Any

from sealedkb.model import KeyPurpose, WrappedDataKey
from sealedkb.store.db import Database

_COLS = "id, namespace, purpose, kms_key_uri, wrapped, created_at, active"
_ACTIVE = f"SELECT {_COLS} FROM kb_data_keys WHERE namespace = %s AND purpose = %s AND active"


def _row(r: tuple[Any, ...]) -> WrappedDataKey:
    return WrappedDataKey(
        id=r[0],
        namespace=r[1],
        purpose=KeyPurpose(r[2]),
        kms_key_uri=r[3],
        wrapped=bytes(r[4]),
        created_at=r[5],
        active=r[6],
    )


class DataKeyTable:
    """Implements crypto.keyring.DataKeyStore on PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get_data_key(self, key_id: uuid.UUID) -> WrappedDataKey | None:
        with self.db.transaction("data key lookup") as conn:
            r = conn.execute(
                f"SELECT {_COLS} FROM kb_data_keys WHERE id = %s", (key_id,)
            ).fetchone()
        return _row(r) if r else None

    def get_active_data_key(self, namespace: str, purpose: KeyPurpose) -> WrappedDataKey | None:
        with self.db.transaction("data key lookup") as conn:
            r = conn.execute(
                _ACTIVE,
                (namespace, purpose.value),
            ).fetchone()
        return _row(r) if r else None

    def insert_data_key(self, key: WrappedDataKey) -> WrappedDataKey:
        with self.db.transaction("data key insert") as conn:
            conn.execute(
                "INSERT INTO kb_data_keys (id, namespace, purpose, kms_key_uri, wrapped, active)"
                " VALUES (%s, %s, %s, %s, %s, true)"
                " ON CONFLICT (namespace, purpose) WHERE active DO NOTHING",
                (key.id, key.namespace, key.purpose.value, key.kms_key_uri, key.wrapped),
            )
            r = conn.execute(
                _ACTIVE,
                (key.namespace, key.purpose.value),
            ).fetchone()
        if r is None:  # pragma: no cover - the insert or the winner is always there
            raise RuntimeError("data key insert lost")
        return _row(r)

    def counts(self) -> dict[str, int]:
        with self.db.transaction("status") as conn:
            r = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE active), count(DISTINCT kms_key_uri)"
                " FROM kb_data_keys"
            ).fetchone()
        assert r is not None
        return {"total": r[0], "active": r[1], "kms_keys": r[2]}


class MetaTable:
    """``kb_meta``: small settings fixed at init (encryption mode, KMS key URI)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, key: str) -> str | None:
        with self.db.transaction("meta read") as conn:
            r = conn.execute("SELECT value FROM kb_meta WHERE key = %s", (key,)).fetchone()
        return str(r[0]) if r else None

    def all(self) -> dict[str, str]:
        with self.db.transaction("meta read") as conn:
            return {k: v for k, v in conn.execute("SELECT key, value FROM kb_meta")}

    def set_default(self, key: str, value: str) -> str:
        """Set ``key`` unless it is set; return the value that holds (first writer wins)."""
        with self.db.transaction("meta write") as conn:
            conn.execute(
                "INSERT INTO kb_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                (key, value),
            )
            r = conn.execute("SELECT value FROM kb_meta WHERE key = %s", (key,)).fetchone()
        assert r is not None
        return str(r[0])
