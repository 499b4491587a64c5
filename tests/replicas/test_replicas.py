"""Three stateless ``serve --transport http`` replicas against one PostgreSQL and one
external key provider (AWS KMS in moto; tests/replicas/conftest.py):

- 16 MCP clients for SEALEDKB_TEST_REPLICA_SECONDS (default 60, what CI runs) call the
  three round-robin with a mix of kb_search, kb_get, kb_add and kb_update: zero failed
  calls; every acknowledged write (its id and a word only it holds) is found by the next
  keyword search on another replica while the load runs, and by a search on every
  replica at the end (each replica's memory index follows the change feed);
- each singleton job ran on exactly one replica (kb_job_runs), its leader;
- SIGKILL of that leader: another replica takes its jobs over within 4 x
  SEALEDKB_JOB_LEADER_POLL (store/jobs.py);
- ``key disable`` (KMS DisableKey) is refused by all three within
  SEALEDKB_DATA_KEY_MAX_AGE and ``key enable`` recovers all three without a restart;
- a replica's home folder deleted while it is stopped: it starts and serves again with
  nothing lost.

The tests share one cluster and run in this order (CI: scripts/test's replica step).
Wall-time bounds are measured with the monotonic clock, with a stated margin for a
loaded 2-core machine."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg
from tests.mcp_helpers import error_of, http_client
from tests.replicas.conftest import DATA_KEY_MAX_AGE, POLL, Cluster

SECONDS = float(os.environ.get("SEALEDKB_TEST_REPLICA_SECONDS", "60"))
CLIENTS = int(os.environ.get("SEALEDKB_TEST_REPLICA_CLIENTS", "16"))
# what a loaded CI machine may add to a bound (scheduling, a slow call in flight)
MARGIN = 5.0


def _word() -> str:
    """A word no other entry holds (letters only, so every tokenizer keeps it whole)."""
    return "".join(chr(ord("a") + int(c, 16)) for c in uuid.uuid4().hex[:14])


@dataclass
class Load:
    calls: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    writes: dict[str, str] = field(default_factory=dict)  # entry id -> its word now
    checked_during: int = 0
    seconds: dict[str, list[float]] = field(default_factory=dict)  # tool -> call times
    setup: list[float] = field(default_factory=list)  # per client: its 3 sessions opened

    def summary(self) -> str:
        parts = []
        for tool, times in sorted(self.seconds.items()):
            times = sorted(times)
            p50, p95 = times[len(times) // 2], times[int(len(times) * 0.95)]
            parts.append(f"{tool} {len(times)} p50 {p50 * 1000:.0f} ms p95 {p95 * 1000:.0f} ms")
        return "; ".join(parts)


def _ok(load: Load, tool: str, where: str, result: Any, since: float) -> bool:
    load.calls[tool] += 1
    load.seconds.setdefault(tool, []).append(time.monotonic() - since)
    if result.is_error:
        load.failures.append(f"{tool} on {where}: {result.content[0].text[:300]}")
        return False
    return True


def _hit_ids(result: Any) -> set[str]:
    return {h["id"] for h in result.structured_content["hits"]}


async def _search_finds(client: Any, word: str, entry_id: str) -> tuple[Any, bool]:
    r = await client.call_tool("kb_search", {"query": word, "mode": "keyword", "limit": 5})
    return r, (not r.is_error and entry_id in _hit_ids(r))


async def _client(
    k: int, bases: list[str], token: str, seed: str, start: Start, load: Load
) -> None:
    try:
        await _calls(k, bases, token, seed, start, load)
    except Exception as exc:  # a session that broke (its task group's error) failed calls
        load.failures.append(f"client {k}: {type(exc).__name__}: {exc!r}"[:500])
        start.arrive(k)  # never hold the others up


async def _calls(k: int, bases: list[str], token: str, seed: str, start: Start, load: Load) -> None:
    rng = random.Random(k)
    mine: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        t0 = time.monotonic()
        clients = [await stack.enter_async_context(http_client(b, token)) for b in bases]
        load.setup.append(time.monotonic() - t0)
        end = await start.ready(k)
        n = k
        while time.monotonic() < end:
            at = n % len(clients)
            n += 1
            c, where = clients[at], bases[at]
            roll = rng.random()
            t = time.monotonic()
            try:
                if roll < 0.15 or not mine:
                    word = _word()
                    r = await c.call_tool(
                        "kb_add", {"content": f"client {k} wrote {word}", "title": f"c{k}"}
                    )
                    if not _ok(load, "kb_add", where, r, t):
                        continue
                    eid = r.structured_content["id"]
                    mine.append(eid)
                elif roll < 0.3:
                    eid, word = rng.choice(mine), _word()
                    r = await c.call_tool(
                        "kb_update", {"id": eid, "content": f"client {k} rewrote {word}"}
                    )
                    if not _ok(load, "kb_update", where, r, t):
                        continue
                elif roll < 0.5:
                    eid = rng.choice(mine) if rng.random() < 0.8 else seed
                    r = await c.call_tool("kb_get", {"id": eid})
                    # this client alone writes its entries: it reads its last write
                    if (
                        _ok(load, "kb_get", where, r, t)
                        and eid in load.writes
                        and load.writes[eid] not in r.structured_content["content"]
                    ):
                        load.failures.append(f"kb_get on {where}: stale {eid}")
                    continue
                else:
                    query = load.writes.get(rng.choice(mine), "replicas")
                    r = await c.call_tool("kb_search", {"query": query, "limit": 10})
                    _ok(load, "kb_search", where, r, t)
                    continue
            except Exception as exc:  # a transport failure is a failed call too
                load.failures.append(f"call on {where}: {type(exc).__name__}: {exc}"[:300])
                continue
            # acknowledged: the next search on another replica finds it
            load.writes[eid] = word
            other = (at + 1) % len(clients)
            t = time.monotonic()
            try:
                r, found = await _search_finds(clients[other], word, eid)
            except Exception as exc:
                load.failures.append(f"search on {bases[other]}: {type(exc).__name__}: {exc}")
                continue
            if _ok(load, "kb_search", bases[other], r, t):
                load.checked_during += 1
                if not found:
                    load.failures.append(f"write {eid} not found at once on {bases[other]}")


class Start:
    """The load's ``seconds`` count from when every client has its sessions open (or
    has given up opening them)."""

    def __init__(self, clients: int, seconds: float) -> None:
        self.waiting, self.seconds = set(range(clients)), seconds
        self.event = asyncio.Event()
        self.end = 0.0

    def arrive(self, k: int) -> None:
        self.waiting.discard(k)
        if not self.waiting and not self.event.is_set():
            self.end = time.monotonic() + self.seconds
            self.event.set()

    async def ready(self, k: int) -> float:
        self.arrive(k)
        await self.event.wait()
        return self.end


async def _run_load(bases: list[str], token: str, seed: str, seconds: float) -> Load:
    load, start = Load(), Start(CLIENTS, seconds)
    await asyncio.gather(*(_client(k, bases, token, seed, start, load) for k in range(CLIENTS)))
    return load


async def _missing_on(base: str, token: str, writes: dict[str, str]) -> list[str]:
    """The acknowledged writes a search on this replica does not find (8 at a time)."""
    items = list(writes.items())
    missing: list[str] = []

    async def worker(part: list[tuple[str, str]]) -> None:
        async with http_client(base, token) as c:
            for eid, word in part:
                _, found = await _search_finds(c, word, eid)
                if not found:
                    missing.append(eid)

    await asyncio.gather(*(worker(items[i::8]) for i in range(8)))
    return missing


def _jobs(url: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    with psycopg.connect(url, autocommit=True) as conn:
        leaders = dict(conn.execute("SELECT job, replica FROM kb_job_leaders").fetchall())
        runs: dict[str, set[str]] = {}
        for job, replica in conn.execute("SELECT job, replica FROM kb_job_runs").fetchall():
            runs.setdefault(job, set()).add(replica)
    return leaders, runs


async def _get(base: str, token: str, entry_id: str) -> Any:
    async with http_client(base, token) as c:
        return await c.call_tool("kb_get", {"id": entry_id})


# Acknowledged writes of the load test, for the tests after it.
WRITES: dict[str, str] = {}


def test_sixteen_clients_round_robin_every_write_found_on_every_replica(
    cluster: Cluster,
) -> None:
    cluster.ensure_running()
    bases = cluster.bases
    assert len(bases) == 3
    started = time.monotonic()
    load = asyncio.run(_run_load(bases, cluster.token, cluster.seed_id, SECONDS))
    WRITES.update(load.writes)  # what the later tests look for, whatever happens here
    took = time.monotonic() - started
    total = sum(load.calls.values())
    print(
        f"\n{CLIENTS} clients, {took:.0f} s: {total} calls {dict(load.calls)},"
        f" {len(load.writes)} acknowledged writes, {load.checked_during} found at once"
        f" on another replica, load average {os.getloadavg()[0]:.1f};"
        f" sessions opened in {max(load.setup):.1f} s at most; {load.summary()}"
    )
    assert not load.failures, (len(load.failures), load.failures[:10])
    assert all(load.calls[t] > 0 for t in ("kb_add", "kb_update", "kb_get", "kb_search"))
    assert load.writes and load.checked_during >= len(load.writes)
    for base in bases:  # every acknowledged write, on every replica
        missing = asyncio.run(_missing_on(base, cluster.token, load.writes))
        assert not missing, (base, len(missing), missing[:5])

    # every singleton job that ran, ran on exactly one replica: its leader
    leaders, runs = _jobs(cluster.database_url)
    assert {"housekeeping", "alarms"} <= set(leaders)
    for job in ("housekeeping", "alarms"):
        assert runs.get(job) == {leaders[job]}, (job, runs, leaders)
    for r in cluster.replicas:  # no local keystore: the keys are in KMS
        assert not (r.home / "keys").exists(), r.home


def test_sigkill_of_the_jobs_leader_moves_them_within_the_bound(cluster: Cluster) -> None:
    cluster.ensure_running()
    leaders, _ = _jobs(cluster.database_url)
    victim = next(r for r in cluster.replicas if r.name == leaders["alarms"])
    held = {job for job, who in leaders.items() if who == victim.name}
    victim.kill()
    killed_at = time.monotonic()
    bound = 4 * POLL  # Leadership.takeover_bound
    while True:
        now_leaders, _ = _jobs(cluster.database_url)
        if all(now_leaders[j] != victim.name for j in held):
            took = time.monotonic() - killed_at
            break
        assert time.monotonic() - killed_at < bound + MARGIN, ("no takeover within", bound)
        time.sleep(0.05)
    print(f"\ntakeover of {sorted(held)} after {took:.2f} s (bound {bound:.0f} s)")
    survivors = {r.name for r in cluster.replicas if r.running}
    assert {now_leaders[j] for j in held} <= survivors
    # the new leader runs them, and only it, from then on
    with psycopg.connect(cluster.database_url, autocommit=True) as conn:
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        since, deadline = row[0], time.monotonic() + 60
        while True:
            after = dict(
                conn.execute(
                    "SELECT job, array_agg(DISTINCT replica) FROM kb_job_runs"
                    " WHERE ran_at > %s GROUP BY job",
                    (since,),
                ).fetchall()
            )
            if "alarms" in after or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert "alarms" in after, "the alarm job did not run after the takeover"
    for job, who in after.items():
        if job in held:
            assert who == [now_leaders[job]], (job, who)
    # the survivors serve on; the killed one comes back and does not take a job back
    load = asyncio.run(_run_load(cluster.bases, cluster.token, cluster.seed_id, 3.0))
    assert not load.failures, load.failures[:5]
    WRITES.update(load.writes)
    victim.start()
    time.sleep(2 * POLL)
    again, _ = _jobs(cluster.database_url)
    assert all(again[j] == now_leaders[j] for j in held)


def test_key_disable_seen_by_all_three_and_enable_recovers_them(cluster: Cluster) -> None:
    """The bound is on when a request arrives: every kb_get that starts later than
    SEALEDKB_DATA_KEY_MAX_AGE (+ 1 s for scheduling) after ``key disable`` returned is
    refused with KEY_UNAVAILABLE, on each replica; after ``key enable`` every one that
    starts later than 1 s is served, by the same processes over the same MCP sessions.
    The printed figures are when each replica's first refusal (or answer) came back."""
    cluster.ensure_running()
    pids = [r.proc.pid for r in cluster.replicas if r.proc is not None]
    names = [r.name for r in cluster.replicas]

    async def calls(clients: list[Any], refused: bool, settle: float) -> dict[str, float]:
        """kb_get on every replica until each has given the wanted answer to a call that
        started ``settle`` seconds or more after now; returns when each first gave it."""
        at, first, done = time.monotonic(), dict[str, float](), set[str]()
        while len(done) < len(clients):
            for name, c in zip(names, clients, strict=True):
                if name in done:
                    continue
                started = time.monotonic()
                got = await c.call_tool("kb_get", {"id": cluster.seed_id})
                if got.is_error:
                    assert error_of(got)["code"] == "KEY_UNAVAILABLE", got
                else:
                    assert "stateless replicas" in got.structured_content["content"]
                if got.is_error == refused:
                    first.setdefault(name, time.monotonic() - at)
                    if started - at >= settle:
                        done.add(name)
                else:  # the other answer: only allowed before the bound
                    assert started - at < settle, (name, "past the bound", started - at)
                    first.pop(name, None)
            assert time.monotonic() - at < settle + 120, ("no answer", first)
            await asyncio.sleep(0.1)
        return first

    async def scenario() -> tuple[dict[str, float], dict[str, float]]:
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(http_client(r.base, cluster.token))
                for r in cluster.replicas
            ]
            await calls(clients, False, 0.0)  # every replica has the data key cached
            disabled = await asyncio.to_thread(cluster.cli, "key", "disable")
            assert disabled.returncode == 0, disabled.stderr
            off = await calls(clients, True, DATA_KEY_MAX_AGE + 1.0)
            enabled = await asyncio.to_thread(cluster.cli, "key", "enable")
            assert enabled.returncode == 0, enabled.stderr
            # the same processes, the same MCP sessions: recovered without a restart
            return off, await calls(clients, False, 1.0)

    off, on = asyncio.run(scenario())
    print(
        f"\nkey disabled: first refusal back after {_rounded(off)} s (bound"
        f" {DATA_KEY_MAX_AGE} s); enabled: first answer back after {_rounded(on)} s;"
        f" load average {os.getloadavg()[0]:.1f}"
    )
    assert [r.proc.pid for r in cluster.replicas if r.proc is not None] == pids


