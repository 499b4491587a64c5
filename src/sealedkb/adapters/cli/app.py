"""The ``sealedkb`` command line (typer + rich). Thin: parse, call the service, print.

Every read command takes ``--json``. Errors print ``error[CODE]: message`` on
stderr and exit with the code of docs/DESIGN.md §7.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sealedkb.adapters.cli import doctor as cli_doctor
from sealedkb.config import Settings, load_settings
from sealedkb.errors import SealedKBError, ValidationError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode, Entry, EntryPatch

app = typer.Typer(
    name="sealedkb",
    help="An encrypted-at-rest knowledge base for teams and AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The database sealedkb uses.", no_args_is_help=True)
app.add_typer(db_app, name="db")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")


class _State:
    home: Path | None = None
    principal: str | None = None


state = _State()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
NamespaceOpt = Annotated[str, typer.Option("--namespace", "-n", help="Namespace (tenant/project).")]


def _fail(exc: SealedKBError) -> NoReturn:
    field = f" ({exc.field})" if exc.field else ""
    line = Text("error", style="bold red")
    line.append(f"[{exc.code}]{field}: {exc.message}")
    err.print(line, highlight=False)
    raise typer.Exit(exc.exit_code)


def _settings() -> Settings:
    settings = load_settings(state.home, principal=state.principal)
    logging.basicConfig(
        level=settings.log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    return settings


@contextmanager
def _kb() -> Iterator[KnowledgeBase]:
    kb = KnowledgeBase.open(_settings())
    try:
        yield kb
    finally:
        kb.close()


def _run(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except SealedKBError as exc:
        _fail(exc)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def _print_entry(entry: Entry) -> None:
    out.print(Text(entry.title, style="bold"), highlight=False)
    out.print(
        f"id {entry.id} · {entry.namespace} · {entry.entry_type.value} · v{entry.version}"
        + (f" · tags: {', '.join(entry.tags)}" if entry.tags else "")
        + (f" · source: {entry.source}" if entry.source else ""),
        style="dim",
        markup=False,
        highlight=False,
    )
    out.print()
    out.print(entry.content, markup=False, highlight=False)


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


@app.command()
def init(
    encryption: Annotated[
        EncryptionMode | None,
        typer.Option(
            "--encryption", help="on (default): seal every field; off: plaintext baseline."
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create the knowledge base (database, keystore, KMS key). Idempotent."""

    def go() -> dict[str, Any]:
        kb, created = KnowledgeBase.init(_settings(), encryption)
        try:
            return {"created": created, **kb.status()}
        finally:
            kb.close()

    result = _run(go)
    if json_out:
        _print_json(result)
        return
    verb = "Initialised" if result["created"] else "Already initialised:"
    out.print(f"{verb} knowledge base at {result['home']}", markup=False)
    if result["storage_encrypted"]:
        out.print(f"encryption: on · KMS key {result['kms_key_id']} ({result['key_state']})")
    else:
        out.print("encryption: off (plaintext)")
    for w in result["warnings"]:
        err.print(Text("warning: ", style="yellow") + Text(w), highlight=False)


def _read_content(text: str | None, file: Path | None) -> str:
    if text is not None and file is not None:
        raise ValidationError("give the content as TEXT or --file, not both", field="content")
    if file is not None:
        try:
            return file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            raise ValidationError(f"cannot read {file} as UTF-8 text", field="file") from None
    if text == "-":
        return sys.stdin.read()
    if text is None:
        raise ValidationError("content is required: TEXT, --file F or - for stdin", field="content")
    return text


