"""Deleting snapshots, by hand or by the retention of automated ones; audited."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sealedkb.errors import SealedKBError
from sealedkb.snapshots.base import DELETE, SnapshotContext, log
from sealedkb.snapshots.results import DeleteResult


def delete(ctx: SnapshotContext, ref: str, *, reason: str | None = None) -> DeleteResult:
    path = ctx.folder.resolve(ref)
    info = ctx.folder.info(path)
    details: dict[str, Any] = {"snapshot_id": info.id, "kind": info.kind}
    if reason:
        details["reason"] = reason
    key_uri = info.kms_key_id
    try:
        ctx.folder.remove(path, info.id)
    except SealedKBError as exc:
        ctx.record_error(DELETE, exc, key_uri, details)
        raise
    ctx.record(DELETE, key_uri, details)
    return {"id": info.id, "kind": info.kind, "deleted": True, "path": str(path)}


def expire(ctx: SnapshotContext, retention_days: int) -> list[str]:
    """Delete automated snapshots older than ``retention_days`` (manual ones stay)."""
    cutoff = ctx.now() - timedelta(days=retention_days)
    gone = []
    for info in ctx.folder.expired(cutoff):
        try:
            delete(ctx, info.id, reason="retention")
            gone.append(info.id)
        except SealedKBError as exc:
            log.error("expired snapshot %s not deleted: %s", info.id, exc.message)
    return gone
