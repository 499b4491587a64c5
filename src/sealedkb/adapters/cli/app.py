"""The ``sealedkb`` command line (typer + rich), assembled from its command modules.

Every read command takes ``--json``. Errors print ``error[CODE] (field): message``
on stderr and exit with the code of docs/DESIGN.md §7 (see :mod:`._common`). The
command modules import what they need inside their command bodies, so building
this app (and ``sealedkb --help``) stays light.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from sealedkb.adapters.cli import (
    alarms,
    bulk,
    db,
    doctor,
    entries,
    export,
    keys,
    mcp_config,
    migrate,
    search,
    serve,
    snapshot,
)
from sealedkb.adapters.cli._common import report_error, state
from sealedkb.errors import SealedKBError

app = typer.Typer(
    name="sealedkb",
    help="An encrypted-at-rest knowledge base for teams and AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(
    home: Annotated[
        Path | None,
        typer.Option(
            "--home", help="sealedkb home folder (default $SEALEDKB_HOME or user data dir)."
        ),
    ] = None,
    principal: Annotated[
        str | None,
        typer.Option(
            "--principal",
            help="Who is acting, for key policies and the audit trail "
            "(default $SEALEDKB_PRINCIPAL or admin).",
        ),
    ] = None,
) -> None:
    state.home = home
    state.principal = principal


# Top-level commands, in the order `sealedkb --help` lists them ...
for commands in (
    entries.commands,
    doctor.commands,
    keys.commands,
    bulk.commands,
    search.commands,
    export.commands,
    serve.commands,
):
    app.add_typer(commands)
# ... then the command groups.
for name, group in (
    ("db", db.db_app),
    ("key", keys.key_app),
    ("datakey", keys.datakey_app),
    ("audit", keys.audit_app),
    ("alarms", alarms.alarms_app),
    ("snapshot", snapshot.snapshot_app),
    ("migrate", migrate.migrate_app),
    ("token", serve.token_app),
    ("mcp", mcp_config.mcp_app),
):
    app.add_typer(group, name=name)


def main() -> None:
    try:
        app()
    except SealedKBError as exc:  # raised outside a command body
        report_error(exc)
        sys.exit(exc.exit_code)
