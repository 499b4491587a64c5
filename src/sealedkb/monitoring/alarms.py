"""Built-in alarms on encryption health, evaluated like CloudWatch alarms.

An alarm watches one metric. Every ``period`` seconds of data make one
datapoint (a counter's increase over the period — statistic Sum — or the
largest sample of a gauge in the period — Maximum). The alarm looks at the last
``evaluation_periods`` datapoints and goes to ALARM when at least
``datapoints_to_alarm`` of them breach the threshold; missing datapoints are
treated as ``missing`` / ``breaching`` / ``notBreaching`` / ``ignore`` as in
CloudWatch. States are OK, ALARM and INSUFFICIENT_DATA; every state change is
kept in the history and logged, and changes into or out of ALARM are sent to
the webhook and command hook. Windows slide: ``serve`` evaluates every
``alarm_interval`` seconds (default 10), each time over the trailing periods,
so "any failure in a period" raises the alarm within one tick.

Where the data comes from (``scope``):

- ``process``: counters of the serving process (key-provider calls and their
  failures, refusals because of the key's state, integrity failures). Only the
  process that made the calls can evaluate these, so only ``serve`` does.
- ``shared``: facts anyone can read — availability (a fresh unwrap), the audit
  trail (chain, checkpoints, snapshot events). ``sealedkb alarms list
  --evaluate`` evaluates these on demand from the CLI.

State and history live in PostgreSQL (``kb_alarm_state``, ``kb_alarm_history``,
read-modify-write in one transaction under an advisory lock; :class:`TableAlarmStore`),
so ``alarms list`` and ``alarms history`` in another process, and every serving
replica, see what the evaluating replica decided, a restart does not repeat a
notification for an alarm that is still in ALARM, and a replica's home folder holds
none of it. In an encrypted knowledge base each row carries a MAC under the key
provider's audit key, so an SQL writer cannot forge or clear a state
(:class:`TableAlarmStore`). Alarm evaluation is a singleton job (``store/jobs.py``): one replica
evaluates at a time. :class:`AlarmStore` keeps the same in a file, for tools and
tests without a database.

KeyCallVolumeAnomaly is the one alarm with a learned threshold: the number of
key-provider calls in the current period must not exceed ``factor`` (2, i.e.
200%) times the mean of the previous ``baseline_periods`` (12) periods, and
never alarms below ``floor`` calls (near-zero traffic doubles easily). Until
``min_baseline_periods`` (3) earlier periods are known it is INSUFFICIENT_DATA.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealedkb._fs import file_lock, write_private
from sealedkb._periodic import PeriodicTask
from sealedkb.audit.chain import MacKey
from sealedkb.crypto.digest import canonical_json
from sealedkb.errors import ConfigError, DatabaseError, NotFoundError, SealedKBError
from sealedkb.kb.tokens import BoundedCache
from sealedkb.monitoring.notify import Notification, Notifier
from sealedkb.monitoring.telemetry import Telemetry
from sealedkb.store.alarm_state import AlarmRows, AlarmSnapshot, StoredChange, StoredState
from sealedkb.store.db import Database
from sealedkb.store.jobs import Leadership
from sealedkb.store.monitoring import MonitoringQueries

if TYPE_CHECKING:
    from sealedkb.config import Settings
    from sealedkb.kb.knowledge_base import KnowledgeBase

log = logging.getLogger("sealedkb.alarms")

OK = "OK"
ALARM = "ALARM"
INSUFFICIENT_DATA = "INSUFFICIENT_DATA"
STATES = (OK, ALARM, INSUFFICIENT_DATA)
MISSING_TREATMENTS = ("missing", "breaching", "notBreaching", "ignore")
STATE_FORMAT = 1
HISTORY_KEPT = 1000
SNAPSHOT_STALE_SECONDS = 26 * 3600


@dataclass(frozen=True)
class AlarmSpec:
    """One alarm's definition (defaults below; each field overridable in settings)."""

    name: str
    description: str
    metric: str
    scope: str  # process | shared
    period: float = 60.0
    evaluation_periods: int = 1
    datapoints_to_alarm: int = 1
    threshold: float = 0.0
    treat_missing_data: str = "missing"
    enabled: bool = True
    # KeyCallVolumeAnomaly only: threshold = max(factor * baseline mean, floor)
    anomaly: bool = False
    factor: float = 2.0
    floor: float = 50.0
    baseline_periods: int = 12
    min_baseline_periods: int = 3

    def runbook_url(self, base: str) -> str:
        return f"{base}#alarm-{self.name.lower()}"

    def to_dict(self, base: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "metric": self.metric,
            "statistic": METRICS[self.metric].statistic,
            "scope": self.scope,
            "period_seconds": self.period,
            "evaluation_periods": self.evaluation_periods,
            "datapoints_to_alarm": self.datapoints_to_alarm,
            "comparison": "GreaterThanThreshold",
            "threshold": self.threshold,
            "treat_missing_data": self.treat_missing_data,
            "enabled": self.enabled,
            "runbook_url": self.runbook_url(base),
        }
        if self.anomaly:
            out.update(
                threshold=None,
                baseline={
                    "factor": self.factor,
                    "floor": self.floor,
                    "periods": self.baseline_periods,
                    "min_periods": self.min_baseline_periods,
                },
            )
        return out


