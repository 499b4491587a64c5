"""``sealedkb add-many``: bulk add from JSON Lines through ``KnowledgeBase.add_many``.

Every line is parsed and validated before anything is written (a bad line exits 2
naming its line number and field, never echoing its text); then the entries go in
batches of ``--batch`` (one transaction each, pipeline mode). Identical content is
deduplicated as in ``add``, so a rerun after an interruption adds only what is
missing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from sealedkb.adapters.cli._common import JsonOpt, NamespaceOpt, command, open_kb, print_json
from sealedkb.errors import ValidationError
from sealedkb.model import MAX_ADD_BATCH, NewEntry, new_entry

commands = typer.Typer()

FIELDS = {"content", "title", "type", "tags", "namespace", "source", "metadata", "verified"}


def parse_lines(
    lines: list[str], *, namespace: str, entry_type: str, tags: list[str]
) -> list[NewEntry]:
    """Validated entries of a JSON Lines text; the CLI options are per-line defaults
    (a line's own ``tags`` are added to ``--tag``). Errors name the line, not its text."""
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise ValidationError(f"line {n}: not valid JSON", field="line") from None
        if not isinstance(obj, dict):
            raise ValidationError(f"line {n}: expected a JSON object", field="line")
        unknown = sorted(set(obj) - FIELDS)
        if unknown:
            raise ValidationError(f"line {n}: unknown field {unknown[0]!r}", field="line")
        if not isinstance(obj.get("tags", []), list):
            raise ValidationError(f"line {n}: tags must be a list", field="tags")
        try:
            out.append(
                new_entry(
                    obj.get("content", ""),  # not a str: ValidationError from new_entry
                    title=obj.get("title"),
                    entry_type=obj.get("type", entry_type),
                    tags=[*tags, *obj.get("tags", [])],
                    namespace=obj.get("namespace", namespace),
                    source=obj.get("source"),
                    metadata=obj.get("metadata"),
                    verified=bool(obj.get("verified", False)),
                )
            )
        except ValidationError as exc:
            raise ValidationError(f"line {n}: {exc.message}", field=exc.field) from None
        except (TypeError, AttributeError):
            raise ValidationError(f"line {n}: a field has the wrong type", field="line") from None
    if not out:
        raise ValidationError("no entries in the input", field="line")
    return out


@command(commands, "add-many")
def add_many(
    file: Annotated[str, typer.Argument(help="JSON Lines file; '-' reads stdin.")],
    entry_type: Annotated[str, typer.Option("--type", help="Default entry type.")] = "note",
    namespace: NamespaceOpt = "default",
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Tag for every entry (repeatable).")
    ] = None,
    batch: Annotated[
        int, typer.Option("--batch", min=1, max=MAX_ADD_BATCH, help="Entries per transaction.")
    ] = 100,
    force: Annotated[
        bool, typer.Option("--force", help="Add even if identical content exists.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Add many entries from JSON Lines: one object a line with "content" and
    optionally "title", "type", "tags", "namespace", "source", "metadata". Prints
    one id a line, in input order (an identical entry's id unless --force)."""
    if file == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValidationError(
                f"cannot read {file}: {type(exc).__name__}", field="file"
            ) from None
    entries = parse_lines(
        text.splitlines(), namespace=namespace, entry_type=entry_type, tags=tag or []
    )
    ids: list[str] = []
    with open_kb() as kb:
        for start in range(0, len(entries), batch):
            added = kb.add_many(entries[start : start + batch], force=force)
            ids.extend(str(e.id) for e in added)
    if json_out:
        print_json({"entries": len(entries), "ids": ids})
    else:
        sys.stdout.write("\n".join(ids) + "\n")
