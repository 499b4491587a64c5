"""MCP tools in-process (the official SDK client against the server object) and
over real `sealedkb serve` subprocesses (stdio and streamable HTTP)."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from mcp import Client, StdioServerParameters
from tests.mcp_helpers import error_of, http_client, http_server, server_env

from sealedkb.adapters.mcp.server import Limits, build_server
from sealedkb.config import Settings
from sealedkb.kb.access import OPERATOR, Principal, Role
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode

TOOLS = {"kb_add", "kb_get", "kb_update", "kb_delete", "kb_list", "kb_stats", "kb_health"}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def roundtrip(client: Client) -> None:
    tools = {t.name for t in (await client.list_tools()).tools}
    assert tools >= TOOLS
    r = await client.call_tool(
        "kb_add",
        {"content": "Use pgbouncer in session mode", "entry_type": "decision", "tags": ["DB"]},
    )
    assert not r.is_error, r
    entry = r.structured_content
    assert entry["tags"] == ["db"] and entry["version"] == 1
    got = (await client.call_tool("kb_get", {"id": entry["id"]})).structured_content
    assert got["content"] == "Use pgbouncer in session mode"
    upd = await client.call_tool(
        "kb_update", {"id": entry["id"], "expected_version": 1, "title": "pgbouncer mode"}
    )
    assert upd.structured_content["version"] == 2
    stale = await client.call_tool(
        "kb_update", {"id": entry["id"], "expected_version": 1, "title": "lost update"}
    )
    assert error_of(stale)["code"] == "CONFLICT"
    listed = (await client.call_tool("kb_list", {"include_content": True})).structured_content
    assert [e["id"] for e in listed["entries"]] == [entry["id"]]
    stats = (await client.call_tool("kb_stats", {})).structured_content
    assert stats["entries_total"] == 1
    health = (await client.call_tool("kb_health", {})).structured_content
    assert health["availability"] == "available"
    assert (await client.call_tool("kb_delete", {"id": entry["id"]})).structured_content
    gone = await client.call_tool("kb_get", {"id": entry["id"]})
    assert error_of(gone)["code"] == "NOT_FOUND"


def test_tools_in_process(kb: KnowledgeBase) -> None:
    run(roundtrip_inproc(kb))


async def roundtrip_inproc(kb: KnowledgeBase) -> None:
    async with Client(build_server(kb, principal=lambda: OPERATOR)) as client:
        await roundtrip(client)


def test_integrity_and_internal_errors(kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two codes bad input cannot reach: a tampered row, and an unexpected crash
    (answered without details, so nothing of the failure leaks)."""
    e = kb.add("tamper target")
    with psycopg.connect(kb.db.url, autocommit=True) as conn:
        conn.execute(
            "UPDATE kb_entries SET doc_sealed = set_byte(doc_sealed, 60,"
            " get_byte(doc_sealed, 60) # 1) WHERE id = %s",
            (e.id,),
        )

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("SELECT secret FROM somewhere")

    async def go() -> None:
        async with Client(build_server(kb, principal=lambda: OPERATOR)) as c:
            err = error_of(await c.call_tool("kb_get", {"id": str(e.id)}))
            assert err["code"] == "INTEGRITY_ERROR"
            assert "tamper target" not in json.dumps(err)
            monkeypatch.setattr(kb, "stats", boom)
            crash = error_of(await c.call_tool("kb_stats", {}))
            assert crash == {
                "code": "INTERNAL_ERROR",
                "message": "internal error; see the server log",
            }

    run(go())


def test_error_codes_are_structured(kb: KnowledgeBase) -> None:
    reader = Principal("r", Role.READER, frozenset({"default"}))

    async def go() -> None:
        async with Client(build_server(kb, principal=lambda: OPERATOR)) as op:
            bad = await op.call_tool("kb_add", {"content": "   "})
            assert error_of(bad) == {
                "code": "VALIDATION_ERROR",
                "message": "content must not be empty",
                "field": "content",
            }
            assert bad.structured_content["code"] == "VALIDATION_ERROR"
            assert error_of(await op.call_tool("kb_get", {"id": "not-a-uuid"}))["field"] == "id"
            missing = await op.call_tool("kb_get", {"id": str(uuid.uuid4())})
            assert error_of(missing)["code"] == "NOT_FOUND"
            typ = await op.call_tool("kb_add", {"content": "x", "entry_type": "memo"})
            assert error_of(typ)["field"] == "entry_type"
        async with Client(build_server(kb, principal=lambda: reader)) as rd:
            denied = await rd.call_tool("kb_add", {"content": "x"})
            assert error_of(denied)["code"] == "ACCESS_DENIED"

    run(go())