@dataclass(frozen=True)
class MetricDef:
    statistic: str  # Sum (counter increase) | Maximum (gauge)
    unit: str  # how a value reads in a reason


METRICS: dict[str, MetricDef] = {
    "key_provider_failures": MetricDef("Sum", "failed key-provider call(s)"),
    "key_provider_calls": MetricDef("Sum", "key-provider call(s)"),
    "key_refusals_pending_deletion": MetricDef(
        "Sum", "attempt(s) to use the KMS key while it is pending deletion"
    ),
    "key_refusals_disabled": MetricDef("Sum", "attempt(s) to use the disabled KMS key"),
    "integrity_failures": MetricDef("Sum", "sealed value(s) that failed to open"),
    "encryption_unavailable": MetricDef("Maximum", "unavailable (1) / available (0)"),
    "snapshot_age_seconds": MetricDef("Maximum", "seconds since the last automated snapshot"),
    "audit_chain_broken": MetricDef("Maximum", "broken (1) / intact (0)"),
    "audit_checkpoint_lag_seconds": MetricDef(
        "Maximum", "seconds the oldest event has waited for a signed checkpoint"
    ),
}

DEFAULT_ALARMS: tuple[AlarmSpec, ...] = (
    AlarmSpec(
        "KeyAccessFailures",
        "A key-provider call (unwrap, wrap, generate data key) failed.",
        "key_provider_failures",
        "process",
        treat_missing_data="notBreaching",
    ),
    AlarmSpec(
        "EncryptionCredentialsInaccessible",
        "The data keys cannot be unwrapped: the knowledge base is locked.",
        "encryption_unavailable",
        "shared",
    ),
    AlarmSpec(
        "KeyUsedWhilePendingDeletion",
        "Something tried to use the KMS key while it is scheduled for deletion.",
        "key_refusals_pending_deletion",
        "process",
        treat_missing_data="notBreaching",
    ),
    AlarmSpec(
        "KeyDisabled",
        "Something tried to use the KMS key while it is disabled.",
        "key_refusals_disabled",
        "process",
        treat_missing_data="notBreaching",
    ),
    AlarmSpec(
        "KeyCallVolumeAnomaly",
        "Key-provider calls in a period exceed twice the rolling baseline.",
        "key_provider_calls",
        "process",
        period=300.0,
        treat_missing_data="notBreaching",
        anomaly=True,
    ),
    AlarmSpec(
        "IntegrityFailures",
        "A sealed value failed to open: tampering, a moved value or a wrong key.",
        "integrity_failures",
        "process",
        treat_missing_data="notBreaching",
    ),
    AlarmSpec(
        "SnapshotStale",
        "No successful automated snapshot within 26 hours.",
        "snapshot_age_seconds",
        "shared",
        period=300.0,
        threshold=float(SNAPSHOT_STALE_SECONDS),
    ),
    AlarmSpec(
        "AuditChainBroken",
        "The audit trail does not verify (an event changed, went missing or was cut).",
        "audit_chain_broken",
        "shared",
        period=300.0,
    ),
    AlarmSpec(
        "AuditCheckpointStale",
        "Audit events have waited too long for a signed checkpoint.",
        "audit_checkpoint_lag_seconds",
        "shared",
        threshold=300.0,
    ),
)

_OVERRIDABLE: dict[str, type] = {
    "enabled": bool,
    "period": float,
    "evaluation_periods": int,
    "datapoints_to_alarm": int,
    "threshold": float,
    "treat_missing_data": str,
    "factor": float,
    "floor": float,
    "baseline_periods": int,
    "min_baseline_periods": int,
}


