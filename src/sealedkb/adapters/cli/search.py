"""Search and import commands: ``search``, ``import``, ``reembed``.

``--json`` on read commands; stored text is printed as rich ``Text`` (never
parsed as markup).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from sealedkb.adapters.cli._common import (
    JsonOpt,
    NamespaceOpt,
    command,
    err,
    open_kb,
    out,
    print_json,
    settings,
    warn,
)
from sealedkb.model import SearchMode

if TYPE_CHECKING:
    from sealedkb.ingest.importer import ImportSummary
    from sealedkb.search.memory import MemoryIndex

commands = typer.Typer()

TagOpt = Annotated[list[str] | None, typer.Option("--tag", help="Tag (repeatable).")]


@command(commands, "search")
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    mode: Annotated[
        SearchMode, typer.Option("--mode", help="hybrid (default), semantic or keyword.")
    ] = SearchMode.HYBRID,
    limit: Annotated[int, typer.Option("--limit", help="Hits per page (1-50).")] = 10,
    offset: Annotated[int, typer.Option("--offset", help="Skip this many hits.")] = 0,
    namespace: NamespaceOpt = "default",
    entry_type: Annotated[str | None, typer.Option("--type", help="Only this entry type.")] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", help="Only entries with this tag (repeatable; all must match)."),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only entries created at or after this date.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Search entries (hybrid: keyword + semantic, fused by reciprocal rank)."""
    loading: threading.Thread | None = None
    if mode is not SearchMode.KEYWORD and settings().embedder == "minilm":
        # A one-shot process: the model loads while the knowledge base opens and the
        # memory index loads its warm-start image (docs/PERFORMANCE.md, "One-shot
        # `search`").
        from sealedkb.embed.minilm import preload

        loading = preload(one_query=True)
    try:
        with open_kb() as kb:
            if kb.memory_index is not None:
                _prepare_memory_index(kb.memory_index, namespace)
            result = kb.search(
                query,
                mode=mode,
                limit=limit,
                offset=offset,
                namespace=namespace,
                entry_type=entry_type,
                tags=tag or [],
                since=since,
            )
    finally:
        if loading is not None:
            # never exit while onnxruntime builds its session in that thread (the
            # interpreter would abort): on an early error, wait for it
            loading.join()
    for w in result.warnings:
        warn(w)
    if json_out:
        print_json(result.to_dict())
        return
    if not result.hits:
        out.print("no results", style="dim")
        return
    for n, h in enumerate(result.hits, start=result.offset + 1):
        head = Text(f"{n}. ", style="bold")
        head.append(Text(h.title, style="bold"))
        head.append(f"  ({h.score:.4f})", style="dim")
        out.print(head, highlight=False)
        meta = Text(f"   {h.id} · {h.entry_type.value}", style="dim")
        if h.tags:
            meta.append(Text(" · tags: " + ", ".join(h.tags), style="dim"))
        if h.source:
            meta.append(Text(" · source: " + h.source, style="dim"))
        out.print(meta, highlight=False)
        out.print(Text("   " + h.snippet), highlight=False)
    if result.next_offset is not None:
        out.print(f"more: --offset {result.next_offset}", style="dim", markup=False)


def _prepare_memory_index(index: MemoryIndex, namespace: str) -> None:
    """Load (or build) the namespace's memory index now, while the model loads; a
    failure is left for the search itself to report."""
    from sealedkb.errors import SealedKBError
    from sealedkb.model import validate_namespace

    with contextlib.suppress(SealedKBError):
        index.prepare(validate_namespace(namespace))


@command(commands, "import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (recursive).")],
    entry_type: Annotated[str, typer.Option("--type", help="Entry type of the chunks.")] = "doc",
    namespace: NamespaceOpt = "default",
    tag: TagOpt = None,
    peer: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Move in from another server: mcp-memory-service (its SQLite database), "
            "basic-memory (its project folder) or jsonl (a sealedkb export).",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Import Markdown, text and HTML files as chunked entries (re-import replaces),
    or with --from another server's knowledge (a re-run adds nothing)."""
    from sealedkb.adapters.cli._common import fit, progress_bar

    if peer is not None:
        _import_peer(peer, paths, namespace=namespace, tags=tag or [], json_out=json_out)
        return
    with open_kb() as kb, progress_bar("importing", json_out=json_out) as bar:
        task = bar.add_task("", total=None)

        def progress(path: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=fit(path))

        summary = kb.import_paths(
            [str(p) for p in paths],
            namespace=namespace,
            entry_type=entry_type,
            tags=tag or [],
            progress=progress,
        )
    if json_out:
        print_json(summary.to_dict())
    else:
        _print_summary(summary)
    if summary.failed:
        raise typer.Exit(1)


def _import_peer(
    peer: str, paths: list[Path], *, namespace: str, tags: list[str], json_out: bool
) -> None:
    from sealedkb.adapters.cli._common import progress_bar
    from sealedkb.errors import ValidationError
    from sealedkb.ingest.peers import FORMATS, import_items, read_peer

    if peer not in FORMATS:
        raise ValidationError(
            f"unknown --from; expected one of: {', '.join(FORMATS)}", field="from"
        )
    if len(paths) != 1:
        raise ValidationError(f"--from {peer} reads one path", field="path")
    read = read_peer(peer, paths[0])
    with open_kb() as kb, progress_bar("importing", json_out=json_out) as bar:
        task = bar.add_task("", total=None)
        summary = import_items(
            kb,
            read,
            namespace=namespace,
            tags=tags,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if json_out:
        print_json(summary.to_dict())
    else:
        out.print(
            f"{summary.items} items from {summary.format}: {summary.added} added, "
            f"{len(summary.skipped)} skipped, {len(summary.failed)} failed",
            markup=False,
            highlight=False,
        )
        for label, items, style in (
            ("failed", summary.failed, "red"),
            ("skipped", summary.skipped, "yellow"),
        ):
            for p in items:
                line = Text(f"{label}: ", style=style)
                line.append(Text(f"{p.label}: {p.reason} [{p.code}]"))
                err.print(line, highlight=False)
    if summary.failed:
        raise typer.Exit(1)


def _print_summary(s: ImportSummary) -> None:
    out.print(
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
            err.print(line, highlight=False)
    for w in s.warnings:
        warn(w)


@command(commands, "reembed")
def reembed(
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Only this namespace.")
    ] = None,
    redo_all: Annotated[
        bool, typer.Option("--all", help="Recompute every vector, not only stale ones.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Recompute vectors made by another embedding model (or missing). Resumable."""
    with open_kb() as kb:
        result = kb.reembed(namespace=namespace, redo_all=redo_all)
    if json_out:
        print_json(result)
    else:
        sys.stdout.write(f"re-embedded {result['reembedded']} entries with {result['model']}\n")


@command(commands, "reindex")
def reindex(
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", "-n", help="Only this namespace (default: every one)."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Entries per transaction (1-1000).")
    ] = 64,
    json_out: JsonOpt = False,
) -> None:
    """Rotate a namespace's index and vector keys and rebuild its search index under
    them, online. Resumable: a rerun continues an unfinished run."""
    with open_kb() as kb:
        results = kb.reindex(namespace=namespace, batch_size=batch_size)
    if json_out:
        print_json({"namespaces": [r.to_dict() for r in results]})
        return
    for r in results:
        how = "new keys" if r.rotated else "continued"
        sys.stdout.write(
            f"{r.namespace}: reindexed {r.reindexed} entries ({how}); "
            f"{r.remaining} remaining, {r.failed} failed\n"
        )
