"""In-place migration of a plaintext sealedkb (runbook §25): run, verify, rollback."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from tests.cli_helpers import all_entries

from sealedkb.config import Settings
from sealedkb.errors import IntegrityError, ValidationError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.migrating import Migrator
from sealedkb.kb.summary import build_summary
from sealedkb.model import EncryptionMode, EntryPatch


def _fill(kb: KnowledgeBase, n: int) -> None:
    for i in range(n):
        kb.add(
            f"entry {i} about topic {i % 7} with some words",
            title=f"Title {i}",
            tags=[f"t{i % 3}"],
            metadata={"i": i},
            source=f"src/{i}",
            entry_type="note" if i % 2 else "doc",
        )


def test_in_place_run_verify_rollback(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    plain, _ = KnowledgeBase.init(settings, EncryptionMode.OFF)
    _fill(plain, 40)
    e = plain.list(limit=1)[0]
    plain.delete(e.id)
    before = all_entries(plain)
    plain.close()

    plan = Migrator(settings).plan()
    assert plan["kind"] == "in-place" and plan["rows"] == 40
    assert plan["estimate_seconds"] > 0

    result = Migrator(settings, batch=10).run()
    assert result["state"] == "complete"

    with KnowledgeBase.open(settings) as kb:
        assert kb.encrypted
        assert all_entries(kb) == before
        st = kb.status()
        assert st["storage_encrypted"] and st["entries_plaintext"] == 0
        hits = kb.search("topic", mode="keyword", namespace="default")
        assert hits.hits
        checks = {c.check: c for c in build_summary(kb)}
        assert checks["migration"].ok is True and checks["storage_encrypted"].ok is True
        assert checks["migration"].detail["wal_retired"]

    v = Migrator(settings).verify()
    assert v["ok"], v
    assert v["entries_checked"] == 40

    with pytest.raises(ValidationError):
        Migrator(settings).run()

    r = Migrator(settings).rollback()
    assert r["state"] == "rolled-back"
    with KnowledgeBase.open(settings) as kb:
        assert not kb.encrypted
        assert all_entries(kb) == before
        checks = {c.check: c for c in build_summary(kb)}
        assert checks["migration"].ok is None and "rolled-back" in checks["migration"].value
        assert checks["storage_encrypted"].ok is False
        kb.add("written after the rollback, in plaintext mode again")
    # and the plaintext knowledge base can be migrated again
    assert Migrator(settings).run()["state"] == "complete"
    assert Migrator(settings).verify()["ok"]


def test_guard_forged_with_sql_does_not_open_plaintext(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    """A keystore beside a plaintext KB is refused unless the migration guard verifies:
    flipping kb_meta (and writing a guard) with SQL access alone does not work."""
    settings = make_settings()
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
    kb.close()
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE kb_meta SET value = 'off' WHERE key = 'encryption'")
        conn.execute("DELETE FROM kb_meta WHERE key = 'kms_key_uri'")
        conn.execute(
            "INSERT INTO kb_meta (key, value) VALUES ('migration_guard', %s)",
            ('{"key_uri": "x", "kb_id": "y", "mac": "' + "00" * 32 + '"}',),
        )
    with pytest.raises(IntegrityError):
        KnowledgeBase.open(settings)


def test_plan_changes_nothing(make_settings: Callable[..., Settings], database_url: str) -> None:
    settings = make_settings()
    plain, _ = KnowledgeBase.init(settings, EncryptionMode.OFF)
    _fill(plain, 5)
    plain.close()
    plan = Migrator(settings).plan()
    assert plan["steps"] and plan["expected_downtime_ms"] > 0 and plan["rollback_point"]
    assert not (settings.keys_dir / "root.json").exists()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM kb_data_keys").fetchone() == (0,)
        assert conn.execute("SELECT to_regclass('sealedkb_mig_entries')").fetchone() == (None,)
    with KnowledgeBase.open(settings) as kb:
        assert not kb.encrypted


def test_reads_and_writes_go_on_during_the_copy(
    make_settings: Callable[..., Settings],
) -> None:
    """Online: while rows are sealed, another process-like client keeps reading and
    writing the plaintext knowledge base; its writes (adds, updates, deletes) are
    caught up, and the switch leaves exactly what the plaintext table held."""
    settings = make_settings()
    plain, _ = KnowledgeBase.init(settings, EncryptionMode.OFF)
    _fill(plain, 400)
    all_ids = [e.id for e in plain.list(limit=1000)]
    doomed, ids = all_ids[:60], all_ids[60:]  # deleted meanwhile / read and updated
    stop_writing = threading.Event()
    writer_done = threading.Event()
    errors: list[str] = []
    counts = {"writes": 0, "reads": 0}

    def client() -> None:
        i = 0
        try:
            while not stop_writing.is_set():
                i += 1
                plain.get(ids[i % len(ids)])
                counts["reads"] += 1
                if i % 3 == 0:
                    plain.add(f"written during the migration {i}", tags=["live"])
                elif i % 3 == 1:
                    plain.update(ids[i % len(ids)], EntryPatch(content=f"changed {i}"))
                elif doomed:
                    plain.delete(doomed.pop())
                counts["writes"] += 1
        except Exception as exc:  # any failure before the switch is a bug
            errors.append(repr(exc))
        finally:
            writer_done.set()

    state: dict[str, Any] = {}

    def progress(phase: str, done: int, total: int) -> None:
        if phase == "switch" and done == 0 and "before" not in state:
            stop_writing.set()
            writer_done.wait(30)
            state["before"] = all_entries(plain)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        result = Migrator(settings, batch=50, progress=progress).run()
    finally:
        stop_writing.set()
        thread.join(30)
        plain.close()
    assert errors == []
    assert counts["writes"] > 20 and counts["reads"] > 20
    assert result["state"] == "complete"
    with KnowledgeBase.open(settings) as kb:
        assert all_entries(kb) == state["before"]
    assert Migrator(settings).verify()["ok"]
