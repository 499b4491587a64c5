"""``init``, ``status`` (and ``status --json``: ``search_index``) and the auditor summary
say where the search index lives, and for the server index what it leaks, in one line
with a link to docs/SEARCH.md."""

from __future__ import annotations

import json
from typing import Any

from tests.cli_helpers import Cli

HASH = {"SEALEDKB_EMBEDDER": "hash"}


def _status(cli: Cli) -> dict[str, Any]:
    r = cli("status", "--json", env=HASH)
    assert r.exit_code == 0, r.output
    result: dict[str, Any] = json.loads(r.output)
    return result


def _check(status: dict[str, Any]) -> dict[str, Any]:
    (check,) = [c for c in status["summary"] if c["check"] == "search_index"]
    return check  # type: ignore[no-any-return]


def test_memory_mode_in_init_status_and_summary(cli: Cli) -> None:
    r = cli("init", "--search-index", "memory", env=HASH)
    assert r.exit_code == 0, r.output
    assert "search index: memory" in r.output and "no searchable column" in r.output
    status = _status(cli)
    index = status["search_index"]
    assert index["mode"] == "memory"
    assert "no searchable column" in index["leakage"]
    assert index["docs"].startswith("docs/SEARCH.md")
    check = _check(status)
    assert check["ok"] is True and check["value"].startswith("memory")
    r = cli("status", env=HASH)
    assert r.exit_code == 0 and "search_index" in r.output and "memory" in r.output, r.output


def test_server_mode_states_its_leakage_with_the_link(cli: Cli) -> None:
    r = cli("init", "--search-index", "server", env=HASH)
    assert r.exit_code == 0, r.output
    assert "search index: server" in r.output and "docs/SEARCH.md" in r.output
    status = _status(cli)
    index = status["search_index"]
    assert index["mode"] == "server"
    assert "share words" in index["leakage"] and "distances" in index["leakage"]
    check = _check(status)
    assert check["ok"] is True
    assert check["value"].startswith("server") and "docs/SEARCH.md" in check["value"]
    assert len(check["value"]) <= 80


def test_plaintext_knowledge_base_is_server_indexed_by_postgresql(cli: Cli) -> None:
    r = cli("init", "--encryption", "off", env=HASH)
    assert r.exit_code == 0, r.output
    status = _status(cli)
    assert status["search_index"]["mode"] == "server"
    assert "plaintext" in status["search_index"]["leakage"]
    assert _check(status)["ok"] is None
