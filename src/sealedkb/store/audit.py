"""``kb_audit``: the rows of the audit trail. SQL only; hashing happens in audit/chain.py.

Appends serialise on a transaction-scoped advisory lock, taken *first* in every
audited transaction (before it touches other rows, so two audited transactions
never wait on each other in opposite orders). Sequence numbers are therefore
gapless, and the row before is always the chain head.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import Connection
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from sealedkb.store.db import Database

AUDIT_LOCK = 0x5EA1ED_0002  # pg_advisory_xact_lock key of the audit chain head

_COLS = (
    "seq, time, principal, action, key_uri, namespace, outcome, error_code, request_id,"
    " details, prev_hash, hash"
)


@dataclass(frozen=True, slots=True)
class AuditRow:
    seq: int
    time: datetime
    principal: str
    action: str
    key_uri: str | None
    namespace: str | None
    outcome: str
    error_code: str | None
    request_id: str | None
    details: dict[str, Any]
    prev_hash: bytes
    hash: bytes


def _row(r: tuple[Any, ...]) -> AuditRow:
    return AuditRow(
        seq=int(r[0]),
        time=r[1],
        principal=r[2],
        action=r[3],
        key_uri=r[4],
        namespace=r[5],
        outcome=r[6],
        error_code=r[7],
        request_id=r[8],
        details=r[9] if isinstance(r[9], dict) else {},
        prev_hash=bytes(r[10]),
        hash=bytes(r[11]),
    )


class AuditTable:
    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    def lock(conn: Connection[TupleRow]) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))

    @staticmethod
    def head_in(conn: Connection[TupleRow]) -> tuple[int, bytes] | None:
        r = conn.execute("SELECT seq, hash FROM kb_audit ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(r[0]), bytes(r[1])) if r else None

    def head(self) -> tuple[int, bytes] | None:
        with self.db.transaction("audit head") as conn:
            return self.head_in(conn)

    @staticmethod
    def insert(conn: Connection[TupleRow], row: AuditRow) -> None:
        conn.execute(
            f"INSERT INTO kb_audit ({_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " %s, %s)",
            (
                row.seq,
                row.time,
                row.principal,
                row.action,
                row.key_uri,
                row.namespace,
                row.outcome,
                row.error_code,
                row.request_id,
                Jsonb(row.details),
                row.prev_hash,
                row.hash,
            ),
        )

    def list(
        self,
        *,
        since: datetime | None = None,
        action: str | None = None,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[AuditRow]:
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append("time >= %s")
            params.append(since)
        if action is not None:
            where.append("action = %s")
            params.append(action)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        order = "DESC" if newest_first else "ASC"
        stmt = f"SELECT {_COLS} FROM kb_audit {clause} ORDER BY seq {order} LIMIT %s"
        with self.db.transaction("audit list") as conn:
            rows = conn.execute(stmt, [*params, limit]).fetchall()
        return [_row(r) for r in rows]

    def scan(self, page: int = 1000) -> Iterator[AuditRow]:
        """Every row in seq order, a page per transaction (keyset pagination)."""
        after = -(2**63)
        while True:
            with self.db.transaction("audit scan") as conn:
                rows = conn.execute(
                    f"SELECT {_COLS} FROM kb_audit WHERE seq > %s ORDER BY seq LIMIT %s",
                    (after, page),
                ).fetchall()
            if not rows:
                return
            for r in rows:
                yield _row(r)
            after = int(rows[-1][0])