def test_add_many_tool(kb: KnowledgeBase) -> None:
    a_writer = Principal("a", Role.WRITER, frozenset({"team-a"}))

    async def go() -> None:
        async with Client(build_server(kb, principal=lambda: a_writer)) as c:
            entries = [
                {"content": "Pool in session mode.", "title": "pooling", "namespace": "team-a"},
                {"content": "Rotate keys yearly.", "entry_type": "runbook", "namespace": "team-a"},
                {"content": "Pool  in session mode.", "namespace": "team-a"},  # a duplicate
            ]
            r = await c.call_tool("kb_add_many", {"entries": entries})
            assert not r.is_error, r
            got = r.structured_content["entries"]
            assert [e["title"] for e in got] == ["pooling", "Rotate keys yearly.", "pooling"]
            assert got[2]["id"] == got[0]["id"] and got[0]["version"] == 1
            assert kb.get(got[1]["id"]).entry_type.value == "runbook"
            # a bad entry names itself and nothing of the batch is written
            bad = await c.call_tool(
                "kb_add_many",
                {
                    "entries": [
                        {"content": "fine", "namespace": "team-a"},
                        {"content": "  ", "namespace": "team-a"},
                    ]
                },
            )
            assert error_of(bad) == {
                "code": "VALIDATION_ERROR",
                "message": "entry 1: content must not be empty",
                "field": "entries[1].content",
            }
            other = await c.call_tool(
                "kb_add_many", {"entries": [{"content": "x", "namespace": "team-b"}]}
            )
            assert error_of(other)["code"] == "ACCESS_DENIED"
            too_many = [{"content": f"n{i}", "namespace": "team-a"} for i in range(101)]
            assert (await c.call_tool("kb_add_many", {"entries": too_many})).is_error
            assert error_of(await c.call_tool("kb_add_many", {"entries": []}))["field"] == (
                "entries"
            )

    run(go())
    assert len(kb.list(namespace="team-a", limit=100)) == 2
    assert kb.list(namespace="team-b", limit=100) == []


def test_result_size_cap(kb: KnowledgeBase) -> None:
    for i in range(5):
        kb.add("x" * 5000 + str(i))

    async def go() -> None:
        server = build_server(
            kb, principal=lambda: OPERATOR, limits=Limits(max_result_bytes=10_000)
        )
        async with Client(server) as c:
            r = await c.call_tool("kb_list", {"include_content": True})
            assert error_of(r)["code"] == "VALIDATION_ERROR"
            ok = await c.call_tool("kb_list", {"include_content": False})
            assert not ok.is_error

    run(go())


def test_namespace_isolation_in_process(kb: KnowledgeBase) -> None:
    secret = kb.add("team B secret plan", namespace="team-b", tags=["plan"])
    mine = kb.add("team A note", namespace="team-a")
    a_writer = Principal("a", Role.WRITER, frozenset({"team-a"}))

    async def go() -> None:
        async with Client(build_server(kb, principal=lambda: a_writer)) as c:
            r = await c.call_tool("kb_get", {"id": str(secret.id)})
            err = error_of(r)
            assert err["code"] == "NOT_FOUND" and "secret" not in json.dumps(err)
            for tool, args in (
                ("kb_update", {"id": str(secret.id), "content": "pwned"}),
                ("kb_delete", {"id": str(secret.id)}),
            ):
                assert error_of(await c.call_tool(tool, args))["code"] == "NOT_FOUND"
            listed = (await c.call_tool("kb_list", {})).structured_content
            assert [e["id"] for e in listed["entries"]] == [str(mine.id)]
            other = await c.call_tool("kb_list", {"namespace": "team-b"})
            assert error_of(other)["code"] == "ACCESS_DENIED"
            stats = (await c.call_tool("kb_stats", {})).structured_content
            assert set(stats["namespaces"]) == {"team-a"}
            add = await c.call_tool("kb_add", {"content": "x", "namespace": "team-b"})
            assert error_of(add)["code"] == "ACCESS_DENIED"

    run(go())
    assert kb.get(secret.id).content == "team B secret plan"


