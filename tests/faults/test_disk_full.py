"""Disk full during ``snapshot create`` (a file-size limit, RLIMIT_FSIZE, on the
child process: writes past it fail with EFBIG as on a full disk): a clear error
with a stable code, and nothing that ``snapshot list`` shows as valid. And during
``snapshot restore`` (the target database's tables on a 1 MiB tmpfs tablespace,
so PostgreSQL runs out of space): a clear error, an empty target, the snapshot
still valid, and a restore with room succeeds."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from tests import cli_helpers

from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode, new_entry
from sealedkb.store.embedded import EmbeddedPostgres

LIMIT = 64 * 1024  # bytes any one file of the child may reach


def _full_disk() -> None:  # runs in the child before exec
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def test_snapshot_create_on_a_full_disk(
    make_settings: Callable[..., Settings], home: Path, cli_env: dict[str, str]
) -> None:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON)
    for chunk in range(2):
        kb.add_many([new_entry(f"full disk {chunk}-{i} " * 30) for i in range(250)])
    kb.close()
    argv = [sys.executable, "-m", "sealedkb", "--home", str(home), "snapshot"]
    done = subprocess.run(
        [*argv, "create", "--json"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_full_disk,
    )
    assert done.returncode not in (0, -signal.SIGXFSZ), done.stderr
    assert "error[SNAPSHOT_STORAGE_ERROR]" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    listed = subprocess.run(
        [*argv, "list", "--json"], env=cli_env, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert [s for s in json.loads(listed.stdout) if not s["damaged"]] == []
    # and with room again, the next snapshot succeeds
    again = subprocess.run(
        [*argv, "create", "--json"], env=cli_env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr


@pytest.fixture
def small_tablespace(fault_pg: EmbeddedPostgres) -> Iterator[str]:
    """A 1 MiB tmpfs as a tablespace of the fault server (needs mount rights: root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder = Path(tempfile.mkdtemp(prefix="sealedkb-full-"))
    os.chmod(folder, 0o755)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    name = f"full_{uuid.uuid4().hex[:8]}"
    try:
        owner = fault_pg.pgdata.stat()
        os.chown(folder, owner.st_uid, owner.st_gid)
        with psycopg.connect(fault_pg.uri(), autocommit=True) as conn:
            conn.execute(f"CREATE TABLESPACE {name} LOCATION '{folder}'")
        yield name
    finally:
        with psycopg.connect(fault_pg.uri(), autocommit=True) as conn:
            conn.execute(f"DROP TABLESPACE IF EXISTS {name}")
        subprocess.run(["umount", str(folder)], check=False)
        folder.rmdir()


def test_snapshot_restore_on_a_full_disk(
    fault_pg: EmbeddedPostgres,
    fault_db: str,
    fault_settings: Callable[..., Settings],
    small_tablespace: str,
) -> None:
    """The target database's tables live on a 1 MiB filesystem: the restore fails
    with a stable code and no traceback, the target is left without a row, the
    snapshot stays valid, and the same snapshot restores once there is room."""
    settings = fault_settings(fault_db)
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
    for chunk in range(2):
        kb.add_many([new_entry(f"full disk {chunk}-{i} " * 30) for i in range(250)])
    kb.close()
    env = cli_helpers.subprocess_env(fault_db)
    argv = [sys.executable, "-m", "sealedkb", "--home", str(settings.home), "snapshot"]
    created = subprocess.run(
        [*argv, "create", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert created.returncode == 0, created.stderr
    sid = json.loads(created.stdout)["id"]

    full, roomy = (f"r_{uuid.uuid4().hex[:10]}" for _ in range(2))
    with psycopg.connect(fault_pg.uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {full}")
        conn.execute(f"ALTER DATABASE {full} SET default_tablespace = {small_tablespace}")
    try:
        done = subprocess.run(
            [*argv, "restore", sid, "--target", fault_pg.uri(full), "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode != 0, done.stdout
        assert "error[DATABASE_ERROR]" in done.stderr, done.stderr
        assert "ran out of space" in done.stderr and "53100" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr, done.stderr[-2000:]
        with psycopg.connect(fault_pg.uri(full)) as conn:  # nothing half-restored
            tables = [
                r[0]
                for r in conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'kb_%'")
            ]
            for table in tables:
                assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table
        listed = subprocess.run(
            [*argv, "list", "--json"], env=env, capture_output=True, text=True, timeout=60
        )
        assert [s["id"] for s in json.loads(listed.stdout) if not s["damaged"]] == [sid]
        again = subprocess.run(
            [*argv, "restore", sid, "--target", roomy, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["row_counts"]["kb_entries"] == 500
    finally:
        with psycopg.connect(fault_pg.uri(), autocommit=True) as conn:
            for name in (full, roomy):
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
