"""The migration guard does not outlive its migration: an attacker with SQL access who
saved the guard while the migration ran cannot use it afterwards to reopen the now
encrypted knowledge base in plaintext mode (a downgrade by SQL alone)."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from sealedkb.config import Settings
from sealedkb.errors import IntegrityError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.migrating import Migrator
from sealedkb.model import EncryptionMode


def _meta(conn: psycopg.Connection[tuple[object, ...]], key: str) -> str | None:
    row = conn.execute("SELECT value FROM kb_meta WHERE key = %s", (key,)).fetchone()
    return None if row is None else str(row[0])


def _plaintext_rows(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM kb_entries WHERE content_plain IS NOT NULL"
            " OR title_plain IS NOT NULL"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_replayed_guard_does_not_downgrade_an_encrypted_kb(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    settings = make_settings()
    plain, _ = KnowledgeBase.init(settings, EncryptionMode.OFF)
    for i in range(12):
        plain.add(f"entry {i} kept secret after the migration", title=f"Title {i}")
    plain.close()

    saved: dict[str, str | None] = {}

    def progress(phase: str, done: int, total: int) -> None:
        # The attacker reads kb_meta while the migration runs (the guard is plain SQL data).
        if phase == "copy" and "guard" not in saved:
            with psycopg.connect(database_url) as conn:
                saved["guard"] = _meta(conn, "migration_guard")
                saved["marker"] = _meta(conn, "migration")

    result = Migrator(settings, batch=10, progress=progress).run()
    assert result["state"] == "complete"
    assert saved["guard"] is not None

    with psycopg.connect(database_url) as conn:
        # The guard is gone once the migration completed.
        assert _meta(conn, "migration_guard") is None
        # The attacker puts the saved guard (and the running migration's marker) back,
        # flips the mode and drops the table's sealed-only constraint.
        conn.execute(
            "INSERT INTO kb_meta (key, value) VALUES ('migration_guard', %s)"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (saved["guard"],),
        )
        conn.execute("UPDATE kb_meta SET value = %s WHERE key = 'migration'", (saved["marker"],))
        conn.execute("UPDATE kb_meta SET value = 'off' WHERE key = 'encryption'")
        conn.execute("DELETE FROM kb_meta WHERE key = 'kms_key_uri'")
        conn.execute("ALTER TABLE kb_entries DROP CONSTRAINT IF EXISTS kb_entries_sealed_only")

    with pytest.raises(IntegrityError):
        KnowledgeBase.open(settings)
    with pytest.raises(IntegrityError):
        KnowledgeBase.init(settings)
    assert _plaintext_rows(database_url) == 0


def test_guard_still_opens_a_rolled_back_kb(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    """The legitimate uses stay: after a rollback (past the switch) the plaintext
    knowledge base opens beside the keystore, and it migrates again."""
    settings = make_settings()
    plain, _ = KnowledgeBase.init(settings, EncryptionMode.OFF)
    plain.add("one entry")
    plain.close()
    assert Migrator(settings).run()["state"] == "complete"
    assert Migrator(settings).rollback()["state"] == "rolled-back"
    with KnowledgeBase.open(settings) as kb:
        assert not kb.encrypted
        kb.add("written after the rollback")
    assert Migrator(settings).run()["state"] == "complete"
    with psycopg.connect(database_url) as conn:
        assert _meta(conn, "migration_guard") is None


def test_a_failed_switch_fails_closed_and_a_rerun_rearms(
    make_settings: Callable[..., Settings],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The guard goes just before the switch commits: when that transaction fails the
    plaintext knowledge base refuses to open beside the keystore (never the other way
    round) until ``migrate run`` again arms a fresh guard and completes."""
    from sealedkb.migrate import in_place

    settings = make_settings()
    plain, _ = KnowledgeBase.init(settings, EncryptionMode.OFF)
    plain.add("one entry")
    plain.close()

    real = in_place.disarm_guard

    def disarm_then_fail(conn: psycopg.Connection[tuple[object, ...]] | None, s: Settings) -> None:
        real(conn, s)
        raise RuntimeError("the switch's commit fails")

    monkeypatch.setattr(in_place, "disarm_guard", disarm_then_fail)
    with pytest.raises(RuntimeError):
        Migrator(settings).run()
    monkeypatch.setattr(in_place, "disarm_guard", real)
    with psycopg.connect(database_url) as conn:
        assert _meta(conn, "encryption") == "off"  # the switch rolled back
        assert _meta(conn, "migration_guard") is not None
    with pytest.raises(IntegrityError):
        KnowledgeBase.open(settings)

    opened: list[bool] = []

    def progress(phase: str, done: int, total: int) -> None:
        if phase == "switch" and done == 0:
            with KnowledgeBase.open(settings) as kb:
                opened.append(kb.encrypted)

    assert Migrator(settings, progress=progress).run()["state"] == "complete"
    assert opened == [False]  # re-armed: the plaintext knowledge base opened again
    with KnowledgeBase.open(settings) as kb:
        assert kb.encrypted and kb.get(kb.list(limit=1)[0].id).content == "one entry"


def test_a_forged_resume_does_not_rearm_the_guard(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    """The attacker also rewrites the marker to a running copy, hoping the operator's
    next ``migrate run`` arms a fresh guard: the run refuses over sealed rows."""
    settings = make_settings()
    plain, _ = KnowledgeBase.init(settings, EncryptionMode.OFF)
    plain.add("kept secret")
    plain.close()
    saved: dict[str, str | None] = {}

    def progress(phase: str, done: int, total: int) -> None:
        if phase == "copy" and "marker" not in saved:
            with psycopg.connect(database_url) as conn:
                saved["marker"] = _meta(conn, "migration")
                saved["guard"] = _meta(conn, "migration_guard")

    assert Migrator(settings, progress=progress).run()["state"] == "complete"
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE kb_meta SET value = %s WHERE key = 'migration'", (saved["marker"],))
        conn.execute(
            "INSERT INTO kb_meta (key, value) VALUES ('migration_guard', %s)", (saved["guard"],)
        )
        conn.execute("UPDATE kb_meta SET value = 'off' WHERE key = 'encryption'")
    with pytest.raises(IntegrityError):
        Migrator(settings).run()
    with pytest.raises(IntegrityError):
        KnowledgeBase.open(settings)
    assert _plaintext_rows(database_url) == 0
