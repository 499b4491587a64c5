"""The progress bar of long commands (``import``, ``export``): one line that fits an
80-column terminal with the elapsed time always visible, on stderr, and quiet with
``--json`` or when stdout is not a terminal (a pipe or a file gets no bar)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column

from sealedkb.adapters.cli._common import err

BAR_WIDTH = 20
# label (<= 9) + bar + "NNNNNN/NNNNNN" + "H:MM:SS" + the spaces between the columns
FIXED_WIDTH = 9 + BAR_WIDTH + 13 + 7 + 5


def quiet(json_out: bool) -> bool:
    """No bar: JSON wanted, or stdout is not a terminal."""
    return json_out or not sys.stdout.isatty()


def progress_bar(label: str, *, json_out: bool, console: Console | None = None) -> Progress:
    """``label [bar] done/total elapsed description`` (the description last and cut
    to fit, so the timer never leaves the line)."""
    return Progress(
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
    """``description`` cut (from the left, with an ellipsis) to the room the bar leaves."""
    room = max(0, (console or err).width - FIXED_WIDTH)
    if len(description) <= room:
        return description
    return "…" + description[-(room - 1) :] if room > 1 else ""
