"""Encrypted snapshots (docs/DESIGN.md §6; format: docs/SNAPSHOT-FORMAT.md; runbook:
docs/ENCRYPTION-KEY-MANAGEMENT.md §23): create, list, verify, restore, copy under
another key, delete, drill, and the automated daily snapshot with its retention.

A snapshot is a logical copy of every sealedkb table (COPY, so it does not
depend on the server's major version), zstd-compressed and sealed in STREAM
chunks under a fresh snapshot data key that the KMS key wraps, with the
snapshot id bound into the wrap as encryption context. Entries are already
sealed in the database, so a snapshot holds them sealed twice; the keystore
(``keys/`` and the root key) is all a restore needs besides the file.

Modules: ``fileformat`` (the bytes), ``store`` (the folder: naming, listing,
atomic writes, retention), ``base`` (what every operation shares), ``create``,
``verify``, ``restore``, ``copy`` (rekey), ``delete``, ``drill``, ``schedule``
(automated snapshots), ``results`` (typed answers), ``facade`` (:class:`Snapshots`).

Every operation appends an audit event (``CreateSnapshot``, ``VerifySnapshot``,
``RestoreSnapshot``, ``CopySnapshot``, ``DeleteSnapshot``, ``DrillSnapshot``)
with ``details`` holding at least ``snapshot_id`` and ``kind``; the SnapshotStale
alarm reads the newest successful ``CreateSnapshot`` whose kind is ``automated``.
"""

from sealedkb.snapshots.base import (
    COPY,
    CREATE,
    DELETE,
    DRILL,
    RESTORE,
    VERIFY,
    DatabaseServer,
    LiveDatabase,
    SnapshotSettings,
)
from sealedkb.snapshots.facade import Snapshots
from sealedkb.snapshots.fileformat import SnapshotIntegrityError
from sealedkb.snapshots.results import (
    DeleteResult,
    DrillReport,
    DrillStep,
    LoadReport,
    RestoreReport,
    SnapshotDescription,
    SnapshotSummary,
    TableReport,
    VerifyReport,
)
from sealedkb.snapshots.schedule import DailyWindow, SnapshotScheduler
from sealedkb.snapshots.store import SnapshotFolder, SnapshotInfo, SnapshotStorageError

__all__ = [
    "COPY",
    "CREATE",
    "DELETE",
    "DRILL",
    "RESTORE",
    "VERIFY",
    "DailyWindow",
    "DatabaseServer",
    "DeleteResult",
    "DrillReport",
    "DrillStep",
    "LiveDatabase",
    "LoadReport",
    "RestoreReport",
    "SnapshotDescription",
    "SnapshotFolder",
    "SnapshotInfo",
    "SnapshotIntegrityError",
    "SnapshotScheduler",
    "SnapshotSettings",
    "SnapshotStorageError",
    "SnapshotSummary",
    "Snapshots",
    "TableReport",
    "VerifyReport",
]
