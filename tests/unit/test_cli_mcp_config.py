"""``sealedkb mcp config``: the document each AI client reads, without a database.

stdio configurations start this sealedkb (an absolute path) with ``serve
--transport stdio`` and ``SEALEDKB_HOME``; HTTP ones carry the URL and an
Authorization placeholder naming the token. Secrets are never printed or written,
and ``--write`` merges into an existing file after a backup copy.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from sealedkb.adapters.cli.app import app

SERVE = ["serve", "--transport", "stdio"]
SECRET = "correct-horse-battery-staple-42"


def mcp_config(home: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    environ = {"SEALEDKB_HOME": str(home), **(env or {})}
    return CliRunner().invoke(app, ["--home", str(home), "mcp", "config", *args], env=environ)


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    return result.stdout


def json_doc(home: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    doc = json.loads(ok(mcp_config(home, *args, env=env)))
    assert isinstance(doc, dict)
    return doc


def check_stdio(entry: dict[str, Any], home: Path) -> None:
    command = Path(entry["command"])
    assert command.is_absolute()
    assert command.is_file()
    assert entry["args"][-3:] == SERVE
    assert entry["env"]["SEALEDKB_HOME"] == str(home.absolute())


def test_claude_code_project_file(tmp_path: Path) -> None:
    doc = json_doc(tmp_path, "--client", "claude-code")
    assert set(doc) == {"mcpServers"}
    entry = doc["mcpServers"]["sealedkb"]
    assert entry["type"] == "stdio"
    check_stdio(entry, tmp_path)


def test_claude_desktop_file(tmp_path: Path) -> None:
    doc = json_doc(tmp_path, "--client", "claude-desktop")
    assert set(doc) == {"mcpServers"}
    entry = doc["mcpServers"]["sealedkb"]
    assert set(entry) == {"command", "args", "env"}  # Claude Desktop has no "type"
    check_stdio(entry, tmp_path)


def test_cursor_file(tmp_path: Path) -> None:
    doc = json_doc(tmp_path, "--client", "cursor")
    assert set(doc) == {"mcpServers"}
    entry = doc["mcpServers"]["sealedkb"]
    assert set(entry) == {"command", "args", "env"}
    check_stdio(entry, tmp_path)


def test_vscode_file(tmp_path: Path) -> None:
    doc = json_doc(tmp_path, "--client", "vscode")
    assert set(doc) == {"servers"}  # .vscode/mcp.json: "servers", not "mcpServers"
    entry = doc["servers"]["sealedkb"]
    assert entry["type"] == "stdio"
    check_stdio(entry, tmp_path)


def test_codex_toml(tmp_path: Path) -> None:
    text = ok(mcp_config(tmp_path, "--client", "codex"))
    assert text.startswith("[mcp_servers.sealedkb]\n")
    entry = tomllib.loads(text)["mcp_servers"]["sealedkb"]
    assert set(entry) == {"command", "args", "env"}
    check_stdio(entry, tmp_path)


def test_settings_are_passed_and_secrets_are_not(tmp_path: Path) -> None:
    env = {
        "SEALEDKB_ROOT_KEY_FILE": "keys-elsewhere/root.key",  # relative: made absolute
        "SEALEDKB_EMBEDDER": "hash",
        "SEALEDKB_PASSPHRASE": SECRET,
        "SEALEDKB_DATABASE_URL": f"postgresql://kb:{SECRET}@db.internal/kb",
    }
    result = mcp_config(tmp_path, "--client", "claude-code", env=env)
    assert SECRET not in result.output
    passed = json.loads(ok(result))["mcpServers"]["sealedkb"]["env"]
    root_key = Path(passed["SEALEDKB_ROOT_KEY_FILE"])
    assert root_key.is_absolute()
    assert root_key.parts[-2:] == ("keys-elsewhere", "root.key")
    assert passed["SEALEDKB_EMBEDDER"] == "hash"
    assert "SEALEDKB_PASSPHRASE" not in passed
    assert "SEALEDKB_DATABASE_URL" not in passed
    # The left-out secrets are named (never shown) on stderr.
    assert "SEALEDKB_PASSPHRASE" in result.stderr
    assert "SEALEDKB_DATABASE_URL" in result.stderr


@pytest.mark.parametrize("client", ["claude-code", "claude-desktop", "cursor", "vscode"])
def test_http_json_clients(tmp_path: Path, client: str) -> None:
    url = "https://kb.example.com:8765/mcp"
    doc = json_doc(tmp_path, "--client", client, "--http", url, "--token-name", "ci-agent")
    servers = doc["servers" if client == "vscode" else "mcpServers"]
    entry = servers["sealedkb"]
    assert entry["url"] == url
    assert "command" not in entry
    assert "env" not in entry
    auth = entry["headers"]["Authorization"]
    assert auth.startswith("Bearer ")
    assert "ci" in auth.lower()
    assert "agent" in auth.lower()  # the placeholder names the token
    if client in ("claude-code", "vscode"):
        assert entry["type"] == "http"
    if client == "vscode":  # the token is prompted for, stored by VS Code as a secret
        (prompt,) = doc["inputs"]
        assert prompt["password"] is True
        assert auth == "Bearer ${input:" + prompt["id"] + "}"


def test_http_codex(tmp_path: Path) -> None:
    url = "https://kb.example.com:8765/mcp"
    text = ok(mcp_config(tmp_path, "--client", "codex", "--http", url, "--token-name", "ci"))
    entry = tomllib.loads(text)["mcp_servers"]["sealedkb"]
    assert entry == {"url": url, "bearer_token_env_var": "SEALEDKB_TOKEN_CI"}


def test_write_merges_json_and_keeps_a_backup(tmp_path: Path) -> None:
    target = tmp_path / "project" / ".mcp.json"
    target.parent.mkdir()
    original = {
        "mcpServers": {
            "other": {"type": "stdio", "command": "/usr/bin/other", "args": []},
            "sealedkb": {"type": "stdio", "command": "/old/sealedkb", "args": []},
        },
        "someSetting": True,
    }
    target.write_text(json.dumps(original), encoding="utf-8")
    out = ok(mcp_config(tmp_path, "--client", "claude-code", "--write", "--path", str(target)))
    assert str(target) in out
    merged = json.loads(target.read_text(encoding="utf-8"))
    assert merged["someSetting"] is True
    assert merged["mcpServers"]["other"] == original["mcpServers"]["other"]
    check_stdio(merged["mcpServers"]["sealedkb"], tmp_path)
    backup = target.with_name(".mcp.json.bak")
    assert json.loads(backup.read_text(encoding="utf-8")) == original


def test_write_creates_a_missing_file(tmp_path: Path) -> None:
    target = tmp_path / "fresh" / ".vscode" / "mcp.json"
    ok(mcp_config(tmp_path, "--client", "vscode", "--write", "--path", str(target)))
    check_stdio(json.loads(target.read_text(encoding="utf-8"))["servers"]["sealedkb"], tmp_path)
    assert not target.with_name("mcp.json.bak").exists()


def test_write_merges_codex_toml(tmp_path: Path) -> None:
    target = tmp_path / "codex" / "config.toml"  # not the sealedkb home's config.toml
    target.parent.mkdir()
    original = (
        'model = "o4"\n\n'
        "# my other server\n"
        "[mcp_servers.other]\n"
        'command = "other"\n\n'
        "[mcp_servers.sealedkb]\n"
        'command = "/old/sealedkb"\n\n'
        "[mcp_servers.sealedkb.env]\n"
        'SEALEDKB_HOME = "/old/home"\n\n'
        "[profiles.fast]\n"
        'model = "o4-mini"\n'
    )
    target.write_text(original, encoding="utf-8")
    ok(mcp_config(tmp_path, "--client", "codex", "--write", "--path", str(target)))
    text = target.read_text(encoding="utf-8")
    doc = tomllib.loads(text)
    assert doc["model"] == "o4"
    assert doc["profiles"]["fast"]["model"] == "o4-mini"
    assert doc["mcp_servers"]["other"] == {"command": "other"}
    check_stdio(doc["mcp_servers"]["sealedkb"], tmp_path)
    assert "# my other server" in text
    assert target.with_name("config.toml.bak").read_text(encoding="utf-8") == original


def test_write_refuses_a_broken_file(tmp_path: Path) -> None:
    target = tmp_path / "mcp.json"
    target.write_text("{not json", encoding="utf-8")
    result = mcp_config(tmp_path, "--client", "cursor", "--write", "--path", str(target))
    assert result.exit_code == 2
    assert result.stderr.startswith("error[VALIDATION_ERROR] (path): ")
    assert target.read_text(encoding="utf-8") == "{not json"


def test_path_needs_write(tmp_path: Path) -> None:
    result = mcp_config(tmp_path, "--client", "cursor", "--path", str(tmp_path / "x.json"))
    assert result.exit_code == 2
    assert "error[VALIDATION_ERROR] (path): --path goes with --write" in result.stderr
