"""The knowledge-base tools, as module-level functions over a :class:`ToolContext`.

Each tool checks the caller's principal (kb/access.py), runs the blocking knowledge
base call in a worker thread, and answers either the JSON its schema describes
(schemas.py, published as the tool's ``outputSchema``) or a structured tool error
``{"code", "message", "field"?}``. Anything unexpected is logged server-side and
answered as INTERNAL_ERROR without details.

A tool finds its context through the SDK's injected ``Context``: the server that
runs it is a :class:`KnowledgeBaseServer` (server.py), which carries one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
import pydantic_core
from mcp.server.mcpserver import Context
from mcp.types import CallToolResult, TextContent
from pydantic import Field

from sealedkb import __version__
from sealedkb.adapters.mcp.schemas import (
    MAX_ADD_MANY,
    AddManyOut,
    DeletedOut,
    EntryOut,
    HealthOut,
    ImportOut,
    ListOut,
    NewEntryIn,
    SearchOut,
    StatsOut,
)
from sealedkb.errors import AccessDeniedError, SealedKBError, ValidationError
from sealedkb.kb.access import Action, Principal
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import DEFAULT_NAMESPACE, Entry, EntryPatch, EntryType, new_entry
from sealedkb.monitoring.metrics import TOOL_SECONDS

log = logging.getLogger("sealedkb.mcp")

Answer = Mapping[str, Any]


@dataclass(frozen=True)
class Limits:
    """Caps that keep one call from exhausting the server."""

    max_result_bytes: int = 2 * 1024 * 1024
    max_list: int = 100


def error_result(error: Mapping[str, str]) -> CallToolResult:
    """A tool error as ``is_error`` with the JSON ``{code, message, field?}`` both as text
    and as structured content. Returned, not raised: a raised ToolError reaches the
    client prefixed with "Error executing tool ...", which agents then have to strip.
    The SDK passes a returned CallToolResult through unchanged, and checks an
    ``is_error`` result against no output schema (nor does the client)."""
    body = dict(error)
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(body, ensure_ascii=False))],
        structured_content=body,
        is_error=True,
    )


def answer_result(answer: Answer) -> CallToolResult:
    """A successful answer: the JSON as structured content, and as indented text (the
    text the SDK makes of a returned dict). The SDK validates the structured content
    against the tool's output model before it is sent."""
    body = dict(answer)
    text = pydantic_core.to_json(body, fallback=str, indent=2).decode()
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=body)


@dataclass(frozen=True)
class ToolContext:
    """What the tools run against: the knowledge base, the limits, and how to find the
    caller's principal (the bearer token's over HTTP, the operator's over stdio)."""

    kb: KnowledgeBase
    limits: Limits
    principal: Callable[[], Principal]

    async def run(self, tool: str, fn: Callable[[], Answer]) -> CallToolResult:
        """Run ``fn`` in a worker thread; its answer, or the error it raised, as a tool
        result. Answers over the result cap are refused (VALIDATION_ERROR on limit)."""
        started = time.perf_counter()
        try:
            result = await anyio.to_thread.run_sync(fn)
        except SealedKBError as exc:
            log.info("tool %s -> %s (%s)", tool, exc.code, exc.message)
            TOOL_SECONDS.labels(tool, exc.code).observe(time.perf_counter() - started)
            return error_result(exc.to_dict())
        except Exception:
            log.exception("tool %s failed unexpectedly", tool)
            TOOL_SECONDS.labels(tool, "INTERNAL_ERROR").observe(time.perf_counter() - started)
            return error_result(
                {"code": "INTERNAL_ERROR", "message": "internal error; see the server log"}
            )
        TOOL_SECONDS.labels(tool, "ok").observe(time.perf_counter() - started)
        size = len(json.dumps(result, default=str))
        if size > self.limits.max_result_bytes:
            too_big = ValidationError(
                f"result is {size} bytes, over the {self.limits.max_result_bytes}-byte cap; "
                "ask for fewer entries or leave out content",
                field="limit",
            )
            return error_result(too_big.to_dict())
        return answer_result(result)


def tool_context(context: Context[Any, Any]) -> ToolContext:
    """The context of the server running this call (a server.KnowledgeBaseServer)."""
    server: object = context.mcp_server
    found = getattr(server, "tool_context", None)
    if not isinstance(found, ToolContext):
        raise RuntimeError("the sealedkb tools run only on a KnowledgeBaseServer")
    return found


def entry_out(e: Entry, *, content: bool = True) -> dict[str, Any]:
    d = e.to_dict()
    d.pop("deleted_at", None)
    if not content:
        d.pop("content", None)
    return d


