"""Alarms and metrics through a real ``sealedkb serve`` subprocess (monitoring and alarms): the key
is disabled by an operator in another process, an agent's call fails, serve's own
evaluator raises KeyDisabled and tells a local webhook once; enabling the key
brings it back to OK, once. ``/metrics`` parses with prometheus-client's parser and
no label carries plaintext, ids, keys or query text."""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path
from typing import Any

import httpx2 as httpx
from prometheus_client.parser import text_string_to_metric_families
from tests.mcp_helpers import error_of, http_client, http_server, server_env
from tests.webhook import receiver

from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode

SECRET = "s3cr3t-served-body"
FAST = json.dumps(
    {
        name: {"period": 3}
        for name in ("KeyDisabled", "KeyAccessFailures", "EncryptionCredentialsInaccessible")
    }
)


async def call(base: str, token: str, tool: str, args: dict[str, Any]) -> Any:
    async with http_client(base, token) as c:
        return await c.call_tool(tool, args)


def sealedkb(
    home: Path, database_url: str, *args: str, **env: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "sealedkb", *args],
        env=server_env(home, database_url, **env),
        capture_output=True,
        timeout=60,
    )


def alarm_states(home: Path, database_url: str) -> dict[str, str]:
    proc = sealedkb(home, database_url, "alarms", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    return {a["name"]: a["state"] for a in json.loads(proc.stdout)}


def test_serve_raises_and_clears_key_disabled_with_one_webhook_each(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON)
    entry = kb.add(SECRET)
    _, token = kb.create_token("agent", "writer", ["default"])
    scrape = {"Authorization": f"Bearer {kb.create_token('prometheus', 'admin', ['*'])[1]}"}
    kb.close()
    with (
        receiver() as hook,
        http_server(
            home,
            database_url,
            SEALEDKB_ALARM_WEBHOOK_URL=hook.url,
            SEALEDKB_ALARM_WEBHOOK_SECRET="serve-secret",
            SEALEDKB_ALARM_INTERVAL="0.5",
            SEALEDKB_DATA_KEY_MAX_AGE="1",
            SEALEDKB_ALARMS=FAST,
        ) as (base, _),
    ):
        deadline = time.monotonic() + 30
        while alarm_states(home, database_url).get("KeyDisabled") != "OK":
            assert time.monotonic() < deadline, "evaluator did not start"
            time.sleep(0.3)
        assert not asyncio.run(call(base, token, "kb_get", {"id": str(entry.id)})).is_error
        assert sealedkb(home, database_url, "key", "disable").returncode == 0
        time.sleep(1.5)  # the data-key cache bound
        r = asyncio.run(call(base, token, "kb_get", {"id": str(entry.id)}))
        assert error_of(r)["code"] == "KEY_UNAVAILABLE"
        hook.wait_for(lambda: hook.of("KeyDisabled") == ["ALARM"])
        # another process sees serve's state; /metrics shows it too
        assert alarm_states(home, database_url)["KeyDisabled"] == "ALARM"
        text = httpx.get(base + "/metrics", headers=scrape).text
        assert 'sealedkb_alarm_state{alarm="KeyDisabled",state="ALARM"} 1.0' in text
        assert 'sealedkb_key_state{state="Disabled"} 1.0' in text
        assert 'sealedkb_key_state_refusals_total{key_state="Disabled"}' in text
        assert sealedkb(home, database_url, "key", "enable").returncode == 0
        hook.wait_for(lambda: hook.of("KeyDisabled") == ["ALARM", "OK"])
        hook.wait_for(lambda: hook.of("EncryptionCredentialsInaccessible") == ["ALARM", "OK"])
        time.sleep(2)  # several more ticks: no repeated notification
        assert hook.of("KeyDisabled") == ["ALARM", "OK"]
        assert hook.of("KeyAccessFailures") == ["ALARM", "OK"]
        assert not asyncio.run(call(base, token, "kb_get", {"id": str(entry.id)})).is_error
        for raw, headers in zip(hook.raw, hook.headers, strict=True):
            want = "sha256=" + hmac.new(b"serve-secret", raw, sha256).hexdigest()
            assert headers["x-sealedkb-signature"] == want
            assert SECRET.encode() not in raw and str(entry.id).encode() not in raw
        hist = sealedkb(home, database_url, "alarms", "history", "KeyDisabled", "--json")
        changes = [(h["previous_state"], h["state"]) for h in json.loads(hist.stdout)]
        assert changes[:2] == [("ALARM", "OK"), ("OK", "ALARM")]


def test_metrics_parse_and_labels_are_bounded(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON)
    ids = [str(kb.add(f"{SECRET} {i}", namespace=f"team-{i % 2}").id) for i in range(3)]
    _, token = kb.create_token("agent", "writer", ["*"])
    scrape = {"Authorization": f"Bearer {kb.create_token('prometheus', 'admin', ['*'])[1]}"}
    kb.close()
    with http_server(home, database_url, SEALEDKB_ALARM_INTERVAL="1") as (base, _):
        for i in ids:
            assert not asyncio.run(call(base, token, "kb_get", {"id": i})).is_error
        r = asyncio.run(call(base, token, "kb_list", {"tag": SECRET, "namespace": "team-0"}))
        assert not r.is_error
        text = httpx.get(base + "/metrics", headers=scrape).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "sealedkb_key_provider_request_duration_seconds",
        "sealedkb_key_provider_requests",
        "sealedkb_key_state_refusals",
        "sealedkb_data_key_cache_hits",
        "sealedkb_data_key_cache_misses",
        "sealedkb_integrity_failures",
        "sealedkb_available",
        "sealedkb_key_state",
        "sealedkb_key_rotation_days_remaining",
        "sealedkb_namespace_entries",
        "sealedkb_operation_duration_seconds",
        "sealedkb_tool_duration_seconds",
        "sealedkb_audit_head_seq",
        "sealedkb_audit_checkpoint_lag_seconds",
        "sealedkb_database_transport_info",
        "sealedkb_alarm_state",
    ):
        assert name in families, name
    samples = [s for f in families.values() for s in f.samples]
    ns = {s.labels["namespace"]: s.value for s in samples if s.name == "sealedkb_namespace_entries"}
    assert ns == {"team-0": 2.0, "team-1": 1.0}
    gets = [
        s
        for s in samples
        if s.name == "sealedkb_operation_duration_seconds_count" and s.labels["operation"] == "get"
    ]
    assert gets and gets[0].value >= 3
    hits = [s for s in samples if s.name == "sealedkb_data_key_cache_hits_total"]
    assert hits and hits[0].value >= 1
    allowed = {
        "tool", "outcome", "operation", "key_state", "state", "namespace", "alarm", "le",
        "transport", "tls_protocol", "tls_cipher",
    }  # fmt: skip
    uuid_re = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-")
    for s in samples:
        assert set(s.labels) <= allowed, s
        for value in s.labels.values():
            assert SECRET not in value and not uuid_re.search(value), s
    assert SECRET not in text and not any(i in text for i in ids)
    # bounded: a fixed set of series, whatever the traffic
    assert len(samples) < 1500
