"""Alarm state and history rows (``kb_alarm_state``, ``kb_alarm_history``, migrations
010 and 011), shared by every serving replica and the CLI (monitoring/alarms.py decides
and computes each row's MAC; this module only stores, and never sees a key).
Read-modify-write under a transaction-scoped advisory lock, so two evaluators never
interleave."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from psycopg import Connection
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from sealedkb.store.db import Database

__all__ = ["AlarmRows", "AlarmSnapshot", "StoredChange", "StoredState"]

_STATE_LOCK = 0x5EA1ED_0A1A  # pg_advisory_xact_lock key for alarm read-modify-write


@dataclass(frozen=True)
class StoredState:
    """One ``kb_alarm_state`` row: the alarm's record and its MAC (None: none stored)."""

    record: dict[str, Any]
    mac: bytes | None


@dataclass(frozen=True)
class StoredChange:
    """One ``kb_alarm_history`` row: a state change and its MAC."""

    change: dict[str, Any]
    mac: bytes | None


AlarmSnapshot = tuple[dict[str, StoredState], list[StoredChange]]


def _mac(value: Any) -> bytes | None:
    return bytes(value) if value is not None else None


class AlarmRows:
    def __init__(self, db: Database, history_kept: int = 1000) -> None:
        self.db = db
        self.history_kept = history_kept

    def _read(self, conn: Connection[TupleRow]) -> AlarmSnapshot:
        records = {
            str(r[0]): StoredState(r[1], _mac(r[2]))
            for r in conn.execute("SELECT name, record, mac FROM kb_alarm_state").fetchall()
            if isinstance(r[1], dict)
        }
        history = [
            StoredChange(r[0], _mac(r[1]))
            for r in conn.execute(
                "SELECT change, mac FROM (SELECT id, change, mac FROM kb_alarm_history"
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
        records: dict[str, StoredState],
        new_history: list[StoredChange],
    ) -> None:
        for name, row in records.items():
            conn.execute(
                "INSERT INTO kb_alarm_state (name, record, mac) VALUES (%s, %s, %s)"
                " ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record,"
                " mac = EXCLUDED.mac, updated_at = now()",
                (name, Jsonb(row.record), row.mac),
            )
        for item in new_history:
            conn.execute(
                "INSERT INTO kb_alarm_history (alarm, change, mac) VALUES (%s, %s, %s)",
                (str(item.change.get("alarm", "")), Jsonb(item.change), item.mac),
            )
        if new_history:
            conn.execute(
                "DELETE FROM kb_alarm_history WHERE id <= (SELECT id FROM kb_alarm_history"
                " ORDER BY id DESC OFFSET %s LIMIT 1)",
                (self.history_kept,),
            )
