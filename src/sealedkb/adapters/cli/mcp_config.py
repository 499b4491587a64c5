"""``sealedkb mcp config --client C``: the MCP configuration an AI client needs to reach
this knowledge base, printed or merged into the client's file (``--write``).

stdio (default): the client starts ``<this sealedkb> serve --transport stdio`` with
``SEALEDKB_HOME`` and the non-secret ``SEALEDKB_*`` settings of this shell (paths made
absolute). Secrets (passphrase, database URL, webhook settings) are never written:
they are named on stderr, to be given to the client's environment by hand.
``--http URL``: the URL and an Authorization header whose value is a placeholder
naming the bearer token (``sealedkb token create --name N``), never a token.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sealedkb.adapters.cli._common import command, err, settings
from sealedkb.errors import ValidationError

if TYPE_CHECKING:
    from sealedkb.config import Settings

SERVER_NAME = "sealedkb"
SERVE_ARGS = ["serve", "--transport", "stdio"]
# Set by the CLI call itself, not a setting the server needs.
_NOT_PASSED = {"home", "principal"}

mcp_app: typer.Typer = typer.Typer(
    help="Connect AI clients (Claude, Cursor, VS Code, Codex) over MCP.", no_args_is_help=True
)


class Client(StrEnum):
    CLAUDE_CODE = "claude-code"
    CLAUDE_DESKTOP = "claude-desktop"
    CURSOR = "cursor"
    VSCODE = "vscode"
    CODEX = "codex"


def default_path(client: Client) -> Path:
    """Where the client reads its MCP servers (project files relative to the cwd)."""
    home = Path.home()
    if client is Client.CLAUDE_CODE:
        return Path(".mcp.json")
    if client is Client.CURSOR:
        return Path(".cursor") / "mcp.json"
    if client is Client.VSCODE:
        return Path(".vscode") / "mcp.json"
    if client is Client.CODEX:
        return Path(os.environ.get("CODEX_HOME") or home / ".codex") / "config.toml"
    if sys.platform == "darwin":
        return home / "Library/Application Support/Claude/claude_desktop_config.json"
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", home)) / "Claude" / "claude_desktop_config.json"
    return home / ".config" / "Claude" / "claude_desktop_config.json"


def sealedkb_command() -> list[str]:
    """The absolute command line of the running sealedkb executable."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name in ("sealedkb", "sealedkb.exe"):
        found = shutil.which(str(argv0)) if argv0.parent == Path() else str(argv0)
        if found and Path(found).is_file():
            return [str(Path(found).absolute())]
    beside = Path(sys.executable).parent / "sealedkb"
    if beside.is_file():
        return [str(beside.absolute())]
    found = shutil.which("sealedkb")
    if found:
        return [str(Path(found).absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "sealedkb"]


def server_env(loaded: Settings, environ: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """``SEALEDKB_HOME`` plus the non-secret SEALEDKB_* settings set in ``environ``;
    and the names of the secret ones left out."""
    from pydantic import SecretStr

    env = {"SEALEDKB_HOME": str(loaded.home.absolute())}
    left_out: list[str] = []
    fields = type(loaded).model_fields
    for name in sorted(environ):
        if not name.upper().startswith("SEALEDKB_"):
            continue
        field = name[len("SEALEDKB_") :].lower()
        if field in _NOT_PASSED or field not in fields:
            continue
        value = getattr(loaded, field)
        if isinstance(value, SecretStr):
            left_out.append(name.upper())
        elif isinstance(value, Path):
            env[name.upper()] = str(value.absolute())
        else:
            env[name.upper()] = environ[name]
    return env, left_out


def token_env_var(token_name: str) -> str:
    return "SEALEDKB_TOKEN_" + (re.sub(r"[^A-Za-z0-9]+", "_", token_name).strip("_").upper() or "X")


def server_entry(
    client: Client,
    *,
    command_line: list[str],
    env: dict[str, str],
    http: str | None,
    token_name: str,
) -> dict[str, Any]:
    """The one server entry, in the client's own shape."""
    if http is None:
        entry: dict[str, Any] = {
            "command": command_line[0],
            "args": [*command_line[1:], *SERVE_ARGS],
        }
        if client in (Client.CLAUDE_CODE, Client.VSCODE):
            entry = {"type": "stdio", **entry}
        entry["env"] = env
        return entry
    var = token_env_var(token_name)
    bearer = {
        Client.CLAUDE_CODE: f"Bearer ${{{var}}}",  # expanded by Claude Code
        Client.CURSOR: f"Bearer ${{env:{var}}}",  # expanded by Cursor
        Client.VSCODE: f"Bearer ${{input:{var.lower().replace('_', '-')}}}",  # prompted
        Client.CLAUDE_DESKTOP: f"Bearer <sealedkb token {token_name!r}>",  # replace by hand
    }
    if client is Client.CODEX:
        return {"url": http, "bearer_token_env_var": var}
    entry = {"url": http, "headers": {"Authorization": bearer[client]}}
    if client in (Client.CLAUDE_CODE, Client.VSCODE):
        entry = {"type": "http", **entry}
    return entry


def document(client: Client, entry: dict[str, Any], token_name: str) -> dict[str, Any]:
    """The whole configuration document holding the entry."""
    if client is Client.VSCODE:
        doc: dict[str, Any] = {"servers": {SERVER_NAME: entry}}
        auth = entry.get("headers", {}).get("Authorization", "")
        if auth.startswith("Bearer ${input:"):
            doc["inputs"] = [
                {
                    "type": "promptString",
                    "id": auth[len("Bearer ${input:") : -1],
                    "description": f"sealedkb bearer token {token_name!r}",
                    "password": True,
                }
            ]
        return doc
    if client is Client.CODEX:
        return {"mcp_servers": {SERVER_NAME: entry}}
    return {"mcpServers": {SERVER_NAME: entry}}


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(type(value).__name__)


def codex_toml(entry: dict[str, Any]) -> str:
    """``[mcp_servers.sealedkb]`` with its keys (env as an inline table)."""
    lines = [f"[mcp_servers.{SERVER_NAME}]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in entry.items()]
    return "\n".join(lines) + "\n"


_OWN_TABLE = re.compile(rf"^\s*\[\s*mcp_servers\s*\.\s*\"?{SERVER_NAME}\"?\s*(\.[^\]]*)?\]\s*$")
_ANY_TABLE = re.compile(r"^\s*\[")


def merge_toml(existing: str, section: str) -> str:
    """``existing`` without its own ``[mcp_servers.sealedkb…]`` tables, then ``section``."""
    kept: list[str] = []
    skipping = False
    for line in existing.splitlines():
        if _OWN_TABLE.match(line):
            skipping = True
            continue
        if skipping and _ANY_TABLE.match(line):
            skipping = False
        if not skipping:
            kept.append(line)
    text = "\n".join(kept).rstrip()
    return (text + "\n\n" if text else "") + section


def merge_json(existing: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """``existing`` with the document's servers (and inputs) merged in, others kept."""
    merged = dict(existing)
    for key, value in doc.items():
        if key == "inputs":
            ids = {i.get("id") for i in value}
            others = [i for i in merged.get("inputs", []) if i.get("id") not in ids]
            merged["inputs"] = [*others, *value]
        else:
            current = merged.get(key)
            merged[key] = {**(current if isinstance(current, dict) else {}), **value}
    return merged


def render(client: Client, doc: dict[str, Any]) -> str:
    if client is Client.CODEX:
        return codex_toml(doc["mcp_servers"][SERVER_NAME])
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def write_config(client: Client, path: Path, doc: dict[str, Any]) -> Path | None:
    """Merge into ``path`` (a backup copy first, when it exists); the backup's path."""
    backup: Path | None = None
    old = ""
    if path.exists():
        try:
            old = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            raise ValidationError(f"cannot read {path} as UTF-8 text", field="path") from None
        backup = path.with_name(path.name + ".bak")
        shutil.copy2(path, backup)
    if client is Client.CODEX:
        try:
            tomllib.loads(old)
        except tomllib.TOMLDecodeError:
            raise ValidationError(f"{path} is not valid TOML", field="path") from None
        text = merge_toml(old, render(client, doc))
        tomllib.loads(text)  # what we write parses
    else:
        try:
            existing = json.loads(old) if old.strip() else {}
        except ValueError:
            raise ValidationError(f"{path} is not valid JSON", field="path") from None
        if not isinstance(existing, dict):
            raise ValidationError(f"{path} does not hold a JSON object", field="path")
        text = json.dumps(merge_json(existing, doc), indent=2, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    from sealedkb._fs import write_atomic

    write_atomic(path, text.encode("utf-8"))  # keeps the file's mode
    return backup


@command(mcp_app, "config")
def config(
    client: Annotated[Client, typer.Option("--client", help="The AI client to configure.")],
    http: Annotated[
        str | None,
        typer.Option("--http", metavar="URL", help="Use the HTTP server at URL, not stdio."),
    ] = None,
    token_name: Annotated[
        str,
        typer.Option("--token-name", help="Name of the bearer token (with --http)."),
    ] = "default",  # noqa: S107 - a token's name, not a token
    write: Annotated[
        bool,
        typer.Option("--write", help="Merge into the client's file (a .bak copy first)."),
    ] = False,
    path: Annotated[
        Path | None, typer.Option("--path", help="The file to write (with --write).")
    ] = None,
) -> None:
    """Print the MCP configuration for CLIENT (stdio by default), or --write it."""
    if path is not None and not write:
        raise ValidationError("--path goes with --write", field="path")
    if http is not None and not re.match(r"^https?://", http):
        raise ValidationError("--http must be an http:// or https:// URL", field="http")
    loaded = settings()
    env, left_out = server_env(loaded, dict(os.environ))
    entry = server_entry(
        client, command_line=sealedkb_command(), env=env, http=http, token_name=token_name
    )
    doc = document(client, entry, token_name)
    for name in left_out if http is None else []:
        err.print(
            f"note: {name} is set here but is a secret and is not written; give it to "
            f"{client.value}'s environment yourself if the server needs it",
            markup=False,
            highlight=False,
        )
    if not write:
        sys.stdout.write(render(client, doc))
        return
    target = path or default_path(client)
    backup = write_config(client, target, doc)
    sys.stdout.write(f"wrote {target}\n")
    if backup is not None:
        err.print(f"backup: {backup}", markup=False, highlight=False)