def _override(spec: AlarmSpec, changes: dict[str, Any]) -> AlarmSpec:
    values: dict[str, Any] = {}
    for key, value in changes.items():
        want = _OVERRIDABLE.get(key)
        field_name = f"alarms.{spec.name}.{key}"
        if want is None:
            raise ConfigError(
                f"unknown alarm setting {field_name}; known: {', '.join(sorted(_OVERRIDABLE))}",
                field=field_name,
            )
        if want is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{field_name} must be true or false", field=field_name)
        elif want is str:
            if value not in MISSING_TREATMENTS:
                raise ConfigError(
                    f"{field_name} must be one of {', '.join(MISSING_TREATMENTS)}",
                    field=field_name,
                )
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{field_name} must be a number", field=field_name)
        elif want is int and int(value) != value:
            raise ConfigError(f"{field_name} must be a whole number", field=field_name)
        values[key] = want(value)
    out = replace(spec, **values)
    if not 1 <= out.period <= 7 * 86400:
        raise ConfigError(
            f"alarms.{spec.name}.period must be 1 s to 7 days", field=f"alarms.{spec.name}"
        )
    if not 1 <= out.datapoints_to_alarm <= out.evaluation_periods <= 100:
        raise ConfigError(
            f"alarms.{spec.name}: need 1 <= datapoints_to_alarm <= evaluation_periods <= 100",
            field=f"alarms.{spec.name}",
        )
    if out.threshold < 0 or out.floor < 0 or out.factor <= 0:
        raise ConfigError(
            f"alarms.{spec.name}: threshold and floor must be >= 0, factor > 0",
            field=f"alarms.{spec.name}",
        )
    if not 1 <= out.min_baseline_periods <= out.baseline_periods <= 1000:
        raise ConfigError(
            f"alarms.{spec.name}: need 1 <= min_baseline_periods <= baseline_periods <= 1000",
            field=f"alarms.{spec.name}",
        )
    return out


def load_specs(overrides: dict[str, dict[str, Any]] | None = None) -> list[AlarmSpec]:
    """The built-in alarms with the settings' overrides applied (ConfigError if bad)."""
    overrides = dict(overrides or {})
    specs = []
    for spec in DEFAULT_ALARMS:
        changes = overrides.pop(spec.name, None)
        specs.append(_override(spec, changes) if changes else spec)
    if overrides:
        name = sorted(overrides)[0]
        raise ConfigError(
            f"unknown alarm {name!r}; known: {', '.join(s.name for s in DEFAULT_ALARMS)}",
            field=f"alarms.{name}",
        )
    return specs


def find_spec(specs: list[AlarmSpec], name: str) -> AlarmSpec:
    for spec in specs:
        if spec.name.lower() == name.lower():
            return spec
    raise NotFoundError(
        f"no alarm named {name!r}; known: {', '.join(s.name for s in specs)}", field="name"
    )


# --- persisted state and history -----------------------------------------------


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


@dataclass
class AlarmRecord:
    state: str = INSUFFICIENT_DATA
    reason: str = "Not evaluated yet"
    since: str | None = None
    evaluated_at: str | None = None
    value: float | None = None
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "reason": self.reason,
            "since": self.since,
            "evaluated_at": self.evaluated_at,
            "value": self.value,
            "threshold": self.threshold,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlarmRecord:
        state = d.get("state")
        return cls(
            state=state if state in STATES else INSUFFICIENT_DATA,
            reason=str(d.get("reason", "")),
            since=d.get("since"),
            evaluated_at=d.get("evaluated_at"),
            value=d.get("value"),
            threshold=d.get("threshold"),
        )


@dataclass
class StateDoc:
    alarms: dict[str, AlarmRecord] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def record(self, name: str) -> AlarmRecord:
        return self.alarms.setdefault(name, AlarmRecord())


