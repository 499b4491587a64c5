"""The sealedkb command line (typer). ``main`` is the console entry point; the app
is assembled in :mod:`sealedkb.adapters.cli.app` and imported only when run."""

from __future__ import annotations

__all__ = ["main"]


def main() -> None:
    from sealedkb.adapters.cli.app import main as run

    run()
