"""Migration: a run killed with SIGKILL resumes and completes (nothing lost or
duplicated), and a rollback gives readers a clear error, never wrong data."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from tests.cli_helpers import all_entries

from sealedkb.config import Settings
from sealedkb.errors import SealedKBError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.migrating import Migrator
from sealedkb.model import EncryptionMode

ENTRIES = 1500


def _fill(kb: KnowledgeBase, n: int) -> None:
    for i in range(n):
        kb.add(f"entry {i}: the queue {i % 17} drains at night", tags=[f"q{i % 17}"])


def _copied(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT value FROM kb_meta WHERE key = 'migration'").fetchone()
    return int(json.loads(row[0]).get("rows_copied") or 0) if row else 0


def test_sigkill_then_rerun_completes(
    make_settings: Callable[..., Settings], home: Path, database_url: str, cli_env: dict[str, str]
) -> None:
    settings = make_settings()
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.OFF)
    _fill(kb, ENTRIES)
    before = all_entries(kb)
    kb.close()

    argv = [sys.executable, "-m", "sealedkb", "--home", str(home), "migrate", "run"]
    proc = subprocess.Popen(
        [*argv, "--batch", "10"],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while _copied(database_url) < 300:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the migration made no progress"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = _copied(database_url)
    assert 300 <= killed_at < ENTRIES

    # the plaintext knowledge base still reads (and writes) meanwhile
    with KnowledgeBase.open(settings) as kb:
        assert not kb.encrypted
        assert all_entries(kb) == before

    rerun = subprocess.run(
        [*argv, "--json"], env=cli_env, capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout)
    assert result["state"] == "complete" and result["rows"] == ENTRIES

    with KnowledgeBase.open(settings) as kb:
        assert kb.encrypted
        assert all_entries(kb) == before  # nothing lost, nothing duplicated
    with psycopg.connect(database_url) as conn:
        (n,) = conn.execute("SELECT count(*) FROM kb_entries").fetchone() or (0,)
    assert n == ENTRIES
    verify = subprocess.run(
        [sys.executable, "-m", "sealedkb", "--home", str(home), "migrate", "verify", "--json"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["entries_checked"] == ENTRIES


def test_rollback_readers_get_errors_never_wrong_data(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.OFF)
    _fill(kb, 300)
    before = all_entries(kb)
    kb.close()
    Migrator(settings).run()

    ids = list(before)
    stop = threading.Event()
    seen = {"ok": 0, "errors": set(), "wrong": []}  # type: dict[str, Any]

    def reader() -> None:
        i = 0
        while not stop.is_set():
            try:
                with KnowledgeBase.open(settings) as r:
                    for _ in range(20):
                        eid = ids[i % len(ids)]
                        i += 1
                        got = r.get(eid).to_dict()
                        if got != before[eid]:
                            seen["wrong"].append(eid)
                        else:
                            seen["ok"] += 1
            except SealedKBError as exc:
                seen["errors"].add(exc.code)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    try:
        result = Migrator(settings).rollback()
    finally:
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert result["state"] == "rolled-back"
    assert seen["wrong"] == []
    assert seen["ok"] > 0
    with KnowledgeBase.open(settings) as kb:
        assert not kb.encrypted
        assert all_entries(kb) == before
        assert kb.status()["entries_plaintext"] == len(before)
        # the audit trail was kept, not rewound: the migration's events are still there
        actions = {e["action"] for e in kb.audit.events(limit=10000)}
        assert "MigrateSwitch" in actions and "RestoreSnapshot" in actions
