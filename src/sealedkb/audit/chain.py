"""The tamper-evident audit trail (docs/DESIGN.md §5; formats in docs/FORMATS.md §11-12).

Every key operation and administrative action, success or failure, appends one
event to ``kb_audit``: who (principal), what (action), on which key and
namespace, the outcome and error code, the request it belongs to, and a few
non-secret details (ids, counts, dates). Never plaintext, never key material.

Integrity, in two layers:

- **Hash chain.** ``hash = SHA-256(prev_hash || canonical_json(event))``. Changing,
  deleting or reordering a row breaks the chain at that row. The chain is
  unkeyed, so anyone can check it, and so anyone with SQL write access could
  rebuild it after an edit. Hence:
- **Signed checkpoints** outside the database, ``$SEALEDKB_HOME/audit/
  checkpoint-<seq>.json`` (0600): the head's sequence number and hash and the
  time, MACed with the key provider's audit key. A rewritten chain no longer
  matches the checkpoint; deleting the newest events leaves the chain shorter
  than the checkpoint (truncation). Checkpoints are written after each CLI
  command that appended events and at least every 60 s by a serving process
  (lifecycle.Housekeeper).
- **The checkpoint record** ``checkpoint-head.json`` beside them: the highest
  checkpointed sequence number and its hash, MACed under the same key (another
  label), written atomically and only ever raised. Deleting the newest checkpoint
  files together with the events they vouch for no longer passes: the record
  still vouches for the deleted events (and names the missing checkpoint).

Where an event is written: in the same database transaction as the change it
records (``AuditLog.transaction``). Key-store file changes have no database
transaction of their own, so they happen *inside* the transaction that then
appends their event; see keys/lifecycle.py for the remaining window.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from psycopg import Connection
from psycopg.rows import TupleRow

from sealedkb._fs import file_lock, fsync_dir, write_private
from sealedkb.crypto.digest import GENESIS, canonical_json, chain_hash, mac_equal
from sealedkb.errors import AccessDeniedError, SealedKBError, ValidationError
from sealedkb.store.audit import AuditRow, AuditTable
from sealedkb.store.db import Database

log = logging.getLogger("sealedkb.audit")

CHECKPOINT_FORMAT = 1
CHECKPOINT_LABEL = b"sealedkb/audit-checkpoint/v1\x00"
CHECKPOINTS_KEPT = 100
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d{20})\.json$")
# The highest checkpointed (seq, hash), beside the checkpoints; its own label, so
# a checkpoint file is never taken for it.
HEAD_RECORD_NAME = "checkpoint-head.json"
HEAD_RECORD_LABEL = b"sealedkb/audit-checkpoint-head/v1\x00"
_HEAD_LOCK_NAME = "checkpoint-head.lock"
OUTCOMES = ("success", "failure", "denied")
_DETAIL_VALUE = (str, int, bool, type(None))


class MacKey(Protocol):
    """What checkpoints need from the key provider (its audit key never leaves it)."""

    def generate_mac(self, message: bytes) -> bytes: ...

    def verify_mac(self, message: bytes, mac: bytes) -> bool: ...


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def event_body(row: AuditRow) -> dict[str, Any]:
    """The hashed part of an event: every column except the two hashes."""
    return {
        "seq": row.seq,
        "time": _utc(row.time).isoformat(),
        "principal": row.principal,
        "action": row.action,
        "key_uri": row.key_uri,
        "namespace": row.namespace,
        "outcome": row.outcome,
        "error_code": row.error_code,
        "request_id": row.request_id,
        "details": row.details,
    }


def event_dict(row: AuditRow) -> dict[str, Any]:
    return {**event_body(row), "prev_hash": row.prev_hash.hex(), "hash": row.hash.hex()}


def _check_details(details: dict[str, Any]) -> dict[str, Any]:
    """Details are flat ids, counts, dates and flags: nothing that could carry
    entry text or key material, and nothing jsonb would not round-trip exactly."""
    for k, v in details.items():
        if not isinstance(k, str) or not isinstance(v, _DETAIL_VALUE):
            raise TypeError(f"audit detail {k!r} must be a str, int, bool or None")
    return details


@dataclass
class VerifyReport:
    ok: bool = True
    events: int = 0
    head_seq: int = 0
    head_hash: str | None = None
    checkpoint_seq: int | None = None
    checkpoint_time: str | None = None
    checkpoints: int = 0
    first_bad_seq: int | None = None
    # changed | missing | truncated | checkpoint-mismatch | checkpoint-missing
    problem: str | None = None
    message: str = "audit trail intact"
    warnings: list[str] = field(default_factory=list)

    def fail(self, seq: int, problem: str, message: str) -> None:
        if self.first_bad_seq is None or seq < self.first_bad_seq:
            self.ok = False
            self.first_bad_seq = seq
            self.problem = problem
            self.message = message

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "checkpoint_seq": self.checkpoint_seq,
            "checkpoint_time": self.checkpoint_time,
            "checkpoints": self.checkpoints,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
            "message": self.message,
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: bytes
    time: str
    path: Path
    authentic: bool


def _checkpoint_name(seq: int) -> str:
    return f"checkpoint-{seq:020d}.json"


class CheckpointSink(Protocol):
    """A write-once archive of signed checkpoints (audit/s3.py)."""

    def store(self, name: str, body: bytes) -> bool: ...


class AuditLog:
    def __init__(
        self,
        db: Database,
        *,
        principal: str,
        request_id: str | None = None,
        checkpoint_dir: Path,
        mac_key: MacKey | None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.table = AuditTable(db)
        self.db = db
        self.principal = principal
        self.request_id = request_id or str(uuid.uuid4())
        self.checkpoint_dir = checkpoint_dir
        self.mac_key = mac_key
        self._now = now or (lambda: datetime.now(UTC))
        self.appended = 0  # events this process appended since its last checkpoint
        # Where each new checkpoint is also archived, write-once (audit/s3.py): set by
        # the wiring when SEALEDKB_AUDIT_CHECKPOINT_BUCKET is configured.
        self.archive: CheckpointSink | None = None

    # --- appending -----------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, action: str = "audited change") -> Iterator[Connection[TupleRow]]:
        """A database transaction that holds the audit lock from its first statement;
        append its events with :meth:`append` before it commits."""
        with self.db.transaction(action) as conn:
            AuditTable.lock(conn)
            yield conn

    def append(
        self,
        conn: Connection[TupleRow],
        action: str,
        *,
        outcome: str = "success",
        key_uri: str | None = None,
        namespace: str | None = None,
        error_code: str | None = None,
        details: dict[str, Any] | None = None,
        principal: str | None = None,
    ) -> int:
        """Append one event in the caller's transaction (opened with
        :meth:`transaction`, so the lock is held). Returns its sequence number."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        AuditTable.lock(conn)  # re-entrant within a transaction; cheap
        head = AuditTable.head_in(conn)
        seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
        # Microseconds, UTC: what timestamptz stores, so the hash re-computes exactly.
        row = AuditRow(
            seq=seq,
            time=_utc(self._now()),
            principal=principal or self.principal,
            action=action,
            key_uri=key_uri,
            namespace=namespace,
            outcome=outcome,
            error_code=error_code,
            request_id=self.request_id,
            details=_check_details(dict(details or {})),
            prev_hash=prev,
            hash=b"",
        )
        digest = chain_hash(prev, event_body(row))
        AuditTable.insert(conn, dataclasses.replace(row, hash=digest))
        self.appended += 1
        return seq

    def record(self, action: str, **kw: Any) -> int:
        """Append one event in a transaction of its own (for operations that change
        nothing in the database: a denied or failed call, an unwrap)."""
        with self.transaction("audit append") as conn:
            return self.append(conn, action, **kw)

    def record_error(self, action: str, exc: SealedKBError, **kw: Any) -> None:
        """Record a failed or denied operation. Never masks the original error: if the
        event cannot be written, that is logged and the caller re-raises ``exc``."""
        outcome = "denied" if isinstance(exc, AccessDeniedError) else "failure"
        try:
            self.record(action, outcome=outcome, error_code=exc.code, **kw)
        except SealedKBError as audit_exc:
            log.error("could not record a failed %s in the audit trail: %s", action, audit_exc)

    # --- reading -------------------------------------------------------------

    def events(
        self,
        *,
        since: datetime | None = None,
        action: str | None = None,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[dict[str, Any]]:
        if not 1 <= limit <= 10000:
            raise ValidationError("limit must be between 1 and 10000", field="limit")
        rows = self.table.list(since=since, action=action, limit=limit, newest_first=newest_first)
        return [event_dict(r) for r in rows]

    def head(self) -> dict[str, Any]:
        """The chain head and the newest checkpoint (not MAC-checked: status works
        without keys); the checkpoint record counts when it is ahead of the files, so
        a deleted newest checkpoint still shows as truncation of the head."""
        head = self.table.head()
        record = self._head_record(verify=False)
        latest = self._checkpoints(verify=False)[-1:]
        if record is not None and record.seq > (latest[0].seq if latest else 0):
            latest = [record]
        return {
            "head_seq": head[0] if head else 0,
            "head_hash": head[1].hex() if head else None,
            "last_checkpoint_seq": latest[0].seq if latest else None,
            "last_checkpoint_time": latest[0].time if latest else None,
        }

    # --- checkpoints ---------------------------------------------------------

    @staticmethod
    def _checkpoint_message(body: dict[str, Any]) -> bytes:
        return CHECKPOINT_LABEL + canonical_json(body)

    def checkpoint(self) -> Path | None:
        """Write a signed checkpoint of the current head (if it moved). Returns the
        file, or None when there is nothing new or no audit key (plaintext mode)."""
        if self.mac_key is None:
            return None
        head = self.table.head()
        if head is None:
            return None
        seq, digest = head
        path = self.checkpoint_dir / _checkpoint_name(seq)
        if path.exists():
            self._raise_head_record(seq, digest)  # a record older than this, or none yet
            self.appended = 0
            return None
        body = {
            "format": CHECKPOINT_FORMAT,
            "seq": seq,
            "hash": digest.hex(),
            "time": _utc(self._now()).isoformat(),
        }
        mac = self.mac_key.generate_mac(self._checkpoint_message(body))
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        signed = canonical_json({**body, "mac": base64.b64encode(mac).decode()})
        write_private(path, signed)
        if self.archive is not None:
            try:
                self.archive.store(path.name, signed)
            except SealedKBError as exc:
                log.warning("audit checkpoint not archived: %s", exc.message)
        self._raise_head_record(seq, digest)  # after the file: record <= newest checkpoint
        self.appended = 0
        self._prune()
        return path

    @staticmethod
    def _head_record_message(body: dict[str, Any]) -> bytes:
        return HEAD_RECORD_LABEL + canonical_json(body)

    def _raise_head_record(self, seq: int, digest: bytes) -> None:
        """Raise the checkpoint record to ``seq`` (never lower it, never replace one
        that is not authentic: verify reports that until an operator looks)."""
        assert self.mac_key is not None
        with file_lock(self.checkpoint_dir / _HEAD_LOCK_NAME):
            current = self._head_record()
            if current is not None and (not current.authentic or current.seq >= seq):
                if not current.authentic:
                    log.warning("audit checkpoint record is not authentic; left as it is")
                return
            body = {
                "format": CHECKPOINT_FORMAT,
                "seq": seq,
                "hash": digest.hex(),
                "time": _utc(self._now()).isoformat(),
            }
            mac = self.mac_key.generate_mac(self._head_record_message(body))
            write_private(
                self.checkpoint_dir / HEAD_RECORD_NAME,
                canonical_json({**body, "mac": base64.b64encode(mac).decode()}),
            )

    def _head_record(self, *, verify: bool = True) -> Checkpoint | None:
        """The checkpoint record, None if there is none (plaintext mode, a chain never
        checkpointed, or a home from before the record existed)."""
        path = self.checkpoint_dir / HEAD_RECORD_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError:
            return Checkpoint(0, b"", "", path, False)
        try:
            doc = json.loads(raw)
            body = {k: doc[k] for k in ("format", "seq", "hash", "time")}
            mac = base64.b64decode(doc["mac"], validate=True)
            seq, digest = int(body["seq"]), bytes.fromhex(body["hash"])
        except (ValueError, KeyError, TypeError):
            return Checkpoint(0, b"", "", path, False)
        authentic = verify and (
            self.mac_key is not None
            and body["format"] == CHECKPOINT_FORMAT
            and seq >= 1
            and self.mac_key.verify_mac(self._head_record_message(body), mac)
        )
        return Checkpoint(seq, digest, str(body["time"]), path, authentic)

    def checkpoint_quietly(self) -> None:
        """Checkpoint at the end of a command; a failure (e.g. keys unavailable) must
        not turn a finished command into an error, so it is logged instead."""
        try:
            self.checkpoint()
        except (SealedKBError, OSError) as exc:
            msg = exc.message if isinstance(exc, SealedKBError) else type(exc).__name__
            log.warning("audit checkpoint not written: %s", msg)

    def archive_checkpoints(self, folder: Path) -> int:
        """Move every checkpoint file and the checkpoint record into ``folder`` (a
        custody change: they are signed by a MAC key this knowledge base no longer
        uses; kept for the record, no longer verified). Returns how many moved."""
        if not self.checkpoint_dir.exists():
            return 0
        with file_lock(self.checkpoint_dir / _HEAD_LOCK_NAME):
            names = [
                p
                for p in self.checkpoint_dir.iterdir()
                if _CHECKPOINT_RE.match(p.name) or p.name == HEAD_RECORD_NAME
            ]
            if not names:
                return 0
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            for path in names:
                path.replace(folder / path.name)
            fsync_dir(self.checkpoint_dir)
        return len(names)

    def _prune(self) -> None:
        """Keep the newest checkpoints: the newest one covers the whole chain before
        it (the hash is cumulative), older ones only narrow down where a rewrite began."""
        files = sorted(p for p in self.checkpoint_dir.iterdir() if _CHECKPOINT_RE.match(p.name))
        for old in files[:-CHECKPOINTS_KEPT]:
            with contextlib.suppress(OSError):
                old.unlink()

    def _checkpoints(self, *, verify: bool = True) -> list[Checkpoint]:
        """Every checkpoint file, oldest first, with whether its MAC verifies
        (``verify=False``: not checked, for status, which must work without keys)."""
        out: list[Checkpoint] = []
        if not self.checkpoint_dir.exists():
            return out
        for path in sorted(self.checkpoint_dir.iterdir()):
            m = _CHECKPOINT_RE.match(path.name)
            if not m:
                continue
            try:
                doc = json.loads(path.read_bytes())
                body = {k: doc[k] for k in ("format", "seq", "hash", "time")}
                mac = base64.b64decode(doc["mac"], validate=True)
                seq, digest = int(body["seq"]), bytes.fromhex(body["hash"])
            except (OSError, ValueError, KeyError, TypeError):
                out.append(Checkpoint(int(m.group(1)), b"", "", path, False))
                continue
            authentic = verify and (
                self.mac_key is not None
                and seq == int(m.group(1))
                and self.mac_key.verify_mac(self._checkpoint_message(body), mac)
            )
            out.append(Checkpoint(seq, digest, str(body["time"]), path, authentic))
        return out

    # --- verification ---------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Walk the chain from seq 1 and compare it with the checkpoints.

        Reports the *first* bad sequence number and what is wrong with it:
        ``changed`` (an event's content, order or hash differs from what the chain
        says), ``missing`` (a sequence number is absent), ``truncated`` (the newest
        events before a checkpoint are gone), ``checkpoint-mismatch`` (the chain up
        to a checkpoint was rewritten, or a checkpoint file or the checkpoint record is
        not authentic), ``checkpoint-missing`` (the checkpoint the record names is gone).
        The record is read first: a checkpoint written meanwhile is then newer than it."""
        report = VerifyReport()
        record: Checkpoint | None = None
        if self.mac_key is None:
            report.warnings.append(
                "no audit key (plaintext mode): checkpoints are neither written nor checked"
            )
            checkpoints: list[Checkpoint] = []
        else:
            record = self._head_record()  # KeyUnavailableError if the key is not there
            checkpoints = self._checkpoints()
        report.checkpoints = len(checkpoints)
        wanted = {c.seq for c in checkpoints}
        if record is not None and record.authentic:
            wanted.add(record.seq)
        seen: dict[int, bytes] = {}
        expected, prev = 1, GENESIS
        for row in self.table.scan():
            if row.seq != expected:
                report.fail(
                    expected,
                    "missing",
                    f"event {expected} is missing"
                    + (f" (events {expected}-{row.seq - 1})" if row.seq - 1 > expected else ""),
                )
                break
            digest = chain_hash(prev, event_body(row))
            if row.prev_hash != prev or row.hash != digest:
                report.fail(row.seq, "changed", f"event {row.seq} was changed, moved or reordered")
                break
            if row.seq in wanted:
                seen[row.seq] = digest
            report.events += 1
            report.head_seq, report.head_hash = row.seq, digest.hex()
            expected, prev = row.seq + 1, digest
        if not checkpoints and record is None:
            if self.mac_key is not None:
                report.warnings.append(
                    "no checkpoint found: deletion of the newest events cannot be detected"
                )
            return report
        good_upto = self._check_checkpoints(report, checkpoints, seen)
        if record is None:
            report.warnings.append(
                f"no checkpoint record ({HEAD_RECORD_NAME}) yet: it is written with the "
                "next checkpoint"
            )
        else:
            self._check_head_record(report, record, checkpoints, seen, good_upto)
        return report

    @staticmethod
    def _check_checkpoints(
        report: VerifyReport, checkpoints: list[Checkpoint], seen: dict[int, bytes]
    ) -> int:
        """Compare the chain with every checkpoint file; returns the newest checkpointed
        sequence up to which the chain matches."""
        if not checkpoints:
            return 0
        latest = checkpoints[-1]
        report.checkpoint_seq, report.checkpoint_time = latest.seq, latest.time or None
        # Narrow a rewrite down to after the newest checkpoint that still matches.
        good_upto = 0
        for cp in checkpoints:
            if not cp.authentic:
                report.fail(
                    good_upto + 1,
                    "checkpoint-mismatch",
                    f"checkpoint file {cp.path.name} is not authentic (edited, or written "
                    "under another key)",
                )
                break
            if cp.seq > report.head_seq and report.ok:
                report.fail(
                    report.head_seq + 1,
                    "truncated",
                    f"the chain ends at event {report.head_seq}, but checkpoint "
                    f"{cp.path.name} vouches for events up to {cp.seq}: the newest events "
                    "were deleted",
                )
                break
            if cp.seq in seen:
                if not mac_equal(seen[cp.seq], cp.hash):
                    report.fail(
                        good_upto + 1,
                        "checkpoint-mismatch",
                        f"events up to {cp.seq} do not match checkpoint {cp.path.name}: the "
                        f"chain was rewritten after event {good_upto}",
                    )
                    break
                good_upto = cp.seq
        return good_upto

    @staticmethod
    def _check_head_record(
        report: VerifyReport,
        record: Checkpoint,
        checkpoints: list[Checkpoint],
        seen: dict[int, bytes],
        good_upto: int,
    ) -> None:
        """The chain reaches the highest checkpointed sequence with the same hash, and
        the checkpoint at that sequence is still there."""
        if not record.authentic:
            report.fail(
                good_upto + 1,
                "checkpoint-mismatch",
                f"the checkpoint record {HEAD_RECORD_NAME} is not authentic (edited, or "
                "written under another key)",
            )
            return
        name = _checkpoint_name(record.seq)
        # (a newer checkpoint covers it too: the hash is cumulative)
        present = any(c.seq >= record.seq and c.authentic for c in checkpoints)
        if record.seq > report.head_seq:
            missing = f"; checkpoint {name} is missing too" if not present else ""
            report.fail(
                report.head_seq + 1,
                "truncated",
                f"the chain ends at event {report.head_seq}, but the checkpoint record "
                f"{HEAD_RECORD_NAME} vouches for events up to {record.seq} (checkpoint "
                f"{name}): events {report.head_seq + 1}-{record.seq} were deleted{missing}",
            )
            return
        if record.seq in seen and not mac_equal(seen[record.seq], record.hash):
            report.fail(
                good_upto + 1,
                "checkpoint-mismatch",
                f"events up to {record.seq} do not match the checkpoint record "
                f"{HEAD_RECORD_NAME}: the chain was rewritten after event {good_upto}",
            )
            return
        if not present:
            report.fail(
                record.seq,
                "checkpoint-missing",
                f"checkpoint {name} is missing: the checkpoint record {HEAD_RECORD_NAME} "
                f"says events up to {record.seq} were checkpointed there",
            )


def parse_since(value: str) -> datetime:
    """An ISO 8601 date or time (UTC if no offset), or a relative age: 30m, 12h, 7d."""
    from datetime import timedelta

    m = re.fullmatch(r"(\d{1,6})([smhd])", value.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: int(m.group(1))})
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError(
            "--since must be an ISO 8601 date/time (2025-01-31, 2025-01-31T12:00:00Z) "
            "or an age like 30m, 12h, 7d",
            field="since",
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
