"""CLI commands for search and import: ``search``, ``import``, ``reembed``.

Registered on the main app by :func:`register` (adapters/cli/app.py). Follows app.py:
errors through ``_fail`` with the stable exit codes, ``--json`` on read commands,
stored text printed as rich ``Text`` (never parsed as markup).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from sealedkb.adapters.cli import app as cli
from sealedkb.ingest.importer import ImportSummary
from sealedkb.search.engine import SearchMode, SearchResult

TagOpt = Annotated[list[str] | None, typer.Option("--tag", help="Tag (repeatable).")]


def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    mode: Annotated[
        SearchMode, typer.Option("--mode", help="hybrid (default), semantic or keyword.")
    ] = SearchMode.HYBRID,
    limit: Annotated[int, typer.Option("--limit", help="Hits per page (1-50).")] = 10,
    offset: Annotated[int, typer.Option("--offset", help="Skip this many hits.")] = 0,
    namespace: cli.NamespaceOpt = "default",
    entry_type: Annotated[str | None, typer.Option("--type", help="Only this entry type.")] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", help="Only entries with this tag (repeatable; all must match)."),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only entries created at or after this date.")
    ] = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Search entries (hybrid: keyword + semantic, fused by reciprocal rank)."""

    def go() -> SearchResult:
        with cli._kb() as kb:
            return kb.search(
                query,
                mode=mode,
                limit=limit,
                offset=offset,
                namespace=namespace,
                entry_type=entry_type,
                tags=tag or [],
                since=since,
            )

    result = cli._run(go)
    for w in result.warnings:
        cli.err.print(Text("warning: ", style="yellow") + Text(w), highlight=False)
    if json_out:
        cli._print_json(result.to_dict())
        return
    if not result.hits:
        cli.out.print("no results", style="dim")
        return
    for n, h in enumerate(result.hits, start=result.offset + 1):
        head = Text(f"{n}. ", style="bold")
        head.append(Text(h.title, style="bold"))
        head.append(f"  ({h.score:.4f})", style="dim")
        cli.out.print(head, highlight=False)
        meta = Text(f"   {h.id} · {h.entry_type.value}", style="dim")
        if h.tags:
            meta.append(Text(" · tags: " + ", ".join(h.tags), style="dim"))
        if h.source:
            meta.append(Text(" · source: " + h.source, style="dim"))
        cli.out.print(meta, highlight=False)
        cli.out.print(Text("   " + h.snippet), highlight=False)
    if result.next_offset is not None:
        cli.out.print(f"more: --offset {result.next_offset}", style="dim", markup=False)


def import_(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (recursive).")],
    entry_type: Annotated[str, typer.Option("--type", help="Entry type of the chunks.")] = "doc",
    namespace: cli.NamespaceOpt = "default",
    tag: TagOpt = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Import Markdown, text and HTML files as chunked entries (re-import replaces)."""

    def go() -> ImportSummary:
        with (
            cli._kb() as kb,
            Progress(
                TextColumn("importing"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}", markup=False),  # file names are not markup
                console=cli.err,
                transient=True,
                disable=json_out,
            ) as bar,
        ):
            task = bar.add_task("", total=None)

            def progress(path: str, done: int, total: int) -> None:
                bar.update(task, completed=done, total=total, description=path[-60:])

            return kb.import_paths(
                [str(p) for p in paths],
                namespace=namespace,
                entry_type=entry_type,
                tags=tag or [],
                progress=progress,
            )

    summary = cli._run(go)
    if json_out:
        cli._print_json(summary.to_dict())
    else:
        _print_summary(summary)
    if summary.failed:
        raise typer.Exit(1)


def _print_summary(s: ImportSummary) -> None:
    cli.out.print(
        f"{s.files} files: {s.imported} imported ({s.chunks_added} chunks added, "
        f"{s.chunks_removed} replaced), {s.unchanged} unchanged, {len(s.skipped)} skipped, "
        f"{len(s.failed)} failed",
        markup=False,
        highlight=False,
    )
    for label, items, style in (("failed", s.failed, "red"), ("skipped", s.skipped, "yellow")):
        for o in items:
            line = Text(f"{label}: ", style=style)
            line.append(Text(o.path))
            line.append(Text(f": {o.reason}"))
            cli.err.print(line, highlight=False)
    for w in s.warnings:
        cli.err.print(Text("warning: ", style="yellow") + Text(w), highlight=False)


def reembed(
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Only this namespace.")
    ] = None,
    redo_all: Annotated[
        bool, typer.Option("--all", help="Recompute every vector, not only stale ones.")
    ] = False,
    json_out: cli.JsonOpt = False,
) -> None:
    """Recompute vectors made by another embedding model (or missing). Resumable."""

    def go() -> dict[str, Any]:
        with cli._kb() as kb:
            return kb.reembed(namespace=namespace, redo_all=redo_all)

    result = cli._run(go)
    if json_out:
        cli._print_json(result)
    else:
        sys.stdout.write(f"re-embedded {result['reembedded']} entries with {result['model']}\n")


def register(app: typer.Typer) -> None:
    app.command("search")(search)
    app.command("import")(import_)
    app.command("reembed")(reembed)
