"""``sealedkb migrate plan|run|verify|rollback|status``: plaintext -> encrypted
(runbook docs/ENCRYPTION-KEY-MANAGEMENT.md §25). Thin: parse, call migrate/migrator.py, print.
``sealedkb migrate index --to memory|server``: where the search index lives
(migrate/index_mode.py, docs/SEARCH.md "Switching the search index").

Without ``--from`` the knowledge base of this home is migrated in place; with
``--from URL --table T [--map FIELD=COLUMN,...]`` a foreign table is migrated
into it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from sealedkb.adapters.cli._common import JsonOpt, command, err, out, print_json, settings
from sealedkb.errors import ValidationError

if TYPE_CHECKING:
    from sealedkb.kb.migrating import ForeignSpec

migrate_app: typer.Typer = typer.Typer(
    help="Migrate a plaintext knowledge base (this one, or another server's table) to "
    "encrypted storage: plan, run, verify, rollback; or move the search index (index).",
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
    from sealedkb.kb.migrating import ForeignSpec

    if source is None:
        if table is not None or mapping is not None:
            raise ValidationError("--table and --map go with --from", field="from")
        return None
    if not table:
        raise ValidationError("--from needs --table", field="table")
    return ForeignSpec(source, table, mapping, namespace, entry_type, model)


@contextmanager
def _bar(disable: bool) -> Iterator[Callable[[str, int, int], None]]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
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
    out.print(table)


@command(migrate_app, "plan")
def plan(
    source: FromOpt = None,
    table: TableOpt = None,
    mapping: MapOpt = None,
    namespace: NsOpt = "default",
    entry_type: TypeOpt = "note",
    model: ModelOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Inspect the source, measure sealing on a sample, print steps, duration, downtime
    and the rollback point. Changes nothing."""
    from sealedkb.kb.migrating import Migrator

    spec = _spec(source, table, mapping, namespace, entry_type, model)
    result = Migrator(settings(), spec).plan()
    if json_out:
        print_json(result)
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
        out.print(
            "mapping: " + ", ".join(f"{k}={v}" for k, v in result["mapping"].items()), markup=False
        )
    if result.get("invalid_rows"):
        err.print(f"{len(result['invalid_rows'])}+ source rows do not validate:", style="red")
        for line in result["invalid_rows"]:
            err.print(f"  {line}", markup=False, highlight=False)
    out.print("steps:")
    for i, step in enumerate(result["steps"], 1):
        out.print(f"  {i}. {step}", markup=False, highlight=False)
    if result.get("invalid_rows"):
        raise typer.Exit(2)


@command(migrate_app, "run")
def run(
    source: FromOpt = None,
    table: TableOpt = None,
    mapping: MapOpt = None,
    namespace: NsOpt = "default",
    entry_type: TypeOpt = "note",
    model: ModelOpt = None,
    batch: BatchOpt = 500,
    json_out: JsonOpt = False,
) -> None:
    """Run (or resume) the migration: rollback snapshot, sealing in batches, switch, scrub."""
    from sealedkb.kb.migrating import Migrator

    spec = _spec(source, table, mapping, namespace, entry_type, model)
    with _bar(json_out) as progress:
        result = Migrator(settings(), spec, batch=batch, progress=progress).run()
    if json_out:
        print_json(result)
        return
    _kv(
        result,
        ["kind", "state", "rows", "kms_key_id", "rollback_snapshot", "downtime_ms", "seconds"],
    )
    out.print("next: sealedkb migrate verify", style="dim")


@command(migrate_app, "verify")
def verify(
    source: FromOpt = None,
    table: TableOpt = None,
    mapping: MapOpt = None,
    namespace: NsOpt = "default",
    entry_type: TypeOpt = "note",
    model: ModelOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Every entry opens and equals its source (keyed digests), no plaintext is left."""
    from sealedkb.kb.migrating import Migrator

    spec = _spec(source, table, mapping, namespace, entry_type, model)
    result = Migrator(settings(), spec).verify()
    if json_out:
        print_json(result)
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
            err.print(f"problem: {p}", style="red", markup=False)
    if not result["ok"]:
        raise typer.Exit(6)


@command(migrate_app, "rollback")
def rollback(json_out: JsonOpt = False) -> None:
    """Return to the state before the migration, from its rollback snapshot."""
    from sealedkb.kb.migrating import Migrator

    result = Migrator(settings()).rollback()
    if json_out:
        print_json(result)
        return
    _kv(result, ["kind", "state", "restored_snapshot", "seconds", "note"])


@command(migrate_app, "index")
def index(
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="memory: switch, then clear the searchable columns and rewrite the table; "
            "server: build the columns of every entry, then switch (docs/SEARCH.md).",
        ),
    ],
    batch: BatchOpt = 500,
    json_out: JsonOpt = False,
) -> None:
    """Move the search index between PostgreSQL (server) and process memory, online and
    resumable (run it again after an interruption; the other --to migrates back)."""
    from sealedkb.adapters.cli._common import open_kb

    if to not in ("memory", "server"):
        raise ValidationError("--to must be memory or server", field="to")
    with open_kb() as kb, _bar(json_out) as progress:
        result = kb.migrate_search_index(to, batch=batch, progress=progress).to_dict()
    if json_out:
        print_json(result)
        return
    _kv(result, ["from", "to", "state", "rows", "skipped", "failed", "seconds"])
    if result["scrubbed"]:
        out.print(
            "rewritten: " + ", ".join(result["scrubbed"]) + " (WAL, replicas and backups "
            "taken before still hold the old columns)",
            markup=False,
        )
    if result["failed"]:
        err.print(f"{result['failed']} entries failed their integrity check:", style="red")
        for i in result["failed_ids"]:
            err.print(f"  {i}", markup=False, highlight=False)
        raise typer.Exit(6)


@command(migrate_app, "status")
def status(json_out: JsonOpt = False) -> None:
    """The current or last migration's progress marker."""
    from sealedkb.kb.migrating import Migrator

    result = Migrator(settings()).status()
    if json_out:
        print_json(result)
        return
    if result is None:
        out.print("no migration has run in this knowledge base")
        return
    _kv(result, sorted(k for k, v in result.items() if not isinstance(v, dict | list)))
