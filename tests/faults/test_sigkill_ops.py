"""SIGKILL at a random point (seeded) of the long key, snapshot, migration and index
operations, then the same command run again: it completes, every entry opens and
reads back as written, and the audit chain verifies.

- ``key rotate`` (new version, then re-wrap every data key; the rerun is
  ``key rotate --rewrap-only``), ``key migrate --to`` another key, ``reindex``;
- ``snapshot copy``; ``snapshot restore`` (a killed restore leaves at most an empty
  database: its load is one transaction; the rerun restores into it);
- ``migrate run`` (plaintext to encrypted) and ``migrate rollback``.

Knowledge bases are small (tens of namespaces, hundreds of entries) so each run
takes seconds; the kill lands anywhere from process start to past the end."""

from __future__ import annotations

import json
import random
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from tests.faults.conftest import assert_no_loss
from tests.faults.test_sigkill import _audit_ok, _kill_at_random, _run, _sealedkb

from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode, new_entry

NAMESPACES = 8  # three data keys each: enough re-wrapping to be killed halfway


def _fill(kb: KnowledgeBase, per_namespace: int = 5) -> dict[str, str]:
    texts: dict[str, str] = {}
    for n in range(NAMESPACES):
        entries = [
            new_entry(f"ns{n} note {i}: queue {i % 5} drains at {n}:00", namespace=f"ns{n}")
            for i in range(per_namespace)
        ]
        texts.update({str(e.id): e.content for e in kb.add_many(entries)})
    return texts


def _json(argv: list[str], env: dict[str, str]) -> dict[str, object]:
    out = json.loads(_run(argv, env).stdout)
    assert isinstance(out, dict), out
    return out


def _verify_all(settings: Settings, database_url: str, texts: dict[str, str]) -> None:
    with KnowledgeBase.open(settings) as kb:
        assert_no_loss(kb, database_url, texts)
    _audit_ok(settings)


@pytest.fixture
def filled(make_settings: Callable[..., Settings]) -> tuple[Settings, dict[str, str]]:
    settings = make_settings()
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
    try:
        return settings, _fill(kb)
    finally:
        kb.close()


@pytest.mark.parametrize("seed", [3, 17])
def test_key_rotate_killed_then_rewrap_finishes(
    seed: int,
    filled: tuple[Settings, dict[str, str]],
    home: Path,
    database_url: str,
    cli_env: dict[str, str],
) -> None:
    settings, texts = filled
    _kill_at_random(
        _sealedkb(home, "key", "rotate", "--batch-size", "1"), cli_env, random.Random(seed)
    )
    _run(_sealedkb(home, "key", "rotate", "--rewrap-only", "--batch-size", "5", "--json"), cli_env)
    again = _json(_sealedkb(home, "key", "rotate", "--rewrap-only", "--json"), cli_env)
    assert again["data_keys_rewrapped"] == 0, again  # all under the newest version already
    _verify_all(settings, database_url, texts)


@pytest.mark.parametrize("seed", [5])
def test_key_migrate_killed_then_rerun(
    seed: int,
    filled: tuple[Settings, dict[str, str]],
    home: Path,
    database_url: str,
    cli_env: dict[str, str],
) -> None:
    settings, texts = filled
    target = _run(
        _sealedkb(home, "key", "create", "--description", "custody"), cli_env
    ).stdout.strip()
    argv = _sealedkb(home, "key", "migrate", "--to", target, "--json")
    _kill_at_random(argv, cli_env, random.Random(seed))
    rerun = subprocess.run(argv, env=cli_env, capture_output=True, text=True, timeout=120)
    if rerun.returncode == 2:  # the kill landed after the switch: nothing left to do
        assert "already under" in rerun.stderr, rerun.stderr
    else:
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert json.loads(rerun.stdout)["switched"], rerun.stdout
    with psycopg.connect(database_url) as conn:
        keys = {str(r[0]) for r in conn.execute("SELECT DISTINCT kms_key_uri FROM kb_data_keys")}
    # every data key re-wrapped under the new custodian (a URI, or its bare uuid)
    assert {k.rsplit("/", 1)[-1] for k in keys} == {target.rsplit("/", 1)[-1]}, (keys, target)
    _verify_all(settings, database_url, texts)


@pytest.mark.parametrize("seed", [7])
def test_reindex_killed_then_rerun(
    seed: int,
    filled: tuple[Settings, dict[str, str]],
    home: Path,
    database_url: str,
    cli_env: dict[str, str],
) -> None:
    settings, texts = filled
    argv = _sealedkb(home, "reindex", "--batch-size", "4", "--json")
    _kill_at_random(argv, cli_env, random.Random(seed))
    _run(argv, cli_env)
    _verify_all(settings, database_url, texts)
    with KnowledgeBase.open(settings) as kb:  # the index answers under its new keys
        hits = kb.search("queue 3 drains", limit=5, namespace="ns4")
        assert hits.hits, "the rebuilt index finds nothing"


