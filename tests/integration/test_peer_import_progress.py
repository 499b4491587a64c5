"""The progress bar of ``import`` and ``export``: one line in an 80-column terminal
with the elapsed time visible, whatever the file name; no bar with --json or when
stdout is not a terminal."""

from __future__ import annotations

import io
import re
import sys

import pytest
from rich.console import Console

from sealedkb.adapters.cli._common import fit, progress_bar, quiet

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def rendered(description: str, width: int = 80) -> list[str]:
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=True, color_system=None)
    bar = progress_bar("importing", json_out=False, console=console)
    task = bar.add_task("", total=123456)
    bar.update(task, completed=654, description=fit(description, console))
    console.print(bar.get_renderable())
    return [ANSI.sub("", line) for line in buf.getvalue().splitlines() if line.strip()]


@pytest.mark.parametrize(
    "name", ["a.md", "docs/" + "very-long-folder-name/" * 12 + "the-file.md", "ü" * 200]
)
def test_the_bar_fits_80_columns_with_the_timer_visible(name: str) -> None:
    lines = rendered(name)
    assert len(lines) == 1, lines
    assert len(lines[0]) <= 80
    assert re.search(r"\b0:00:0\d\b", lines[0]), lines[0]  # the elapsed time
    assert "654/123456" in lines[0]
    if len(name) > 30:
        assert "…" in lines[0] and lines[0].rstrip().endswith(name[-10:])


def test_the_bar_is_quiet_with_json_or_without_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert quiet(True) and not quiet(False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert quiet(False)
    assert progress_bar("importing", json_out=False).disable
    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=True)
    with progress_bar("importing", json_out=True, console=console) as bar:
        bar.add_task("x", total=3)
    assert buf.getvalue() == ""
