"""Entries as MCP resources (kb://NAMESPACE/ID) over real HTTP: a paginated
resources/list of what the token may see, reads with the tools' access rules, and
an attacker with a namespace-scoped token who guesses URIs of another namespace."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcp.shared.exceptions import MCPError
from tests.mcp_helpers import http_client, http_server

from sealedkb.adapters.mcp.resources import RESOURCE_PAGE
from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode


async def _all_uris(base: str, token: str) -> tuple[list[str], int]:
    uris: list[str] = []
    pages = 0
    cursor = None
    async with http_client(base, token) as c:
        while True:
            page = await c.list_resources(cursor=cursor)
            pages += 1
            uris += [str(r.uri) for r in page.resources]
            assert all(r.mime_type == "text/markdown" for r in page.resources)
            cursor = page.next_cursor
            if cursor is None:
                return uris, pages


async def _read(base: str, token: str, uri: str) -> Any:
    """The read's result, or the MCPError it was answered with."""
    async with http_client(base, token) as c:
        try:
            return await c.read_resource(uri)
        except MCPError as exc:
            return exc


def test_entries_as_resources_with_scope_and_pagination(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON)
    count = RESOURCE_PAGE + 5
    a_ids = [str(kb.add(f"team A note {n}", namespace="team-a").id) for n in range(count)]
    b_entry = kb.add("team B secret: the blue-lagoon plan", namespace="team-b")
    _, token_a = kb.create_token("a", "reader", ["team-a"])
    _, admin = kb.create_token("root", "admin", ["*"])
    kb.close()
    b_uri = f"kb://team-b/{b_entry.id}"
    with http_server(home, database_url) as (base, _):
        uris, pages = asyncio.run(_all_uris(base, token_a))
        assert pages == 2
        assert sorted(uris) == sorted(f"kb://team-a/{i}" for i in a_ids)
        read = asyncio.run(_read(base, token_a, f"kb://team-a/{a_ids[0]}"))
        assert read.contents[0].text.startswith("team A note")
        # The scoped token guesses B's URI, and B's id under its own namespace.
        for uri in (b_uri, f"kb://team-a/{b_entry.id}", "kb://team-a/not-a-uuid"):
            refused = asyncio.run(_read(base, token_a, uri))
            assert isinstance(refused, MCPError), uri
            text = str(refused)
            assert "blue-lagoon" not in text
            assert "NOT_FOUND" in text or "VALIDATION_ERROR" in text, text

        # A forged cursor is refused cleanly.
        async def bad_cursor() -> str:
            async with http_client(base, token_a) as c:
                try:
                    await c.list_resources(cursor="'; DROP TABLE kb_entries; --")
                except MCPError as exc:
                    return str(exc)
            return "accepted"

        assert "invalid cursor" in asyncio.run(bad_cursor())
        # An all-namespace token sees B's entry and reads it.
        everything, _ = asyncio.run(_all_uris(base, admin))
        assert b_uri in everything and len(everything) == len(a_ids) + 1
        assert "blue-lagoon" in asyncio.run(_read(base, admin, b_uri)).contents[0].text
