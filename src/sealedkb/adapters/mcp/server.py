"""The MCP server: the knowledge-base tools for AI agents (official ``mcp`` SDK).

Wiring only: :func:`build_server` makes a :class:`KnowledgeBaseServer` carrying the
tools' context and registers the tools of tools.py with their descriptions. Every
tool publishes an output schema (schemas.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

from sealedkb import __version__
from sealedkb.adapters.mcp import tools
from sealedkb.adapters.mcp.resources import register_resources
from sealedkb.adapters.mcp.schemas import MAX_ADD_MANY, NewEntryIn
from sealedkb.adapters.mcp.tools import Limits, ToolContext, error_result
from sealedkb.kb.access import OPERATOR, Principal, Role
from sealedkb.kb.knowledge_base import KnowledgeBase

__all__ = [
    "MAX_ADD_MANY",
    "KnowledgeBaseServer",
    "Limits",
    "NewEntryIn",
    "build_server",
    "error_result",
    "principal_of",
]

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

# The tools in the order they are listed, with their descriptions.
TOOLS: tuple[tuple[Callable[..., Any], str], ...] = (
    (
        tools.kb_add,
        "Add an entry (markdown content up to 1 MB) to the knowledge base. "
        "Returns the stored entry with its id and version.",
    ),
    (
        tools.kb_add_many,
        "Add several entries (up to 100) in one transaction: all are added or "
        "none. Returns id, title, namespace and version of each, in order (an existing "
        "entry's where identical content was already there).",
    ),
    (tools.kb_get, "Get one entry by id, with its content, tags and version."),
    (
        tools.kb_update,
        "Change an entry. Pass expected_version (from kb_get) to fail with "
        "CONFLICT instead of overwriting someone else's change. Only given fields change; "
        "tags replace the old tags.",
    ),
    (tools.kb_delete, "Delete an entry (soft delete: it disappears from get/list/search)."),
    (
        tools.kb_list,
        "List entries newest first, with filters and pagination (offset/limit). "
        "Content is left out unless include_content is true.",
    ),
    (tools.kb_stats, "Counts of entries by namespace and type, and the most used tags."),
    (
        tools.kb_health,
        "Health of the knowledge base: availability (available or "
        "inaccessible-encryption-credentials) and an encryption summary. No secrets.",
    ),
    (
        tools.kb_search,
        "Search the knowledge base. mode: hybrid (default: keywords + meaning, "
        "fused), semantic or keyword. Filters: namespace, entry_type, tags (all must match), "
        "since (ISO date). Returns hits with id, title, score, snippet, type, tags and "
        "source; use kb_get for the full content. Page with offset/next_offset.",
    ),
    (
        tools.kb_import,
        "Import Markdown, text or HTML files or folders that are on the server, "
        "under its allowed import root (SEALEDKB_IMPORT_ROOT), as chunked entries. "
        "Re-importing an unchanged file adds nothing; a changed one replaces its chunks.",
    ),
)


def principal_from_request() -> Principal:
    """The caller: the bearer token's principal over HTTP, the operator over stdio."""
    token = get_access_token()
    return OPERATOR if token is None else principal_of(token)


def principal_of(token: AccessToken) -> Principal:
    """The principal a verified bearer token stands for (http.TokenVerifier's claims)."""
    claims = token.claims or {}
    namespaces = claims.get("namespaces")
    return Principal(
        token.client_id,
        Role(claims.get("role", Role.READER.value)),
        None if namespaces is None else frozenset(namespaces),
    )


class KnowledgeBaseServer(MCPServer):
    """An MCPServer that carries the context its tools run against (tools.tool_context)."""

    def __init__(self, tool_context: ToolContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tool_context = tool_context


def build_server(
    kb: KnowledgeBase,
    *,
    limits: Limits | None = None,
    principal: Callable[[], Principal] = principal_from_request,
    auth: AuthSettings | None = None,
    token_verifier: TokenVerifier | None = None,
) -> KnowledgeBaseServer:
    """An MCPServer exposing the knowledge base; transports are added by the caller.

    With ``auth`` and ``token_verifier`` (HTTP), the SDK answers 401 to requests
    without a valid bearer token before any tool runs.
    """
    server = KnowledgeBaseServer(
        ToolContext(kb, limits or Limits(), principal),
        name="sealedkb",
        auth=auth,
        token_verifier=token_verifier,
        title="sealedkb — encrypted team knowledge base",
        version=__version__,
        instructions=INSTRUCTIONS,
        log_level="WARNING",
    )
    for fn, description in TOOLS:
        server.add_tool(fn, description=description)
    register_resources(server, kb, principal)  # entries as kb://NAMESPACE/ID
    return server
