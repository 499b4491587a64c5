"""Audit checkpoints archived in an S3 bucket (``SEALEDKB_AUDIT_CHECKPOINT_BUCKET``),
written once and, when the bucket has S3 Object Lock, kept under COMPLIANCE
retention (``SEALEDKB_AUDIT_CHECKPOINT_RETENTION_DAYS``): nobody, the bucket owner
included, can delete or replace the stored version before it expires, so a
database writer who also holds the serving host cannot rewrite the checkpoints
that vouch for the audit chain.

The archive is a copy written after the checkpoint file (audit/chain.py); a failed
upload is logged, never fails the command (like a failed checkpoint).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sealedkb.objectstore import Bucket, ObjectStoreError

__all__ = ["CheckpointArchive"]

log = logging.getLogger("sealedkb.audit")


class CheckpointArchive:
    def __init__(self, bucket: Bucket, retention_days: int) -> None:
        self.bucket = bucket
        self.retention = timedelta(days=retention_days)
        self._locked: bool | None = None

    @property
    def object_lock(self) -> bool:
        """Whether the bucket has Object Lock (asked once)."""
        if self._locked is None:
            self._locked = self.bucket.object_lock_enabled()
        return self._locked

    def store(self, name: str, body: bytes) -> bool:
        """Write ``name`` once (never over an existing object); True if written."""
        retain = datetime.now(UTC) + self.retention if self.object_lock else None
        try:
            self.bucket.put(name, body, retain_until=retain, if_none_match=True)
        except ObjectStoreError as exc:
            if exc.reason == "exists":
                log.info("audit checkpoint %s is already archived", name)
                return False
            raise
        return True
