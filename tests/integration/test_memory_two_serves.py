"""Two ``serve --transport http`` processes and the CLI on one memory-mode knowledge
base (kb_meta search_index = memory, search/memory.py): each process holds its own
index, kept current by the change feed (store/changes.py), so a write acknowledged
by one process is found by the very next search of another, with no wait and no
restart (an add through A found on B, through B on A, a CLI add on both, an update
and a delete through one seen by the other)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tests.cli_helpers import Cli
from tests.mcp_helpers import call_tool, http_server, search_titles

from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase

HASH = {"SEALEDKB_EMBEDDER": "hash"}


def _add(base: str, token: str, content: str, title: str) -> str:
    res = asyncio.run(call_tool(base, token, "kb_add", {"content": content, "title": title}))
    assert not res.is_error, res
    return str((res.structured_content or {})["id"])


def _call_ok(base: str, token: str, tool: str, args: dict[str, Any]) -> None:
    res = asyncio.run(call_tool(base, token, tool, args))
    assert not res.is_error, res


def test_writes_through_one_serve_are_found_by_the_next_search_of_the_other(
    cli: Cli,
    cli_env: dict[str, str],
    home: Path,
    database_url: str,
    make_settings: Callable[..., Settings],
) -> None:
    r = cli("init", "--search-index", "memory", env=HASH)
    assert r.exit_code == 0, r.output
    kb = KnowledgeBase.open(make_settings())
    assert kb.search_index == "memory"
    _, token = kb.create_token("agent", "writer", ["default"])
    kb.close()

    with ExitStack() as stack:
        # start_timeout: a loaded 2-core machine can take over 30 s to start serve
        a, _ = stack.enter_context(http_server(home, database_url, start_timeout=120))
        b, _ = stack.enter_context(http_server(home, database_url, start_timeout=120))
        # both build their index of the namespace now (empty), before any write
        assert search_titles(a, token, "anything") == []
        assert search_titles(b, token, "anything") == []

        _add(a, token, "alpha bravo charlie", "from a")
        assert search_titles(b, token, "bravo") == ["from a"]
        assert search_titles(b, token, "bravo", mode="hybrid")[0] == "from a"

        b_id = _add(b, token, "delta echo foxtrot", "from b")
        assert search_titles(a, token, "echo") == ["from b"]

        # the CLI as its own process (python -m sealedkb), a third index
        done = subprocess.run(
            [sys.executable, "-m", "sealedkb", "--home", str(home), "add",
             "golf hotel india", "--title", "from the cli"],
            env={**cli_env, "SEALEDKB_HOME": str(home)},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert search_titles(a, token, "hotel") == ["from the cli"]
        assert search_titles(b, token, "hotel") == ["from the cli"]

        # an update through A: B's next search finds the new words, not the old
        _call_ok(a, token, "kb_update", {"id": b_id, "content": "juliett kilo lima"})
        assert search_titles(b, token, "kilo") == ["from b"]
        assert search_titles(b, token, "echo") == []

        # a delete through A: gone from B's next search, and from A's
        _call_ok(a, token, "kb_delete", {"id": b_id})
        assert search_titles(b, token, "kilo") == []
        assert search_titles(a, token, "kilo") == []
        assert sorted(search_titles(b, token, "bravo hotel")) == ["from a", "from the cli"]

    # and a fresh CLI process, building its index from the sealed rows, agrees
    r = cli("search", "kilo", "--mode", "keyword", env=HASH)
    assert r.exit_code == 0 and "from b" not in r.output, r.output
    r = cli("search", "bravo", "--mode", "keyword", env=HASH)
    assert r.exit_code == 0 and "from a" in r.output, r.output
