"""Attacks on the per-id tools and the verified flag over real HTTP.

An attacker with SQL access corrupts the sealed document of an entry in namespace B:
a token scoped to namespace A must get NOT_FOUND for it, exactly as for a random id
(not INTEGRITY_ERROR, which would tell it the id exists elsewhere, and not after
touching B's keys). Only admin tokens may set or clear ``verified``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from tests.mcp_helpers import error_of, http_client, http_server

from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode


async def call(base: str, token: str, tool: str, args: dict[str, Any]) -> Any:
    async with http_client(base, token) as c:
        return await c.call_tool(tool, args)


def test_other_namespace_is_not_found_before_any_key_is_touched(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON)
    b_entry = kb.add("B's runbook", namespace="team-b")
    _, token_a = kb.create_token("a", "writer", ["team-a"])
    kb.close()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE kb_entries SET doc_sealed = set_byte(doc_sealed, 60,"
            " get_byte(doc_sealed, 60) # 1) WHERE id = %s",
            (b_entry.id,),
        )
    calls: list[tuple[str, dict[str, Any]]] = [
        ("kb_get", {}),
        ("kb_update", {"title": "hijacked"}),
        ("kb_update", {"title": "hijacked", "expected_version": 1}),
        ("kb_delete", {}),
    ]
    with http_server(home, database_url) as (base, _):
        for tool, extra in calls:
            answers = [
                error_of(asyncio.run(call(base, token_a, tool, {"id": eid, **extra})))
                for eid in (str(b_entry.id), str(uuid.uuid4()))
            ]
            corrupted, random_id = answers
            assert corrupted["code"] == "NOT_FOUND", (tool, corrupted)
            assert corrupted == random_id, tool  # the same answer: no oracle
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT deleted_at, version FROM kb_entries WHERE id = %s", (b_entry.id,)
        ).fetchone()
    assert row == (None, 1)  # neither deleted nor updated


def test_verified_is_for_admins_only(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON)
    entry = kb.add("a claim someone should check")
    _, writer = kb.create_token("writer", "writer", ["default"])
    _, admin = kb.create_token("admin", "admin", ["*"])
    kb.close()
    with http_server(home, database_url) as (base, _):
        added = asyncio.run(call(base, writer, "kb_add", {"content": "x", "verified": True}))
        assert error_of(added)["code"] == "ACCESS_DENIED"
        for value in (True, False):
            upd = asyncio.run(
                call(base, writer, "kb_update", {"id": str(entry.id), "verified": value})
            )
            assert error_of(upd)["code"] == "ACCESS_DENIED"
        plain = asyncio.run(call(base, writer, "kb_add", {"content": "unverified note"}))
        assert not plain.is_error and plain.structured_content["verified"] is False
        edit = asyncio.run(call(base, writer, "kb_update", {"id": str(entry.id), "title": "t"}))
        assert not edit.is_error and edit.structured_content["verified"] is False
        ok = asyncio.run(call(base, admin, "kb_update", {"id": str(entry.id), "verified": True}))
        assert not ok.is_error and ok.structured_content["verified"] is True
        new = asyncio.run(call(base, admin, "kb_add", {"content": "checked", "verified": True}))
        assert not new.is_error and new.structured_content["verified"] is True
    kb = KnowledgeBase.open(make_settings())
    assert [e.verified for e in kb.list() if e.content == "x"] == []
    kb.close()
