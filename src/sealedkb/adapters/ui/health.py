"""What the console's health page shows administrators, gathered in one call.

The auditor summary (kb/summary.py), the KMS key's state and rotation, the data
keys, every alarm with its recent history, the last audit events (of the
namespaces the administrator may see, and of none) and the snapshots. Ids,
counts, states, dates and fixed phrases only: no entry text, no key material.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sealedkb.errors import SealedKBError
from sealedkb.kb.access import Principal
from sealedkb.kb.knowledge_base import KnowledgeBase

__all__ = ["HealthView", "VerifyOutcome", "health_view", "verify_audit", "verify_snapshot"]

AUDIT_EVENTS = 20
ALARM_HISTORY = 20


@dataclass(frozen=True)
class CheckRow:
    check: str
    label: str  # OK, FAIL or WARN
    value: str


@dataclass(frozen=True)
class AlarmRow:
    name: str
    state: str
    reason: str
    since: str | None
    enabled: bool


@dataclass(frozen=True)
class AlarmChange:
    time: str
    alarm: str
    previous_state: str
    state: str
    reason: str


@dataclass(frozen=True)
class AuditRow:
    seq: int
    time: str
    principal: str
    action: str
    namespace: str | None
    outcome: str
    error_code: str | None


@dataclass(frozen=True)
class SnapshotRow:
    id: str
    kind: str | None
    created_at: str | None
    size_bytes: int
    error: str | None


@dataclass(frozen=True)
class HealthView:
    availability: str
    summary_ok: bool
    checks: tuple[CheckRow, ...]
    kms_key_id: str | None
    key_state: str | None
    key_provider: str | None
    rotation: tuple[tuple[str, str], ...]
    data_keys: tuple[tuple[str, str], ...]
    alarms: tuple[AlarmRow, ...]
    alarm_history: tuple[AlarmChange, ...]
    audit: tuple[AuditRow, ...]
    snapshots: tuple[SnapshotRow, ...]
    snapshots_error: str | None


@dataclass(frozen=True)
class VerifyOutcome:
    what: str
    ok: bool
    message: str


def _pairs(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        return ()
    return tuple((str(k), str(v)) for k, v in value.items() if not isinstance(v, Mapping))


def health_view(kb: KnowledgeBase, principal: Principal) -> HealthView:
    from sealedkb.kb.snapshotting import snapshots_for
    from sealedkb.kb.summary import AUDIT_VERIFY_MAX_EVENTS, build_summary, summary_ok
    from sealedkb.monitoring import alarms

    st = kb.status()
    checks = build_summary(kb, status=st, audit_verify_max=AUDIT_VERIFY_MAX_EVENTS)
    store = alarms.TableAlarmStore.of(kb)
    specs = alarms.load_specs(kb.settings.alarms)
    alarm_rows = tuple(
        AlarmRow(
            str(a["name"]),
            str(a["state"]),
            str(a.get("reason") or ""),
            a.get("since"),
            bool(a.get("enabled", True)),
        )
        for a in alarms.list_alarms(specs, store, kb.settings.alarm_runbook_base)
    )
    changes = tuple(
        AlarmChange(
            str(h.get("time", "")),
            str(h.get("alarm", "")),
            str(h.get("previous_state", "")),
            str(h.get("state", "")),
            str(h.get("reason", "")),
        )
        for h in alarms.history(store, limit=ALARM_HISTORY)
    )
    events = kb.audit.events(limit=AUDIT_EVENTS, newest_first=True)
    audit_rows = tuple(
        AuditRow(
            int(e["seq"]),
            str(e["time"]),
            str(e["principal"]),
            str(e["action"]),
            e.get("namespace"),
            str(e["outcome"]),
            e.get("error_code"),
        )
        for e in events
        if e.get("namespace") is None or principal.sees(str(e["namespace"]))
    )
    snapshot_rows: tuple[SnapshotRow, ...] = ()
    snapshots_error = None
    try:
        snapshot_rows = tuple(
            SnapshotRow(
                s.id,
                s.kind,
                s.created_at.isoformat() if s.created_at else None,
                s.size_bytes,
                s.error,
            )
            for s in snapshots_for(kb.settings, kb).list()
        )
    except SealedKBError as exc:
        snapshots_error = f"{exc.code}: {exc.message}"
    return HealthView(
        availability=str(st["availability"]),
        summary_ok=summary_ok(checks),
        checks=tuple(CheckRow(c.check, c.label, c.value) for c in checks),
        kms_key_id=st["kms_key_id"],
        key_state=st["key_state"],
        key_provider=st["key_provider"],
        rotation=_pairs(st.get("key_rotation")),
        data_keys=_pairs(st.get("data_keys")),
        alarms=alarm_rows,
        alarm_history=changes,
        audit=audit_rows,
        snapshots=snapshot_rows,
        snapshots_error=snapshots_error,
    )


def verify_audit(kb: KnowledgeBase) -> VerifyOutcome:
    try:
        report = kb.audit.verify()
    except SealedKBError as exc:
        return VerifyOutcome("audit trail", False, f"{exc.code}: {exc.message}")
    text = f"{report.message} ({report.events} events, head {report.head_seq})"
    return VerifyOutcome("audit trail", report.ok, text)


def verify_snapshot(kb: KnowledgeBase, ref: str) -> VerifyOutcome:
    from sealedkb.kb.snapshotting import snapshots_for

    try:
        report = snapshots_for(kb.settings, kb).verify(ref)
    except SealedKBError as exc:
        return VerifyOutcome(f"snapshot {ref}", False, f"{exc.code}: {exc.message}")
    text = f"{report['chunks']} chunks, {len(report['tables'])} tables checked"
    return VerifyOutcome(f"snapshot {report['id']}", bool(report["ok"]), text)
