"""Alarm state and history rows (``kb_alarm_state``, ``kb_alarm_history``, migration
010), shared by every serving replica and the CLI (monitoring/alarms.py decides;
this module only stores). Read-modify-write under a transaction-scoped advisory
lock, so two evaluators never interleave."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from psycopg import Connection
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from sealedkb.store.db import Database

__all__ = ["AlarmRows", "AlarmSnapshot"]

_STATE_LOCK = 0x5EA1ED_0A1A  # pg_advisory_xact_lock key for alarm read-modify-write

AlarmSnapshot = tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]


class AlarmRows:
    def __init__(self, db: Database, history_kept: int = 1000) -> None:
        self.db = db
        self.history_kept = history_kept

    def _read(self, conn: Connection[TupleRow]) -> AlarmSnapshot:
        records = {
            str(r[0]): r[1]
            for r in conn.execute("SELECT name, record FROM kb_alarm_state").fetchall()
            if isinstance(r[1], dict)
        }
        history = [
            r[0]
            for r in conn.execute(
                "SELECT change FROM (SELECT id, change FROM kb_alarm_history"
                " ORDER BY id DESC LIMIT %s) h ORDER BY id",
                (self.history_kept,),
            ).fetchall()
            if isinstance(r[0], dict)
        ]
        return records, history

    def load(self) -> AlarmSnapshot:
        with self.db.transaction("alarm state") as conn:
            return self._read(conn)

    @contextlib.contextmanager
    def locked(self) -> Iterator[tuple[AlarmSnapshot, Connection[TupleRow]]]:
        with self.db.transaction("alarm state") as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_STATE_LOCK,))
            yield self._read(conn), conn

    def write(
        self,
        conn: Connection[TupleRow],
        records: dict[str, dict[str, Any]],
        new_history: list[dict[str, Any]],
    ) -> None:
        for name, record in records.items():
            conn.execute(
                "INSERT INTO kb_alarm_state (name, record) VALUES (%s, %s)"
                " ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record, updated_at = now()",
                (name, Jsonb(record)),
            )
        for change in new_history:
            conn.execute(
                "INSERT INTO kb_alarm_history (alarm, change) VALUES (%s, %s)",
                (str(change.get("alarm", "")), Jsonb(change)),
            )
        if new_history:
            conn.execute(
                "DELETE FROM kb_alarm_history WHERE id <= (SELECT id FROM kb_alarm_history"
                " ORDER BY id DESC OFFSET %s LIMIT 1)",
                (self.history_kept,),
            )
