"""Entries as MCP resources: ``kb://NAMESPACE/ID``, read as their Markdown content.

The same access rules as the tools (kb/access.py): reading needs the get action
and the namespace in the caller's scope, and an entry outside it (or not in the
namespace the URI names) is not found, exactly like a missing id. ``resources/list``
is paginated (an opaque cursor, ``RESOURCE_PAGE`` entries a page, newest first) and
lists only what the caller may see. Errors carry the stable codes of errors.py as
JSON ``{code, message}``; never entry text.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp.shared.exceptions import MCPError
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS, ListResourcesResult, Resource

from sealedkb.errors import NotFoundError, SealedKBError
from sealedkb.kb.access import Action, Principal
from sealedkb.kb.knowledge_base import KnowledgeBase

__all__ = ["RESOURCE_PAGE", "URI_TEMPLATE", "register_resources"]

URI_TEMPLATE = "kb://{namespace}/{entry_id}"
RESOURCE_PAGE = 50
_MAX_OFFSET = 1_000_000
MIME = "text/markdown"

CallNext = Callable[[ServerRequestContext[Any, Any]], Awaitable[Any]]


def entry_uri(namespace: str, entry_id: object) -> str:
    return f"kb://{namespace}/{entry_id}"


def _error_text(exc: SealedKBError) -> str:
    return json.dumps(exc.to_dict(), ensure_ascii=False)


class EntryListing:
    """Server middleware answering ``resources/list`` with the caller's entries, a
    page at a time (the SDK's own listing knows only static resources)."""

    def __init__(self, kb: KnowledgeBase, principal: Callable[[], Principal]) -> None:
        self.kb = kb
        self.principal = principal

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> Any:
        if ctx.method != "resources/list":
            return await call_next(ctx)
        cursor = (ctx.params or {}).get("cursor")
        if cursor is None:
            offset = 0
        elif isinstance(cursor, str) and cursor.isdigit() and int(cursor) <= _MAX_OFFSET:
            offset = int(cursor)
        else:
            raise MCPError(INVALID_PARAMS, "invalid cursor: pass back a next_cursor unchanged")
        p = self.principal()

        def go() -> ListResourcesResult:
            p.require(Action.LIST)
            found = self.kb.list(limit=RESOURCE_PAGE + 1, offset=offset, namespaces=p.scope(None))
            page = found[:RESOURCE_PAGE]
            return ListResourcesResult(
                resources=[
                    Resource(
                        uri=entry_uri(e.namespace, e.id),
                        name=str(e.id),
                        title=e.title,
                        mime_type=MIME,
                    )
                    for e in page
                ],
                next_cursor=str(offset + RESOURCE_PAGE) if len(found) > RESOURCE_PAGE else None,
            )

        try:
            return await anyio.to_thread.run_sync(go)
        except SealedKBError as exc:
            raise MCPError(INTERNAL_ERROR, _error_text(exc)) from None


def register_resources(
    server: MCPServer, kb: KnowledgeBase, principal: Callable[[], Principal]
) -> None:
    """Entries as resources on ``server``: the template and the paginated listing."""

    async def read_entry(namespace: str, entry_id: str) -> str:
        p = principal()

        def go() -> str:
            p.require(Action.GET)
            if not p.sees(namespace):
                raise NotFoundError("entry not found", field="id")
            # Scoped to the URI's namespace: an id of another namespace is not found.
            return kb.get(entry_id, namespaces=[namespace]).content

        try:
            return await anyio.to_thread.run_sync(go)
        except NotFoundError as exc:
            raise ResourceNotFoundError(_error_text(exc)) from None
        except SealedKBError as exc:
            raise ResourceError(_error_text(exc)) from None

    server.resource(
        URI_TEMPLATE,
        name="entry",
        title="Knowledge-base entry",
        description="One entry's Markdown content; the same access rules as kb_get.",
        mime_type=MIME,
    )(read_entry)
    server.middleware.append(EntryListing(kb, principal))