class AlarmStore:
    """``$SEALEDKB_HOME/alarms/state.json``: current state of every alarm and the
    history of state changes (newest last, the last 1000 kept)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "state.json"

    def load(self) -> StateDoc:
        try:
            raw = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return StateDoc()
        except (OSError, ValueError):
            log.error("alarm state file %s is unreadable; starting afresh", self.path)
            return StateDoc()
        alarms = {
            str(k): AlarmRecord.from_dict(v)
            for k, v in (raw.get("alarms") or {}).items()
            if isinstance(v, dict)
        }
        history = [h for h in raw.get("history") or [] if isinstance(h, dict)]
        return StateDoc(alarms, history)

    def save(self, doc: StateDoc) -> None:
        body = {
            "format": STATE_FORMAT,
            "alarms": {k: v.to_dict() for k, v in sorted(doc.alarms.items())},
            "history": doc.history[-HISTORY_KEPT:],
        }
        write_private(self.path, json.dumps(body, indent=1, sort_keys=True).encode())

    @contextlib.contextmanager
    def locked(self) -> Iterator[StateDoc]:
        """Read-modify-write under an exclusive lock; saved when the block ends."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with file_lock(self.folder / ".lock"):
            doc = self.load()
            before = _doc_json(doc)
            yield doc
            if _doc_json(doc) != before:
                self.save(doc)


def _doc_json(doc: StateDoc) -> str:
    return json.dumps(
        [{k: v.to_dict() for k, v in doc.alarms.items()}, len(doc.history)], sort_keys=True
    )


_STATE_LABEL = b"sealedkb/alarm/v1/state|"
_CHANGE_LABEL = b"sealedkb/alarm/v1/change|"
FORGED_REASON = "The stored state failed its integrity check; evaluated afresh"
_STORES: weakref.WeakKeyDictionary[KnowledgeBase, TableAlarmStore] = weakref.WeakKeyDictionary()
_STORES_LOCK = threading.Lock()