def test_stats_names_encrypted_tags(kb: KnowledgeBase) -> None:
    kb.add("a", tags=["ops", "db"])
    kb.add("b", tags=["ops"])
    stats = kb.stats()
    assert stats["namespaces"]["default"]["top_tags"] == {"ops": 2, "db": 1}


# --- real subprocesses ---------------------------------------------------------


def _init(make_settings: Callable[..., Settings]) -> KnowledgeBase:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON)
    return kb


def test_stdio_subprocess(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    _init(make_settings).close()
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "sealedkb", "serve", "--transport", "stdio"],
        env=server_env(home, database_url),
    )

    async def go() -> None:
        async with Client(params) as client:
            await roundtrip(client)

    run(go())


def test_http_subprocess(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    kb = _init(make_settings)
    _, token = kb.create_token("agent", "writer", ["default"])
    kb.close()
    with http_server(home, database_url) as (base, _proc):

        async def go() -> None:
            async with http_client(base, token) as client:
                await roundtrip(client)

        run(go())


def test_concurrent_update_conflict_over_http(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    kb = _init(make_settings)
    _, token = kb.create_token("agent", "writer", ["default"])
    entry = kb.add("shared doc")
    kb.close()
    with http_server(home, database_url) as (base, _proc):

        async def one(i: int) -> Any:
            async with http_client(base, token) as c:
                return await c.call_tool(
                    "kb_update", {"id": str(entry.id), "expected_version": 1, "content": f"v{i}"}
                )

        async def go() -> list[Any]:
            return list(await asyncio.gather(*(one(i) for i in range(4))))

        results = run(go())
    ok = [r for r in results if not r.is_error]
    conflicts = [r for r in results if r.is_error]
    assert len(ok) == 1
    assert {error_of(r)["code"] for r in conflicts} == {"CONFLICT"}


def test_search_and_import_tools(kb: KnowledgeBase, tmp_path: Path) -> None:
    kb.add("Rotate the KMS key every year; re-wrap data keys online.", title="Key rotation")
    hidden = kb.add("team B rotation secrets", namespace="team-b")
    root = tmp_path / "imports"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "guide.md").write_text("# Backups\n\nSnapshots are encrypted.\n")
    (tmp_path / "outside.md").write_text("# Outside\n\nnot allowed\n")
    kb.settings = kb.settings.model_copy(update={"import_root": root})
    a_writer = Principal("a", Role.WRITER, frozenset({"default"}))
    reader = Principal("r", Role.READER, frozenset({"default"}))

    async def go() -> None:
        async with Client(build_server(kb, principal=lambda: a_writer)) as c:
            for mode in ("hybrid", "keyword", "semantic"):
                r = await c.call_tool("kb_search", {"query": "key rotation", "mode": mode})
                assert not r.is_error, r
                ids = [h["id"] for h in r.structured_content["hits"]]
                assert str(hidden.id) not in ids
            r = await c.call_tool("kb_search", {"query": "rotation", "namespace": "team-b"})
            assert error_of(r)["code"] == "ACCESS_DENIED"
            bad = await c.call_tool("kb_search", {"query": "x", "mode": "fuzzy"})
            assert error_of(bad)["code"] == "VALIDATION_ERROR"
            imp = await c.call_tool("kb_import", {"paths": ["docs"]})
            assert not imp.is_error, imp
            assert imp.structured_content["chunks_added"] >= 1
            again = await c.call_tool("kb_import", {"paths": ["docs"]})
            assert again.structured_content["chunks_added"] == 0
            for escape in ("../outside.md", str(tmp_path / "outside.md")):
                out = await c.call_tool("kb_import", {"paths": [escape]})
                assert error_of(out)["code"] == "ACCESS_DENIED"
            found = await c.call_tool("kb_search", {"query": "snapshots encrypted"})
            assert found.structured_content["hits"]
        async with Client(build_server(kb, principal=lambda: reader)) as c:
            r = await c.call_tool("kb_import", {"paths": ["docs"]})
            assert error_of(r)["code"] == "ACCESS_DENIED"

    run(go())
