"""What snapshot operations answer: typed, so the CLI's ``--json`` and every other
caller read the same keys (the JSON is these dicts as they are)."""

from __future__ import annotations

from typing import Any, TypedDict


class SnapshotSummary(TypedDict):
    """A snapshot as ``list`` and ``create`` show it (header and trailer read, not verified)."""

    id: str
    name: str | None
    encrypted: bool
    kms_key_id: str | None
    kms_key_version: int | None
    created_at: str | None
    kind: str | None
    size_bytes: int
    row_counts: dict[str, int | None]
    path: str
    schema_version: int | None
    source_fingerprint: str | None
    copied_from: str | None
    damaged: bool
    error: str | None


class SnapshotDescription(SnapshotSummary, total=False):
    """``describe``: the summary plus the whole manifest (absent for a damaged file)."""

    manifest: dict[str, Any]  # the header as written, with its trailer under "trailer"
    chunks: int


class TableReport(TypedDict):
    rows: int | None
    sha256: str
    ok: bool


class VerifyReport(TypedDict):
    ok: bool
    chunks: int
    tables: dict[str, TableReport]
    id: str
    kind: str
    kms_key_id: str
    size_bytes: int
    seconds: float
    read_seconds: float
    mb_per_s: float | None  # throughput of reading and checking (after the key unwrap)


class LoadReport(TypedDict):
    """A snapshot loaded into a database, rows re-checked and keys proven."""

    ok: bool
    row_counts: dict[str, int]
    data_keys_unwrapped: int
    entries_opened: int


class RestoreReport(LoadReport):
    id: str
    kind: str
    kms_key_id: str
    database: str
    url: str  # without a password
    created_database: bool
    seconds: float


class DeleteResult(TypedDict):
    id: str
    kind: str | None
    deleted: bool
    path: str


class DrillStep(TypedDict):
    step: str
    seconds: float


class DrillReport(TypedDict):
    ok: bool
    snapshot_id: str
    kind: str | None
    kept: bool
    scratch_database: str
    steps: list[DrillStep]
    seconds: float
    row_counts: dict[str, int]
    entries_opened: int
    verify_mb_per_s: float | None
    size_bytes: int
