"""A third-party MCP client against the HTTP server: the MCP Inspector's CLI.

The current @modelcontextprotocol/inspector needs Node >= 22; Debian 12 ships
Node 20, so this pins the inspector's own CLI package at 0.16.8 (the last
that runs on Node 20 and has --header). Skipped, with a message, only when
node/npm are missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.mcp_helpers import http_server

from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode

INSPECTOR = "@modelcontextprotocol/inspector-cli@0.16.8"
CACHE = Path.home() / ".cache" / "sealedkb-tests" / "inspector-cli-0.16.8"


def inspector_cli() -> Path:
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node/npm not installed: the MCP Inspector CLI test needs them")
    cli = CACHE / "node_modules" / "@modelcontextprotocol" / "inspector-cli" / "build" / "cli.js"
    if not cli.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "npm",
                "install",
                "--silent",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(CACHE),
                INSPECTOR,
            ],
            check=True,
            timeout=600,
        )
    return cli


def inspect(cli: Path, url: str, token: str, *args: str) -> dict[str, object]:
    proc = subprocess.run(
        [
            "node",
            str(cli),
            "--cli",
            url,
            "--transport",
            "http",
            "--header",
            f"Authorization: Bearer {token}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return dict(json.loads(proc.stdout))


def test_inspector_cli_lists_and_calls_tools(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    cli = inspector_cli()
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON)
    _, token = kb.create_token("inspector", "writer", ["default"])
    kb.close()
    with http_server(home, database_url) as (base, _):
        url = base + "/mcp"
        tools = inspect(cli, url, token, "--method", "tools/list")
        names = {t["name"] for t in tools["tools"]}  # type: ignore[attr-defined]
        assert {"kb_add", "kb_get", "kb_list", "kb_health"} <= names
        added = inspect(
            cli,
            url,
            token,
            "--method",
            "tools/call",
            "--tool-name",
            "kb_add",
            "--tool-arg",
            "content=Inspector was here",
            "--tool-arg",
            "entry_type=lesson",
        )
        entry = added["structuredContent"]
        got = inspect(
            cli,
            url,
            token,
            "--method",
            "tools/call",
            "--tool-name",
            "kb_get",
            "--tool-arg",
            f"id={entry['id']}",  # type: ignore[index]
        )
        assert got["structuredContent"]["content"] == "Inspector was here"  # type: ignore[index]
        found = inspect(
            cli,
            url,
            token,
            "--method",
            "tools/call",
            "--tool-name",
            "kb_search",
            "--tool-arg",
            "query=inspector",
            "--tool-arg",
            "mode=keyword",
        )
        hits = found["structuredContent"]["hits"]  # type: ignore[index]
        assert [h["id"] for h in hits] == [entry["id"]]  # type: ignore[index]