class TableAlarmStore:
    """Alarm state and history in PostgreSQL (``kb_alarm_state``, ``kb_alarm_history``):
    what ``serve`` uses, so replicas share it and a home folder holds none of it.
    Same interface as :class:`AlarmStore`.

    With ``mac_key`` (an encrypted knowledge base: the key provider's audit key, as for
    bearer-token rows) every row carries a MAC over its alarm name and record (state
    rows) or its change (history rows). A row whose MAC fails or is missing is refused:
    a state row reads as INSUFFICIENT_DATA with :data:`FORGED_REASON`, so the next
    evaluation decides the alarm afresh, rewrites the row with a MAC and notifies again
    if it is in ALARM; a history row is left out. A row with a wrong MAC (written by
    someone without the key) is also counted as an integrity failure (the
    IntegrityFailure alarm); a row with none (from before migration 011, or written
    during a key-service outage) is refused without counting. Rows found authentic are
    remembered in the bounded cache bearer tokens use, so an evaluation round costs a
    key-service call only for rows that changed. If the key service cannot be reached,
    rows are read unverified (alarms keep working through an outage: KeyUnavailable is
    one of them) and written without a MAC."""

    def __init__(
        self,
        db: Database,
        mac_key: MacKey | None = None,
        telemetry: Telemetry | None = None,
        *,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.rows = AlarmRows(db, HISTORY_KEPT)
        self._mac_key = mac_key
        self._telemetry = telemetry
        self._verified = BoundedCache[bytes, bool](now or (lambda: datetime.now(UTC)))

    @classmethod
    def of(cls, kb: KnowledgeBase) -> TableAlarmStore:
        """The alarm store of an open knowledge base, MACed when it is encrypted; one per
        knowledge base, so every reader (evaluator, /metrics, console, CLI) shares the
        cache of rows found authentic."""
        from sealedkb.model import EncryptionMode

        with _STORES_LOCK:
            store = _STORES.get(kb)
            if store is None:
                encrypted = kb.mode is EncryptionMode.ON and kb.provider is not None
                store = cls(kb.db, kb.provider if encrypted else None, kb.telemetry)
                _STORES[kb] = store
            return store

    # --- MACs ------------------------------------------------------------------

    @staticmethod
    def _state_message(name: str, record: dict[str, Any]) -> bytes:
        return _STATE_LABEL + canonical_json({"name": name, "record": record})

    @staticmethod
    def _change_message(change: dict[str, Any]) -> bytes:
        return _CHANGE_LABEL + canonical_json(change)

    def _sign(self, message: bytes) -> bytes | None:
        if self._mac_key is None:
            return None
        try:
            return self._mac_key.generate_mac(message)
        except SealedKBError as exc:
            log.warning("alarm row written without a MAC: %s", exc.code)
            return None

    def _authentic(self, message: bytes, mac: bytes | None) -> bool:
        if self._mac_key is None:
            return True
        if mac is None:
            return False
        seen = hashlib.sha256(message + b"|" + mac).digest()
        if self._verified.get(seen):
            return True
        try:
            ok = self._mac_key.verify_mac(message, mac)
        except SealedKBError as exc:  # cannot check now: read as it is
            log.warning("alarm row not verified: %s", exc.code)
            return True
        if ok:  # only successes: a forged row is checked (and refused) every time
            self._verified.put(seen, True)
        return ok

    def _forged(self, what: str, mac: bytes | None) -> None:
        if mac is None:  # from before MACs, or written during a key-service outage
            log.info("alarm %s row has no MAC: refused", what)
            return
        if self._telemetry is not None:
            self._telemetry.integrity_failure()
        log.warning("alarm %s row failed its integrity check: refused", what)

    def _doc(self, snapshot: AlarmSnapshot) -> tuple[StateDoc, set[str]]:
        stored, changes = snapshot
        alarms: dict[str, AlarmRecord] = {}
        forged: set[str] = set()
        for name, row in stored.items():
            if self._authentic(self._state_message(name, row.record), row.mac):
                alarms[name] = AlarmRecord.from_dict(row.record)
            else:
                self._forged(f"state {name!r}", row.mac)
                alarms[name] = AlarmRecord(reason=FORGED_REASON)
                forged.add(name)
        history = []
        for item in changes:
            if self._authentic(self._change_message(item.change), item.mac):
                history.append(item.change)
            else:
                self._forged("history", item.mac)
        return StateDoc(alarms, history), forged

    def load(self) -> StateDoc:
        return self._doc(self.rows.load())[0]

    @contextlib.contextmanager
    def locked(self) -> Iterator[StateDoc]:
        """Read-modify-write in one transaction under an advisory lock; a refused
        state row is always rewritten (with a MAC) when the block ends."""
        with self.rows.locked() as (snapshot, conn):
            doc, forged = self._doc(snapshot)
            before = {k: v.to_dict() for k, v in doc.alarms.items()}
            seen = len(doc.history)
            yield doc
            changed = {
                k: StoredState(d, self._sign(self._state_message(k, d)))
                for k, v in doc.alarms.items()
                if before.get(k) != (d := v.to_dict()) or k in forged
            }
            added = [
                StoredChange(c, self._sign(self._change_message(c))) for c in doc.history[seen:]
            ]
            self.rows.write(conn, changed, added)


AlarmStateStore = AlarmStore | TableAlarmStore


# --- samples and datapoints -----------------------------------------------------


class Series:
    """Timestamped samples of one metric (bounded: enough for the longest lookback)."""

    def __init__(self, counter: bool, keep_seconds: float) -> None:
        self.counter = counter
        self.keep = keep_seconds
        self.samples: deque[tuple[float, float]] = deque()

    def add(self, t: float, value: float) -> None:
        if self.samples and t < self.samples[-1][0]:
            self.samples.clear()  # the clock went backwards: start over
        self.samples.append((t, value))
        # keep one sample older than the horizon, as the start of the oldest window
        while len(self.samples) > 2 and self.samples[1][0] < t - self.keep:
            self.samples.popleft()

    def last_time(self) -> float | None:
        return self.samples[-1][0] if self.samples else None

    def _at_or_before(self, t: float) -> tuple[float, float] | None:
        found = None
        for s in self.samples:
            if s[0] <= t:
                found = s
            else:
                break
        return found

    def datapoint(self, start: float, end: float) -> float | None:
        """The value of the window (start, end]; None when there is no data for it."""
        if not self.samples:
            return None
        if self.counter:
            last = self._at_or_before(end)
            if last is None:
                return None
            first = self._at_or_before(start)
            if first is None:
                first = self.samples[0]  # window began before the first sample
                if first[0] >= last[0]:
                    return None
            return max(0.0, last[1] - first[1])
        values = [v for t, v in self.samples if start < t <= end]
        return max(values) if values else None


@dataclass(frozen=True)
class Transition:
    alarm: str
    state: str
    previous_state: str
    reason: str
    time: str
    value: float | None
    threshold: float | None
    test: bool = False


def _fmt(v: float) -> str:
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.2f}"


