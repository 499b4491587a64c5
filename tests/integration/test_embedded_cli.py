"""The embedded path end to end through the real CLI in subprocesses: no database URL,
so ``sealedkb init`` starts PostgreSQL in ``<home>/pgdata`` and later commands find it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import sealedkb
from sealedkb.store.embedded import EmbeddedPostgres, pg_bin

SRC = Path(sealedkb.__file__).resolve().parents[1]


@pytest.fixture
def embedded_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    try:
        yield home
    finally:
        EmbeddedPostgres(home / "pgdata").stop()


def sealedkb_cli(
    home: Path, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALEDKB_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "sealedkb", "--home", str(home), *args],
        input=input,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def psql_count(url: str) -> int:
    out = subprocess.run(
        [str(pg_bin("psql")), url, "-XAt", "-c", "select count(*) from kb_entries"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def test_embedded_end_to_end(embedded_home: Path) -> None:
    home = embedded_home
    # before init there is nothing to open, and nothing gets started
    for args in (["status"], ["get", "00000000-0000-0000-0000-000000000000"]):
        result = sealedkb_cli(home, *args)
        assert result.returncode == 1
        assert "init" in result.stderr
    assert not (home / "pgdata").exists()

    assert "Initialised" in ok(sealedkb_cli(home, "init"))
    server = EmbeddedPostgres(home / "pgdata")
    assert server.is_running()
    assert "Already initialised" in ok(sealedkb_cli(home, "init"))

    entry_id = ok(sealedkb_cli(home, "add", "-", "--title", "Embedded", input="hello embedded\n"))
    entry_id = entry_id.strip()
    got = json.loads(ok(sealedkb_cli(home, "get", entry_id, "--json")))
    assert (got["content"], got["title"]) == ("hello embedded\n", "Embedded")
    listed = json.loads(ok(sealedkb_cli(home, "list", "--json")))
    assert [e["id"] for e in listed] == [entry_id]

    status = json.loads(ok(sealedkb_cli(home, "status", "--json")))
    assert status["storage_encrypted"] is True
    assert status["database"]["kind"] == "embedded"
    assert status["database"]["transport"] == "unix-socket"
    assert status["database"]["pgvector"]
    assert status["entries_total"] == 1
    assert status["availability"] == "available"
    assert status["home"] == str(home)

    url = ok(sealedkb_cli(home, "db", "url")).strip()
    assert url.startswith("postgresql://")
    assert psql_count(url) == 1

    assert ok(sealedkb_cli(home, "db", "stop")).strip() == "stopped"
    assert not server.is_running()
    assert ok(sealedkb_cli(home, "db", "stop")).strip() == "not running"

    # the next command starts the server again, data intact
    again = json.loads(ok(sealedkb_cli(home, "get", entry_id, "--json")))
    assert again == got
    assert server.is_running()
    assert ok(sealedkb_cli(home, "db", "stop")).strip() == "stopped"
    assert not server.is_running()
