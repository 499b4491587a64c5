"""``sealedkb export --format jsonl|markdown DIR``: every live entry as plaintext.

Plaintext on purpose, so the command asks first (``--yes``, or a confirmation on
an interactive terminal), refuses a folder inside the sealedkb home or the
database's data directory, writes a new folder 0700 with files 0600 and records
the export in the audit chain (ingest/export.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from sealedkb.adapters.cli._common import JsonOpt, command, open_kb, out, print_json
from sealedkb.errors import ValidationError

commands = typer.Typer()


@command(commands, "export")
def export(
    folder: Annotated[Path, typer.Argument(help="A new folder to write (created 0700).")],
    fmt: Annotated[
        str, typer.Option("--format", help="jsonl (what import --from jsonl reads) or markdown.")
    ] = "jsonl",
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Only this namespace.")
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm writing the knowledge base as plaintext.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Export every live entry as PLAINTEXT (JSON Lines or Markdown notes). Audited."""
    from sealedkb.adapters.cli._common import progress_bar
    from sealedkb.ingest.export import EXPORT_FORMATS, export_entries

    if fmt not in EXPORT_FORMATS:
        raise ValidationError(
            f"unknown export format; expected one of: {', '.join(EXPORT_FORMATS)}",
            field="format",
        )
    if not yes:
        if not (sys.stdin.isatty() and sys.stdout.isatty()) or json_out:
            raise ValidationError(
                "export writes every entry as plaintext: pass --yes to confirm", field="yes"
            )
        if not typer.confirm(f"Write every entry as PLAINTEXT to {folder}?", default=False):
            raise ValidationError("export not confirmed: nothing written", field="yes")
    with open_kb() as kb:
        s = kb.settings
        protected = [s.home, s.pgdata, s.keys_dir, s.audit_dir, s.snapshots_dir]
        if os.environ.get("PGDATA"):
            protected.append(Path(os.environ["PGDATA"]))

        with progress_bar("exporting", json_out=json_out) as bar:
            task = bar.add_task("", total=None)

            def record(
                action: str, ns: str | None, details: dict[str, str | int | bool | None]
            ) -> None:
                kb.audit.record(action, namespace=ns, details=dict(details))

            result = export_entries(
                kb,
                folder,
                fmt=fmt,
                protected=protected,
                record=record,
                namespace=namespace,
                progress=lambda done: bar.update(task, completed=done),
            )
    if json_out:
        print_json(result.to_dict())
    else:
        out.print(
            f"exported {result.entries} entries as {result.format} to {result.folder} "
            f"({result.files} files, plaintext: keep them safe)",
            markup=False,
            highlight=False,
        )