def _rounded(seconds: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in seconds.items()}


def test_a_home_deleted_while_stopped_starts_and_serves_with_nothing_lost(
    cluster: Cluster,
) -> None:
    cluster.ensure_running()
    replica = cluster.replicas[-1]
    replica.stop()
    if replica.home.exists():  # serve may have written nothing there at all
        shutil.rmtree(replica.home)
    replica.start()
    got = asyncio.run(_get(replica.base, cluster.token, cluster.seed_id))
    assert not got.is_error and "stateless replicas" in got.structured_content["content"]
    missing = asyncio.run(_missing_on(replica.base, cluster.token, WRITES))
    assert not missing, (len(missing), missing[:5])

    async def listed() -> set[str]:
        ids: set[str] = set()
        offset: int | None = 0
        async with http_client(replica.base, cluster.token) as c:
            while offset is not None:
                r = await c.call_tool("kb_list", {"limit": 100, "offset": offset})
                assert not r.is_error, r
                ids |= {e["id"] for e in r.structured_content["entries"]}
                offset = r.structured_content["next_offset"]
        return ids

    ids = asyncio.run(listed())
    assert ids == {cluster.seed_id, *WRITES}
    with psycopg.connect(cluster.database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM kb_entries WHERE deleted_at IS NULL").fetchone()
    assert row is not None and row[0] == len(ids)
