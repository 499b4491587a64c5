"""Metrics (Prometheus text format at ``/metrics``, and ``sealedkb status``).

Two kinds of metric, for cost reasons:

- observed as things happen, where only a histogram can tell the story: MCP
  tool latency by tool and outcome, key-provider call latency by operation and
  outcome, service operation latency (add, get, list, ..., and search once it
  exists). Observing is a perf_counter pair and a bucket increment; nothing per
  row. ``metrics_enabled = false`` turns off the last two (the bench's "off").
- read at scrape time from plain counters and cheap queries (collector below):
  key-provider request and refusal counts, data-key cache hits/misses,
  integrity failures, availability, key state and days to rotation/deletion,
  entries by namespace, snapshot freshness, audit chain head and checkpoint,
  the database transport and its TLS protocol, and the alarm states.

Labels are bounded and never carry plaintext, ids, keys, SQL or queries:
operations and tools are fixed names, outcomes are ``ok`` or an error code,
key states and alarm states are enumerations, and namespaces (stored in clear,
docs/DESIGN.md §3) are capped at the ``NAMESPACE_LABELS`` largest, the rest summed
under ``namespace="_other"``.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import wraps
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sealedkb.errors import SealedKBError
from sealedkb.keys.policy import SYSTEM_PRINCIPAL
from sealedkb.keys.provider import KeyState
from sealedkb.store.monitoring import MonitoringQueries

if TYPE_CHECKING:
    from sealedkb.kb.knowledge_base import KnowledgeBase
    from sealedkb.monitoring.alarms import Evaluator

REGISTRY = CollectorRegistry(auto_describe=True)
NAMESPACE_LABELS = 50
OTHER_NAMESPACE = "_other"
INSTRUMENTED_OPERATIONS = ("add", "get", "update", "delete", "list", "stats", "search")
AVAILABILITY_REUSE_SECONDS = 60.0

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

TOOL_SECONDS = Histogram(
    "sealedkb_tool_duration_seconds",
    "MCP tool call latency by tool and outcome (ok or the error code).",
    ["tool", "outcome"],
    registry=REGISTRY,
    buckets=_LATENCY_BUCKETS,
)
KEY_CALL_SECONDS = Histogram(
    "sealedkb_key_provider_request_duration_seconds",
    "Key-provider call latency by operation and outcome (ok or the error code).",
    ["operation", "outcome"],
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


class _OpHistogram:
    """One operation's latency histogram on the hot path of every operation.

    prometheus-client's Histogram takes a lock per bucket increment (~1.9 µs per
    observe here); this one does a bisect and two list/float updates (~0.3 µs)
    and is exported by a collector. Unlocked: under heavy thread contention an
    observation may rarely be lost, which a latency histogram can afford."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(_LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds


class _OperationCollector(Collector):
    def __init__(self) -> None:
        self.ops: dict[str, _OpHistogram] = {}

    def labels(self, operation: str) -> _OpHistogram:
        return self.ops.setdefault(operation, _OpHistogram())

    def collect(self) -> Iterator[Metric]:
        fam = HistogramMetricFamily(
            "sealedkb_operation_duration_seconds",
            "Knowledge-base operation latency (add, get, update, delete, list, stats, search).",
            labels=["operation"],
        )
        for op, h in sorted(self.ops.items()):
            counts = list(h.counts)
            cumulative, buckets = 0, []
            for bound, n in zip((*_LATENCY_BUCKETS, float("inf")), counts, strict=True):
                cumulative += n
                buckets.append(
                    ("+Inf" if bound == float("inf") else repr(float(bound)), float(cumulative))
                )
            fam.add_metric([op], buckets, h.sum)
        yield fam


OPERATION_SECONDS = _OperationCollector()
REGISTRY.register(OPERATION_SECONDS)


def _observe_key_call(operation: str, outcome: str, seconds: float) -> None:
    KEY_CALL_SECONDS.labels(operation, outcome).observe(seconds)


def _timed(fn: Callable[..., Any], operation: str) -> Callable[..., Any]:
    child = OPERATION_SECONDS.labels(operation)  # label lookup once, not per call

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            child.observe(time.perf_counter() - started)

    wrapper.__sealedkb_timed__ = fn  # type: ignore[attr-defined]
    return wrapper


