"""Entry commands: ``init``, ``add``, ``get``, ``update``, ``delete``, ``list``, ``status``.

Thin: parse, call the knowledge base, print. Every read command takes ``--json``;
stored text is printed as rich ``Text`` (never parsed as markup).
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from sealedkb.adapters.cli._common import (
    JsonOpt,
    NamespaceOpt,
    command,
    open_kb,
    out,
    print_json,
    settings,
    warn,
)
from sealedkb.errors import ValidationError
from sealedkb.model import EncryptionMode, EntryPatch

if TYPE_CHECKING:
    from sealedkb.model import Entry

commands = typer.Typer()


class SearchIndex(StrEnum):
    """Where the search index of a new knowledge base lives (kb_meta search_index)."""

    MEMORY = "memory"
    SERVER = "server"


@command(commands, "init")
def init(
    encryption: Annotated[
        EncryptionMode | None,
        typer.Option(
            "--encryption", help="on (default): seal every field; off: plaintext baseline."
        ),
    ] = None,
    search_index: Annotated[
        SearchIndex | None,
        typer.Option(
            "--search-index",
            help="memory (default): each serving process indexes in its own memory and "
            "PostgreSQL holds no searchable column; server: PostgreSQL indexes blind "
            "tokens and encrypted vectors. Chosen at creation; "
            "'sealedkb migrate index' moves it.",
        ),
    ] = None,
    kms_key_id: Annotated[
        str | None,
        typer.Option(
            "--kms-key-id",
            help="seal a new knowledge base under this existing KMS key (a key URI: "
            "aws-kms:<arn|key id|alias/name>, vault:transit/<mount>/<key>, pkcs11:..., "
            "kmip:...; default: a new local key). Same as SEALEDKB_KMS_KEY_URI.",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create the knowledge base (database, keystore, KMS key). Idempotent."""
    from sealedkb.kb.knowledge_base import KnowledgeBase

    chosen = settings()
    if kms_key_id is not None:
        if not kms_key_id or len(kms_key_id) > 512:
            raise ValidationError("--kms-key-id must be a key URI of 1-512 characters")
        chosen = chosen.model_copy(update={"kms_key_uri": kms_key_id})
    kb, created = KnowledgeBase.init(
        chosen, encryption, search_index=search_index.value if search_index else None
    )
    try:
        result: dict[str, Any] = {"created": created, **kb.status()}
    finally:
        kb.close()
    if json_out:
        print_json(result)
        return
    verb = "Initialised" if result["created"] else "Already initialised:"
    out.print(f"{verb} knowledge base at {result['home']}", markup=False)
    if result["storage_encrypted"]:
        out.print(f"encryption: on · KMS key {result['kms_key_id']} ({result['key_state']})")
    else:
        out.print("encryption: off (plaintext)")
    index = result["search_index"]
    out.print(
        f"search index: {index['mode']} · leakage: {index['leakage']} ({index['docs']})",
        markup=False,
    )
    for w in result["warnings"]:
        warn(w)


def read_content(text: str | None, file: Path | None) -> str:
    """The content given as TEXT, ``--file F`` or ``-`` (stdin)."""
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


def parse_metadata(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise ValidationError("metadata must be a JSON object", field="metadata") from None
    if not isinstance(value, dict):
        raise ValidationError("metadata must be a JSON object", field="metadata")
    return value


def print_entry(entry: Entry) -> None:
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


@command(commands, "add")
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
    content = read_content(text, file)
    meta = parse_metadata(metadata)
    with open_kb() as kb:
        entry = kb.add(
            content,
            title=title,
            entry_type=entry_type,
            tags=tag or [],
            namespace=namespace,
            source=source,
            metadata=meta,
            force=force,
        )
    if json_out:
        print_json(entry.to_dict())
    else:
        sys.stdout.write(f"{entry.id}\n")


@command(commands, "get")
def get(
    entry_id: Annotated[str, typer.Argument(metavar="ID")],
    json_out: JsonOpt = False,
) -> None:
    """Show one entry."""
    with open_kb() as kb:
        entry = kb.get(entry_id)
    if json_out:
        print_json(entry.to_dict())
    else:
        print_entry(entry)


@command(commands, "update")
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
    content = read_content(text, file) if (text is not None or file is not None) else None
    patch = EntryPatch(
        title=title,
        content=content,
        entry_type=entry_type,
        tags=tuple(tag) if tag is not None else None,
        source=source,
        metadata=parse_metadata(metadata),
        verified=verified,
        archived=archived,
    )
    with open_kb() as kb:
        entry = kb.update(entry_id, patch, expected_version=expected_version)
    if json_out:
        print_json(entry.to_dict())
    else:
        sys.stdout.write(f"{entry.id} v{entry.version}\n")


@command(commands, "delete")
def delete(entry_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Delete an entry (soft delete: it no longer appears anywhere)."""
    with open_kb() as kb:
        kb.delete(entry_id)
    sys.stdout.write(f"deleted {entry_id}\n")


@command(commands, "list")
def list_(
    namespace: Annotated[str | None, typer.Option("--namespace", "-n")] = None,
    entry_type: Annotated[str | None, typer.Option("--type")] = None,
    tag: Annotated[str | None, typer.Option("--tag")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 50,
    offset: Annotated[int, typer.Option("--offset")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """List entries, newest first."""
    with open_kb() as kb:
        entries = kb.list(
            namespace=namespace, entry_type=entry_type, tag=tag, limit=limit, offset=offset
        )
    if json_out:
        print_json([e.to_dict() for e in entries])
        return
    from rich.table import Table

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


@command(commands, "status")
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
    from sealedkb.adapters.cli.alarms import alarm_summary
    from sealedkb.kb.summary import AUDIT_VERIFY_MAX_EVENTS, build_summary, summary_json

    with open_kb() as kb:
        result: dict[str, Any] = dict(kb.status())
        if json_out:  # metrics as at /metrics (counters: this CLI process); not printed
            from sealedkb.monitoring.metrics import status_metrics

            result["metrics"] = status_metrics(kb, result["availability"], result["entries_total"])
        result["alarms"] = alarm_summary(kb)
        checks = build_summary(
            kb,
            status=result,
            audit_verify_max=None if full_audit else AUDIT_VERIFY_MAX_EVENTS,
        )
        result.update(summary_json(checks))
    if json_out:
        print_json(result)
        return
    _print_summary(result)
    if detail:
        out.print()
        _print_status_detail(result)
    for w in result["warnings"]:
        warn(w)


def _print_summary(result: dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table

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
    from rich.table import Table

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
