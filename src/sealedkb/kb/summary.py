"""The auditor summary of ``sealedkb status`` (runbook §24).

One short list of checks that answers an auditor's questions in one screen:
is storage encrypted, which KMS key and in what state, is it rotated, where
are the data keys, are any entries plaintext, are the snapshots encrypted,
is the audit chain intact, how is the database reached. Each check is::

    {"check": <stable id>, "ok": true | false | null, "value": <short text>,
     "detail": {<machine facts>}}

``ok``: ``true`` OK, ``false`` FAIL (a fact that is wrong), ``null`` WARN (not
applicable, degraded, or could not be established here). ``summary_ok`` is true
only when every check is ``true``. Runbook: docs/ENCRYPTION-KEY-MANAGEMENT.md §24.

Built from :meth:`KnowledgeBase.status` (so nothing is queried twice) plus a
header-only read of the snapshot folder and :meth:`AuditLog.verify`. It lives
here, not in kb/knowledge_base.py, because kb/snapshotting.py imports that module.

Never in here: entry text, key material, SQL. Values are ids, counts, states,
dates and fixed phrases; error texts are the errors' own messages, which are
written to be shown.

Extension point: other features add checks with :func:`register_check` (or a
caller passes ``extra_checks``); e.g. the plaintext-to-encrypted migration
reports its state as a ``migration`` check. A check function receives the
knowledge base and its status dict and returns a :class:`Check`, or ``None``
to show nothing (e.g. no migration ever ran).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from sealedkb.audit.chain import AuditLog, VerifyReport
from sealedkb.errors import SealedKBError
from sealedkb.keys.provider import keystore_of
from sealedkb.store.tls import ACCEPTED_PROTOCOLS

if TYPE_CHECKING:
    from sealedkb.config import Settings
    from sealedkb.kb.knowledge_base import KnowledgeBase

# Full audit-chain verification walks every event (about 45k events/s on a
# 2-core VM, embedded PostgreSQL). Up to this many events status verifies the
# whole chain (~2-5 s at most); beyond, it checks only the head against the
# newest checkpoint and says so (``sealedkb audit verify`` walks it all).
AUDIT_VERIFY_MAX_EVENTS = 100_000
# What a snapshot header must say for the file to count as encrypted.
SNAPSHOT_CIPHER = "AES-256-GCM STREAM"
# Rotation this late is overdue (the schedule runs at every open and in ``serve``,
# so an overdue rotation means the scheduled one failed).
ROTATION_GRACE_DAYS = 1


@dataclass(frozen=True)
class Check:
    check: str
    ok: bool | None
    value: str
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return {True: "OK", False: "FAIL", None: "WARN"}[self.ok]

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "ok": self.ok, "value": self.value, "detail": self.detail}


ExtraCheck = Callable[["KnowledgeBase", Mapping[str, Any]], Check | None]
_REGISTERED: list[ExtraCheck] = []


def register_check(fn: ExtraCheck) -> ExtraCheck:
    """Add a check to every summary (after the built-in ones); usable as a decorator."""
    if fn not in _REGISTERED:
        _REGISTERED.append(fn)
    return fn


def summary_ok(checks: Sequence[Check]) -> bool:
    return all(c.ok is True for c in checks)


def summary_json(checks: Sequence[Check]) -> dict[str, Any]:
    """The keys ``status --json`` gains: ``summary`` and ``summary_ok``."""
    return {"summary": [c.to_dict() for c in checks], "summary_ok": summary_ok(checks)}


def build_summary(
    kb: KnowledgeBase,
    settings: Settings | None = None,
    *,
    status: Mapping[str, Any] | None = None,
    extra_checks: Sequence[ExtraCheck] | None = None,
    audit_verify_max: int | None = AUDIT_VERIFY_MAX_EVENTS,
    now: datetime | None = None,
) -> list[Check]:
    """The auditor summary of ``kb``. ``status``: the result of ``kb.status()`` when
    the caller has it already. ``audit_verify_max``: verify the whole audit chain
    only up to this many events (None: always). ``extra_checks``: appended after the
    built-in checks (default: those registered with :func:`register_check`)."""
    settings = settings or kb.settings
    st = status if status is not None else kb.status()
    when = now or datetime.now(UTC)
    builders: list[Callable[[], Check]] = [
        lambda: _storage(st),
        lambda: _kms_key(kb, st),
        lambda: _rotation(kb, st, when),
        lambda: _data_keys(st),
        lambda: _entries(st),
        lambda: _snapshots(kb, settings),
        lambda: _audit_chain(kb, settings, audit_verify_max),
        lambda: _transport(kb, st),
        lambda: _search_index(st),
    ]
    checks: list[Check] = []
    for name, build in zip(CHECK_IDS, builders, strict=True):
        checks.append(_guard(name, build) or Check(name, None, "not checked"))
    for fn in _REGISTERED if extra_checks is None else extra_checks:
        extra = _guard(getattr(fn, "__name__", "extra"), partial(fn, kb, st))
        if extra is not None:
            checks.append(extra)
    return checks


CHECK_IDS = (
    "storage_encrypted",
    "kms_key",
    "rotation",
    "data_keys",
    "entries",
    "snapshots",
    "audit_chain",
    "transport",
    "search_index",
)


def _guard(name: str, build: Callable[[], Check | None]) -> Check | None:
    """A check that cannot be established is a WARN naming the error, not a crash."""
    try:
        return build()
    except SealedKBError as exc:
        return Check(name, None, f"not checked: {exc.message}", {"error": exc.code})


# --- the checks -------------------------------------------------------------------


def _storage(st: Mapping[str, Any]) -> Check:
    detail = {
        "encryption_mode": st["encryption_mode"],
        "encryption_scheme": st["encryption_scheme"],
        "entries_plaintext": st["entries_plaintext"],
    }
    if st["encryption_mode"] != "on":
        return Check("storage_encrypted", False, "no: encryption is off (plaintext mode)", detail)
    if st["entries_plaintext"]:
        return Check(
            "storage_encrypted",
            False,
            f"no: {st['entries_plaintext']} plaintext entries remain",
            detail,
        )
    return Check("storage_encrypted", True, "yes: AES-256-GCM envelope, 0 plaintext", detail)


def _kms_key(kb: KnowledgeBase, st: Mapping[str, Any]) -> Check:
    key_id, state = st["kms_key_id"], st["key_state"]
    keystore = keystore_of(kb.provider) if kb.provider is not None else None
    custody = keystore.warnings() if keystore is not None else []
    detail = {
        "kms_key_id": key_id,
        "key_state": state,
        "key_provider": st["key_provider"],
        "root_key_source": st["root_key_source"],
        "availability": st["availability"],
        "development_root_key": bool(custody),
    }
    if key_id is None:
        return Check("kms_key", False, "none: encryption is off", detail)
    if state != "Enabled":
        return Check("kms_key", False, f"{key_id} {state}", detail)
    if st["availability"] != "available":
        return Check("kms_key", False, f"{key_id} Enabled, but keys do not unwrap", detail)
    if custody:
        return Check("kms_key", None, f"{key_id} Enabled; development root key", detail)
    return Check("kms_key", True, f"{key_id} Enabled", detail)


def _last_rotation(kb: KnowledgeBase, key_id: str) -> str | None:
    """Time of the newest successful RotateKey of ``key_id`` in the audit trail."""
    for event in kb.audit.events(action="RotateKey", newest_first=True, limit=100):
        if event["outcome"] == "success" and event["key_uri"] == key_id:
            return str(event["time"])
    return None


def _rotation(kb: KnowledgeBase, st: Mapping[str, Any], now: datetime) -> Check:
    rot = st.get("key_rotation")
    if st["kms_key_id"] is None:
        return Check("rotation", None, "n/a: no KMS key (encryption is off)", {})
    if rot is None:
        return Check("rotation", None, "unknown: the KMS key cannot be described", {})
    last = _last_rotation(kb, st["kms_key_id"])
    detail = {
        "enabled": rot["enabled"],
        "period_days": rot["period_days"],
        "versions": rot["versions"],
        "last_rotation": last,
        "next_rotation_date": rot["next_rotation_date"],
    }
    last_text = f"last {last[:10]}" if last else "never rotated"
    if not rot["enabled"]:
        return Check("rotation", None, f"automatic rotation off; {last_text}", detail)
    nxt = rot["next_rotation_date"]
    if nxt is not None:
        due = datetime.fromisoformat(nxt)
        if (now - due).days >= ROTATION_GRACE_DAYS:
            return Check("rotation", None, f"overdue since {nxt[:10]}; {last_text}", detail)
    return Check(
        "rotation",
        True,
        f"every {rot['period_days']} d; {last_text}, next {(nxt or '-')[:10]}",
        detail,
    )


def _data_keys(st: Mapping[str, Any]) -> Check:
    dk = st["data_keys"]
    newest = st.get("data_keys_on_newest_key_version")
    by_key = st.get("entries_by_data_key") or {}
    detail = {
        "total": dk.get("total", 0),
        "active": dk.get("active", 0),
        "retired": dk.get("retired", 0),
        "kms_keys": dk.get("kms_keys", 0),
        "on_newest_key_version": newest,
        "entries_on_active_keys": by_key.get("on_active_keys"),
        "entries_on_retired_keys": by_key.get("on_retired_keys"),
        "entries_on_unknown_keys": by_key.get("on_unknown_keys"),
    }
    if st["kms_key_id"] is None:
        return Check("data_keys", None, "n/a: encryption is off", detail)
    counts = f"{detail['active']} active, {detail['retired']} retired"
    if by_key.get("on_unknown_keys"):
        return Check(
            "data_keys",
            False,
            f"{counts}; {by_key['on_unknown_keys']} entries name a missing data key",
            detail,
        )
    if newest is None:
        return Check("data_keys", None, f"{counts}; key versions unknown", detail)
    if detail["kms_keys"] > 1:
        return Check("data_keys", None, f"{counts}; under {detail['kms_keys']} KMS keys", detail)
    if newest < detail["total"]:
        return Check(
            "data_keys",
            None,
            f"{counts}; {detail['total'] - newest} not on newest key version (re-wrap pending)",
            detail,
        )
    return Check("data_keys", True, f"{counts}; all on newest key version", detail)


def _entries(st: Mapping[str, Any]) -> Check:
    detail = {
        "total": st["entries_total"],
        "sealed": st["entries_sealed"],
        "plaintext": st["entries_plaintext"],
        "namespaces": st["namespaces"],
    }
    value = f"{st['entries_sealed']} sealed, {st['entries_plaintext']} plaintext"
    return Check("entries", st["entries_plaintext"] == 0, value, detail)


def _snapshots(kb: KnowledgeBase, settings: Settings) -> Check:
    """Header-only: whether each file *says* it is encrypted, under which KMS key.
    No keys are used, so the header is not authenticated here: that, and the
    chunks, are ``sealedkb snapshot verify``'s job."""
    from sealedkb.kb.snapshotting import snapshots_for  # it imports knowledge_base

    infos = snapshots_for(settings, kb).list()
    key_ids: set[str] = set()
    damaged: list[str] = []
    unencrypted: list[str] = []
    for info in infos:
        if info.error is not None:
            damaged.append(info.id)
            continue
        h = info.header
        key = h.get("kms_key_id")
        if (
            h.get("encryption_mode") == "on"
            and h.get("cipher") == SNAPSHOT_CIPHER
            and isinstance(key, str)
            and key
            and h.get("wrapped_key")
        ):
            key_ids.add(key)
        else:
            unencrypted.append(info.id)
    encrypted = len(infos) - len(damaged) - len(unencrypted)
    detail: dict[str, Any] = {
        "folder": str(settings.snapshots_dir),
        "count": len(infos),
        "encrypted": encrypted,
        "damaged": damaged,
        "not_encrypted": unencrypted,
        "kms_key_ids": sorted(key_ids),
        "checked": "header only (no keys); authenticity: sealedkb snapshot verify",
    }
    keys = f"{len(key_ids)} KMS key" + ("" if len(key_ids) == 1 else "s")
    if damaged or unencrypted:
        bad = []
        if damaged:
            bad.append(f"{len(damaged)} unreadable")
        if unencrypted:
            bad.append(f"{len(unencrypted)} not encrypted")
        return Check("snapshots", False, f"{len(infos)}: {', '.join(bad)}", detail)
    if not infos:
        why = "encryption is off" if kb.provider is None else "no backup"
        return Check("snapshots", None, f"none ({why})", detail)
    return Check("snapshots", True, f"{len(infos)}, all encrypted, {keys}", detail)


