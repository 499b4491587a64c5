"""``sealedkb db url | stop``: the database sealedkb uses."""

from __future__ import annotations

import sys

import typer

from sealedkb.adapters.cli._common import command, settings
from sealedkb.errors import ValidationError

db_app = typer.Typer(help="The database sealedkb uses.", no_args_is_help=True)


@command(db_app, "url")
def db_url() -> None:
    """Print a libpq URI for psql (password removed)."""
    from sealedkb.kb.wiring import psql_url

    sys.stdout.write(psql_url(settings()) + "\n")


@command(db_app, "stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL server (it starts again on the next command)."""
    from sealedkb.kb.wiring import stop_embedded_database

    loaded = settings()
    if loaded.database_url is not None:
        raise ValidationError(
            "an external database is configured; nothing to stop", field="database_url"
        )
    stopped = stop_embedded_database(loaded)
    sys.stdout.write("stopped\n" if stopped else "not running\n")
