"""``migrate verify``: every migrated row opens and equals its source (keyed digests
recorded when it was sealed, sealedkb_mig_rows); no plaintext row is left; the switch
and the scrub happened (in place)."""

from __future__ import annotations

import uuid

from sealedkb.config import Settings
from sealedkb.errors import NotFoundError
from sealedkb.migrate.common import ProgressFn
from sealedkb.migrate.foreign import ForeignSource, verify_source
from sealedkb.migrate.guard import COMPLETE, read_marker
from sealedkb.migrate.host import KnowledgeBases, OpenKnowledgeBase
from sealedkb.migrate.reports import VerifyReport
from sealedkb.migrate.sealing import entry_digest
from sealedkb.store import migration_sql as msql
from sealedkb.store.db import mapped_errors


def verify(
    host: KnowledgeBases, settings: Settings, source: ForeignSource | None, progress: ProgressFn
) -> VerifyReport:
    """Check the last migration of the knowledge base at ``settings`` (with ``source``,
    a foreign one is also compared with the source table, re-read)."""
    with mapped_errors("migration verify"):
        kb = host.open(settings)
    try:
        with kb.db.transaction("migration verify") as conn:
            marker = read_marker(conn)
        if marker is None:
            raise NotFoundError("no migration has run in this knowledge base", field="migration")
        problems: list[str] = []
        if marker.get("state") != COMPLETE:
            problems.append(f"the migration is not complete (state {marker.get('state')})")
        checked, mismatched, missing = _verify_digests(
            kb, in_place=marker.get("kind") == "in-place", progress=progress
        )
        if mismatched:
            problems.append(f"{mismatched} entries differ from their source")
        if missing:
            problems.append(f"{missing} migrated entries are missing")
        status = host.storage(kb)
        if not status["storage_encrypted"]:
            problems.append("status says storage_encrypted: false")
        if status["entries_plaintext"]:
            problems.append(f"{status['entries_plaintext']} plaintext entries remain")
        source_rows = None
        if source is not None or marker.get("kind") == "foreign":
            if source is None:  # without --from: count the recorded rows
                with kb.db.transaction("migration verify") as conn:
                    source_rows, src_mismatch = msql.count_digests(conn), 0
            else:
                source_rows, src_mismatch = verify_source(kb, source)
            if source_rows != checked:
                problems.append(f"the source holds {source_rows} rows, {checked} were migrated")
            if src_mismatch:
                problems.append(f"{src_mismatch} source rows differ from their entries")
        elif marker.get("rows") is not None and marker["rows"] != checked:
            problems.append(f"{marker['rows']} rows were switched, {checked} have digests")
        scrub = marker.get("scrub")
        if marker.get("kind") == "in-place" and scrub and scrub.get("notes"):
            problems.extend(scrub["notes"])
        return {
            "ok": not problems,
            "kind": marker.get("kind"),
            "state": marker.get("state"),
            "entries_checked": checked,
            "mismatched": mismatched,
            "missing": missing,
            "source_rows": source_rows,
            "storage_encrypted": status["storage_encrypted"],
            "entries_plaintext": status["entries_plaintext"],
            "kms_key_id": status["kms_key_id"],
            "scrub": scrub or None,
            "problems": problems,
        }
    finally:
        kb.close()


def _verify_digests(
    kb: OpenKnowledgeBase, *, in_place: bool, progress: ProgressFn
) -> tuple[int, int, int]:
    """(digests checked, entries that differ, entries missing)."""
    checked = mismatched = missing = 0
    after: uuid.UUID | None = None
    while True:
        with kb.db.transaction("migration verify") as conn:
            batch = msql.digests_after(conn, after, 1000)
        if not batch:
            break
        for eid, _key, digest in batch:
            checked += 1
            row = kb.entries.get(eid, include_deleted=True)
            if row is None:
                missing += 1
                continue
            if entry_digest(kb, row, in_place=in_place) != digest:
                mismatched += 1
        after = batch[-1][0]
        progress("verify", checked, checked)
    return checked, mismatched, missing
