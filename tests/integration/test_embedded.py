"""The embedded PostgreSQL server: lifecycle, connectivity, pgvector, safety."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from tests.pgserver import start_test_server

import sealedkb
from sealedkb.errors import DatabaseError
from sealedkb.store.embedded import EmbeddedPostgres, pg_bin

IS_ROOT = os.geteuid() == 0


def postmaster_pids(pgdata: Path) -> list[int]:
    """Postmasters serving ``pgdata``: backends rewrite their argv, the postmaster keeps it."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"/postgres") and b"-D" in argv and os.fsencode(pgdata) in argv:
            pids.append(int(entry))
    return pids


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    srv = start_test_server(tmp_path_factory.mktemp("shared"))
    yield srv
    srv.stop()


def test_init_and_start_are_idempotent(tmp_path: Path) -> None:
    srv = EmbeddedPostgres(tmp_path / "pgdata", fast=True)
    try:
        assert not srv.is_initialized()
        assert srv.ensure_initialized() is True
        assert srv.ensure_initialized() is False
        assert not srv.is_running()
        srv.start()
        pids = postmaster_pids(srv.pgdata)
        assert len(pids) == 1
        srv.start()
        # a second handle on the same cluster finds it running too
        EmbeddedPostgres(tmp_path / "pgdata", fast=True).start()
        assert postmaster_pids(srv.pgdata) == pids
        assert srv.is_running()
    finally:
        srv.stop()


def test_psycopg_and_pgvector(server: EmbeddedPostgres) -> None:
    with psycopg.connect(server.uri(), autocommit=True) as conn:
        assert conn.execute("SELECT current_setting('listen_addresses')").fetchone() == ("",)
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, embedding vector(3))")
        conn.execute("INSERT INTO items VALUES (1, '[1,0,0]'), (2, '[0,1,0]'), (3, '[0,0,1]')")
        row = conn.execute(
            "SELECT id FROM items ORDER BY embedding <-> %s::vector LIMIT 1", ("[0.1,0.9,0]",)
        ).fetchone()
        assert row == (2,)


def test_uri_names_database(server: EmbeddedPostgres) -> None:
    with psycopg.connect(server.uri(), autocommit=True) as conn:
        conn.execute('CREATE DATABASE "my db"')
    with psycopg.connect(server.uri("my db")) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("my db",)


def test_psql_accepts_uri(server: EmbeddedPostgres) -> None:
    out = subprocess.run(
        [pg_bin("psql"), server.uri(), "-XAtc", "select 1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.strip() == "1"


def test_private_folders_and_unprivileged_server(server: EmbeddedPostgres) -> None:
    assert stat.S_IMODE(server.pgdata.stat().st_mode) == 0o700
    assert stat.S_IMODE(server.socket_dir.stat().st_mode) == 0o700
    assert server.log_file.is_file()
    (pid,) = postmaster_pids(server.pgdata)
    owner = os.stat(f"/proc/{pid}").st_uid
    if IS_ROOT:
        assert owner != 0
        assert server.pgdata.stat().st_uid == owner
        assert server.socket_dir.stat().st_uid == owner
    else:
        assert owner == os.geteuid()


def test_stop_restart_keeps_data_and_survives_stale_pid(tmp_path: Path) -> None:
    srv = start_test_server(tmp_path)
    try:
        with psycopg.connect(srv.uri()) as conn:
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('hello')")
        t0 = time.monotonic()
        assert srv.stop() is True
        stop_secs = time.monotonic() - t0
        assert srv.stop() is False
        assert not srv.is_running()
        assert postmaster_pids(srv.pgdata) == []
        assert stop_secs < 5  # su/runuser would add ~2 s here

        # a stale postmaster.pid naming a live, unrelated process (ours)
        pid_file = srv.pgdata / "postmaster.pid"
        pid_file.write_text(f"{os.getpid()}\n{srv.pgdata}\n{int(time.time())}\n5432\n")
        assert not srv.is_running()
        srv.start()
        assert srv.is_running()
        with psycopg.connect(srv.uri()) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [("hello",)]
        assert srv.stop() is True

        # a stale postmaster.pid naming a dead process
        dead = subprocess.Popen(["true"])
        dead.wait()
        pid_file.write_text(f"{dead.pid}\n{srv.pgdata}\n{int(time.time())}\n5432\n")
        srv.start()
        assert srv.is_running()
    finally:
        srv.stop()


_STARTER = """
import sys, time
from pathlib import Path
from sealedkb.store.embedded import EmbeddedPostgres
go = float(sys.argv[2])
while time.time() < go:
    time.sleep(0.001)
EmbeddedPostgres(Path(sys.argv[1]), fast=True).start()
"""


def test_concurrent_starts_make_one_server(tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    env = dict(os.environ)
    src = str(Path(sealedkb.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    go = str(time.time() + 0.5)  # both start at the same instant, after interpreter startup
    procs = [
        subprocess.Popen([sys.executable, "-c", _STARTER, str(pgdata), go], env=env)
        for _ in range(2)
    ]
    try:
        assert [p.wait(timeout=60) for p in procs] == [0, 0]
        assert len(postmaster_pids(pgdata)) == 1
    finally:
        EmbeddedPostgres(pgdata, fast=True).stop()
    assert postmaster_pids(pgdata) == []


def test_long_paths_get_a_short_private_socket_dir(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*(["d" * 40] * 3), "pgdata")
    srv = EmbeddedPostgres(deep)
    assert srv.socket_dir.parent == Path("/tmp")
    assert srv.socket_dir.name.startswith("sealedkb-")
    assert len(srv.socket_dir.name) == len("sealedkb-") + 12
    assert EmbeddedPostgres(deep).socket_dir == srv.socket_dir
    short = EmbeddedPostgres(tmp_path / "pgdata")
    assert short.socket_dir == tmp_path / "run"


def test_refuses_non_empty_foreign_directory(tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    (pgdata / "something").write_text("not a cluster")
    with pytest.raises(DatabaseError) as info:
        EmbeddedPostgres(pgdata).start(timeout=5)
    assert "not empty" in info.value.message
    assert not (pgdata / "PG_VERSION").exists()
