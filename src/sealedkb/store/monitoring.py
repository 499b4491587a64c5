"""Read-only SQL behind metrics and alarms (monitoring/metrics.py, monitoring/alarms.py).

Each query is a single index lookup or a small aggregate, so a scrape or an
alarm tick stays cheap. Nothing here returns entry content or ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sealedkb.store.db import Database

SNAPSHOT_ACTION = "CreateSnapshot"
AUTOMATED = "automated"


@dataclass(frozen=True)
class SnapshotEvent:
    time: datetime
    details: dict[str, Any]


class MonitoringQueries:
    def __init__(self, db: Database) -> None:
        self.db = db

    def namespace_counts(self, limit: int) -> tuple[list[tuple[str, int]], int]:
        """Live entries of the ``limit`` largest namespaces, and the sum of the rest
        (metrics keep label cardinality bounded)."""
        with self.db.transaction("metrics") as conn:
            rows = conn.execute(
                "SELECT namespace, count(*) FROM kb_entries WHERE deleted_at IS NULL"
                " GROUP BY namespace ORDER BY count(*) DESC, namespace"
            ).fetchall()
        top = [(str(r[0]), int(r[1])) for r in rows[:limit]]
        return top, sum(int(r[1]) for r in rows[limit:])

    def newest_automated_snapshot(self) -> SnapshotEvent | None:
        """The newest successful automated snapshot, as the snapshot work records it in
        the audit trail: action CreateSnapshot, outcome success, details.kind automated
        (the interface agreed with the snapshots issue)."""
        with self.db.transaction("metrics") as conn:
            r = conn.execute(
                "SELECT time, details FROM kb_audit WHERE action = %s AND outcome = 'success'"
                " AND details->>'kind' = %s ORDER BY time DESC LIMIT 1",
                (SNAPSHOT_ACTION, AUTOMATED),
            ).fetchone()
        if r is None:
            return None
        return SnapshotEvent(r[0], r[1] if isinstance(r[1], dict) else {})

    def first_event_time(self) -> datetime | None:
        """When the audit trail began (``init``): the knowledge base's age."""
        with self.db.transaction("metrics") as conn:
            r = conn.execute("SELECT time FROM kb_audit ORDER BY seq LIMIT 1").fetchone()
        return r[0] if r else None

    def event_time(self, seq: int) -> datetime | None:
        with self.db.transaction("metrics") as conn:
            r = conn.execute("SELECT time FROM kb_audit WHERE seq = %s", (seq,)).fetchone()
        return r[0] if r else None
