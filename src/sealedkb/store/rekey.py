"""SQL for key rotation: re-wrapping data keys, rotating them, re-sealing entries.

Bytes in, bytes out: the service opens and seals; this module finds the rows
that need it and writes the results back with optimistic checks, so a
concurrent writer always wins and a rerun picks up whatever is left.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import Connection
from psycopg.rows import TupleRow

from sealedkb.model import KeyPurpose, WrappedDataKey
from sealedkb.store.db import Database

_DK_COLS = "id, namespace, purpose, kms_key_uri, wrapped, created_at, active"

# Rows with a sealed column (document or exact embedding) that names a data key no
# longer active.
_STALE = (
    "FROM kb_entries e"
    " LEFT JOIN kb_data_keys k ON k.id = e.data_key_id"
    " LEFT JOIN kb_data_keys v ON v.id = e.embedding_key_id"
    " WHERE (NOT k.active OR NOT v.active)"
)


def _dk(r: Sequence[Any]) -> WrappedDataKey:
    return WrappedDataKey(
        id=r[0],
        namespace=r[1],
        purpose=KeyPurpose(r[2]),
        kms_key_uri=r[3],
        wrapped=bytes(r[4]),
        created_at=r[5],
        active=r[6],
    )


KEEP = object()  # reseal: leave the exact embedding as it is


@dataclass(frozen=True, slots=True)
class StaleRow:
    id: uuid.UUID
    namespace: str
    version: int
    doc_sealed: bytes
    embedding_sealed: bytes | None = None


class RekeyTable:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- data keys ---------------------------------------------------------

    def data_keys_of(self, kms_key_uri: str) -> list[WrappedDataKey]:
        with self.db.transaction("data key scan") as conn:
            rows = conn.execute(
                f"SELECT {_DK_COLS} FROM kb_data_keys WHERE kms_key_uri = %s ORDER BY id",
                (kms_key_uri,),
            ).fetchall()
        return [_dk(r) for r in rows]

    @staticmethod
    def replace_wrapped(
        conn: Connection[TupleRow], items: Sequence[tuple[uuid.UUID, bytes, bytes]]
    ) -> int:
        """Swap (id, old wrapped, new wrapped); a row changed meanwhile is left alone."""
        done = 0
        for key_id, old, new in items:
            cur = conn.execute(
                "UPDATE kb_data_keys SET wrapped = %s WHERE id = %s AND wrapped = %s",
                (new, key_id, old),
            )
            done += cur.rowcount
        return done

    def active_namespaces(self, purpose: KeyPurpose, namespace: str | None) -> list[str]:
        with self.db.transaction("data key scan") as conn:
            rows = conn.execute(
                "SELECT namespace FROM kb_data_keys WHERE active AND purpose = %s"
                " AND (%s::text IS NULL OR namespace = %s) ORDER BY namespace",
                (purpose.value, namespace, namespace),
            ).fetchall()
        return [r[0] for r in rows]

    @staticmethod
    def rotate_data_key(conn: Connection[TupleRow], new: WrappedDataKey) -> uuid.UUID | None:
        """Retire the active key of (namespace, purpose) and make ``new`` active, in the
        caller's transaction. Returns the retired key's id (None if there was none)."""
        r = conn.execute(
            "UPDATE kb_data_keys SET active = false, retired_at = now()"
            " WHERE namespace = %s AND purpose = %s AND active RETURNING id",
            (new.namespace, new.purpose.value),
        ).fetchone()
        conn.execute(
            "INSERT INTO kb_data_keys (id, namespace, purpose, kms_key_uri, wrapped, active)"
            " VALUES (%s, %s, %s, %s, %s, true)",
            (new.id, new.namespace, new.purpose.value, new.kms_key_uri, new.wrapped),
        )
        return r[0] if r else None

    @staticmethod
    def insert_data_key(conn: Connection[TupleRow], key: WrappedDataKey) -> WrappedDataKey:
        """Insert as the active key unless one exists; return the one that is active."""
        conn.execute(
            "INSERT INTO kb_data_keys (id, namespace, purpose, kms_key_uri, wrapped, active)"
            " VALUES (%s, %s, %s, %s, %s, true)"
            " ON CONFLICT (namespace, purpose) WHERE active DO NOTHING",
            (key.id, key.namespace, key.purpose.value, key.kms_key_uri, key.wrapped),
        )
        r = conn.execute(
            f"SELECT {_DK_COLS} FROM kb_data_keys WHERE namespace = %s AND purpose = %s AND active",
            (key.namespace, key.purpose.value),
        ).fetchone()
        assert r is not None
        return _dk(r)

    # --- entries ---------------------------------------------------------------

    def stale_batch(
        self, namespace: str | None, after: uuid.UUID | None, limit: int
    ) -> list[StaleRow]:
        """The next rows (by id, soft-deleted ones included: they hold ciphertext too)
        sealed under a retired content key."""
        with self.db.transaction("re-encryption scan") as conn:
            rows = conn.execute(
                f"SELECT e.id, e.namespace, e.version, e.doc_sealed, e.embedding_sealed {_STALE}"
                " AND (%s::text IS NULL OR e.namespace = %s)"
                " AND (%s::uuid IS NULL OR e.id > %s) ORDER BY e.id LIMIT %s",
                (namespace, namespace, after, after, limit),
                binary=True,
            ).fetchall()
        return [
            StaleRow(r[0], r[1], int(r[2]), bytes(r[3]), bytes(r[4]) if r[4] is not None else None)
            for r in rows
        ]

    @staticmethod
    def reseal(
        conn: Connection[TupleRow],
        row: StaleRow,
        new_doc: bytes,
        new_embedding: bytes | object | None = KEEP,
    ) -> bool:
        """Write the re-sealed document (and exact embedding, unless ``KEEP``) unless the
        row changed since it was read. ``version`` and ``updated_at`` stay as they are:
        the entry did not change."""
        embedding = row.embedding_sealed if new_embedding is KEEP else new_embedding
        cur = conn.execute(
            "UPDATE kb_entries SET doc_sealed = %s, embedding_sealed = %s"
            " WHERE id = %s AND version = %s AND doc_sealed = %s"
            " AND embedding_sealed IS NOT DISTINCT FROM %s",
            (new_doc, embedding, row.id, row.version, row.doc_sealed, row.embedding_sealed),
        )
        return cur.rowcount == 1

    def counts(self, namespace: str | None = None) -> dict[str, int]:
        """Sealed rows by the state of the data keys they name: a row is on a retired
        key when its document or its exact embedding is; ``embeddings_on_retired_keys``
        counts the embeddings alone."""
        with self.db.transaction("status") as conn:
            r = conn.execute(
                "SELECT count(*) FILTER (WHERE k.active AND v.active IS NOT false),"
                " count(*) FILTER (WHERE NOT k.active OR NOT v.active),"
                " count(*) FILTER (WHERE k.id IS NULL OR"
                "   (e.embedding_sealed IS NOT NULL AND v.id IS NULL)),"
                " count(*) FILTER (WHERE NOT v.active)"
                " FROM kb_entries e"
                " LEFT JOIN kb_data_keys k ON k.id = e.data_key_id"
                " LEFT JOIN kb_data_keys v ON v.id = e.embedding_key_id"
                " WHERE e.doc_sealed IS NOT NULL"
                " AND (%s::text IS NULL OR e.namespace = %s)",
                (namespace, namespace),
            ).fetchone()
        assert r is not None
        return {
            "on_active_keys": r[0],
            "on_retired_keys": r[1],
            "on_unknown_keys": r[2],
            "embeddings_on_retired_keys": r[3],
        }

    def data_key_counts(self) -> dict[str, int]:
        with self.db.transaction("status") as conn:
            r = conn.execute(
                "SELECT count(*) FILTER (WHERE active), count(*) FILTER (WHERE NOT active)"
                " FROM kb_data_keys"
            ).fetchone()
        assert r is not None
        return {"active": r[0], "retired": r[1]}