# --- the tools ---------------------------------------------------------------------------
# Descriptions are in server.TOOLS, next to the registration.


async def kb_add(
    context: Context[Any, Any],
    content: Annotated[str, Field(description="The knowledge, as markdown.")],
    title: Annotated[
        str | None, Field(description="Short title; defaults to the first line.")
    ] = None,
    entry_type: Annotated[
        str, Field(description="note, doc, decision, pattern, runbook, lesson or constraint.")
    ] = EntryType.NOTE.value,
    tags: Annotated[list[str] | None, Field(description="Tags, e.g. ['postgres'].")] = None,
    namespace: Annotated[str, Field(description="Project or team namespace.")] = (
        DEFAULT_NAMESPACE
    ),
    source: Annotated[
        str | None, Field(description="Where it comes from: path, URL or reference.")
    ] = None,
    metadata: Annotated[dict[str, Any] | None, Field(description="Extra JSON attributes.")] = None,
    verified: Annotated[
        bool, Field(description="Mark the entry as verified (admin tokens only).")
    ] = False,
) -> Annotated[CallToolResult, EntryOut]:
    tc = tool_context(context)
    p = tc.principal()

    def go() -> Answer:
        p.require(Action.ADD, namespace)
        if verified:
            p.require(Action.VERIFY)
        e = tc.kb.add(
            content,
            title=title,
            entry_type=entry_type,
            tags=tags or [],
            namespace=namespace,
            source=source,
            metadata=metadata,
            verified=verified,
        )
        return entry_out(e)

    return await tc.run("kb_add", go)


async def kb_add_many(
    context: Context[Any, Any],
    entries: Annotated[
        list[NewEntryIn],
        Field(description="The entries, each as for kb_add.", max_length=MAX_ADD_MANY),
    ],
) -> Annotated[CallToolResult, AddManyOut]:
    tc = tool_context(context)
    p = tc.principal()

    def go() -> Answer:
        news = []
        for i, e in enumerate(entries):
            p.require(Action.ADD, e.namespace)
            try:
                news.append(
                    new_entry(
                        e.content,
                        title=e.title,
                        entry_type=e.entry_type,
                        tags=e.tags or [],
                        namespace=e.namespace,
                        source=e.source,
                        metadata=e.metadata,
                    )
                )
            except ValidationError as exc:
                raise ValidationError(
                    f"entry {i}: {exc.message}", field=f"entries[{i}].{exc.field}"
                ) from None
        added = tc.kb.add_many(news)
        return {
            "entries": [
                {"id": str(a.id), "title": a.title, "namespace": a.namespace, "version": a.version}
                for a in added
            ]
        }

    return await tc.run("kb_add_many", go)


async def kb_get(
    context: Context[Any, Any],
    id: Annotated[str, Field(description="The entry id (UUID).")],
) -> Annotated[CallToolResult, EntryOut]:
    tc = tool_context(context)
    p = tc.principal()

    def go() -> Answer:
        p.require(Action.GET)
        # The scope is checked on the row before any key is touched: an entry of
        # another namespace is not found, whatever state its sealed columns are in.
        return entry_out(tc.kb.get(id, namespaces=p.namespaces))

    return await tc.run("kb_get", go)


async def kb_update(
    context: Context[Any, Any],
    id: Annotated[str, Field(description="The entry id (UUID).")],
    expected_version: Annotated[
        int | None, Field(description="Version you read; CONFLICT if it moved on.")
    ] = None,
    title: str | None = None,
    content: str | None = None,
    entry_type: str | None = None,
    tags: list[str] | None = None,
    source: str | None = None,
    metadata: dict[str, Any] | None = None,
    verified: Annotated[
        bool | None, Field(description="Set or clear the verified flag (admin tokens only).")
    ] = None,
    archived: bool | None = None,
) -> Annotated[CallToolResult, EntryOut]:
    tc = tool_context(context)
    p = tc.principal()

    def go() -> Answer:
        p.require(Action.UPDATE)
        if verified is not None:
            p.require(Action.VERIFY)
        patch = EntryPatch(
            title=title,
            content=content,
            entry_type=entry_type,
            tags=tuple(tags) if tags is not None else None,
            source=source,
            metadata=metadata,
            verified=verified,
            archived=archived,
        )
        updated = tc.kb.update(
            id, patch, expected_version=expected_version, namespaces=p.namespaces
        )
        return entry_out(updated)

    return await tc.run("kb_update", go)