def instrument_kb(kb: KnowledgeBase) -> None:
    """Time this knowledge base's operations and key-provider calls. Idempotent.
    Wraps whichever operations exist, so ``search`` is timed once it is there."""
    for op in INSTRUMENTED_OPERATIONS:
        fn = getattr(kb, op, None)
        if fn is None or hasattr(fn, "__sealedkb_timed__"):
            continue
        setattr(kb, op, _timed(fn, op))
    kb.telemetry.key_call_observer = _observe_key_call


def uninstrument_kb(kb: KnowledgeBase) -> None:
    """Undo :func:`instrument_kb` (the bench measures both in one run)."""
    for op in INSTRUMENTED_OPERATIONS:
        if hasattr(getattr(kb, op, None), "__sealedkb_timed__"):
            delattr(kb, op)  # the instance attribute; the class method shows again
    kb.telemetry.key_call_observer = None


def _ts(value: datetime | str | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.timestamp()


class KnowledgeBaseCollector(Collector):
    """State read at scrape time (cheap queries; no secrets in labels)."""

    def __init__(
        self,
        kb: KnowledgeBase,
        availability: str | None = None,
        entries_total: int | None = None,
    ) -> None:
        self.kb = kb
        self.queries = MonitoringQueries(kb.db)
        # already known (status): no second probe, no second count of the table
        self.availability = availability
        self.entries_total = entries_total

    @property
    def evaluator(self) -> Evaluator | None:
        """serve's alarm evaluator for this knowledge base, if one runs."""
        from sealedkb.monitoring.alarms import running_evaluator

        return running_evaluator(self.kb)

    def collect(self) -> Iterator[Metric]:
        yield from self._process_counters()
        yield from self._availability()
        yield from self._key_state()
        try:
            yield from self._database()
            yield from self._audit()
        except SealedKBError:
            pass  # database down: the availability gauge already says so
        yield from self._alarms()

    def _process_counters(self) -> Iterator[Metric]:
        tel = self.kb.telemetry.snapshot()
        calls = CounterMetricFamily(
            "sealedkb_key_provider_requests",
            "Key-provider calls of this process by operation and outcome (ok or error code).",
            labels=["operation", "outcome"],
        )
        key_calls: dict[tuple[str, str], int] = tel["key_calls"]  # type: ignore[assignment]
        for (op, outcome), n in sorted(key_calls.items()):
            calls.add_metric([op, outcome], float(n))
        yield calls
        # Unlabelled totals, present from the start (alerting on a labelled series that
        # appears with its first failure would miss that failure: increase() needs two
        # samples).
        total = CounterMetricFamily(
            "sealedkb_key_provider_calls", "Key-provider calls of this process (all outcomes)."
        )
        total.add_metric([], float(sum(key_calls.values())))
        yield total
        failed = CounterMetricFamily(
            "sealedkb_key_provider_failures", "Key-provider calls of this process that failed."
        )
        failed.add_metric([], float(sum(n for (_, o), n in key_calls.items() if o != "ok")))
        yield failed
        refusals = CounterMetricFamily(
            "sealedkb_key_state_refusals",
            "Key-provider calls refused because of the KMS key's state (Disabled, "
            "PendingDeletion, Destroyed).",
            labels=["key_state"],
        )
        by_state: dict[str, int] = tel["key_state_refusals"]  # type: ignore[assignment]
        for state in (KeyState.DISABLED, KeyState.PENDING_DELETION, KeyState.DESTROYED):
            refusals.add_metric([state.value], float(by_state.get(state.value, 0)))
        yield refusals
        ring = self.kb.keyring
        hits = CounterMetricFamily(
            "sealedkb_data_key_cache_hits", "Data-key cache hits (no key-provider call)."
        )
        hits.add_metric([], float(ring.cache_hits if ring else 0))
        yield hits
        misses = CounterMetricFamily(
            "sealedkb_data_key_cache_misses", "Data-key cache misses (an unwrap followed)."
        )
        misses.add_metric([], float(ring.cache_misses if ring else 0))
        yield misses
        integrity = CounterMetricFamily(
            "sealedkb_integrity_failures",
            "Sealed values that failed to open (tampered, moved or under a wrong key).",
        )
        failures = int(tel["integrity_failures"])  # type: ignore[call-overload]
        integrity.add_metric([], float(failures + (ring.open_failures if ring else 0)))
        yield integrity

    def _availability(self) -> Iterator[Metric]:
        unavailable = self._recent_availability()
        if unavailable is None and self.availability is not None:
            unavailable = 0.0 if self.availability == "available" else 1.0
        if unavailable is None:
            availability, _ = self.kb.availability()
            unavailable = 0.0 if availability == "available" else 1.0
        avail = GaugeMetricFamily(
            "sealedkb_available",
            "1 when data keys unwrap and the database answers, else 0.",
        )
        avail.add_metric([], 1.0 - unavailable)
        yield avail

    def _recent_availability(self) -> float | None:
        """The alarm evaluator's last probe, if recent: each probe is an audited unwrap,
        so a scrape does not add one when serve has just checked."""
        ev = self.evaluator
        if ev is None:
            return None
        sample = ev.latest_sample("encryption_unavailable")
        if sample is None:
            return None
        t, value = sample
        if time.time() - t > AVAILABILITY_REUSE_SECONDS:
            return None
        return value

    def _key_state(self) -> Iterator[Metric]:
        kb = self.kb
        if kb.provider is None or kb.kms_key_uri is None:
            return
        try:
            meta = kb.provider.for_principal(SYSTEM_PRINCIPAL).describe_key(kb.kms_key_uri)
        except SealedKBError:
            return
        state = GaugeMetricFamily(
            "sealedkb_key_state", "1 for the KMS key's current state.", labels=["state"]
        )
        for s in KeyState:
            state.add_metric([s.value], 1.0 if meta.state is s else 0.0)
        yield state
        now = datetime.now(UTC)
        if meta.next_rotation_date is not None:
            rot = GaugeMetricFamily(
                "sealedkb_key_rotation_days_remaining",
                "Days until the KMS key's next automatic rotation.",
            )
            rot.add_metric([], (meta.next_rotation_date - now).total_seconds() / 86400)
            yield rot
        if meta.deletion_date is not None:
            dele = GaugeMetricFamily(
                "sealedkb_key_deletion_days_remaining",
                "Days until the KMS key's material is destroyed (pending deletion).",
            )
            dele.add_metric([], (meta.deletion_date - now).total_seconds() / 86400)
            yield dele

    def _database(self) -> Iterator[Metric]:
        tls = self.kb.db.tls_session()
        entries = float(
            self.entries_total
            if self.entries_total is not None
            else self.kb.entries.counts()["total"]
        )
        top, rest = self.queries.namespace_counts(NAMESPACE_LABELS)
        info = InfoMetricFamily(
            "sealedkb_database_transport", "Database transport and negotiated TLS."
        )
        info.add_metric(
            [],
            {
                "transport": self.kb.target.transport.kind,
                "tls_protocol": tls.protocol if tls and tls.protocol else "none",
                "tls_cipher": tls.cipher if tls and tls.cipher else "none",
            },
        )
        yield info
        total = GaugeMetricFamily("sealedkb_entries", "Live entries in the knowledge base.")
        total.add_metric([], entries)
        yield total
        by_ns = GaugeMetricFamily(
            "sealedkb_namespace_entries",
            f"Live entries by namespace (the {NAMESPACE_LABELS} largest; the rest as "
            f"{OTHER_NAMESPACE}).",
            labels=["namespace"],
        )
        for ns, n in top:
            by_ns.add_metric([ns], float(n))
        if rest:
            by_ns.add_metric([OTHER_NAMESPACE], float(rest))
        yield by_ns

    def _audit(self) -> Iterator[Metric]:
        from sealedkb.monitoring.alarms import checkpoint_lag

        head = self.kb.audit.head()
        seq = GaugeMetricFamily("sealedkb_audit_head_seq", "Sequence number of the audit head.")
        seq.add_metric([], float(head["head_seq"]))
        yield seq
        if head["last_checkpoint_seq"] is not None:
            cp = GaugeMetricFamily(
                "sealedkb_audit_last_checkpoint_seq", "Sequence number of the newest checkpoint."
            )
            cp.add_metric([], float(head["last_checkpoint_seq"]))
            yield cp
            cp_time = _ts(head["last_checkpoint_time"])
            if cp_time is not None:
                cpt = GaugeMetricFamily(
                    "sealedkb_audit_last_checkpoint_timestamp_seconds",
                    "When the newest signed checkpoint was written (Unix time).",
                )
                cpt.add_metric([], cp_time)
                yield cpt
        lag = checkpoint_lag(self.kb, self.queries, datetime.now(UTC))
        if lag is not None:
            lagm = GaugeMetricFamily(
                "sealedkb_audit_checkpoint_lag_seconds",
                "How long the oldest audit event not covered by a checkpoint has waited.",
            )
            lagm.add_metric([], lag)
            yield lagm
        broken = self.evaluator.last_values.get("audit_chain_broken") if self.evaluator else None
        if broken is not None:
            ok = GaugeMetricFamily(
                "sealedkb_audit_chain_ok",
                "1 when the last audit verification (by the alarm evaluator) passed.",
            )
            ok.add_metric([], 1.0 - broken)
            yield ok
        snap = self.queries.newest_automated_snapshot()
        since = snap.time if snap else self.queries.first_event_time()
        if since is not None:
            age = GaugeMetricFamily(
                "sealedkb_snapshot_age_seconds",
                "Seconds since the newest successful automated snapshot (or, if there was "
                "none, since the knowledge base was created).",
            )
            age.add_metric([], max(0.0, (datetime.now(UTC) - since).total_seconds()))
            yield age
        if snap is not None:
            last = GaugeMetricFamily(
                "sealedkb_snapshot_last_success_timestamp_seconds",
                "When the newest successful automated snapshot was made (Unix time).",
            )
            last.add_metric([], snap.time.timestamp())
            yield last
            duration = snap.details.get("duration_ms")
            if isinstance(duration, int) and not isinstance(duration, bool):
                dur = GaugeMetricFamily(
                    "sealedkb_snapshot_last_duration_seconds",
                    "How long the newest successful automated snapshot took.",
                )
                dur.add_metric([], duration / 1000)
                yield dur

    def _alarms(self) -> Iterator[Metric]:
        from sealedkb.monitoring.alarms import STATES, TableAlarmStore, load_specs

        try:
            specs = load_specs(self.kb.settings.alarms)
        except SealedKBError:
            return
        doc = TableAlarmStore.of(self.kb).load()
        fam = GaugeMetricFamily(
            "sealedkb_alarm_state",
            "1 for each built-in alarm's current state (OK, ALARM, INSUFFICIENT_DATA).",
            labels=["alarm", "state"],
        )
        for spec in specs:
            if not spec.enabled:
                continue
            rec = doc.alarms.get(spec.name)
            current = rec.state if rec else "INSUFFICIENT_DATA"
            for st in STATES:
                fam.add_metric([spec.name, st], 1.0 if st == current else 0.0)
        yield fam


_collector: KnowledgeBaseCollector | None = None


def register_kb(kb: KnowledgeBase) -> None:
    """Report this knowledge base's state (replacing any earlier one: one per process),
    and time its operations unless ``metrics_enabled`` is false."""
    global _collector
    if _collector is not None:
        REGISTRY.unregister(_collector)
    _collector = KnowledgeBaseCollector(kb)
    REGISTRY.register(_collector)
    if kb.settings.metrics_enabled:
        instrument_kb(kb)


def render() -> bytes:
    return generate_latest(REGISTRY)


def status_metrics(
    kb: KnowledgeBase, availability: str | None = None, entries_total: int | None = None
) -> dict[str, Any]:
    """The same metrics as ``/metrics``, as a dict for ``sealedkb status``: sample
    name -> value, or -> {label text: value} for labelled samples. Counters of a
    CLI process cover that process only; ``serve``'s are at ``/metrics``."""
    out: dict[str, Any] = {}
    for family in KnowledgeBaseCollector(kb, availability, entries_total).collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            if sample.labels:
                label = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out.setdefault(sample.name, {})[label] = sample.value
            else:
                out[sample.name] = sample.value
    return out
