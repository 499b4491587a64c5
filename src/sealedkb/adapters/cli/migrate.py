"""``sealedkb migrate plan|run|verify|rollback|status``: plaintext -> encrypted
(runbook docs/ENCRYPTION-KEY-MANAGEMENT.md §25). Thin: parse, call migrate/migrator.py, print.

Without ``--from`` the knowledge base of this home is migrated in place; with
``--from URL --table T [--map FIELD=COLUMN,...]`` a foreign table is migrated
into it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sealedkb.adapters.cli import app as cli
from sealedkb.errors import ValidationError
from sealedkb.migrate import ForeignSpec, Migrator, RunReport

migrate_app: typer.Typer = typer.Typer(
    help="Migrate a plaintext knowledge base (this one, or another server's table) to "
    "encrypted storage: plan, run, verify, rollback.",
    no_args_is_help=True,
)

FromOpt = Annotated[
    str | None,
    typer.Option(
        "--from",
        help="URL of a foreign source database (default: migrate this knowledge base in place).",
        envvar="SEALEDKB_MIGRATE_FROM",
        show_envvar=False,
    ),
]
TableOpt = Annotated[
    str | None, typer.Option("--table", help="Source table (or schema.table), with --from.")
]
MapOpt = Annotated[
    str | None,
    typer.Option(
        "--map",
        help="FIELD=COLUMN,... (fields: id content title entry_type tags source metadata "
        "embedding created_at updated_at namespace); default: columns named like fields.",
    ),
]
NsOpt = Annotated[
    str, typer.Option("--namespace", "-n", help="Namespace of rows without a mapped namespace.")
]
TypeOpt = Annotated[str, typer.Option("--type", help="Entry type of rows without one.")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--embedding-model",
        help="Model id of the source vectors (default: this knowledge base's model; "
        "another model means re-embedding).",
    ),
]
BatchOpt = Annotated[int, typer.Option("--batch", help="Rows per batch (and checkpoint).")]


def _spec(
    source: str | None,
    table: str | None,
    mapping: str | None,
    namespace: str,
    entry_type: str,
    model: str | None,
) -> ForeignSpec | None:
    if source is None:
        if table is not None or mapping is not None:
            cli._fail(ValidationError("--table and --map go with --from", field="from"))
        return None
    if not table:
        cli._fail(ValidationError("--from needs --table", field="table"))
    return ForeignSpec(source, table, mapping, namespace, entry_type, model)


@contextmanager
def _bar(disable: bool) -> Iterator[Callable[[str, int, int], None]]:
    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=cli.err,
        transient=True,
        disable=disable,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total or None)
            bar.update(tasks[phase], completed=done, total=max(total, done) or None)

        yield progress


def _kv(data: Mapping[str, Any], keys: list[str]) -> None:
    table = Table(show_header=False, box=None)
    for k in keys:
        if data.get(k) is not None:
            table.add_row(k, str(data[k]))
    cli.out.print(table)


@migrate_app.command("plan")
def plan(
    source: FromOpt = None,
    table: TableOpt = None,
    mapping: MapOpt = None,
    namespace: NsOpt = "default",
    entry_type: TypeOpt = "note",
    model: ModelOpt = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Inspect the source, measure sealing on a sample, print steps, duration, downtime
    and the rollback point. Changes nothing."""
    spec = _spec(source, table, mapping, namespace, entry_type, model)
    result = cli._run(lambda: Migrator(cli._settings(), spec).plan())
    if json_out:
        cli._print_json(result)
        return
    _kv(
        result,
        [
            "kind",
            "rows",
            "plaintext_rows",
            "bytes",
            "seal_ms_per_row",
            "estimate_seconds",
            "expected_downtime_ms",
            "downtime_note",
            "rollback_point",
        ],
    )
    if result.get("mapping"):
        cli.out.print(
            "mapping: " + ", ".join(f"{k}={v}" for k, v in result["mapping"].items()), markup=False
        )
    if result.get("invalid_rows"):
        cli.err.print(f"{len(result['invalid_rows'])}+ source rows do not validate:", style="red")
        for line in result["invalid_rows"]:
            cli.err.print(f"  {line}", markup=False, highlight=False)
    cli.out.print("steps:")
    for i, step in enumerate(result["steps"], 1):
        cli.out.print(f"  {i}. {step}", markup=False, highlight=False)
    if result.get("invalid_rows"):
        raise typer.Exit(2)


@migrate_app.command("run")
def run(
    source: FromOpt = None,
    table: TableOpt = None,
    mapping: MapOpt = None,
    namespace: NsOpt = "default",
    entry_type: TypeOpt = "note",
    model: ModelOpt = None,
    batch: BatchOpt = 500,
    json_out: cli.JsonOpt = False,
) -> None:
    """Run (or resume) the migration: rollback snapshot, sealing in batches, switch, scrub."""
    spec = _spec(source, table, mapping, namespace, entry_type, model)

    def go() -> RunReport:
        with _bar(json_out) as progress:
            return Migrator(cli._settings(), spec, batch=batch, progress=progress).run()

    result = cli._run(go)
    if json_out:
        cli._print_json(result)
        return
    _kv(
        result,
        ["kind", "state", "rows", "kms_key_id", "rollback_snapshot", "downtime_ms", "seconds"],
    )
    cli.out.print("next: sealedkb migrate verify", style="dim")


@migrate_app.command("verify")
def verify(
    source: FromOpt = None,
    table: TableOpt = None,
    mapping: MapOpt = None,
    namespace: NsOpt = "default",
    entry_type: TypeOpt = "note",
    model: ModelOpt = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Every entry opens and equals its source (keyed digests), no plaintext is left."""
    spec = _spec(source, table, mapping, namespace, entry_type, model)
    result = cli._run(lambda: Migrator(cli._settings(), spec).verify())
    if json_out:
        cli._print_json(result)
    else:
        _kv(
            result,
            [
                "ok",
                "kind",
                "state",
                "entries_checked",
                "mismatched",
                "missing",
                "source_rows",
                "storage_encrypted",
                "entries_plaintext",
                "kms_key_id",
            ],
        )
        for p in result["problems"]:
            cli.err.print(f"problem: {p}", style="red", markup=False)
    if not result["ok"]:
        raise typer.Exit(6)


@migrate_app.command("rollback")
def rollback(json_out: cli.JsonOpt = False) -> None:
    """Return to the state before the migration, from its rollback snapshot."""
    result = cli._run(lambda: Migrator(cli._settings()).rollback())
    if json_out:
        cli._print_json(result)
        return
    _kv(result, ["kind", "state", "restored_snapshot", "seconds", "note"])


@migrate_app.command("status")
def status(json_out: cli.JsonOpt = False) -> None:
    """The current or last migration's progress marker."""
    result = cli._run(lambda: Migrator(cli._settings()).status())
    if json_out:
        cli._print_json(result)
        return
    if result is None:
        cli.out.print("no migration has run in this knowledge base")
        return
    _kv(result, sorted(k for k, v in result.items() if not isinstance(v, dict | list)))
