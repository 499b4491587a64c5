"""What every command module of the CLI shares: the global options' state, settings
loading, :func:`open_kb`, JSON printing, the shared options and the :func:`command`
decorator, the one place a :class:`~sealedkb.errors.SealedKBError` becomes
``error[CODE] (field): message`` on stderr and the exit code of docs/DESIGN.md §7.

Kept light on purpose: ``sealedkb --help`` imports this module and every command
module, so anything heavy (the knowledge base, search, crypto, the MCP server) is
imported inside the command bodies that use it.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, ParamSpec

import typer
from rich.console import Console
from rich.text import Text

from sealedkb.errors import SealedKBError

if TYPE_CHECKING:
    from rich.progress import Progress

    from sealedkb.config import Settings
    from sealedkb.kb.knowledge_base import KnowledgeBase

__all__ = [
    "JsonOpt",
    "NamespaceOpt",
    "command",
    "err",
    "fail",
    "fit",
    "open_kb",
    "out",
    "print_json",
    "progress_bar",
    "quiet",
    "report_error",
    "settings",
    "state",
    "warn",
]

P = ParamSpec("P")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@dataclass
class State:
    """The global options (``--home``, ``--principal``), set by the app's callback."""

    home: Path | None = None
    principal: str | None = None


state = State()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
NamespaceOpt = Annotated[str, typer.Option("--namespace", "-n", help="Namespace (tenant/project).")]


def report_error(exc: SealedKBError) -> None:
    """Print ``error[CODE] (field): message`` on stderr (never markup)."""
    field = f" ({exc.field})" if exc.field else ""
    line = Text("error", style="bold red")
    line.append(f"[{exc.code}]{field}: {exc.message}")
    err.print(line, highlight=False)


def fail(exc: SealedKBError) -> NoReturn:
    """Report ``exc`` and end the command with its exit code."""
    report_error(exc)
    raise typer.Exit(exc.exit_code)


def warn(message: str) -> None:
    """``warning: message`` on stderr (the message is never read as markup)."""
    err.print(Text("warning: ", style="yellow") + Text(message), highlight=False)


def command(
    group: typer.Typer, name: str | None = None
) -> Callable[[Callable[P, None]], Callable[P, None]]:
    """Register the function as command ``name`` of ``group``; a SealedKBError it
    raises is printed as ``error[CODE] (field): message`` and exits with its code."""

    def decorate(fn: Callable[P, None]) -> Callable[P, None]:
        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> None:
            try:
                fn(*args, **kwargs)
            except SealedKBError as exc:
                fail(exc)

        group.command(name)(run)
        return run

    return decorate


def settings() -> Settings:
    """The settings of this home (``--home``, ``--principal``, environment), with
    logging on stderr at their level."""
    from sealedkb.config import load_settings

    loaded = load_settings(state.home, principal=state.principal)
    logging.basicConfig(
        level=loaded.log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    return loaded


@contextmanager
def open_kb() -> Iterator[KnowledgeBase]:
    """The knowledge base of this home, closed when the block ends."""
    from sealedkb.kb.knowledge_base import KnowledgeBase

    kb = KnowledgeBase.open(settings())
    try:
        yield kb
    finally:
        kb.close()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


# --- the progress bar of long commands (import, export) -----------------------------

BAR_WIDTH = 20
# label (<= 9) + bar + "NNNNNN/NNNNNN" + "H:MM:SS" + the spaces between the columns
BAR_FIXED_WIDTH = 9 + BAR_WIDTH + 13 + 7 + 5


def quiet(json_out: bool) -> bool:
    """No progress bar: JSON wanted, or stdout is not a terminal."""
    return json_out or not sys.stdout.isatty()


def progress_bar(label: str, *, json_out: bool, console: Console | None = None) -> Progress:
    """``label [bar] done/total elapsed description`` on stderr: one line that fits
    an 80-column terminal, the description last and cut to fit (see :func:`fit`), so
    the timer never leaves the line; disabled when :func:`quiet` (or, with an
    explicit ``console``, with ``--json``)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar
    from rich.table import Column

    return Bar(
        TextColumn(label[:9], markup=False),
        BarColumn(bar_width=BAR_WIDTH),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn(
            "{task.description}",
            markup=False,  # file names are not markup
            table_column=Column(no_wrap=True, overflow="ellipsis"),
        ),
        console=console or err,
        transient=True,
        disable=json_out if console is not None else quiet(json_out),
    )


def fit(description: str, console: Console | None = None) -> str:
    """``description`` cut from the left, with an ellipsis, to the room the bar leaves."""
    room = max(0, (console or err).width - BAR_FIXED_WIDTH)
    if len(description) <= room:
        return description
    return "…" + description[-(room - 1) :] if room > 1 else ""