@pytest.mark.parametrize("seed", [13])
def test_snapshot_copy_killed_then_rerun(
    seed: int,
    filled: tuple[Settings, dict[str, str]],
    home: Path,
    database_url: str,
    cli_env: dict[str, str],
) -> None:
    settings, texts = filled
    snap = _json(_sealedkb(home, "snapshot", "create", "--json"), cli_env)
    other = _run(_sealedkb(home, "key", "create", "--description", "dr"), cli_env).stdout.strip()
    argv = _sealedkb(home, "snapshot", "copy", str(snap["id"]), "--kms-key-id", other, "--json")
    _kill_at_random(argv, cli_env, random.Random(seed))
    copy = _json(argv, cli_env)
    listed = json.loads(_run(_sealedkb(home, "snapshot", "list", "--json"), cli_env).stdout)
    valid = [s for s in listed if not s["damaged"]]
    assert copy["id"] in {s["id"] for s in valid}
    for s in valid:  # whatever list calls valid verifies
        _run(_sealedkb(home, "snapshot", "verify", s["id"], "--json"), cli_env)
    _verify_all(settings, database_url, texts)


@pytest.mark.parametrize("seed", [19])
def test_snapshot_restore_killed_then_rerun(
    seed: int,
    filled: tuple[Settings, dict[str, str]],
    home: Path,
    database_url: str,
    cli_env: dict[str, str],
) -> None:
    settings, texts = filled
    snap = _json(_sealedkb(home, "snapshot", "create", "--json"), cli_env)
    name = f"r_{uuid.uuid4().hex[:10]}"
    here = urlsplit(database_url).path.lstrip("/")
    target_url = database_url.replace(f"/{here}?", f"/{name}?")
    argv = _sealedkb(home, "snapshot", "restore", str(snap["id"]), "--target", name, "--json")
    try:
        _kill_at_random(argv, cli_env, random.Random(seed))
        left = _rows_by_table(target_url)
        if left is None:  # killed before the database was created
            _json(argv, cli_env)
        elif sum(left.values()) == 0:  # killed during the load: rolled back, rerun into it
            rerun = _sealedkb(home, "snapshot", "restore", str(snap["id"]), "--target", target_url)
            report = _json([*rerun, "--json"], cli_env)
            counts = report["row_counts"]
            assert isinstance(counts, dict) and counts["kb_entries"] == len(texts), report
        else:  # killed after it finished: all of it is there, never a part
            assert left["kb_entries"] == len(texts), left
        with psycopg.connect(target_url) as conn:
            ids = {str(r[0]) for r in conn.execute("SELECT id FROM kb_entries")}
        assert ids == set(texts)
    finally:
        admin = database_url.replace(f"/{here}?", "/postgres?")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    _verify_all(settings, database_url, texts)


def _rows_by_table(url: str) -> dict[str, int] | None:
    """Rows in each sealedkb table of a database; None if it does not exist."""
    try:
        with psycopg.connect(url) as conn:
            tables = [
                str(r[0])
                for r in conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'kb_%'")
            ]
            counts = {}
            for table in tables:
                row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                counts[table] = int(row[0]) if row else 0
            return counts
    except psycopg.OperationalError:
        return None


@pytest.fixture
def plaintext(make_settings: Callable[..., Settings]) -> tuple[Settings, dict[str, str]]:
    settings = make_settings()
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.OFF)
    try:
        return settings, _fill(kb, per_namespace=10)
    finally:
        kb.close()


@pytest.mark.parametrize("seed", [23])
def test_migrate_run_killed_then_rerun(
    seed: int,
    plaintext: tuple[Settings, dict[str, str]],
    home: Path,
    database_url: str,
    cli_env: dict[str, str],
) -> None:
    settings, texts = plaintext
    argv = _sealedkb(home, "migrate", "run", "--batch", "10", "--json")
    _kill_at_random(argv, cli_env, random.Random(seed))
    result = _json(argv, cli_env)
    assert result["state"] == "complete", result
    with KnowledgeBase.open(settings) as kb:
        assert kb.encrypted
    _verify_all(settings, database_url, texts)


@pytest.mark.parametrize("seed", [29])
def test_migrate_rollback_killed_then_rerun(
    seed: int,
    plaintext: tuple[Settings, dict[str, str]],
    home: Path,
    database_url: str,
    cli_env: dict[str, str],
) -> None:
    settings, texts = plaintext
    _run(_sealedkb(home, "migrate", "run", "--batch", "50", "--json"), cli_env)
    argv = _sealedkb(home, "migrate", "rollback", "--json")
    _kill_at_random(argv, cli_env, random.Random(seed))
    rerun = subprocess.run(argv, env=cli_env, capture_output=True, text=True, timeout=120)
    if rerun.returncode == 3:  # the kill landed after the rollback: nothing left to do
        assert "no migration to roll back" in rerun.stderr, rerun.stderr
    else:
        assert rerun.returncode == 0, rerun.stderr[-2000:]
    with KnowledgeBase.open(settings) as kb:
        assert not kb.encrypted
    _verify_all(settings, database_url, texts)
