"""``sealedkb snapshot …``: encrypted snapshots (runbook §23, docs/SNAPSHOT-FORMAT.md).

Thin: parse, call :class:`sealedkb.snapshots.Snapshots`, print.
``create`` and ``drill`` need the knowledge base. The others also run when its
database is gone (disaster recovery: keystore + snapshot files are enough); they
are then recorded only in a restored database's own audit trail, and say so.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from sealedkb.adapters.cli._common import JsonOpt, command, err, out, print_json, settings, warn
from sealedkb.errors import DatabaseError, NotInitializedError, SealedKBError

if TYPE_CHECKING:
    from sealedkb.kb.knowledge_base import KnowledgeBase
    from sealedkb.snapshots import SnapshotDescription, Snapshots

snapshot_app: typer.Typer = typer.Typer(
    help="Encrypted snapshots: create, list, verify, restore, copy, delete, drill.",
    no_args_is_help=True,
)

IdArg = Annotated[str, typer.Argument(metavar="ID", help="Snapshot id (or its unique name).")]


@contextmanager
def _snapshots(*, need_kb: bool) -> Iterator[Snapshots]:
    from sealedkb.kb.knowledge_base import KnowledgeBase
    from sealedkb.kb.snapshotting import snapshots_for

    loaded = settings()
    kb: KnowledgeBase | None = None
    try:
        kb = KnowledgeBase.open(loaded)
    except (NotInitializedError, DatabaseError) as exc:
        if need_kb:
            raise
        warn(
            f"no knowledge base reachable ({exc.message}); working from the keystore and "
            "snapshot folder alone, without an audit trail to record in"
        )
    try:
        yield snapshots_for(loaded, kb)
    finally:
        if kb is not None:
            kb.close()


def _folder() -> Snapshots:
    """The snapshot folder alone (no database, no keys needed to list or describe)."""
    from sealedkb.kb.snapshotting import snapshots_for

    return snapshots_for(settings())


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB"):
        if value < 1000:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _entries(row_counts: dict[str, Any]) -> str:
    value = row_counts.get("kb_entries")
    return "-" if value is None else str(value)


def _print_info(info: SnapshotDescription) -> None:
    table = Table(show_header=False, box=None)
    for key in (
        "id",
        "name",
        "kind",
        "created_at",
        "encrypted",
        "kms_key_id",
        "kms_key_version",
        "size_bytes",
        "schema_version",
        "copied_from",
        "path",
    ):
        value = info.get(key)
        table.add_row(key, Text("-" if value is None else str(value)))
    counts = info.get("row_counts") or {}
    table.add_row("row_counts", Text(", ".join(f"{k}={v}" for k, v in counts.items()) or "-"))
    if info.get("error"):
        table.add_row("error", Text(str(info["error"]), style="red"))
    out.print(table)


@command(snapshot_app, "create")
def snapshot_create(
    name: Annotated[str | None, typer.Option("--name", help="A label (free text).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Take a manual snapshot now (kept until deleted)."""
    with _snapshots(need_kb=True) as snaps:
        info = snaps.create(name=name).to_dict()
    if json_out:
        print_json(info)
        return
    sys.stdout.write(f"{info['id']}\n")
    err.print(
        f"{_size(info['size_bytes'])}, {_entries(info['row_counts'])} entries, encrypted under "
        f"{info['kms_key_id']}",
        markup=False,
        highlight=False,
    )


@command(snapshot_app, "list")
def snapshot_list(json_out: JsonOpt = False) -> None:
    """List the snapshots in the folder, oldest first (no keys needed)."""
    items = [i.to_dict() for i in _folder().list()]
    if json_out:
        print_json(items)
        return
    # One line per snapshot (ids and key URIs are too long for a table in 80 columns).
    for i in items:
        if i["damaged"]:
            line = Text(f"{i['id']}  ") + Text(f"damaged: {i['error']}", style="red")
        else:
            line = Text(
                f"{i['id']}  {i['kind']:<9}  {(i['created_at'] or '-')[:19]}  "
                f"{_size(i['size_bytes']):>9}  {_entries(i['row_counts'])} entries  "
                f"encrypted  {i['kms_key_id']}"
            )
            if i["name"]:
                line.append(f"  {i['name']}")
        out.print(line, highlight=False)
    if not items:
        err.print("no snapshots", markup=False)


