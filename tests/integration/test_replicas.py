"""Three stateless ``serve --transport http`` replicas on one PostgreSQL (subprocesses):
MCP clients round-robin over them with zero failed calls; each singleton job ran on
exactly one replica (kb_job_runs); a key disabled by the operator is refused by all
three within the data-key cache bound and enabling it recovers them without a
restart; SIGKILL of the jobs' leader and another replica takes over within the
bound; a replica's home folder deleted while it is stopped, and it starts and serves
again with nothing lost.

The replicas share the local keystore and the checkpoint folder through
SEALEDKB_KEYSTORE_DIR and SEALEDKB_AUDIT_CHECKPOINT_DIR (outside every home)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from tests.mcp_helpers import error_of, http_client, http_server, server_env

from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode

ROUND_ROBIN_SECONDS = float(os.environ.get("SEALEDKB_TEST_REPLICA_SECONDS", "12"))
POLL = 1.0  # SEALEDKB_JOB_LEADER_POLL: takeover within 4 x POLL
DATA_KEY_MAX_AGE = 1.0


def _jobs(url: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    with psycopg.connect(url, autocommit=True) as conn:
        leaders = dict(conn.execute("SELECT job, replica FROM kb_job_leaders").fetchall())
        runs: dict[str, set[str]] = {}
        for job, replica in conn.execute("SELECT job, replica FROM kb_job_runs").fetchall():
            runs.setdefault(job, set()).add(replica)
    return leaders, runs


async def _call(base: str, token: str, tool: str, args: dict[str, Any]) -> Any:
    async with http_client(base, token) as c:
        return await c.call_tool(tool, args)


async def _round_robin(bases: list[str], token: str, entry_id: str, seconds: float) -> int:
    """Calls spread over every replica for ``seconds``; returns the number made.
    Any failed call fails the test."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(http_client(b, token)) for b in bases]
        n = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            client = clients[n % len(clients)]
            if n % 3 == 0:
                r = await client.call_tool("kb_add", {"content": f"note {n} from the client"})
            elif n % 3 == 1:
                r = await client.call_tool("kb_get", {"id": entry_id})
            else:
                r = await client.call_tool("kb_search", {"query": "replicas"})
            assert not r.is_error, (n, r)  # an error answer is a failed call too
            n += 1
    return n


def _key(home: Path, url: str, action: str, env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sealedkb", "key", action],
        env=server_env(home, url, **env),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_three_replicas_share_one_database(
    make_settings: Callable[..., Settings], tmp_path: Path, database_url: str
) -> None:
    shared = tmp_path / "shared"
    keys, audit = shared / "keys", shared / "audit"
    kb, _ = KnowledgeBase.init(
        make_settings(keystore_dir=keys, audit_checkpoint_dir=audit), EncryptionMode.ON
    )
    entry = kb.add("stateless replicas share one database", title="replicas")
    _, token = kb.create_token("agent", "writer", ["default"])
    kb.close()
    env = {
        "SEALEDKB_KEYSTORE_DIR": str(keys),
        "SEALEDKB_AUDIT_CHECKPOINT_DIR": str(audit),
        "SEALEDKB_DATA_KEY_MAX_AGE": str(DATA_KEY_MAX_AGE),
        "SEALEDKB_JOB_LEADER_POLL": str(POLL),
        "SEALEDKB_ALARM_INTERVAL": "0.5",
        "SEALEDKB_AUDIT_CHECKPOINT_INTERVAL": "1",
        # one client calling as fast as it can: not the rate limit's subject here
        "SEALEDKB_HTTP_RATE_PER_SECOND": "1000",
        "SEALEDKB_HTTP_RATE_BURST": "1000",
    }
    homes = [tmp_path / f"replica-{i}" for i in range(3)]
    stacks = [contextlib.ExitStack() for _ in homes]
    try:
        servers: list[tuple[str, subprocess.Popen[bytes]]] = [
            stack.enter_context(
                http_server(home, database_url, SEALEDKB_REPLICA_ID=f"replica-{i}", **env)
            )
            for i, (home, stack) in enumerate(zip(homes, stacks, strict=True))
        ]
        bases = [b for b, _ in servers]
        eid = str(entry.id)

        made = asyncio.run(_round_robin(bases, token, eid, ROUND_ROBIN_SECONDS))
        assert made >= 3 * len(bases)

        # every singleton job that ran, ran on exactly one replica: its leader
        leaders, runs = _jobs(database_url)
        assert set(leaders) == {"housekeeping", "alarms", "snapshots"}
        for job in ("housekeeping", "alarms"):
            assert runs.get(job) == {leaders[job]}, (job, runs, leaders)

        # the operator disables the key: all three refuse within the cache bound
        _key(homes[0], database_url, "disable", env)
        time.sleep(DATA_KEY_MAX_AGE + 0.5)
        for base in bases:
            r = asyncio.run(_call(base, token, "kb_get", {"id": eid}))
            assert error_of(r)["code"] == "KEY_UNAVAILABLE", base
        _key(homes[0], database_url, "enable", env)
        for base in bases:  # recovered without a restart
            r = asyncio.run(_call(base, token, "kb_get", {"id": eid}))
            assert not r.is_error, base

        # SIGKILL the alarm job's leader: another replica takes every job it held over
        victim = int(leaders["alarms"].rsplit("-", 1)[-1])
        held = {job for job, who in leaders.items() if who == leaders["alarms"]}
        servers[victim][1].send_signal(signal.SIGKILL)
        servers[victim][1].wait(10)
        killed_at = time.monotonic()
        bound = 4 * POLL
        while True:
            now_leaders, _ = _jobs(database_url)
            if all(now_leaders[j] != leaders[j] for j in held):
                break
            assert time.monotonic() - killed_at < bound, ("no takeover within", bound)
            time.sleep(0.1)
        survivors = [i for i in range(3) if i != victim]
        assert {now_leaders[j] for j in held} <= {f"replica-{i}" for i in survivors}
        alive = [bases[i] for i in survivors]
        assert asyncio.run(_round_robin(alive, token, eid, 2.0)) > 0

        # a survivor's home deleted while it is stopped: it starts and serves again
        again = survivors[-1]
        stacks[again].close()
        if homes[again].exists():  # serve may have written nothing there at all
            shutil.rmtree(homes[again])
        base, _ = stacks[again].enter_context(
            http_server(homes[again], database_url, SEALEDKB_REPLICA_ID=f"replica-{again}", **env)
        )
        r = asyncio.run(_call(base, token, "kb_get", {"id": eid}))
        assert not r.is_error and "stateless replicas" in r.structured_content["content"]
        listed = asyncio.run(_call(base, token, "kb_list", {"limit": 100}))
        assert not listed.is_error
        assert len(listed.structured_content["entries"]) == min(100, 1 + -(-made // 3))
    finally:
        for stack in stacks:
            stack.close()
