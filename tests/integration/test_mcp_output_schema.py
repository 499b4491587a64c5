"""Every MCP tool publishes an outputSchema, and real answers over HTTP validate
against it; errors stay structured {code, message} results outside the schema."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
from tests.mcp_helpers import error_of, http_client, http_server

from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode

TOOLS = {
    "kb_add",
    "kb_add_many",
    "kb_get",
    "kb_update",
    "kb_delete",
    "kb_list",
    "kb_stats",
    "kb_health",
    "kb_search",
    "kb_import",
}
ENTRY_KEYS = {
    "id",
    "namespace",
    "title",
    "content",
    "entry_type",
    "tags",
    "source",
    "metadata",
    "verified",
    "archived",
    "created_at",
    "updated_at",
    "version",
}


async def _exercise(base: str, token: str, entry_id: str) -> None:
    async with http_client(base, token) as c:
        listed = (await c.list_tools()).tools
        schemas = {t.name: t.output_schema for t in listed}
        assert set(schemas) == TOOLS
        for name, schema in schemas.items():
            assert schema is not None, f"{name} has no outputSchema"
            assert schema.get("type") == "object", name
            jsonschema.Draft202012Validator.check_schema(schema)

        def check(tool: str, answer: Any) -> dict[str, Any]:
            assert not answer.is_error, answer
            body = answer.structured_content
            jsonschema.validate(body, schemas[tool])
            return dict(body)

        got = check("kb_get", await c.call_tool("kb_get", {"id": entry_id}))
        assert set(got) == ENTRY_KEYS  # the keys answered before the schemas existed
        assert got["content"] == "Failover runbook: promote the replica, then repoint pgbouncer"

        found = check("kb_search", await c.call_tool("kb_search", {"query": "failover replica"}))
        assert set(found) == {
            "mode",
            "requested_mode",
            "limit",
            "offset",
            "next_offset",
            "warnings",
            "hits",
        }
        assert [h["id"] for h in found["hits"]][:1] == [entry_id]
        hit_schema = schemas["kb_search"]["$defs"]["SearchHitOut"]
        assert set(hit_schema["required"]) == set(found["hits"][0])

        added = check("kb_add", await c.call_tool("kb_add", {"content": "a second note"}))
        listed_entries = check("kb_list", await c.call_tool("kb_list", {}))
        assert "content" not in listed_entries["entries"][0]
        check("kb_list", await c.call_tool("kb_list", {"include_content": True}))
        check(
            "kb_update",
            await c.call_tool("kb_update", {"id": added["id"], "title": "renamed"}),
        )
        check("kb_stats", await c.call_tool("kb_stats", {}))
        check("kb_health", await c.call_tool("kb_health", {}))
        check(
            "kb_add_many",
            await c.call_tool("kb_add_many", {"entries": [{"content": "batch one"}]}),
        )
        check("kb_delete", await c.call_tool("kb_delete", {"id": added["id"]}))

        # Errors are is_error results with {code, message}: not held to the schema,
        # so neither the server nor this client refuses them.
        missing = await c.call_tool("kb_get", {"id": str(uuid.uuid4())})
        err = error_of(missing)
        assert err["code"] == "NOT_FOUND" and err["message"]
        assert missing.structured_content["code"] == "NOT_FOUND"
        off = await c.call_tool("kb_import", {"paths": ["x.md"]})
        assert error_of(off)["code"] == "ACCESS_DENIED"


def test_every_tool_publishes_an_output_schema_that_answers_validate_against(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON)
    entry = kb.add(
        "Failover runbook: promote the replica, then repoint pgbouncer",
        entry_type="runbook",
        tags=["postgres"],
        metadata={"owner": "dba"},
    )
    _, token = kb.create_token("agent", "writer", ["default"])
    kb.close()
    with http_server(home, database_url) as (base, _):
        asyncio.run(_exercise(base, token, str(entry.id)))