class Evaluator:
    """Samples the metrics and evaluates the alarms of one knowledge base.

    ``serve`` runs it in a thread (:meth:`start`); tests and the CLI call
    :meth:`evaluate` directly, optionally with an injected time."""

    def __init__(
        self,
        kb: KnowledgeBase,
        *,
        specs: list[AlarmSpec] | None = None,
        scopes: tuple[str, ...] = ("process", "shared"),
        notifier: Notifier | None = None,
        store: AlarmStateStore | None = None,
        leadership: Leadership | None = None,
        clock: Callable[[], datetime] | None = None,
        interval: float | None = None,
    ) -> None:
        settings = kb.settings
        self.kb = kb
        self.specs = specs if specs is not None else load_specs(settings.alarms)
        self.scopes = scopes
        self.notifier = notifier or Notifier.from_settings(settings)
        self.store: AlarmStateStore = store or TableAlarmStore.of(kb)
        self.runbook_base = settings.alarm_runbook_base
        self.clock = clock or (lambda: datetime.now(UTC))
        self.interval = interval if interval is not None else settings.alarm_interval
        self.queries = MonitoringQueries(kb.db)
        self.last_values: dict[str, float | None] = {}
        self._series: dict[str, Series] = {}
        self._gauge_every: dict[str, float] = {}
        self._failures_at_probe = -1
        for spec in self.active_specs():
            keep = spec.period * (
                spec.evaluation_periods + (spec.baseline_periods if spec.anomaly else 0) + 1
            )
            counter = METRICS[spec.metric].statistic == "Sum"
            old = self._series.get(spec.metric)
            self._series[spec.metric] = Series(counter, max(keep, old.keep if old else 0))
            if not counter:
                # at least two samples per period, at most one per tick
                self._gauge_every[spec.metric] = spec.period / 2
        self._lock = threading.Lock()
        # The first round runs in the thread too: verifying a long audit chain must
        # not hold up serve's start.
        self.leadership = leadership
        task = leadership.guard(self.evaluate) if leadership is not None else self.evaluate
        self._periodic = PeriodicTask(
            "sealedkb-alarms", self.interval, task, what="alarm evaluation", logger=log
        )
        now = self.clock().timestamp()
        for name, series in self._series.items():
            if series.counter:
                series.add(now, self._counter(name))

    def active_specs(self) -> list[AlarmSpec]:
        return [s for s in self.specs if s.enabled and s.scope in self.scopes]

    # --- reading the metrics ------------------------------------------------------

    def _counter(self, metric: str) -> float:
        tel = self.kb.telemetry
        if metric == "key_provider_failures":
            return float(tel.key_failures_total())
        if metric == "key_provider_calls":
            return float(tel.key_calls_total())
        if metric == "key_refusals_pending_deletion":
            return float(tel.refusals("PendingDeletion"))
        if metric == "key_refusals_disabled":
            return float(tel.refusals("Disabled"))
        if metric == "integrity_failures":
            ring = self.kb.keyring
            return float(tel.integrity_failures + (ring.open_failures if ring else 0))
        raise ValueError(metric)

    def _gauge(self, metric: str, now: datetime) -> float | None:
        """A gauge's value now, or None when it cannot be read (missing data)."""
        kb = self.kb
        try:
            if metric == "encryption_unavailable":
                if kb.keyring is None:
                    return 0.0
                try:
                    kb.keyring.check_available("default")
                except DatabaseError:
                    return None  # the database is down: not a key problem
                except SealedKBError:
                    return 1.0
                return 0.0
            if metric == "snapshot_age_seconds":
                snap = self.queries.newest_automated_snapshot()
                since = snap.time if snap else self.queries.first_event_time()
                return None if since is None else max(0.0, (now - since).total_seconds())
            if metric == "audit_chain_broken":
                return 0.0 if kb.audit.verify().ok else 1.0
            if metric == "audit_checkpoint_lag_seconds":
                return checkpoint_lag(kb, self.queries, now)
        except SealedKBError as exc:
            log.debug("metric %s not read: %s", metric, exc.code)
            return None
        raise ValueError(metric)

    def sample(self, now: datetime) -> None:
        t = now.timestamp()
        failures = self.kb.telemetry.key_failures_total()
        # Gauges first: a probe that fails is then counted in this tick's counters.
        for metric, series in self._series.items():
            if series.counter:
                continue
            last = series.last_time()
            due = last is None or t - last >= self._gauge_every[metric] - 1e-6
            if metric == "encryption_unavailable" and failures != self._failures_at_probe:
                due = True  # a key call just failed: look now, not in 30 s
            if not due:
                continue
            value = self._gauge(metric, now)
            if metric == "encryption_unavailable":
                # after the probe: its own failure must not trigger the next probe
                self._failures_at_probe = self.kb.telemetry.key_failures_total()
            self.last_values[metric] = value
            if value is not None:
                series.add(t, value)
        for metric, series in self._series.items():
            if series.counter:
                series.add(t, self._counter(metric))

    # --- deciding -------------------------------------------------------------------

    def _decide(
        self, spec: AlarmSpec, t: float, current: str
    ) -> tuple[str, str, float | None, float | None]:
        series = self._series[spec.metric]
        unit = METRICS[spec.metric].unit
        p = spec.period
        points = [
            series.datapoint(t - (k + 1) * p, t - k * p) for k in range(spec.evaluation_periods)
        ]
        value = points[0]
        threshold = spec.threshold
        if spec.anomaly:
            base = [
                series.datapoint(t - (k + 1) * p, t - k * p)
                for k in range(
                    spec.evaluation_periods, spec.evaluation_periods + spec.baseline_periods
                )
            ]
            known = [b for b in base if b is not None]
            if len(known) < spec.min_baseline_periods:
                return (
                    INSUFFICIENT_DATA,
                    f"learning the baseline: {len(known)} of {spec.min_baseline_periods} "
                    f"earlier {_fmt(p)} s periods known",
                    value,
                    None,
                )
            mean = sum(known) / len(known)
            threshold = max(spec.factor * mean, spec.floor)
        verdicts: list[bool] = []
        for d in points:
            if d is None:
                if spec.treat_missing_data == "breaching":
                    verdicts.append(True)
                elif spec.treat_missing_data == "notBreaching":
                    verdicts.append(False)
            else:
                verdicts.append(d > threshold)
        if not verdicts:
            if spec.treat_missing_data == "ignore":
                return current, "no data; state kept (treat_missing_data=ignore)", None, threshold
            return INSUFFICIENT_DATA, f"no data in the last {_fmt(p)} s", None, threshold
        breaching = sum(verdicts)
        shown = _fmt(value) if value is not None else "no data"
        over = f"over {_fmt(p)} s"
        if spec.evaluation_periods > 1:
            over = (
                f"in {breaching} of the last {spec.evaluation_periods} periods of {_fmt(p)} s "
                f"(alarm at {spec.datapoints_to_alarm})"
            )
        base_note = ""
        if spec.anomaly:
            base_note = (
                f" (threshold: {_fmt(spec.factor)} x baseline mean, at least {_fmt(spec.floor)})"
            )
        if breaching >= spec.datapoints_to_alarm:
            return (
                ALARM,
                f"{shown} {unit} {over}; threshold {_fmt(threshold)} crossed{base_note}",
                value,
                threshold,
            )
        return (
            OK,
            f"{shown} {unit} {over}; threshold {_fmt(threshold)}{base_note}",
            value,
            threshold,
        )

    def evaluate(self, now: datetime | None = None) -> list[Transition]:
        """Sample, evaluate every active alarm, persist, notify state changes.
        Returns the state changes."""
        with self._lock:
            at = now or self.clock()
            self.sample(at)
            t = at.timestamp()
            changes: list[Transition] = []
            with self.store.locked() as doc:
                for spec in self.active_specs():
                    rec = doc.record(spec.name)
                    state, reason, value, threshold = self._decide(spec, t, rec.state)
                    rec.evaluated_at = _iso(at)
                    rec.value, rec.threshold = value, threshold
                    if state != rec.state:
                        changes.append(
                            Transition(
                                spec.name, state, rec.state, reason, _iso(at), value, threshold
                            )
                        )
                        rec.state, rec.since = state, _iso(at)
                        doc.history.append(_history(changes[-1]))
                    rec.reason = reason
            for change in changes:
                self.notify(change)
            return changes

    def notify(self, change: Transition) -> None:
        """Log every state change; send those into or out of ALARM (and tests)."""
        spec = find_spec(self.specs, change.alarm)
        note = Notification(
            alarm=change.alarm,
            state=change.state,
            previous_state=change.previous_state,
            reason=change.reason,
            time=change.time,
            runbook_url=spec.runbook_url(self.runbook_base),
            test=change.test,
            value=change.value,
            threshold=change.threshold,
        )
        if ALARM in (change.state, change.previous_state) or change.test:
            try:
                self.notifier.send(note)
            except Exception:  # never let a notification stop the evaluator
                log.exception("alarm %s: notification failed", change.alarm)
        else:
            log.info(
                "alarm %s: %s -> %s: %s",
                change.alarm,
                change.previous_state,
                change.state,
                change.reason,
            )

    def force_alarm(self, name: str) -> list[Transition]:
        """``alarms test NAME``: set ALARM (like CloudWatch's SetAlarmState), send the
        notifications, then return to the evaluated state (evaluated now where this
        process can, else the state it had), notifying that change too."""
        spec = find_spec(self.specs, name)
        at = self.clock()
        with self.store.locked() as doc:
            rec = doc.record(spec.name)
            previous = replace(rec)
            forced = Transition(
                spec.name,
                ALARM,
                rec.state,
                "Alarm state forced by 'sealedkb alarms test'; it returns to its evaluated "
                "state right after",
                _iso(at),
                None,
                None,
                test=True,
            )
            rec.state, rec.reason, rec.since = ALARM, forced.reason, forced.time
            doc.history.append(_history(forced))
        self.notify(forced)
        if spec.enabled and spec.scope in self.scopes:
            with self._lock:
                self.sample(at)
                state, reason, value, threshold = self._decide(spec, at.timestamp(), previous.state)
        else:
            state, reason = previous.state, previous.reason
            value, threshold = previous.value, previous.threshold
        back = Transition(spec.name, state, ALARM, reason, _iso(self.clock()), value, threshold)
        with self.store.locked() as doc:
            rec = doc.record(spec.name)
            if state != ALARM:
                rec.state, rec.reason, rec.since = state, reason, back.time
                rec.value, rec.threshold = value, threshold
                doc.history.append(_history(back))
        out = [forced]
        if state != ALARM:
            self.notify(back)
            out.append(back)
        return out

    # --- background thread (serve) ---------------------------------------------

    def start(self) -> Evaluator:
        self._periodic.start()
        return self

    def stop(self) -> None:
        global _running
        self._periodic.stop(timeout=30)
        if _running is self:
            _running = None

    def latest_sample(self, metric: str) -> tuple[float, float] | None:
        """The newest (Unix time, value) sample of a metric, or None."""
        series = self._series.get(metric)
        if series is None or not series.samples:
            return None
        return series.samples[-1]


