"""SQL for changing custody (keys/migrate.py): the data keys still wrapped by
another KMS key than the target, one re-wrapped row swapped in with an optimistic
check, and the switch of ``kb_meta.kms_key_uri`` once none is left.

Bytes in, bytes out: the caller unwraps and wraps; nothing here sees a key."""

from __future__ import annotations

import uuid
from typing import Any

from psycopg import Connection
from psycopg.rows import TupleRow

from sealedkb.model import KeyPurpose, WrappedDataKey
from sealedkb.store.db import Database

_COLS = "id, namespace, purpose, kms_key_uri, wrapped, created_at, active"


def _dk(r: Any) -> WrappedDataKey:
    return WrappedDataKey(
        id=r[0],
        namespace=r[1],
        purpose=KeyPurpose(r[2]),
        kms_key_uri=r[3],
        wrapped=bytes(r[4]),
        created_at=r[5],
        active=r[6],
    )


class CustodyTable:
    def __init__(self, db: Database) -> None:
        self.db = db

    def not_under(self, kms_key_uri: str) -> list[WrappedDataKey]:
        """Every data key (active or retired) not wrapped by ``kms_key_uri``."""
        with self.db.transaction("custody scan") as conn:
            rows = conn.execute(
                f"SELECT {_COLS} FROM kb_data_keys WHERE kms_key_uri <> %s ORDER BY created_at, id",
                (kms_key_uri,),
            ).fetchall()
        return [_dk(r) for r in rows]

    def under(self, kms_key_uri: str) -> list[WrappedDataKey]:
        with self.db.transaction("custody scan") as conn:
            rows = conn.execute(
                f"SELECT {_COLS} FROM kb_data_keys WHERE kms_key_uri = %s ORDER BY created_at, id",
                (kms_key_uri,),
            ).fetchall()
        return [_dk(r) for r in rows]

    def counts_by_kms_key(self) -> dict[str, int]:
        with self.db.transaction("custody scan") as conn:
            rows = conn.execute(
                "SELECT kms_key_uri, count(*) FROM kb_data_keys GROUP BY kms_key_uri"
            ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    @staticmethod
    def swap(
        conn: Connection[TupleRow],
        key_id: uuid.UUID,
        old_uri: str,
        old_wrapped: bytes,
        new_uri: str,
        new_wrapped: bytes,
    ) -> bool:
        """Replace one row's wrap if it is still the one that was read (a rerun or a
        concurrent rotation re-wrap wins otherwise)."""
        cur = conn.execute(
            "UPDATE kb_data_keys SET kms_key_uri = %s, wrapped = %s"
            " WHERE id = %s AND kms_key_uri = %s AND wrapped = %s",
            (new_uri, new_wrapped, key_id, old_uri, old_wrapped),
        )
        return cur.rowcount == 1

    @staticmethod
    def switch(conn: Connection[TupleRow], old_uri: str, new_uri: str, meta: dict[str, str]) -> int:
        """In the caller's transaction: lock the data keys against new inserts, count
        those not under ``new_uri`` (the switch happens only at zero), then point
        kb_meta at ``new_uri`` and write ``meta`` (re-signed values). Returns the
        count of data keys left behind (0: switched)."""
        conn.execute("LOCK TABLE kb_data_keys IN SHARE ROW EXCLUSIVE MODE")
        r = conn.execute(
            "SELECT count(*) FROM kb_data_keys WHERE kms_key_uri <> %s", (new_uri,)
        ).fetchone()
        left = int(r[0]) if r else 0
        if left:
            return left
        cur = conn.execute(
            "UPDATE kb_meta SET value = %s WHERE key = 'kms_key_uri' AND value = %s",
            (new_uri, old_uri),
        )
        if cur.rowcount != 1:
            return -1
        for key, value in meta.items():
            conn.execute(
                "INSERT INTO kb_meta (key, value) VALUES (%s, %s)"
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (key, value),
            )
        return 0
