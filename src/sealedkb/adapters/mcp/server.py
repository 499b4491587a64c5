"""The MCP server: the knowledge-base tools for AI agents (official ``mcp`` SDK).

Thin by design: each tool checks the caller's principal (kb/access.py), runs the
blocking service call in a worker thread, and maps SealedKBError to a structured
tool error ``{"code", "message", "field"?}``. Anything unexpected is logged
server-side and answered as INTERNAL_ERROR without details.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import anyio.to_thread
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel, Field

from sealedkb import __version__
from sealedkb.errors import AccessDeniedError, NotFoundError, SealedKBError, ValidationError
from sealedkb.kb.access import OPERATOR, Action, Principal, Role
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import DEFAULT_NAMESPACE, Entry, EntryPatch, EntryType, new_entry
from sealedkb.monitoring.metrics import TOOL_SECONDS

log = logging.getLogger("sealedkb.mcp")
T = TypeVar("T")

INSTRUCTIONS = """\
sealedkb is the team's encrypted knowledge base: documentation, code patterns,
architecture notes, decisions, runbooks and lessons. Search it (kb_search) before
answering questions about how this team does things, and record durable knowledge
(kb_add; kb_add_many for a batch) when you learn something others will need.
Entries have a type (note, doc, decision, pattern, runbook, lesson, constraint),
tags and a namespace (project).
Errors come back as JSON {"code", "message", "field"}: VALIDATION_ERROR (fix the
argument named in field), NOT_FOUND, CONFLICT (get the entry again, then retry with
its version), ACCESS_DENIED, KEY_UNAVAILABLE (the knowledge base is locked: tell the
operator), INTEGRITY_ERROR (stored data failed its check: tell the operator)."""


@dataclass(frozen=True)
class Limits:
    """Caps that keep one call from exhausting the server."""

    max_result_bytes: int = 2 * 1024 * 1024
    max_list: int = 100


def _principal_from_request() -> Principal:
    """The caller: the bearer token's principal over HTTP, the operator over stdio."""
    token = get_access_token()
    if token is None:
        return OPERATOR
    claims = token.claims or {}
    namespaces = claims.get("namespaces")
    return Principal(
        token.client_id,
        Role(claims.get("role", Role.READER.value)),
        None if namespaces is None else frozenset(namespaces),
    )


MAX_ADD_MANY = 100  # entries per kb_add_many call (a module constant: read by the SDK)


class NewEntryIn(BaseModel):
    """One entry of kb_add_many (the fields of kb_add)."""

    content: str = Field(description="The knowledge, as markdown.")
    title: str | None = Field(default=None, description="Short title; defaults to the first line.")
    entry_type: str = Field(default=EntryType.NOTE.value, description="note, doc, decision, ...")
    tags: list[str] | None = Field(default=None, description="Tags, e.g. ['postgres'].")
    namespace: str = Field(default=DEFAULT_NAMESPACE, description="Project or team namespace.")
    source: str | None = Field(default=None, description="Path, URL or reference.")
    metadata: dict[str, Any] | None = Field(default=None, description="Extra JSON attributes.")


def _entry_out(e: Entry, *, content: bool = True) -> dict[str, Any]:
    d = e.to_dict()
    d.pop("deleted_at", None)
    if not content:
        d.pop("content", None)
    return d


def error_result(error: dict[str, str]) -> Any:
    """A tool error as ``is_error`` with the JSON ``{code, message, field?}`` both as text
    and as structured content. Returned, not raised: a raised ToolError reaches the
    client prefixed with "Error executing tool ...", which agents then have to strip.
    The SDK passes a returned CallToolResult through unchanged."""
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(error, ensure_ascii=False))],
        structured_content=error,
        is_error=True,
    )