async def kb_delete(
    context: Context[Any, Any],
    id: Annotated[str, Field(description="The entry id (UUID).")],
) -> Annotated[CallToolResult, DeletedOut]:
    tc = tool_context(context)
    p = tc.principal()

    def go() -> Answer:
        p.require(Action.DELETE)
        tc.kb.delete(id, namespaces=p.namespaces)
        return {"deleted": id}

    return await tc.run("kb_delete", go)


async def kb_list(
    context: Context[Any, Any],
    namespace: str | None = None,
    entry_type: str | None = None,
    tag: str | None = None,
    limit: Annotated[int, Field(ge=1, le=100)] = 20,
    offset: Annotated[int, Field(ge=0)] = 0,
    include_content: bool = False,
) -> Annotated[CallToolResult, ListOut]:
    tc = tool_context(context)
    p = tc.principal()

    def go() -> Answer:
        p.require(Action.LIST)
        scope = p.scope(namespace)
        entries = tc.kb.list(
            namespace=namespace,
            entry_type=entry_type,
            tag=tag,
            limit=min(limit, tc.limits.max_list),
            offset=offset,
            namespaces=scope,
        )
        return {
            "entries": [entry_out(e, content=include_content) for e in entries],
            "offset": offset,
            "next_offset": offset + len(entries) if len(entries) == limit else None,
        }

    return await tc.run("kb_list", go)


async def kb_stats(
    context: Context[Any, Any], namespace: str | None = None
) -> Annotated[CallToolResult, StatsOut]:
    tc = tool_context(context)
    p = tc.principal()

    def go() -> Answer:
        p.require(Action.STATS)
        return tc.kb.stats(p.scope(namespace))

    return await tc.run("kb_stats", go)


async def kb_health(context: Context[Any, Any]) -> Annotated[CallToolResult, HealthOut]:
    tc = tool_context(context)
    p = tc.principal()

    def go() -> Answer:
        p.require(Action.HEALTH)
        availability, _ = tc.kb.availability()
        return {
            "availability": availability,
            "storage_encrypted": tc.kb.encrypted,
            "encryption_scheme": "AES-256-GCM envelope" if tc.kb.encrypted else "none",
            "version": __version__,
            "principal": {"name": p.name, "role": p.role.value},
        }

    return await tc.run("kb_health", go)


async def kb_search(
    context: Context[Any, Any],
    query: Annotated[str, Field(description="What to look for, in plain words.")],
    mode: str = "hybrid",
    namespace: str = DEFAULT_NAMESPACE,
    entry_type: str | None = None,
    tags: list[str] | None = None,
    since: Annotated[str | None, Field(description="Only entries created since.")] = None,
    limit: Annotated[int, Field(ge=1, le=50)] = 10,
    offset: Annotated[int, Field(ge=0, le=1000)] = 0,
) -> Annotated[CallToolResult, SearchOut]:
    tc = tool_context(context)
    p = tc.principal()

    def go() -> Answer:
        p.require(Action.SEARCH, namespace)
        result = tc.kb.search(
            query,
            mode=mode,
            limit=limit,
            offset=offset,
            namespace=namespace,
            entry_type=entry_type,
            tags=tags or (),
            since=since,
        )
        return result.to_dict()

    return await tc.run("kb_search", go)


async def kb_import(
    context: Context[Any, Any],
    paths: Annotated[list[str], Field(description="Paths relative to the import root.")],
    namespace: str = DEFAULT_NAMESPACE,
    entry_type: str = "doc",
    tags: list[str] | None = None,
) -> Annotated[CallToolResult, ImportOut]:
    tc = tool_context(context)
    p = tc.principal()

    def go() -> Answer:
        p.require(Action.IMPORT, namespace)
        resolved = [str(under_import_root(tc.kb, raw)) for raw in paths]
        summary = tc.kb.import_paths(
            resolved,
            namespace=namespace,
            entry_type=entry_type,
            tags=tags or (),
            root=tc.kb.settings.import_root,  # every file re-checked; answers root-relative
        )
        return summary.to_dict()

    return await tc.run("kb_import", go)


def under_import_root(kb: KnowledgeBase, raw: str) -> Path:
    """Resolve a requested path and refuse anything outside the import root (symlinks
    and '..' included): an agent must not read arbitrary server files into the KB."""
    root = kb.settings.import_root
    if root is None:
        raise AccessDeniedError(
            "kb_import is disabled: the operator has not set SEALEDKB_IMPORT_ROOT"
        )
    base = root.resolve()
    candidate = (base / raw).resolve()
    if not candidate.is_relative_to(base):
        raise AccessDeniedError("path is outside the import root", field="paths")
    return candidate
