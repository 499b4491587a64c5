"""Restoring snapshots: a 10k-entry round trip, targets, failures that leave nothing
behind, a snapshot newer than the code, tables of later migrations, the largest entries."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from tests.cli_helpers import Cli
from tests.cli_helpers import initialised_cli as initialised_cli  # the module's cli ran init
from tests.integration.test_tamper_cli import expect, sql
from tests.snapshot_helpers import (
    SMALL_CHUNKS,
    add_varied,
    bulk_add,
    db_exists,
    flip,
)

from sealedkb.config import Settings
from sealedkb.errors import (
    ConflictError,
    NotFoundError,
    ValidationError,
)
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.snapshotting import open_restored, snapshots_for
from sealedkb.model import EncryptionMode
from sealedkb.snapshots.fileformat import SnapshotIntegrityError, read_envelope
from sealedkb.store import snapshot_io as sio
from sealedkb.store.embedded import EmbeddedPostgres

pytest_plugins = ["tests.snapshot_fixtures"]


def test_restore_round_trip_10k(
    cli: Cli,
    home: Path,
    database_url: str,
    make_settings: Callable[..., Settings],
    scratch_names: Callable[[], str],
    pg_server: EmbeddedPostgres,
) -> None:
    settings = make_settings()
    kb = KnowledgeBase.open(settings)
    try:
        assert bulk_add(kb, 10_000, size=1200) == 10_000
        ids = add_varied(kb)
        record, token = kb.create_token("agent", "writer", ["default"])
        expected = {}
        offset = 0
        while True:
            page = kb.list(limit=1000, offset=offset)
            if not page:
                break
            expected.update({str(e.id): e.to_dict() for e in page})
            offset += len(page)
        stats = kb.stats()
    finally:
        kb.close()
    assert len(expected) == 10_000 + len(ids) - 1  # one was deleted

    created = json.loads(expect(cli("snapshot", "create", "--json"), 0).stdout)
    assert created["row_counts"]["kb_entries"] == 10_000 + len(ids)
    target = scratch_names()
    restored = json.loads(
        expect(cli("snapshot", "restore", created["id"], "--target", target, "--json"), 0).stdout
    )
    assert restored["ok"] is True and restored["database"] == target
    assert restored["row_counts"] == created["row_counts"]
    assert restored["entries_opened"] >= 30 and restored["data_keys_unwrapped"] >= 4
    assert "password" not in restored["url"]

    # counts and digests recomputed independently from the restored database
    manifest = json.loads(expect(cli("snapshot", "describe", created["id"], "--json"), 0).stdout)[
        "manifest"
    ]
    restored_url = pg_server.uri(target)
    with psycopg.connect(restored_url, autocommit=True) as conn:
        sio.pin_session(conn)
        for table in manifest["tables"]:
            info = sio.TableInfo.from_dict(table)
            facts = manifest["trailer"]["tables"][info.name]
            digest = hashlib.sha256()
            if info.name == "kb_audit":
                # the restore appended its own event after the snapshot's rows
                cols = ", ".join(c for c, _ in info.columns)
                with conn.cursor().copy(
                    f"COPY (SELECT {cols} FROM kb_audit WHERE seq <= {facts['rows']}"
                    " ORDER BY seq) TO STDOUT (FORMAT binary)"
                ) as copy:
                    for data in copy:
                        digest.update(data)
                rows = facts["rows"]
                assert sio.count_rows(conn, "kb_audit") == rows + 1
            else:
                rows = sio.copy_out(conn, info, digest.update)
            assert (rows, digest.hexdigest()) == (facts["rows"], facts["sha256"]), info.name

    # every entry reads back identical through the service
    rkb = open_restored(settings, restored_url)
    try:
        got = {}
        offset = 0
        while True:
            page = rkb.list(limit=1000, offset=offset)
            if not page:
                break
            got.update({str(e.id): e.to_dict() for e in page})
            offset += len(page)
        assert got == expected
        for eid in ids[2:5]:
            assert rkb.get(eid).to_dict() == expected[eid]
        # search works on the restored database: keyword, semantic and hybrid
        for mode in ("keyword", "semantic", "hybrid"):
            hits = rkb.search("title 5 body 5", mode=mode, limit=10, namespace="default").hits
            assert ids[5] in {str(h.id) for h in hits}, mode
        with pytest.raises(NotFoundError):
            rkb.get(ids[1])  # deleted before the snapshot: still deleted
        assert rkb.stats() == stats
        assert rkb.authenticate(token) is not None  # tokens come back too
        assert rkb.status()["storage_encrypted"] is True
        # the restored audit chain continues with the restore, and verifies
        events = rkb.audit.events(action="RestoreSnapshot")
        assert (
            len(events) == 1
            and events[0]["seq"] == manifest["trailer"]["tables"]["kb_audit"]["rows"] + 1
        )
        assert events[0]["details"]["snapshot_id"] == created["id"]
        assert rkb.audit.verify().ok
        # and it is a working knowledge base
        new = rkb.add("written after the restore")
        assert rkb.get(new.id).content == "written after the restore"
    finally:
        rkb.close()
    assert not (home / "audit-restored").exists() or all(
        p.name.startswith("checkpoint-") for p in (home / "audit-restored").iterdir()
    )
    # the live trail still verifies (no foreign checkpoint crept into audit/)
    assert json.loads(expect(cli("audit", "verify", "--json"), 0).stdout)["ok"] is True
    del record


def test_restore_targets(
    kb: KnowledgeBase,
    settings: Settings,
    database_url: str,
    empty_database: str,
    second_database: str,
    pg_server: EmbeddedPostgres,
    scratch_names: Callable[[], str],
) -> None:
    add_varied(kb)
    snaps = snapshots_for(settings, kb)
    info = snaps.create()
    # never over a live one: the live database by name and by URL
    live_name = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    with pytest.raises(ConflictError, match="already exists"):
        snaps.restore(info.id, str(live_name))
    with pytest.raises(ConflictError, match="not empty"):
        snaps.restore(info.id, database_url)
    assert kb.list(limit=100)  # untouched
    with pytest.raises(ValidationError):
        snaps.restore(info.id, "Bad-Name; DROP")
    # an existing empty, unmigrated database given by URL
    result = snaps.restore(info.id, empty_database)
    assert result["created_database"] is False and result["row_counts"]["kb_entries"] == 12
    # an empty database already migrated to this code's schema
    assert snaps.restore(info.id, second_database)["ok"]
    # a second restore into the now-filled database is refused
    with pytest.raises(ConflictError, match="not empty"):
        snaps.restore(info.id, empty_database)


def test_failed_restore_leaves_a_given_empty_database_as_it_was(
    kb: KnowledgeBase, settings: Settings, empty_database: str
) -> None:
    add_varied(kb)
    bulk_add(kb, 100)
    snaps = snapshots_for(settings, kb, chunk_size=SMALL_CHUNKS)
    info = snaps.create()
    env = read_envelope(info.path)
    flip(info.path, env.stream_offset + env.stream_len - 30)  # damage the last chunk
    with pytest.raises(SnapshotIntegrityError):
        snaps.restore(info.id, empty_database)
    tables = sql(
        empty_database,
        "SELECT count(*) FROM pg_class WHERE relname LIKE 'kb%%' AND relkind = 'r'",
    )
    assert tables == [(0,)]
    assert sql(empty_database, "SELECT count(*) FROM pg_extension WHERE extname = 'vector'") == [
        (0,)
    ]


def test_restore_refuses_a_snapshot_newer_than_the_code(
    kb: KnowledgeBase,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    scratch_names: Callable[[], str],
    pg_server: EmbeddedPostgres,
) -> None:
    snaps = snapshots_for(settings, kb)
    info = snaps.create()
    import sealedkb.snapshots.restore as mod

    real = mod.migrations()
    monkeypatch.setattr(mod, "migrations", lambda: real[:-1])
    target = scratch_names()
    with pytest.raises(ValidationError, match="newer sealedkb") as exc:
        snaps.restore(info.id, target)
    assert exc.value.exit_code == 2
    assert not db_exists(pg_server, target)


FUTURE_MIGRATION = """
-- What other issues add (search: tsvector, vectors, sealed embeddings; monitoring: tables
-- with serial keys and foreign keys), and the awkward cases a generic copy must handle.
ALTER TABLE kb_entries ADD COLUMN IF NOT EXISTS kw_tokens tsvector;
ALTER TABLE kb_entries ADD COLUMN IF NOT EXISTS embedding_dcpe vector(3);
ALTER TABLE kb_entries ADD COLUMN IF NOT EXISTS embedding_sealed bytea;
CREATE TABLE kb_aa_children (               -- sorts before its parent: FK order matters
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_id  uuid NOT NULL REFERENCES kb_entries (id),
    label     text NOT NULL,
    label_len integer GENERATED ALWAYS AS (length(label)) STORED,
    vecs      vector[]                       -- binary COPY would embed vector's OID
);
CREATE TABLE kb_zz_nopk (note text COLLATE "C", amount numeric, at timestamptz);
CREATE FUNCTION kb_test_bang() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.label := NEW.label || '!'; RETURN NEW; END $$;
CREATE TRIGGER kb_test_bang BEFORE INSERT ON kb_aa_children
    FOR EACH ROW EXECUTE FUNCTION kb_test_bang();
