"""Metrics (Prometheus text format at ``/metrics``).

The first slice of DESIGN.md's monitor: tool latency and outcomes, availability,
entry count, and the database transport with its negotiated TLS protocol and
cipher. Alarms come with the monitoring issue. Labels never carry plaintext,
ids or keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from sealedkb.errors import SealedKBError

if TYPE_CHECKING:
    from sealedkb.service import KnowledgeBase

REGISTRY = CollectorRegistry(auto_describe=True)

TOOL_SECONDS = Histogram(
    "sealedkb_tool_duration_seconds",
    "MCP tool call latency by tool and outcome (ok or the error code).",
    ["tool", "outcome"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class KnowledgeBaseCollector(Collector):
    """State read at scrape time (cheap queries; no secrets in labels)."""

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb

    def collect(self) -> Iterator[GaugeMetricFamily | InfoMetricFamily]:
        availability, _ = self.kb.availability()
        avail = GaugeMetricFamily(
            "sealedkb_available",
            "1 when data keys unwrap and the database answers, else 0.",
        )
        avail.add_metric([], 1.0 if availability == "available" else 0.0)
        yield avail
        info = InfoMetricFamily(
            "sealedkb_database_transport", "Database transport and negotiated TLS."
        )
        try:
            tls = self.kb.db.tls_session()
            entries = float(self.kb.entries.counts()["total"])
        except SealedKBError:
            return
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


_collector: KnowledgeBaseCollector | None = None


def register_kb(kb: KnowledgeBase) -> None:
    """Report this knowledge base's state (replacing any earlier one: one per process)."""
    global _collector
    if _collector is not None:
        REGISTRY.unregister(_collector)
    _collector = KnowledgeBaseCollector(kb)
    REGISTRY.register(_collector)


def render() -> bytes:
    return generate_latest(REGISTRY)