def _audit_chain(kb: KnowledgeBase, settings: Settings, verify_max: int | None) -> Check:
    head = kb.audit.head()
    head_seq = int(head["head_seq"])
    if verify_max is not None and head_seq > verify_max:
        return _audit_head_only(head, verify_max)
    keys_note: str | None = None
    try:
        report = kb.audit.verify()
    except SealedKBError as exc:
        # The checkpoint MACs need the audit key; the chain itself does not.
        keys_note = f"checkpoints not checked: {exc.message}"
        chain_only = AuditLog(
            kb.db, principal=kb.principal, checkpoint_dir=settings.audit_dir, mac_key=None
        )
        report = chain_only.verify()
        report.warnings = [keys_note]
    return _audit_report(report, plaintext=kb.provider is None, keys_note=keys_note)


def _audit_report(report: VerifyReport, *, plaintext: bool, keys_note: str | None) -> Check:
    detail = {
        "coverage": "full chain" + ("" if plaintext or keys_note else " and checkpoints"),
        "events_checked": report.events,
        "head_seq": report.head_seq,
        "head_hash": report.head_hash,
        "checkpoint_seq": report.checkpoint_seq,
        "checkpoint_time": report.checkpoint_time,
        "checkpoints": report.checkpoints,
        "first_bad_seq": report.first_bad_seq,
        "problem": report.problem,
        "warnings": report.warnings,
    }
    if not report.ok:
        return Check("audit_chain", False, f"broken: {report.message}", detail)
    value = f"intact: {report.events} events"
    if report.checkpoint_seq is not None and not keys_note:
        value += f", signed checkpoint at {report.checkpoint_seq}"
    if plaintext:
        return Check("audit_chain", None, value + "; no signed checkpoints (plaintext)", detail)
    if keys_note:
        return Check("audit_chain", None, value + "; checkpoints not checked (keys)", detail)
    if report.warnings:  # no checkpoint yet
        return Check("audit_chain", None, value + "; no signed checkpoint yet", detail)
    return Check("audit_chain", True, value, detail)


