"""Migration of a foreign ``knowledge_entries`` table (runbook §25): mapping checks before
anything changes, counts and digests after, rollback to the pre-migration snapshot."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from sealedkb.config import Settings
from sealedkb.errors import ValidationError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.migrating import ForeignSpec, Migrator
from sealedkb.kb.snapshotting import snapshots_for
from sealedkb.model import EncryptionMode
from sealedkb.store.embedded import EmbeddedPostgres

ROWS = 300
TYPES = ["note", "doc", "decision", "pattern", "runbook", "lesson", "constraint"]


@pytest.fixture
def source_url(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """A database holding the common layout of other knowledge-base servers."""
    name = f"src_{uuid.uuid4().hex[:10]}"
    admin = pg_server.uri()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = make_conninfo(admin, dbname=name)
    base = datetime(2025, 1, 1, tzinfo=UTC)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
        conn.execute(
            "CREATE TABLE knowledge_entries (id bigserial PRIMARY KEY, content text NOT NULL,"
            " entry_type text, tags text[], embedding vector(1536),"
            " created_at timestamptz, updated_at timestamptz)"
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO knowledge_entries (content, entry_type, tags, embedding,"
                " created_at, updated_at) VALUES (%s, %s, %s, %s::vector, %s, %s)",
                [
                    (
                        f"Lesson {i}: keep the runbook for shard {i % 13} current. "
                        + ("Same text. " if i % 50 == 0 else f"Unique {i}."),
                        TYPES[i % len(TYPES)],
                        [f"t{i % 5}", "ops"],
                        "[" + ",".join(["0.01"] * 1536) + "]",
                        base + timedelta(minutes=i),
                        base + timedelta(minutes=i, seconds=30),
                    )
                    for i in range(ROWS)
                ],
            )
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


GOOD_MAP = (
    "id=id,content=content,entry_type=entry_type,tags=tags,"
    "created_at=created_at,updated_at=updated_at"
)


def _digest(rows: list[tuple[str, str, list[str], datetime]]) -> str:
    canon = sorted(
        json.dumps([c, t, sorted(tags), ts.astimezone(UTC).isoformat()]) for c, t, tags, ts in rows
    )
    return hashlib.sha256("\n".join(canon).encode()).hexdigest()


def _source_rows(url: str) -> list[tuple[str, str, list[str], datetime]]:
    with psycopg.connect(url) as conn:
        return [
            (r[0], r[1], list(r[2]), r[3])
            for r in conn.execute(
                "SELECT content, entry_type, tags, created_at FROM knowledge_entries"
            )
        ]


def _kb_rows(kb: KnowledgeBase) -> list[tuple[str, str, list[str], datetime]]:
    out = []
    offset = 0
    while page := kb.list(limit=1000, offset=offset):
        out += [(e.content, e.entry_type.value, list(e.tags), e.created_at) for e in page]
        offset += len(page)
    return out


def test_foreign_table_migrated_counts_and_digests(
    make_settings: Callable[..., Settings], source_url: str
) -> None:
    settings = make_settings()
    spec = ForeignSpec(source_url, "knowledge_entries", GOOD_MAP)
    plan = Migrator(settings, spec).plan()
    assert plan["rows"] == ROWS and plan["invalid_rows"] == [] and plan["reembed"]
    assert plan["mapping"]["content"] == "content"

    result = Migrator(settings, spec, batch=64).run()
    assert result["state"] == "complete" and result["rows_copied"] == ROWS

    with KnowledgeBase.open(settings) as kb:
        assert kb.encrypted
        rows = _kb_rows(kb)
        assert len(rows) == ROWS
        assert _digest(rows) == _digest(_source_rows(source_url))
        # re-embedded with this knowledge base's model: semantic search works
        assert kb.search("runbook shard current", mode="semantic").hits
    v = Migrator(settings, spec).verify()
    assert v["ok"], v["problems"]
    assert v["source_rows"] == ROWS and v["entries_checked"] == ROWS

    # a rerun is idempotent: nothing added
    Migrator(settings, spec).run()
    with KnowledgeBase.open(settings) as kb:
        assert len(_kb_rows(kb)) == ROWS

    # rollback: back to the (empty) knowledge base of before
    r = Migrator(settings).rollback()
    assert r["restored_snapshot"]
    with KnowledgeBase.open(settings) as kb:
        assert _kb_rows(kb) == []
        assert kb.encrypted
    # the source was never written
    assert _digest(_source_rows(source_url)) == _digest(rows)


@pytest.mark.parametrize(
    ("mapping", "needle"),
    [
        ("id=id,content=body", "no column 'body'"),
        ("id=id,content=tags", "does not fit"),
        ("id=id,content=content,embedding=embedding", "1536 dimensions"),
        ("id=content,content=content", "no primary key or unique index"),
        ("id=id,content=content,colour=tags", "unknown field"),
        ("id=id,content", "FIELD=COLUMN"),
        ("id=id,content=content;drop", "plain column name"),
    ],
)
def test_bad_mapping_refused_before_anything_changes(
    make_settings: Callable[..., Settings], source_url: str, mapping: str, needle: str
) -> None:
    settings = make_settings()
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
    kb.close()
    spec = ForeignSpec(source_url, "knowledge_entries", mapping)
    for action in ("plan", "run"):
        with pytest.raises(ValidationError) as info:
            getattr(Migrator(settings, spec), action)()
        assert needle in info.value.message and info.value.field == "map"
    with KnowledgeBase.open(settings) as kb:
        assert kb.list(limit=10) == []
        assert Migrator(settings).status() is None  # no marker written
    assert snapshots_for(settings).list() == []  # no rollback snapshot taken either


def test_missing_table_refused(make_settings: Callable[..., Settings], source_url: str) -> None:
    spec = ForeignSpec(source_url, "no_such_table", None)
    with pytest.raises(ValidationError) as info:
        Migrator(make_settings(), spec).plan()
    assert info.value.field == "table"


def test_cli_plan_json_and_bad_mapping_exit_code(
    make_settings: Callable[..., Settings],
    home: Path,
    database_url: str,
    source_url: str,
    cli_env: dict[str, str],
) -> None:
    settings = make_settings()
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
    kb.close()
    base = [sys.executable, "-m", "sealedkb", "--home", str(home), "migrate", "plan"]
    src = ["--from", source_url, "--table", "knowledge_entries"]
    ok = subprocess.run(
        [*base, *src, "--map", GOOD_MAP, "--json"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    plan = json.loads(ok.stdout)
    assert plan["rows"] == ROWS and plan["estimate_seconds"] > 0 and len(plan["steps"]) >= 3
    bad = subprocess.run(
        [*base, *src, "--map", "id=id,content=body"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "error[VALIDATION_ERROR] (map)" in bad.stderr and "no column 'body'" in bad.stderr
    assert "Traceback" not in bad.stderr and "SELECT" not in bad.stderr