def _history(change: Transition) -> dict[str, Any]:
    return {
        "time": change.time,
        "alarm": change.alarm,
        "state": change.state,
        "previous_state": change.previous_state,
        "reason": change.reason,
        "test": change.test,
    }


def checkpoint_lag(kb: KnowledgeBase, queries: MonitoringQueries, now: datetime) -> float | None:
    """Seconds the oldest audit event not covered by a signed checkpoint has waited
    (0 when the head is covered). None without an audit key (plaintext mode)."""
    if kb.audit.mac_key is None:
        return None
    head = kb.audit.head()
    covered = head["last_checkpoint_seq"] or 0
    if head["head_seq"] <= covered:
        return 0.0
    first = queries.event_time(covered + 1)
    if first is None:
        return None
    return max(0.0, (now - first).total_seconds())


def list_alarms(
    specs: list[AlarmSpec], store: AlarmStateStore, runbook_base: str
) -> list[dict[str, Any]]:
    """Every alarm with its definition and its last known state."""
    doc = store.load()
    out = []
    for spec in specs:
        rec = doc.alarms.get(spec.name, AlarmRecord())
        if not spec.enabled:
            rec = AlarmRecord(reason="disabled in the settings")
        out.append({**spec.to_dict(runbook_base), **rec.to_dict()})
    return out


def history(
    store: AlarmStateStore, name: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """State changes, newest first."""
    items = store.load().history
    if name is not None:
        items = [h for h in items if str(h.get("alarm", "")).lower() == name.lower()]
    return list(reversed(items))[:limit]


def check_settings(settings: Settings) -> None:
    """Raise ConfigError now for bad alarm overrides or webhook settings, so ``serve``
    fails at start rather than in its evaluator thread."""
    load_specs(settings.alarms)
    Notifier.from_settings(settings)


def start_evaluator(kb: KnowledgeBase, leadership: Leadership | None = None) -> Evaluator | None:
    """For ``serve``: evaluate every alarm in a background thread (None if disabled);
    with ``leadership``, only while this replica leads the alarm job."""
    if not kb.settings.alarms_enabled:
        return None
    global _running
    evaluator = Evaluator(kb, leadership=leadership).start()
    _running = evaluator
    return evaluator


_running: Evaluator | None = None


def running_evaluator(kb: KnowledgeBase) -> Evaluator | None:
    """The evaluator ``start_evaluator`` started for this knowledge base, while it runs
    (the metrics collector reuses its probes: availability, audit verification)."""
    ev = _running
    return ev if ev is not None and ev.kb is kb else None
