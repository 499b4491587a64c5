"""Data-key rotation and online re-encryption (key lifecycle): new writes go to the new
data keys, ``reencrypt`` moves old rows in batches, survives SIGKILL and a rerun
finishes with no row lost or double-encrypted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.cli_helpers import make_cli
from tests.integration.test_tamper_cli import expect, sql

import sealedkb
from sealedkb.config import Settings
from sealedkb.crypto.sealed import key_id_of
from sealedkb.errors import NotFoundError, ValidationError
from sealedkb.kb.knowledge_base import KnowledgeBase

SECRET = "s3cr3t-body-text"


def snapshot(url: str) -> dict[str, tuple[Any, ...]]:
    rows = sql(
        url,
        "SELECT id::text, version, updated_at, data_key_id::text, doc_sealed FROM kb_entries",
    )
    return {r[0]: tuple(r[1:]) for r in rows}


def active_content_keys(url: str) -> set[str]:
    rows = sql(url, "SELECT id::text FROM kb_data_keys WHERE active AND purpose = 'content'")
    return {r[0] for r in rows}


def test_rotate_then_reencrypt(kb: KnowledgeBase, database_url: str) -> None:
    assert kb.keys is not None
    entries = {
        kb.add(f"{SECRET} {i}", namespace=f"ns{i % 2}").id: f"{SECRET} {i}" for i in range(6)
    }
    gone = kb.add(f"{SECRET} deleted", namespace="ns0")
    kb.delete(gone.id)
    before = snapshot(database_url)
    # the generated column names the data key inside the sealed value
    for row in before.values():
        assert uuid.UUID(row[2]).bytes == key_id_of(bytes(row[3]))
    old_keys = active_content_keys(database_url)

    rotated = kb.keys.rotate_data_keys()
    assert {r["namespace"] for r in rotated} == {"default", "ns0", "ns1"}
    new_keys = active_content_keys(database_url)
    assert len(new_keys) == 3 and not new_keys & old_keys
    assert sql(database_url, "SELECT count(*) FROM kb_data_keys WHERE NOT active")[0][0] == 3
    assert (
        sql(
            database_url,
            "SELECT count(*) FROM kb_data_keys WHERE NOT active AND retired_at IS NULL",
        )[0][0]
        == 0
    )
    # new writes use the new key at once (same process), old rows still read
    fresh = kb.add(f"{SECRET} new", namespace="ns1")
    assert snapshot(database_url)[str(fresh.id)][2] in new_keys
    for eid, text in entries.items():
        assert kb.get(eid).content == text
    status = kb.status()
    assert status["entries_by_data_key"] == {
        "on_active_keys": 1,
        "on_retired_keys": 7,
        "on_unknown_keys": 0,
    }
    assert status["data_keys"]["retired"] == 3

    result = kb.keys.reencrypt(batch_size=2)
    assert result == {
        "namespace": None,
        "reencrypted": 7,
        "remaining": 0,
        "failed": 0,
        "failed_ids": [],
    }
    after = snapshot(database_url)
    assert set(after) == set(before) | {str(fresh.id)}
    for eid, old in before.items():
        version, updated_at, key_id, sealed = after[eid]
        assert key_id in new_keys and sealed != old[3]
        assert (version, updated_at) == old[:2]  # the entry did not change
    for eid, text in entries.items():
        assert kb.get(eid).content == text
    assert kb.status()["entries_by_data_key"]["on_retired_keys"] == 0
    # nothing left: a rerun is a no-op
    assert kb.keys.reencrypt()["reencrypted"] == 0
    # one namespace only
    kb.keys.rotate_data_keys("ns0")
    assert kb.keys.reencrypt(namespace="ns1")["reencrypted"] == 0
    assert kb.keys.reencrypt(namespace="ns0")["reencrypted"] == 4
    with pytest.raises(NotFoundError):
        kb.keys.rotate_data_keys("never-written")
    for bad in ({"batch_size": 0}, {"batch_size": 10001}, {"pause": -1}):
        with pytest.raises(ValidationError):
            kb.keys.reencrypt(**bad)
    assert kb.audit.verify().ok


def test_reencrypt_skips_a_row_changed_meanwhile(kb: KnowledgeBase, database_url: str) -> None:
    """The optimistic write: an update between read and write wins; rerun is clean."""
    assert kb.keys is not None
    entry = kb.add(f"{SECRET} racing")
    kb.keys.rotate_data_keys()
    stale = kb.keys.rekey.stale_batch(None, None, 10)
    assert [r.id for r in stale] == [entry.id]
    from sealedkb.model import EntryPatch

    kb.update(entry.id, EntryPatch(title="changed"))  # sealed under the new key, v2
    with kb.audit.transaction() as conn:
        assert kb.keys.rekey.reseal(conn, stale[0], b"\x01" + bytes(200)) is False
    assert kb.get(entry.id).title == "changed"
    assert kb.keys.reencrypt()["reencrypted"] == 0


def test_reencrypt_reports_a_tampered_row_and_moves_the_rest(
    home: Path, database_url: str, kb: KnowledgeBase
) -> None:
    assert kb.keys is not None
    good = kb.add(f"{SECRET} fine")
    bad = kb.add(f"{SECRET} broken")
    kb.keys.rotate_data_keys()
    sql(
        database_url,
        "UPDATE kb_entries SET doc_sealed = set_byte(doc_sealed, 60, get_byte(doc_sealed, 60) # 1)"
        " WHERE id = %s",
        (bad.id,),
    )
    cli = make_cli(home, database_url)
    result = expect(cli("reencrypt"), 6)
    assert str(bad.id) in result.output and "INTEGRITY_ERROR" in result.output
    assert kb.get(good.id).content == f"{SECRET} fine"
    assert kb.status()["entries_by_data_key"]["on_retired_keys"] == 1


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALEDKB_")}
    src = str(Path(sealedkb.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


ROWS = 120
BATCH = 10


def test_reencrypt_killed_halfway_then_rerun(
    make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    kb, _ = KnowledgeBase.init(make_settings())
    try:
        texts = {
            str(kb.add(f"{SECRET} row {i}", tags=[f"t{i % 4}"]).id): f"{SECRET} row {i}"
            for i in range(ROWS)
        }
        assert kb.keys is not None
        kb.keys.rotate_data_keys()
    finally:
        kb.close()
    before = snapshot(database_url)
    env = {**_child_env(), "SEALEDKB_DATABASE_URL": database_url}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sealedkb",
            "--home",
            str(home),
            "reencrypt",
            "--batch-size",
            str(BATCH),
            "--pause",
            "0.2",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    progress: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            progress.append(line.strip())
            if line.startswith("re-encrypted ") and int(line.split()[1].split("/")[0]) >= ROWS // 2:
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, progress
    assert progress[-1] == f"re-encrypted {ROWS // 2}/{ROWS} rows", progress

    new_keys = active_content_keys(database_url)
    halfway = snapshot(database_url)
    moved = sum(1 for row in halfway.values() if row[2] in new_keys)
    assert ROWS // 2 <= moved < ROWS  # killed halfway: some moved, not all

    # reads work at this point (old and new keys side by side)
    with KnowledgeBase.open(make_settings()) as reader:
        for eid in list(texts)[:: ROWS // 10]:
            assert reader.get(eid).content == texts[eid]

    cli = make_cli(home, database_url)
    result = json.loads(expect(cli("reencrypt", "--json"), 0).stdout)
    assert result["reencrypted"] == ROWS - moved and result["remaining"] == 0
    status = json.loads(expect(cli("status", "--json"), 0).stdout)
    assert status["entries_by_data_key"] == {
        "on_active_keys": ROWS,
        "on_retired_keys": 0,
        "on_unknown_keys": 0,
    }
    after = snapshot(database_url)
    assert set(after) == set(before)  # no row lost, none added
    with KnowledgeBase.open(make_settings()) as reader:
        for eid, text in texts.items():
            entry = reader.get(eid)  # opens once: not double-encrypted
            assert entry.content == text and entry.version == 1
            assert after[eid][2] in new_keys and after[eid][:2] == before[eid][:2]
        assert len(reader.list(tag="t1", namespace="default", limit=1000)) == ROWS // 4
    assert "events" in expect(cli("audit", "verify"), 0).stdout
