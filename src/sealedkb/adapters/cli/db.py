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
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from sealedkb.kb.wiring import resolve_database

    target = resolve_database(settings(), create=False)
    if target.kind == "embedded":
        url = target.url
    else:
        params = conninfo_to_dict(target.url)
        params.pop("password", None)
        url = make_conninfo("", **params)
    sys.stdout.write(url + "\n")


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
