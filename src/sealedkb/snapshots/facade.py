"""The :class:`Snapshots` facade: one object for the operations of one snapshot
folder, built from narrow pieces (settings values, the key provider, the audit
trail, the live database, the server restores go to)."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from psycopg import Connection
from psycopg.rows import TupleRow

from sealedkb.audit.chain import AuditLog
from sealedkb.crypto.stream import DEFAULT_CHUNK_SIZE, SnapshotKeys
from sealedkb.keys.provider import KeyProvider
from sealedkb.snapshots.base import (
    DatabaseServer,
    LiveDatabase,
    SnapshotContext,
    SnapshotSettings,
)
from sealedkb.snapshots.copy import copy as copy_snapshot
from sealedkb.snapshots.create import SnapshotCreator
from sealedkb.snapshots.delete import delete as delete_snapshot
from sealedkb.snapshots.delete import expire as expire_snapshots
from sealedkb.snapshots.drill import drill as run_drill
from sealedkb.snapshots.fileformat import Envelope
from sealedkb.snapshots.restore import RESTORE_SAMPLE, SnapshotRestorer
from sealedkb.snapshots.results import (
    DeleteResult,
    DrillReport,
    LoadReport,
    RestoreReport,
    SnapshotDescription,
    VerifyReport,
)
from sealedkb.snapshots.store import SnapshotFolder, SnapshotInfo, SnapshotLocation
from sealedkb.snapshots.verify import verify as verify_snapshot


class Snapshots:
    """Snapshot operations for one folder.

    ``database`` is the live knowledge base: the source of ``create`` and ``drill``.
    ``audit`` is the trail every operation is recorded in, ``provider`` the key
    provider acting for its principal (or ``open_keystore`` opens one on first
    use). The operations other than create and drill also work with neither
    database nor audit trail (disaster recovery: the database is gone, the keystore
    and the snapshot files are not); they are then recorded only in a restored
    database's own trail.
    """

    def __init__(
        self,
        settings: SnapshotSettings,
        server: DatabaseServer,
        *,
        database: LiveDatabase | None = None,
        provider: KeyProvider | None = None,
        open_keystore: Callable[[], KeyProvider] | None = None,
        audit: AuditLog | None = None,
        now: Callable[[], datetime] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self._ctx = SnapshotContext(
            settings,
            provider=provider,
            open_keystore=open_keystore,
            audit=audit,
            now=now,
            chunk_size=chunk_size,
        )
        self._creator = SnapshotCreator(self._ctx, database)
        self._restorer = SnapshotRestorer(self._ctx, server)

    @property
    def store(self) -> SnapshotFolder:
        return self._ctx.folder

    @property
    def folder(self) -> Path:
        return self._ctx.folder.path

    @property
    def audit(self) -> AuditLog | None:
        return self._ctx.audit

    # --- the folder -----------------------------------------------------------------

    def list(self) -> builtins.list[SnapshotInfo]:
        """Every complete snapshot file in the folder, oldest first (no keys needed)."""
        return self._ctx.folder.list()

    def resolve(self, ref: str) -> SnapshotLocation:
        """A snapshot file from its id or its (unique) name."""
        return self._ctx.folder.resolve(ref)

    def info(self, ref: str) -> SnapshotInfo:
        return self._ctx.folder.info(self._ctx.folder.resolve(ref))

    def describe(self, ref: str) -> SnapshotDescription:
        """Everything the header and trailer say (not authenticated: that is verify)."""
        return self.info(ref).describe()

    def unwrap(self, env: Envelope) -> SnapshotKeys:
        """The keys of a snapshot (one KMS call), for reading it."""
        return self._ctx.unwrap(env)

    # --- operations -------------------------------------------------------------------

    def create(self, *, name: str | None = None, kind: str = "manual") -> SnapshotInfo:
        return self._creator.create(name=name, kind=kind)

    def create_rollback_point(self, kms_key_uri: str, *, name: str) -> SnapshotInfo:
        return self._creator.create_rollback_point(kms_key_uri, name=name)

    def verify(self, ref: str) -> VerifyReport:
        return verify_snapshot(self._ctx, ref)

    def restore(self, ref: str, target: str, *, sample: int = RESTORE_SAMPLE) -> RestoreReport:
        return self._restorer.restore(ref, target, sample=sample)

    def restore_over(
        self,
        ref: str,
        url: str,
        *,
        keep: frozenset[str] = frozenset({"kb_audit"}),
        after_load: Callable[[Connection[TupleRow]], None] | None = None,
        sample: int = RESTORE_SAMPLE,
    ) -> LoadReport:
        return self._restorer.restore_over(
            ref, url, keep=keep, after_load=after_load, sample=sample
        )

    def copy(self, ref: str, kms_key_id: str) -> SnapshotInfo:
        return copy_snapshot(self._ctx, ref, kms_key_id)

    def delete(self, ref: str, *, reason: str | None = None) -> DeleteResult:
        return delete_snapshot(self._ctx, ref, reason=reason)

    def expire(self, retention_days: int) -> builtins.list[str]:
        """Delete automated snapshots older than ``retention_days`` (manual ones stay)."""
        return expire_snapshots(self._ctx, retention_days)

    def drill(self, *, snapshot: str | None = None, keep: bool = False) -> DrillReport:
        return run_drill(self._ctx, self._creator, self._restorer, snapshot=snapshot, keep=keep)
