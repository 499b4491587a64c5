"""The Prometheus rules (promtool), the Grafana dashboard and the runbook anchors that
alarm notifications link to: shipped files checked against the code."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sealedkb.monitoring import alarms

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "sealedkb-dashboard.json"
RUNBOOK = ROOT / "docs" / "ENCRYPTION-KEY-MANAGEMENT.md"
MONITOR_SRC = (ROOT / "src" / "sealedkb" / "monitoring" / "metrics.py").read_text()


def _promtool() -> str:
    found = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    if found is None:
        message = (
            "promtool is not installed (Debian: apt-get install -y prometheus; scripts/test "
            "installs it): the Prometheus rule tests cannot run"
        )
        if os.environ.get("SEALEDKB_TEST_REQUIRE_PROMTOOL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = _promtool()
    check = subprocess.run(
        [promtool, "check", "rules", "alerts.yml"], cwd=RULES, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"], cwd=RULES, capture_output=True, text=True
    )
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout


def _exported_metric(name: str) -> bool:
    base = re.sub(r"_(total|bucket|count|sum|info)$", "", name)
    return f'"{base}"' in MONITOR_SRC or f'"{base}_info"' in MONITOR_SRC


def test_every_alarm_has_a_rule_with_its_runbook_link_and_known_metrics() -> None:
    text = (RULES / "alerts.yml").read_text()
    for spec in alarms.DEFAULT_ALARMS:
        assert f"alert: Sealedkb{spec.name}\n" in text, spec.name
        assert f"#alarm-{spec.name.lower()}" in text, spec.name
    for metric in set(re.findall(r"\bsealedkb_[a-z_]+", text)):
        assert _exported_metric(metric), metric


def test_dashboard_is_valid_and_uses_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["panels"]
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bsealedkb_[a-z_]+", e)}
    assert used
    for metric in used:
        assert _exported_metric(metric), metric
    for wanted in (
        "sealedkb_key_provider_requests_total",
        "sealedkb_data_key_cache_hits_total",
        "sealedkb_integrity_failures_total",
        "sealedkb_available",
        "sealedkb_key_state",
        "sealedkb_snapshot_age_seconds",
        "sealedkb_audit_checkpoint_lag_seconds",
        "sealedkb_database_transport_info",
    ):
        assert wanted in used, wanted


def _github_slug(heading: str) -> str:
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def test_runbook_has_a_section_per_alarm_matching_the_links() -> None:
    headings = [
        _github_slug(line.lstrip("#"))
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("#")
    ]
    for spec in alarms.DEFAULT_ALARMS:
        url = spec.runbook_url("docs/ENCRYPTION-KEY-MANAGEMENT.md")
        assert url.split("#", 1)[1] in headings, spec.name
    assert "22-monitoring-and-alarms" in headings
