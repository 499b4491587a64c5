"""The typed results of a migration: its progress marker (kb_meta ``migration``) and
the plan, run, verify and rollback reports. TypedDicts, so the CLI prints them as JSON
with the same keys in the same order as they are built here."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class ScrubSummary(TypedDict):
    """What the scrub after an in-place switch did (store/migration_sql.scrub)."""

    vacuumed: list[str]
    checkpoints: int
    wal_switches: int
    wal_recycle_off: bool
    notes: list[str]


class Marker(TypedDict, total=False):
    """Progress of the current or last migration, JSON in kb_meta ``migration``.
    Read back from the database, so every key may be missing."""

    version: int
    kind: str  # in-place | foreign
    state: str  # guard.PREPARING ... guard.ROLLED_BACK
    key_uri: str | None
    started_at: str
    after: Any  # checkpoint: the last copied key (a UUID string, or a foreign key)
    rows_copied: int
    rollback_snapshot: str | None
    bulk_done: bool
    indexes_built: bool
    switched_at: str
    rows: int
    switch_rows_caught_up: int
    downtime_ms: float
    finished_at: str
    scrub: ScrubSummary
    rolled_back_at: str
    # foreign
    source_id: str
    mapping: dict[str, str]
    key_type: str


# "catch-up+switch" is no identifier: the functional syntax.
EstimateBreakdownSeconds = TypedDict(
    "EstimateBreakdownSeconds",
    {
        "snapshot": float,
        "seal": float,
        "write": float,
        "indexes": float,
        "catch-up+switch": float,
        "scrub": float,
    },
)


class Estimate(TypedDict):
    estimate_seconds: float
    estimate_breakdown_seconds: EstimateBreakdownSeconds
    expected_downtime_ms: int
    downtime_note: str


class PlanSource(TypedDict, total=False):
    database: str  # in place: where the knowledge base lives (embedded, url)
    table: str
    key_type: str  # foreign: type of the source's id column


class PlanReport(TypedDict):
    """``migrate plan``: what a run would do, and how long it would take."""

    kind: str
    source: PlanSource
    mapping: NotRequired[dict[str, str]]  # foreign
    rows: int
    plaintext_rows: NotRequired[int]  # in place
    bytes: int
    resume: NotRequired[Marker | None]  # in place: the migration a run would resume
    invalid_rows: NotRequired[list[str]]  # foreign: reasons of the first failures
    reembed: NotRequired[bool]  # foreign
    sample_rows: int
    seal_ms_per_row: float
    estimate_seconds: float
    estimate_breakdown_seconds: EstimateBreakdownSeconds
    expected_downtime_ms: int
    downtime_note: str
    steps: list[str]
    rollback_point: str


class RunReport(TypedDict):
    """``migrate run``: where the migration ended."""

    kind: str | None
    state: str | None
    kms_key_id: str | None
    rollback_snapshot: str | None
    rows: int | None
    rows_copied: int | None
    downtime_ms: float | None
    scrub: ScrubSummary | None
    seconds: float


class VerifyReport(TypedDict):
    """``migrate verify``: every migrated entry opened and compared with its source."""

    ok: bool
    kind: str | None
    state: str | None
    entries_checked: int
    mismatched: int
    missing: int
    source_rows: int | None
    storage_encrypted: bool
    entries_plaintext: int
    kms_key_id: str | None
    scrub: ScrubSummary | None
    problems: list[str]


class RollbackReport(TypedDict):
    """``migrate rollback``: the snapshot restored (None before the switch)."""

    kind: str
    restored_snapshot: str | None
    state: str
    row_counts: NotRequired[dict[str, int] | None]
    seconds: float
    note: NotRequired[str]


def run_report(marker: Marker, seconds: float) -> RunReport:
    return {
        "kind": marker.get("kind"),
        "state": marker.get("state"),
        "kms_key_id": marker.get("key_uri"),
        "rollback_snapshot": marker.get("rollback_snapshot"),
        "rows": marker.get("rows", marker.get("rows_copied")),
        "rows_copied": marker.get("rows_copied"),
        "downtime_ms": marker.get("downtime_ms"),
        "scrub": marker.get("scrub"),
        "seconds": round(seconds, 2),
    }
