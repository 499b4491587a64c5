"""``sealedkb doctor [--json]``: print the checks of :mod:`sealedkb.ops.doctor`.

Exit code 0 when no check FAILs (warnings allowed), 1 otherwise.
"""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console
from rich.text import Text

from sealedkb.adapters.cli._common import JsonOpt, command, print_json, state

commands = typer.Typer()

_STYLE = {"OK": "green", "WARN": "yellow", "FAIL": "bold red", "SKIP": "dim"}


@command(commands, "doctor")
def doctor(json_out: JsonOpt = False) -> None:
    """Check configuration, database and TLS, keys, permissions, snapshots and clock."""
    from sealedkb.ops import doctor as checks

    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    results = checks.run(state.home)
    failed = checks.failed(results)
    if json_out:
        print_json({"ok": not failed, "checks": [c.to_dict() for c in results]})
    else:
        out = Console(soft_wrap=True, highlight=False)
        width = max(len(c.name) for c in results)
        for c in results:
            line = Text(f"{c.status.value:<5} ", style=_STYLE[c.status.value])
            line.append(f"{c.name:<{width}}  ")
            line.append(c.message)
            out.print(line)
            if c.fix and c.status.value in ("WARN", "FAIL"):
                out.print(Text(f"{'':<{width + 8}}fix: {c.fix}", style="dim"))
        counts = {s: sum(1 for c in results if c.status.value == s) for s in _STYLE}
        out.print(Text(", ".join(f"{n} {s}" for s, n in counts.items() if n)))
    raise typer.Exit(1 if failed else 0)