def build_server(
    kb: KnowledgeBase,
    *,
    limits: Limits | None = None,
    principal: Callable[[], Principal] = _principal_from_request,
    auth: AuthSettings | None = None,
    token_verifier: TokenVerifier | None = None,
) -> MCPServer:
    """An MCPServer exposing the knowledge base; transports are added by the caller.

    With ``auth`` and ``token_verifier`` (HTTP), the SDK answers 401 to requests
    without a valid bearer token before any tool runs.
    """
    lim = limits or Limits()
    server: MCPServer = MCPServer(
        name="sealedkb",
        auth=auth,
        token_verifier=token_verifier,
        title="sealedkb — encrypted team knowledge base",
        version=__version__,
        instructions=INSTRUCTIONS,
        log_level="WARNING",
    )

    async def call(tool: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        # Errors come back as a CallToolResult (see error_result); typed as the
        # success dict because the SDK derives the output schema from the annotation.
        started = time.perf_counter()
        try:
            result = await anyio.to_thread.run_sync(fn)
        except SealedKBError as exc:
            log.info("tool %s -> %s (%s)", tool, exc.code, exc.message)
            TOOL_SECONDS.labels(tool, exc.code).observe(time.perf_counter() - started)
            return cast(dict[str, Any], error_result(exc.to_dict()))
        except Exception:
            log.exception("tool %s failed unexpectedly", tool)
            TOOL_SECONDS.labels(tool, "INTERNAL_ERROR").observe(time.perf_counter() - started)
            return cast(
                dict[str, Any],
                error_result(
                    {"code": "INTERNAL_ERROR", "message": "internal error; see the server log"}
                ),
            )
        TOOL_SECONDS.labels(tool, "ok").observe(time.perf_counter() - started)
        size = len(json.dumps(result, default=str))
        if size > lim.max_result_bytes:
            too_big = ValidationError(
                f"result is {size} bytes, over the {lim.max_result_bytes}-byte cap; "
                "ask for fewer entries or leave out content",
                field="limit",
            )
            return cast(dict[str, Any], error_result(too_big.to_dict()))
        return result

    def visible_entry(p: Principal, entry_id: str) -> Entry:
        entry = kb.get(entry_id)
        if not p.sees(entry.namespace):
            raise NotFoundError("entry not found", field="id")  # don't reveal other namespaces
        return entry

    @server.tool(
        description="Add an entry (markdown content up to 1 MB) to the knowledge base. "
        "Returns the stored entry with its id and version."
    )
    async def kb_add(
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
        metadata: Annotated[
            dict[str, Any] | None, Field(description="Extra JSON attributes.")
        ] = None,
    ) -> dict[str, Any]:
        p = principal()

        def go() -> dict[str, Any]:
            p.require(Action.ADD, namespace)
            e = kb.add(
                content,
                title=title,
                entry_type=entry_type,
                tags=tags or [],
                namespace=namespace,
                source=source,
                metadata=metadata,
            )
            return _entry_out(e)

        return await call("kb_add", go)

    @server.tool(
        description="Add several entries (up to 100) in one transaction: all are added or "
        "none. Returns id, title, namespace and version of each, in order (an existing "
        "entry's where identical content was already there)."
    )
    async def kb_add_many(
        entries: Annotated[
            list[NewEntryIn],
            Field(description="The entries, each as for kb_add.", max_length=MAX_ADD_MANY),
        ],
    ) -> dict[str, Any]:
        p = principal()

        def go() -> dict[str, Any]:
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
            added = kb.add_many(news)
            return {
                "entries": [
                    {
                        "id": str(a.id),
                        "title": a.title,
                        "namespace": a.namespace,
                        "version": a.version,
                    }
                    for a in added
                ]
            }

        return await call("kb_add_many", go)

    @server.tool(description="Get one entry by id, with its content, tags and version.")
    async def kb_get(
        id: Annotated[str, Field(description="The entry id (UUID).")],
    ) -> dict[str, Any]:
        p = principal()

        def go() -> dict[str, Any]:
            p.require(Action.GET)
            return _entry_out(visible_entry(p, id))

        return await call("kb_get", go)

    @server.tool(
        description="Change an entry. Pass expected_version (from kb_get) to fail with "
        "CONFLICT instead of overwriting someone else's change. Only given fields change; "
        "tags replace the old tags."
    )
    async def kb_update(
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
        verified: bool | None = None,
        archived: bool | None = None,
    ) -> dict[str, Any]:
        p = principal()

        def go() -> dict[str, Any]:
            p.require(Action.UPDATE)
            visible_entry(p, id)
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
            return _entry_out(kb.update(id, patch, expected_version=expected_version))

        return await call("kb_update", go)

    @server.tool(description="Delete an entry (soft delete: it disappears from get/list/search).")
    async def kb_delete(
        id: Annotated[str, Field(description="The entry id (UUID).")],
    ) -> dict[str, Any]:
        p = principal()

        def go() -> dict[str, Any]:
            p.require(Action.DELETE)
            visible_entry(p, id)
            kb.delete(id)
            return {"deleted": id}

        return await call("kb_delete", go)

    @server.tool(
        description="List entries newest first, with filters and pagination (offset/limit). "
        "Content is left out unless include_content is true."
    )
    async def kb_list(
        namespace: str | None = None,
        entry_type: str | None = None,
        tag: str | None = None,
        limit: Annotated[int, Field(ge=1, le=100)] = 20,
        offset: Annotated[int, Field(ge=0)] = 0,
        include_content: bool = False,
    ) -> dict[str, Any]:
        p = principal()

        def go() -> dict[str, Any]:
            p.require(Action.LIST)
            scope = p.scope(namespace)
            entries = kb.list(
                namespace=namespace,
                entry_type=entry_type,
                tag=tag,
                limit=min(limit, lim.max_list),
                offset=offset,
                namespaces=scope,
            )
            return {
                "entries": [_entry_out(e, content=include_content) for e in entries],
                "offset": offset,
                "next_offset": offset + len(entries) if len(entries) == limit else None,
            }

        return await call("kb_list", go)

    @server.tool(description="Counts of entries by namespace and type, and the most used tags.")
    async def kb_stats(namespace: str | None = None) -> dict[str, Any]:
        p = principal()

        def go() -> dict[str, Any]:
            p.require(Action.STATS)
            return dict(kb.stats(p.scope(namespace)))

        return await call("kb_stats", go)

    @server.tool(
        description="Health of the knowledge base: availability (available or "
        "inaccessible-encryption-credentials) and an encryption summary. No secrets."
    )
    async def kb_health() -> dict[str, Any]:
        p = principal()

        def go() -> dict[str, Any]:
            p.require(Action.HEALTH)
            availability, _ = kb.availability()
            return {
                "availability": availability,
                "storage_encrypted": kb.encrypted,
                "encryption_scheme": "AES-256-GCM envelope" if kb.encrypted else "none",
                "version": __version__,
                "principal": {"name": p.name, "role": p.role.value},
            }

        return await call("kb_health", go)

    register_search_tools(server, kb, call, principal)
    return server


def register_search_tools(
    server: MCPServer,
    kb: KnowledgeBase,
    call: Callable[..., Any],
    principal: Callable[[], Principal],
) -> None:
    """kb_search and kb_import (the search issue's API)."""
    if not hasattr(kb, "search"):
        return

    @server.tool(
        description="Search the knowledge base. mode: hybrid (default: keywords + meaning, "
        "fused), semantic or keyword. Filters: namespace, entry_type, tags (all must match), "
        "since (ISO date). Returns hits with id, title, score, snippet, type, tags and "
        "source; use kb_get for the full content. Page with offset/next_offset."
    )
    async def kb_search(
        query: Annotated[str, Field(description="What to look for, in plain words.")],
        mode: str = "hybrid",
        namespace: str = DEFAULT_NAMESPACE,
        entry_type: str | None = None,
        tags: list[str] | None = None,
        since: Annotated[str | None, Field(description="Only entries created since.")] = None,
        limit: Annotated[int, Field(ge=1, le=50)] = 10,
        offset: Annotated[int, Field(ge=0, le=1000)] = 0,
    ) -> dict[str, Any]:
        p = principal()

        def go() -> dict[str, Any]:
            p.require(Action.SEARCH, namespace)
            result = kb.search(
                query,
                mode=mode,
                limit=limit,
                offset=offset,
                namespace=namespace,
                entry_type=entry_type,
                tags=tags or (),
                since=since,
            )
            out: dict[str, Any] = result.to_dict()
            return out

        return cast(dict[str, Any], await call("kb_search", go))

    @server.tool(
        description="Import Markdown, text or HTML files or folders that are on the server, "
        "under its allowed import root (SEALEDKB_IMPORT_ROOT), as chunked entries. "
        "Re-importing an unchanged file adds nothing; a changed one replaces its chunks."
    )
    async def kb_import(
        paths: Annotated[list[str], Field(description="Paths relative to the import root.")],
        namespace: str = DEFAULT_NAMESPACE,
        entry_type: str = "doc",
        tags: list[str] | None = None,
    ) -> dict[str, Any]:
        p = principal()

        def go() -> dict[str, Any]:
            p.require(Action.IMPORT, namespace)
            resolved = [str(_under_import_root(kb, raw)) for raw in paths]
            summary = kb.import_paths(
                resolved,
                namespace=namespace,
                entry_type=entry_type,
                tags=tags or (),
                root=kb.settings.import_root,  # every file re-checked; answers root-relative
            )
            out: dict[str, Any] = summary.to_dict()
            return out

        return cast(dict[str, Any], await call("kb_import", go))


def _under_import_root(kb: KnowledgeBase, raw: str) -> Path:
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
