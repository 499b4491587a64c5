"""Helpers for MCP tests: run `sealedkb serve` as a real subprocess, connect clients."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

import sealedkb

SRC = str(Path(sealedkb.__file__).resolve().parents[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(home: Path, database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALEDKB_")}
    # No automated snapshot when a test happens to run in the default window.
    env["SEALEDKB_SNAPSHOT_WINDOW"] = "off"
    env["SEALEDKB_EMBEDDER"] = "hash"  # fast, deterministic; tests may override
    env["SEALEDKB_SEARCH_INDEX"] = os.environ.get("SEALEDKB_SEARCH_INDEX", "server")
    env.update(
        SEALEDKB_HOME=str(home),
        SEALEDKB_DATABASE_URL=database_url,
        PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""),
        **extra,
    )
    return env


@contextmanager
def http_server(
    home: Path, database_url: str, *args: str, start_timeout: float = 30.0, **env_extra: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A `sealedkb serve --transport http` subprocess on a free port; yields its base URL
    once /healthz answers (within ``start_timeout`` seconds)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sealedkb",
            "serve",
            "--transport",
            "http",
            "--port",
            str(port),
            *args,
        ],
        env=server_env(home, database_url, **env_extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"server exited {proc.returncode}: {err[-2000:]}")
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.1)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


@asynccontextmanager
async def http_client(base: str, token: str | None) -> AsyncIterator[Client]:
    """An MCP client over HTTP with a bearer token; closes its HTTP client too (an
    open keep-alive connection would hold up the server's graceful shutdown)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        create_mcp_http_client(headers=headers) as hc,
        Client(streamable_http_client(base + "/mcp", http_client=hc)) as client,
    ):
        yield client


def error_of(result: Any) -> dict[str, Any]:
    """The structured {code, message, field?} of an is_error tool result."""
    assert result.is_error, result
    return dict(json.loads(result.content[0].text))


async def call_tool(base: str, token: str | None, tool: str, args: dict[str, Any]) -> Any:
    """One tool call on a fresh MCP client over HTTP (the result, errors included)."""
    async with http_client(base, token) as c:
        return await c.call_tool(tool, args)


def search_titles(base: str, token: str, query: str, mode: str = "keyword") -> list[str]:
    """The titles of one ``kb_search`` over HTTP, best first (the call must succeed)."""
    res = asyncio.run(call_tool(base, token, "kb_search", {"query": query, "mode": mode}))
    assert not res.is_error, res
    return [h["title"] for h in (res.structured_content or {})["hits"]]