@command(snapshot_app, "describe")
def snapshot_describe(ref: IdArg, json_out: JsonOpt = False) -> None:
    """Show a snapshot's manifest: source, schema, key, tables, counts, digests."""
    info = _folder().describe(ref)
    if json_out:
        print_json(info)
        return
    _print_info(info)
    manifest = info.get("manifest")
    if manifest:
        tables = Table("table", "rows", "sha256", "format")
        trailer = manifest["trailer"]["tables"]
        for t in manifest["tables"]:
            facts = trailer.get(t["name"], {})
            tables.add_row(t["name"], str(facts.get("rows")), str(facts.get("sha256")), t["format"])
        out.print(tables)


def _json_failure(ref: str, exc: SealedKBError) -> None:
    print_json({"ok": False, "id": ref, "part": getattr(exc, "part", None), "error": exc.to_dict()})


@command(snapshot_app, "verify")
def snapshot_verify(ref: IdArg, json_out: JsonOpt = False) -> None:
    """Read the whole snapshot and check every chunk, row count and digest (restores
    nothing). Exit 6 names the bad part; exit 5 if its KMS key is not usable."""
    try:
        with _snapshots(need_kb=False) as snaps:
            report = snaps.verify(ref)
    except SealedKBError as exc:
        if json_out:
            _json_failure(ref, exc)
        raise
    if json_out:
        print_json(report)
        return
    out.print(
        f"snapshot {report['id']} intact: {report['chunks']} chunks, "
        f"{len(report['tables'])} tables, counts and digests match "
        f"({report['mb_per_s']} MB/s)",
        markup=False,
        highlight=False,
    )


@command(snapshot_app, "restore")
def snapshot_restore(
    ref: IdArg,
    target: Annotated[
        str,
        typer.Option(
            "--target",
            help="A new database name on the same server (created), or the URL of an "
            "existing empty database. Never a live one.",
        ),
    ],
    json_out: JsonOpt = False,
) -> None:
    """Restore into a new database, then re-check counts and digests from the restored
    rows and open a sample of sealed entries with the keystore."""
    try:
        with _snapshots(need_kb=False) as snaps:
            result = snaps.restore(ref, target)
    except SealedKBError as exc:
        if json_out:
            _json_failure(ref, exc)
        raise
    if json_out:
        print_json(result)
        return
    out.print(
        f"restored {result['id']} into database {result['database']}: "
        f"{_entries(result['row_counts'])} entries, counts and digests match, "
        f"{result['entries_opened']} sealed entries opened ({result['seconds']} s)",
        markup=False,
        highlight=False,
    )
    err.print(
        f"use it: SEALEDKB_DATABASE_URL='{result['url']}' sealedkb status",
        markup=False,
        highlight=False,
    )


@command(snapshot_app, "copy")
def snapshot_copy(
    ref: IdArg,
    kms_key_id: Annotated[
        str, typer.Option("--kms-key-id", help="KMS key (local:key/<uuid> or uuid) of the copy.")
    ],
    json_out: JsonOpt = False,
) -> None:
    """Re-encrypt a snapshot under another KMS key (snapshot key and every data key in
    it); the copy is verified before it appears, and restores without the old key."""
    with _snapshots(need_kb=False) as snaps:
        info = snaps.copy(ref, kms_key_id).to_dict()
    if json_out:
        print_json(info)
        return
    sys.stdout.write(f"{info['id']}\n")


@command(snapshot_app, "delete")
def snapshot_delete(ref: IdArg, json_out: JsonOpt = False) -> None:
    """Delete a snapshot file."""
    with _snapshots(need_kb=False) as snaps:
        result = snaps.delete(ref)
    if json_out:
        print_json(result)
        return
    sys.stdout.write(f"deleted {result['id']}\n")


@command(snapshot_app, "drill")
def snapshot_drill(
    snapshot: Annotated[
        str | None,
        typer.Option("--snapshot", help="Drill this snapshot instead of taking a new one."),
    ] = None,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the snapshot the drill takes.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Restore drill: create -> restore into a scratch database -> verify -> drop,
    each step timed."""
    with _snapshots(need_kb=True) as snaps:
        result = snaps.drill(snapshot=snapshot, keep=keep)
    if json_out:
        print_json(result)
        return
    table = Table("step", "seconds")
    for s in result["steps"]:
        table.add_row(s["step"], f"{s['seconds']:.3f}")
    table.add_row("total", f"{result['seconds']:.3f}")
    out.print(table)
    out.print(
        f"drill passed on {result['snapshot_id']}: {_entries(result['row_counts'])} entries "
        f"restored and checked, {result['entries_opened']} sealed entries opened",
        markup=False,
        highlight=False,
    )
