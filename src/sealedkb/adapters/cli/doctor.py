"""``sealedkb doctor [--json]``: print the checks of :mod:`sealedkb.ops.doctor`.

A module of its own so the command (and its output format) stays out of the
way of the entry commands in ``adapters/cli/app.py``, which registers it with one line.
Exit code 0 when no check FAILs (warnings allowed), 1 otherwise.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from sealedkb.ops import doctor as checks

_STYLE = {"OK": "green", "WARN": "yellow", "FAIL": "bold red", "SKIP": "dim"}


def doctor(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check configuration, database and TLS, keys, permissions, snapshots and clock."""
    from sealedkb.adapters.cli.app import state  # the --home option (late: cli imports us)

    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    results = checks.run(state.home)
    failed = checks.failed(results)
    if json_out:
        data = {"ok": not failed, "checks": [c.to_dict() for c in results]}
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
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
