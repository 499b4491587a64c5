"""Fuzz the MCP tool inputs with generated arguments (hypothesis): no crash, no
INTERNAL_ERROR for bad input, and no plaintext of entries the caller cannot see."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client

from sealedkb.adapters.mcp.server import build_server
from sealedkb.kb.access import Principal, Role
from sealedkb.kb.knowledge_base import KnowledgeBase

MARKER = "ZEBRA-SECRET-7731"
CODES = {"VALIDATION_ERROR", "NOT_FOUND", "CONFLICT", "ACCESS_DENIED"}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", " ", "default", "private", "note", "decision", "../../etc/passwd", "*"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
words = st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=12)
GOOD: dict[str, st.SearchStrategy[Any]] = {
    "content": st.text(min_size=1, max_size=200).filter(str.strip),
    "title": words,
    "entry_type": st.sampled_from(["note", "doc", "decision", "pattern", "runbook", "lesson"]),
    "tags": st.lists(words, max_size=3),
    "tag": words,
    "namespace": st.just("default"),
    "source": words,
    "metadata": st.dictionaries(words, st.integers(0, 9), max_size=2),
    "expected_version": st.integers(1, 3),
    "limit": st.integers(1, 100),
    "offset": st.integers(0, 5),
    "include_content": st.booleans(),
    "archived": st.booleans(),
    "query": st.text(min_size=1, max_size=60),
    "mode": st.sampled_from(["hybrid", "keyword", "semantic"]),
    "since": st.sampled_from(["2020-01-01", "2026-11-01T00:00:00+00:00"]),
    "entries": st.lists(
        st.fixed_dictionaries(
            {"content": st.text(min_size=1, max_size=80)},
            optional={"title": words, "tags": st.lists(words, max_size=2), "namespace": words},
        ),
        max_size=3,
    ),
}
PARAMS = {
    "kb_add": ["content", "title", "entry_type", "tags", "namespace", "source", "metadata"],
    "kb_add_many": ["entries"],
    "kb_get": ["id"],
    "kb_update": ["id", "expected_version", "title", "content", "entry_type", "tags", "archived"],
    "kb_delete": ["id"],
    "kb_list": ["namespace", "entry_type", "tag", "limit", "offset", "include_content"],
    "kb_stats": ["namespace"],
    "kb_health": [],
    "kb_search": ["query", "mode", "namespace", "entry_type", "tags", "since", "limit", "offset"],
}


@st.composite
def tool_calls(draw: st.DrawFn, ids: list[str]) -> tuple[str, dict[str, Any]]:
    tool = draw(st.sampled_from(sorted(PARAMS)))
    args: dict[str, Any] = {}
    for name in PARAMS[tool]:
        if draw(st.booleans()):
            if name == "id":
                args[name] = draw(st.one_of(st.sampled_from(ids), values))
            elif name in GOOD and draw(st.integers(0, 3)) > 0:
                args[name] = draw(GOOD[name])  # mostly plausible, so tools run deep
            else:
                args[name] = draw(values)
    return tool, args


@pytest.fixture
def portal_client(kb: KnowledgeBase) -> Iterator[tuple[BlockingPortal, Client, list[str]]]:
    secret = kb.add(f"private plan {MARKER}", title=MARKER, namespace="private", tags=[MARKER])
    visible = kb.add("a visible note", namespace="default")
    fuzzer = Principal("fuzzer", Role.WRITER, frozenset({"default"}))
    server = build_server(kb, principal=lambda: fuzzer)
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(Client(server)) as client,
    ):
        yield portal, client, [str(secret.id), str(visible.id)]


def test_fuzz_tool_inputs(portal_client: tuple[BlockingPortal, Client, list[str]]) -> None:
    portal, client, ids = portal_client
    seen = {"ok": 0, "err": 0}

    @settings(
        max_examples=1200,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(call=tool_calls(ids))
    def check(call: tuple[str, dict[str, Any]]) -> None:
        tool, args = call
        result = portal.call(client.call_tool, tool, args)
        text = " ".join(getattr(c, "text", "") for c in result.content)
        assert MARKER not in text, (tool, args)
        assert MARKER not in json.dumps(result.structured_content or {}), (tool, args)
        if result.is_error:
            seen["err"] += 1
            if text.startswith("{"):
                err = json.loads(text)
                assert err["code"] in CODES, (tool, args, err)
            else:
                # Rejected by the SDK's schema validation before the tool ran.
                assert text.startswith(f"Error executing tool {tool}"), text
                assert "validation error" in text
        else:
            seen["ok"] += 1

    check()
    assert seen["ok"] > 100 and seen["err"] > 100, seen  # both paths exercised