def _audit_head_only(head: dict[str, Any], verify_max: int) -> Check:
    """A trail too long to walk here: compare its head with the newest checkpoint
    (catches truncation before that checkpoint); say the rest was not checked."""
    head_seq, cp_seq = int(head["head_seq"]), head["last_checkpoint_seq"]
    detail = {
        "coverage": "head only (trail longer than the status limit)",
        "events_checked": 0,
        "verify_limit": verify_max,
        "head_seq": head_seq,
        "head_hash": head["head_hash"],
        "checkpoint_seq": cp_seq,
        "checkpoint_time": head["last_checkpoint_time"],
        "first_bad_seq": None,
        "problem": None,
        "warnings": ["run `sealedkb audit verify` to walk the whole chain"],
    }
    if cp_seq is not None and cp_seq > head_seq:
        detail.update(first_bad_seq=head_seq + 1, problem="truncated")
        return Check(
            "audit_chain",
            False,
            f"truncated: chain ends at {head_seq}, checkpoint vouches for {cp_seq}",
            detail,
        )
    return Check(
        "audit_chain",
        None,
        f"{head_seq} events: too long to verify here; run sealedkb audit verify",
        detail,
    )


def _transport(kb: KnowledgeBase, st: Mapping[str, Any]) -> Check:
    dbi = st["database"]
    t = kb.target.transport
    kind, proto = dbi["transport"], dbi.get("tls_protocol")
    detail = {
        "kind": kind,
        "database": dbi["kind"],
        "sslmode": t.sslmode,
        "tls_protocol": proto,
        "tls_cipher": dbi.get("tls_cipher"),
    }
    if proto is not None and proto not in ACCEPTED_PROTOCOLS:
        return Check("transport", False, f"{proto}: older than TLS 1.2", detail)
    if kind == "unix-socket":
        return Check("transport", True, "Unix socket (local, TLS not needed)", detail)
    if kind == "loopback":
        return Check("transport", True, "loopback TCP (local traffic only)", detail)
    if kind == "tls":
        if proto is None:
            return Check("transport", False, "verify-full configured, no TLS session", detail)
        cipher = dbi.get("tls_cipher") or "cipher unknown"
        return Check("transport", True, f"tls ({proto}, {cipher}) verified", detail)
    if kind == "insecure-tcp":
        return Check(
            "transport",
            None,
            f"NOT verified TLS ({proto or 'no TLS'}): insecure opt-out in effect",
            detail,
        )
    return Check("transport", None, f"unknown transport {kind}", detail)


