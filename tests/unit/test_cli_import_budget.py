"""The command line stays light: building the app and printing ``sealedkb --help``
imports none of the heavy libraries (numerics, the embedding runtime, the MCP
server stack). Each check runs in a fresh interpreter, so earlier imports in the
test process do not count."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("numpy", "onnxruntime", "tokenizers", "mcp", "uvicorn", "starlette")

PROBE = """
import contextlib, io, json, sys
import sealedkb.adapters.cli.app as cli
{action}
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
"""

HELP = """
with contextlib.redirect_stdout(io.StringIO()) as text:
    try:
        cli.app({args!r}, prog_name="sealedkb")
    except SystemExit as exc:
        assert exc.code == 0, exc.code
assert "Usage" in text.getvalue()
"""


def loaded_after(action: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(action=action)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_importing_the_app_loads_no_heavy_library() -> None:
    assert not loaded_after("").intersection(HEAVY)


def test_help_loads_no_heavy_library() -> None:
    assert not loaded_after(HELP.format(args=["--help"])).intersection(HEAVY)


def test_a_command_group_help_loads_no_heavy_library() -> None:
    for args in (["search", "--help"], ["serve", "--help"], ["mcp", "config", "--help"]):
        assert not loaded_after(HELP.format(args=args)).intersection(HEAVY), args
