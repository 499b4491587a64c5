"""The restore drill: create -> restore into a scratch database -> verify -> drop,
each step timed (docs/DESIGN.md §6: drills monthly in production)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sealedkb.errors import SealedKBError
from sealedkb.snapshots.base import DRILL, SnapshotContext, ms, require_encrypted
from sealedkb.snapshots.create import SnapshotCreator
from sealedkb.snapshots.delete import delete
from sealedkb.snapshots.restore import SnapshotRestorer
from sealedkb.snapshots.results import DrillReport, DrillStep
from sealedkb.snapshots.verify import verify

T = TypeVar("T")


def drill(
    ctx: SnapshotContext,
    creator: SnapshotCreator,
    restorer: SnapshotRestorer,
    *,
    snapshot: str | None = None,
    keep: bool = False,
) -> DrillReport:
    """create -> restore into a scratch database -> verify -> drop, each step timed.
    With ``snapshot``, drills that one instead of creating one. The drill's own
    snapshot is deleted afterwards unless ``keep``."""
    _, kms_key_uri = require_encrypted(creator.database)
    scratch = f"sealedkb_drill_{os.urandom(4).hex()}"
    steps: list[DrillStep] = []
    details: dict[str, Any] = {"snapshot_id": snapshot, "kind": None}
    created: str | None = None
    started = time.perf_counter()

    def step(name: str, fn: Callable[[], T]) -> T:
        t0 = time.perf_counter()
        result = fn()
        steps.append({"step": name, "seconds": round(time.perf_counter() - t0, 3)})
        return result

    try:
        if snapshot is None:
            info = step("create", lambda: creator.create(name="drill"))
            created = info.id
        else:
            info = ctx.folder.info(ctx.folder.resolve(snapshot))
        details.update({"snapshot_id": info.id, "kind": info.kind})
        restored = step("restore", lambda: restorer.restore(info.id, scratch))
        verified = step("verify", lambda: verify(ctx, info.id))
        step("drop", lambda: restorer.drop(scratch))
    except SealedKBError as exc:
        restorer.drop(scratch)  # a failed drill keeps its snapshot, for investigation
        ctx.record_error(DRILL, exc, kms_key_uri, details)
        raise
    if created is not None and not keep:
        delete(ctx, created, reason="drill")
    total = time.perf_counter() - started
    ctx.record(
        DRILL,
        kms_key_uri,
        {**details, **{f"{s['step']}_ms": ms(s["seconds"]) for s in steps}},
    )
    return {
        "ok": True,
        "snapshot_id": info.id,
        "kind": info.kind,
        "kept": created is None or keep,
        "scratch_database": scratch,
        "steps": steps,
        "seconds": round(total, 3),
        "row_counts": restored["row_counts"],
        "entries_opened": restored["entries_opened"],
        "verify_mb_per_s": verified["mb_per_s"],
        "size_bytes": info.size_bytes,
    }