def _search_index(st: Mapping[str, Any]) -> Check:
    """Where the search index lives and, for the server index, what it leaks (one
    line; docs/SEARCH.md has the analysis). A switch under way is a WARN."""
    index = st["search_index"]
    detail = dict(index)
    mode = index["mode"]
    switching = index.get("migration") or {}
    if switching and switching.get("state") != "complete":
        return Check(
            "search_index",
            None,
            f"{mode}, switching to {switching.get('to')} (sealedkb migrate index)",
            detail,
        )
    if st["encryption_mode"] != "on":
        return Check("search_index", None, "server: plaintext, indexed by PostgreSQL", detail)
    if mode == "memory":
        return Check("search_index", True, "memory: no searchable column in PostgreSQL", detail)
    return Check(
        "search_index",
        True,
        "server: leaks shared words/tags/content, distances (docs/SEARCH.md)",
        detail,
    )


@register_check
def migration(kb: KnowledgeBase, st: Mapping[str, Any]) -> Check | None:
    """State of the plaintext-to-encrypted migration (migrate/migrator.py), if one ever ran:
    OK when complete, WARN while it runs or after a rollback."""
    from sealedkb.migrate.guard import COMPLETE, MARKER, parse_marker

    marker = parse_marker(kb.meta.get(MARKER))
    if marker is None:
        return None
    state = str(marker.get("state"))
    detail = {
        k: marker.get(k)
        for k in ("kind", "state", "rollback_snapshot", "rows", "downtime_ms", "finished_at")
    }
    scrub = marker.get("scrub")
    detail["wal_retired"] = bool(scrub and scrub.get("wal_recycle_off"))
    value = f"{marker.get('kind')} {state}"
    if marker.get("rollback_snapshot") and state == COMPLETE:
        value += f", rollback point {marker['rollback_snapshot']}"
    return Check("migration", True if state == COMPLETE else None, value, detail)
