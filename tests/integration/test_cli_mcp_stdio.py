"""The stdio configuration ``sealedkb mcp config`` prints is one an MCP client can use
as it stands: its command, args and env, given to the SDK's stdio client, start a
server on the initialised home, which lists its tools and finds an entry the CLI added.
"""

from __future__ import annotations

import asyncio
import json
import os
import tomllib
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters
from typer.testing import CliRunner

from sealedkb.adapters.cli.app import app

TOOLS = {"kb_add", "kb_get", "kb_update", "kb_delete", "kb_list", "kb_stats", "kb_health"}


@pytest.mark.parametrize("client", ["claude-code", "codex"])
def test_printed_stdio_config_starts_a_working_server(
    home: Path, database_url: str, client: str
) -> None:
    # The home's own config.toml holds the database URL (a secret the printed
    # configuration never carries); the environment gives the embedder to pass on.
    home.mkdir(parents=True)
    config = home / "config.toml"
    config.write_text(f"database_url = {json.dumps(database_url)}\n", encoding="utf-8")
    os.chmod(config, 0o600)
    runner = CliRunner()
    env = {"SEALEDKB_HOME": str(home), "SEALEDKB_EMBEDDER": "hash"}

    def cli(*args: str) -> str:
        result = runner.invoke(app, ["--home", str(home), *args], env=env)
        assert result.exit_code == 0, result.output
        return result.stdout

    cli("init")
    entry_id = cli("add", "Rotate the KMS key yearly", "--title", "rotation").strip()
    printed = cli("mcp", "config", "--client", client)
    if client == "codex":
        server = tomllib.loads(printed)["mcp_servers"]["sealedkb"]
    else:
        server = json.loads(printed)["mcpServers"]["sealedkb"]
    assert database_url not in printed
    # This home and the settings of the calling environment, never the secret URL.
    assert server["env"]["SEALEDKB_HOME"] == str(home.absolute())
    assert server["env"]["SEALEDKB_EMBEDDER"] == "hash"
    assert "SEALEDKB_DATABASE_URL" not in server["env"]
    params = StdioServerParameters(
        command=server["command"], args=server["args"], env=server["env"]
    )

    async def go() -> None:
        async with Client(params) as mcp_client:
            tools = {t.name for t in (await mcp_client.list_tools()).tools}
            assert tools >= TOOLS
            got = await mcp_client.call_tool("kb_get", {"id": entry_id})
            assert not got.is_error, got
            assert got.structured_content is not None
            assert got.structured_content["title"] == "rotation"

    asyncio.run(go())