"""


def test_tables_and_columns_of_later_migrations_are_copied(
    monkeypatch: pytest.MonkeyPatch,
    make_settings: Callable[..., Settings],
    database_url: str,
    pg_server: EmbeddedPostgres,
    scratch_names: Callable[[], str],
) -> None:
    import sealedkb.snapshots.restore as snapshots_module
    import sealedkb.store.db as db_module

    real = db_module.migrations()
    future = [*real, (901, "901_future.sql", FUTURE_MIGRATION)]
    monkeypatch.setattr(db_module, "migrations", lambda: future)
    monkeypatch.setattr(snapshots_module, "migrations", lambda: future)
    settings = make_settings()
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
    try:
        ids = add_varied(kb)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE kb_entries SET kw_tokens = 'a1b2:1,5 c3d4:2A'::tsvector,"
                " embedding_dcpe = '[0.5,-1.25,3e-7]', embedding_sealed = '\\x00ff'"
            )
            for i, eid in enumerate(ids[:6]):
                conn.execute(
                    "INSERT INTO kb_aa_children (entry_id, label, vecs) VALUES"
                    " (%s, %s, ARRAY['[1,2,3]'::vector, '[4,5,6]'::vector])",
                    (eid, f"child {i} ünïcode"),
                )
            conn.execute(
                "INSERT INTO kb_zz_nopk VALUES ('b', 1.50, now()), ('a', NULL, NULL),"
                " ('B', 2, '2020-01-01 00:00+05')"
            )
        info = snapshots_for(settings, kb).create()
    finally:
        kb.close()
    snaps = snapshots_for(settings)  # no live knowledge base needed from here on
    tables = {t["name"]: t for t in info.header["tables"]}
    assert {"kb_aa_children", "kb_zz_nopk"} <= set(tables)
    names = [t["name"] for t in info.header["tables"]]
    assert names.index("kb_entries") < names.index("kb_aa_children")
    assert tables["kb_aa_children"]["format"] == "text"
    assert tables["kb_entries"]["format"] == "binary"
    assert "label_len" not in {c["name"] for c in tables["kb_aa_children"]["columns"]}
    assert {"kw_tokens", "embedding_dcpe", "embedding_sealed"} <= {
        c["name"] for c in tables["kb_entries"]["columns"]
    }
    assert 901 in info.header["schema"]["migrations"]
    assert snaps.verify(info.id)["tables"]["kb_aa_children"]["rows"] == 6

    target = scratch_names()
    snaps.restore(info.id, target)  # counts and digests are re-checked inside
    url = pg_server.uri(target)
    source = sql(
        database_url, "SELECT id, label, label_len, vecs::text FROM kb_aa_children ORDER BY id"
    )
    assert sql(url, "SELECT id, label, label_len, vecs::text FROM kb_aa_children ORDER BY id") == (
        source
    )
    assert source[0][1].endswith("ünïcode!")  # the trigger ran once, at the first insert
    assert sql(url, "SELECT kw_tokens::text, embedding_dcpe::text FROM kb_entries LIMIT 1") == sql(
        database_url, "SELECT kw_tokens::text, embedding_dcpe::text FROM kb_entries LIMIT 1"
    )
    assert sorted(sql(url, "SELECT note FROM kb_zz_nopk")) == [("B",), ("a",), ("b",)]
    # identity columns continue after the restored rows
    sql(url, "INSERT INTO kb_aa_children (entry_id, label) VALUES (%s, 'new')", (ids[2],))
    assert sql(url, "SELECT max(id) FROM kb_aa_children") == [(7,)]


def test_largest_entries_round_trip(
    kb: KnowledgeBase,
    settings: Settings,
    scratch_names: Callable[[], str],
    pg_server: EmbeddedPostgres,
) -> None:
    """A 1 MB entry is one COPY row larger than a payload block: it is cut into blocks
    on the way in and joined again on the way out."""
    big = kb.add("x" * (1024 * 1024 - 10), metadata={"k": "v" * 60000}, tags=["big"])
    small = kb.add("small one")
    snaps = snapshots_for(settings, kb)
    info = snaps.create()
    assert snaps.verify(info.id)["tables"]["kb_entries"]["rows"] == 2
    target = scratch_names()
    snaps.restore(info.id, target)
    rkb = open_restored(settings, pg_server.uri(target))
    try:
        assert rkb.get(big.id).to_dict() == kb.get(big.id).to_dict()
        assert rkb.get(small.id).content == "small one"
    finally:
        rkb.close()
