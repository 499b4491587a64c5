"""Two processes adding 200 entries each at the same time lose nothing.

Real OS processes (not threads), each with its own connection pool and key ring,
started at the same instant after the knowledge base is initialised. In the
second variant both start on a namespace that has no data keys yet, so both race
to create them: exactly one content key and one index key must win, and every
entry must open under it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

import sealedkb
from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode

PER_PROCESS = 200
PROCESSES = 2

_WORKER = """
import json, sys, time
from pathlib import Path
from sealedkb.config import load_settings
from sealedkb.kb.knowledge_base import KnowledgeBase

home, url, name, namespace, barrier, count = sys.argv[1:7]
kb = KnowledgeBase.open(load_settings(home, database_url=url))
ids = []
try:
    # A barrier, not a start time: under load, interpreter start-up can take longer
    # than any fixed delay. Each worker says it is ready, then waits for all.
    folder = Path(barrier)
    procs = int(sys.argv[7])

    def wait_for(suffix):
        deadline = time.time() + 60
        while (len([p for p in folder.iterdir() if p.name.endswith(suffix)]) < procs
               and time.time() < deadline):
            time.sleep(0.001)

    (folder / (name + ".ready")).touch()
    wait_for(".ready")
    for i in range(int(count)):
        e = kb.add(
            f"{name} entry {i} body",
            title=f"{name}-{i}",
            tags=[name, "shared"],
            namespace=namespace,
            metadata={"worker": name, "i": i},
        )
        ids.append(str(e.id))
        if i == 0:
            # Both first adds (the data-key race in a new namespace) happen before
            # either worker goes on, so the writes overlap even when the machine
            # starves one process for a while.
            (folder / (name + ".first")).touch()
            wait_for(".first")
finally:
    kb.close()
print(json.dumps(ids))
"""


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALEDKB_")}
    env["SEALEDKB_EMBEDDER"] = "hash"  # concurrency, not the model, is under test here
    env["SEALEDKB_SEARCH_INDEX"] = "server"
    src = str(Path(sealedkb.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def run_workers(home: Path, url: str, namespace: str) -> dict[str, list[str]]:
    barrier = home.parent / f"barrier-{namespace}"
    barrier.mkdir()
    names = [f"worker{n}" for n in range(PROCESSES)]
    procs = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WORKER,
                str(home),
                url,
                name,
                namespace,
                str(barrier),
                str(PER_PROCESS),
                str(PROCESSES),
            ],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    }
    out: dict[str, list[str]] = {}
    try:
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"{name} failed:\n{stderr}"
            out[name] = json.loads(stdout)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out


@pytest.mark.parametrize("namespace", ["default", "race-ns"], ids=["existing-ns", "new-ns"])
def test_two_processes_lose_nothing(
    make_settings: Callable[..., Settings], home: Path, database_url: str, namespace: str
) -> None:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON)
    kb.close()
    with psycopg.connect(database_url) as conn:
        keys_before = conn.execute(
            "SELECT count(*) FROM kb_data_keys WHERE namespace = %s", (namespace,)
        ).fetchone()
    assert keys_before == ((2,) if namespace == "default" else (0,))

    reported = run_workers(home, database_url, namespace)

    all_ids = [i for ids in reported.values() for i in ids]
    assert len(all_ids) == PROCESSES * PER_PROCESS
    assert len(set(all_ids)) == len(all_ids)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT id::text, namespace FROM kb_entries").fetchall()
        keys = conn.execute(
            "SELECT purpose, count(*), count(*) FILTER (WHERE active) FROM kb_data_keys"
            " WHERE namespace = %s GROUP BY purpose ORDER BY purpose",
            (namespace,),
        ).fetchall()
    assert len(rows) == PROCESSES * PER_PROCESS
    assert {r[0] for r in rows} == set(all_ids)
    assert {r[1] for r in rows} == {namespace}
    # one content, index and vector key each: the loser of the race adopted the winner's
    assert keys == [("content", 1, 1), ("index", 1, 1), ("vector", 1, 1)]

    with KnowledgeBase.open(make_settings()) as reader:
        entries = reader.list(namespace=namespace, limit=1000)
        assert len(entries) == PROCESSES * PER_PROCESS
        for e in entries:
            worker, i = e.metadata["worker"], e.metadata["i"]
            assert str(e.id) in reported[worker]
            assert e.content == f"{worker} entry {i} body"
            assert e.title == f"{worker}-{i}"
            assert e.tags == (worker, "shared")
        # the two processes really wrote at the same time: their time spans overlap
        spans = {w: [e.created_at for e in entries if e.metadata["worker"] == w] for w in reported}
        first, second = (sorted(s) for s in spans.values())
        assert first[0] < second[-1] and second[0] < first[-1], "writes did not overlap"
        seen = {(e.metadata["worker"], e.metadata["i"]) for e in entries}
        assert seen == {(w, i) for w in reported for i in range(PER_PROCESS)}
        # tag tokens from both processes agree, so they share one index key
        shared = reader.list(namespace=namespace, tag="shared", limit=1000)
        assert len(shared) == PROCESSES * PER_PROCESS
        for worker in reported:
            assert len(reader.list(namespace=namespace, tag=worker, limit=1000)) == PER_PROCESS