@app.command()
def add(
    text: Annotated[str | None, typer.Argument(help="Content (markdown); '-' reads stdin.")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Read content from a file.")
    ] = None,
    title: Annotated[str | None, typer.Option("--title", "-t")] = None,
    entry_type: Annotated[
        str,
        typer.Option("--type", help="note, doc, decision, pattern, runbook, lesson, constraint"),
    ] = "note",
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Tag (repeatable).")] = None,
    namespace: NamespaceOpt = "default",
    source: Annotated[str | None, typer.Option("--source", help="Path, URL or reference.")] = None,
    metadata: Annotated[str | None, typer.Option("--metadata", help="JSON object.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Add even if identical content exists.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Add an entry; prints its id (an identical entry's id unless --force)."""

    def go() -> Entry:
        content = _read_content(text, file)
        meta = _parse_metadata(metadata)
        with _kb() as kb:
            return kb.add(
                content,
                title=title,
                entry_type=entry_type,
                tags=tag or [],
                namespace=namespace,
                source=source,
                metadata=meta,
                force=force,
            )

    entry = _run(go)
    if json_out:
        _print_json(entry.to_dict())
    else:
        sys.stdout.write(f"{entry.id}\n")


def _parse_metadata(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise ValidationError("metadata must be a JSON object", field="metadata") from None
    if not isinstance(value, dict):
        raise ValidationError("metadata must be a JSON object", field="metadata")
    return value


@app.command()
def get(
    entry_id: Annotated[str, typer.Argument(metavar="ID")],
    json_out: JsonOpt = False,
) -> None:
    """Show one entry."""

    def go() -> Entry:
        with _kb() as kb:
            return kb.get(entry_id)

    entry = _run(go)
    if json_out:
        _print_json(entry.to_dict())
    else:
        _print_entry(entry)


@app.command()
def update(
    entry_id: Annotated[str, typer.Argument(metavar="ID")],
    text: Annotated[str | None, typer.Argument(help="New content; '-' reads stdin.")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f")] = None,
    title: Annotated[str | None, typer.Option("--title", "-t")] = None,
    entry_type: Annotated[str | None, typer.Option("--type")] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Replace the tags (repeatable).")
    ] = None,
    source: Annotated[str | None, typer.Option("--source")] = None,
    metadata: Annotated[
        str | None, typer.Option("--metadata", help="JSON object (replaces).")
    ] = None,
    verified: Annotated[bool | None, typer.Option("--verified/--unverified")] = None,
    archived: Annotated[bool | None, typer.Option("--archived/--unarchived")] = None,
    expected_version: Annotated[
        int | None,
        typer.Option("--expected-version", help="Fail with CONFLICT unless at this version."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Change an entry (optimistic concurrency with --expected-version)."""

    def go() -> Entry:
        content = _read_content(text, file) if (text is not None or file is not None) else None
        patch = EntryPatch(
            title=title,
            content=content,
            entry_type=entry_type,
            tags=tuple(tag) if tag is not None else None,
            source=source,
            metadata=_parse_metadata(metadata),
            verified=verified,
            archived=archived,
        )
        with _kb() as kb:
            return kb.update(entry_id, patch, expected_version=expected_version)

    entry = _run(go)
    if json_out:
        _print_json(entry.to_dict())
    else:
        sys.stdout.write(f"{entry.id} v{entry.version}\n")


@app.command()
def delete(entry_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Delete an entry (soft delete: it no longer appears anywhere)."""

    def go() -> None:
        with _kb() as kb:
            kb.delete(entry_id)

    _run(go)
    sys.stdout.write(f"deleted {entry_id}\n")


@app.command("list")
def list_(
    namespace: Annotated[str | None, typer.Option("--namespace", "-n")] = None,
    entry_type: Annotated[str | None, typer.Option("--type")] = None,
    tag: Annotated[str | None, typer.Option("--tag")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 50,
    offset: Annotated[int, typer.Option("--offset")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """List entries, newest first."""

    def go() -> list[Entry]:
        with _kb() as kb:
            return kb.list(
                namespace=namespace, entry_type=entry_type, tag=tag, limit=limit, offset=offset
            )

    entries = _run(go)
    if json_out:
        _print_json([e.to_dict() for e in entries])
        return
    table = Table("id", "namespace", "type", "title", "tags", "updated")
    for e in entries:
        # Text cells: stored titles and tags must never be read as rich markup.
        table.add_row(
            str(e.id),
            e.namespace,
            e.entry_type.value,
            Text(e.title),
            Text(", ".join(e.tags)),
            e.updated_at.strftime("%Y-%m-%d %H:%M"),
        )
    out.print(table)


_SUMMARY_STYLE = {"OK": "green", "WARN": "yellow", "FAIL": "bold red"}


@app.command()
def status(
    json_out: JsonOpt = False,
    detail: Annotated[
        bool, typer.Option("--detail", help="Also print the detailed fields below the summary.")
    ] = False,
    full_audit: Annotated[
        bool,
        typer.Option(
            "--full-audit",
            help="Verify the whole audit chain however long it is (default: up to "
            "100,000 events; beyond, only its head against the newest checkpoint).",
        ),
    ] = False,
) -> None:
    """Encryption and health: an auditor summary (one line per question), --json for all."""

    def go() -> dict[str, Any]:
        with _kb() as kb:
            result = kb.status()
            # Metrics as at /metrics (counters: this CLI process) and alarm states.
            from sealedkb.adapters.cli.alarms import alarm_summary
            from sealedkb.kb.summary import AUDIT_VERIFY_MAX_EVENTS, build_summary, summary_json
            from sealedkb.monitoring.metrics import status_metrics

            result["metrics"] = status_metrics(kb, result["availability"])
            result["alarms"] = alarm_summary(kb.settings)
            checks = build_summary(
                kb,
                status=result,
                audit_verify_max=None if full_audit else AUDIT_VERIFY_MAX_EVENTS,
            )
            result.update(summary_json(checks))
            return result

    result = _run(go)
    if json_out:
        _print_json(result)
        return
    _print_summary(result)
    if detail:
        out.print()
        _print_status_detail(result)
    for w in result["warnings"]:
        err.print(Text("warning: ", style="yellow") + Text(w), highlight=False)


def _print_summary(result: dict[str, Any]) -> None:
    ok = result["summary_ok"]
    table = Table(
        "check",
        "",
        "value",
        title=Text(
            "sealedkb status: " + ("all checks OK" if ok else "NOT all checks OK"),
            style="bold green" if ok else "bold red",
        ),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,  # a KMS key id and its state fit on one 80-column line
    )
    for c in result["summary"]:
        label = {True: "OK", False: "FAIL", None: "WARN"}[c["ok"]]
        # Text cells: values never read as rich markup.
        table.add_row(c["check"], Text(label, style=_SUMMARY_STYLE[label]), Text(c["value"]))
    out.print(table)
    firing = [name for name, st in result["alarms"].items() if st == "ALARM"]
    alarms = f"ALARM: {', '.join(firing)}" if firing else "none in ALARM"
    out.print(Text(f"alarms: {alarms} · more fields: status --detail or --json"), style="dim")


def _print_status_detail(result: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    for key in (
        "storage_encrypted",
        "encryption_scheme",
        "kms_key_id",
        "key_state",
        "root_key_source",
        "availability",
        "entries_total",
        "entries_plaintext",
        "namespaces",
    ):
        table.add_row(key, str(result[key]))
    dbi = result["database"]
    table.add_row(
        "database",
        f"{dbi['kind']} · {dbi['transport']}"
        + (f" ({dbi['tls_protocol']}, {dbi['tls_cipher']})" if dbi.get("tls_protocol") else "")
        + f" · PostgreSQL {dbi['server_version']}"
        f" · pgvector {dbi['pgvector']}",
    )
    firing = [name for name, st in result["alarms"].items() if st == "ALARM"]
    table.add_row("alarms", Text(f"ALARM: {', '.join(firing)}" if firing else "none in ALARM"))
    out.print(table)


@db_app.command("url")
def db_url() -> None:
    """Print a libpq URI for psql (password removed)."""

    def go() -> str:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        from sealedkb.kb.wiring import resolve_database

        target = resolve_database(_settings(), create=False)
        if target.kind == "embedded":
            return target.url
        params = conninfo_to_dict(target.url)
        params.pop("password", None)
        return make_conninfo("", **params)

    sys.stdout.write(_run(go) + "\n")


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL server (it starts again on the next command)."""

    def go() -> bool:
        from sealedkb.store.embedded import EmbeddedPostgres

        settings = _settings()
        if settings.database_url is not None:
            raise ValidationError(
                "an external database is configured; nothing to stop", field="database_url"
            )
        return EmbeddedPostgres(settings.pgdata).stop()

    stopped = _run(go)
    sys.stdout.write("stopped\n" if stopped else "not running\n")


app.command("doctor")(cli_doctor.doctor)

# Key lifecycle, data keys, re-encryption and the audit trail live in
# adapters/cli/keys.py; imported here, at the end, because it uses the helpers above.
from sealedkb.adapters.cli import keys as cli_keys  # noqa: E402

app.add_typer(cli_keys.key_app, name="key")
app.add_typer(cli_keys.datakey_app, name="datakey")
app.add_typer(cli_keys.audit_app, name="audit")
app.command("reencrypt")(cli_keys.reencrypt)

from sealedkb.adapters.cli import alarms as cli_alarms  # noqa: E402

app.add_typer(cli_alarms.alarms_app, name="alarms")

# Encrypted snapshots live in adapters/cli/snapshot.py.
from sealedkb.adapters.cli import snapshot as cli_snapshot  # noqa: E402

app.add_typer(cli_snapshot.snapshot_app, name="snapshot")

# search, import, reembed, add-many
from sealedkb.adapters.cli import bulk as cli_bulk  # noqa: E402
from sealedkb.adapters.cli import migrate as cli_migrate  # noqa: E402
from sealedkb.adapters.cli import search as cli_search  # noqa: E402

app.add_typer(cli_migrate.migrate_app, name="migrate")
app.command("add-many")(cli_bulk.add_many)

cli_search.register(app)


def main() -> None:
    try:
        app()
    except SealedKBError as exc:  # raised outside a command body (e.g. settings)
        err.print(f"error[{exc.code}]: {exc.message}", markup=False, highlight=False)
        sys.exit(exc.exit_code)


def _register_subcommands() -> None:
    # Imported late: these modules import this one for its helpers.
    from sealedkb.adapters.cli import serve as cli_serve

    cli_serve.register(app)


_register_subcommands()
