"""Encrypted snapshots on a real PostgreSQL: CLI and JSON, canary, tampering
(flip anywhere, truncate, reorder, splice) with exit 6 and no database left behind,
a 10k-entry restore round trip, copy under a second key, key disabled, retention
with an injected clock, automated snapshots under ``serve``, restore targets,
disaster recovery without the live database, crashes, audit events."""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.integration.test_tamper_cli import Cli, expect, make_cli, sql
from tests.mcp_helpers import http_server
from tests.snapshot_helpers import bulk_add

from sealedkb.config import Settings, load_settings
from sealedkb.errors import (
    ConflictError,
    KeyUnavailableError,
    NotFoundError,
    SealedKBError,
    ValidationError,
)
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode, EntryPatch
from sealedkb.snapshots.fileformat import SnapshotIntegrityError, SnapshotReader, read_envelope
from sealedkb.snapshots.service import DailyWindow, Snapshots, SnapshotScheduler, open_restored
from sealedkb.store import snapshot_io as sio
from sealedkb.store.embedded import EmbeddedPostgres

SECRET = "s3cr3t-body-text"
SMALL_CHUNKS = 4096  # many chunks from a small database


# --- helpers ------------------------------------------------------------------------------


@pytest.fixture
def cli(home: Path, database_url: str) -> Cli:
    c = make_cli(home, database_url)
    expect(c("init"), 0)
    return c


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


def db_exists(pg: EmbeddedPostgres, name: str) -> bool:
    with psycopg.connect(pg.uri(), autocommit=True) as conn:
        return sio.database_exists(conn, name)


@pytest.fixture
def scratch_names(pg_server: EmbeddedPostgres) -> Iterator[Callable[[], str]]:
    """Fresh database names for restores; whatever exists at the end is dropped."""
    names: list[str] = []

    def new() -> str:
        names.append(f"r_{uuid.uuid4().hex[:12]}")
        return names[-1]

    yield new
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        for n in names:
            conn.execute(f"DROP DATABASE IF EXISTS {n} WITH (FORCE)")


@pytest.fixture
def empty_database(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """An existing, empty, unmigrated database (as an operator would create one)."""
    name = f"e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield pg_server.uri(name)
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def audit_rows(url: str, action: str) -> list[dict[str, Any]]:
    rows = sql(
        url,
        "SELECT principal, outcome, error_code, key_uri, details FROM kb_audit"
        " WHERE action = %s ORDER BY seq",
        (action,),
    )
    keys = ("principal", "outcome", "error_code", "key_uri", "details")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def add_varied(kb: KnowledgeBase, n: int = 12) -> list[str]:
    ids = []
    for i in range(n):
        e = kb.add(
            f"{SECRET} entry {i}\n\nbody {i}",
            title=f"title {i}",
            tags=["alpha", f"t{i}"],
            namespace="default" if i % 3 else "team-b",
            source=f"https://wiki.test/{i}",
            metadata={"i": i, "nested": {"k": [i, "v"]}},
            entry_type="decision" if i % 2 else "note",
        )
        ids.append(str(e.id))
    kb.update(ids[0], EntryPatch(content=f"{SECRET} rewritten", archived=True))
    kb.delete(ids[1])
    return ids


# --- CLI and JSON -------------------------------------------------------------------------


def test_create_list_describe_json(cli: Cli, home: Path, database_url: str) -> None:
    for i in range(3):
        expect(cli("add", f"{SECRET} {i}", "--tag", "x"), 0)
    created = json.loads(
        expect(cli("snapshot", "create", "--name", "before upgrade", "--json"), 0).stdout
    )
    for field in (
        "id",
        "encrypted",
        "kms_key_id",
        "created_at",
        "kind",
        "size_bytes",
        "row_counts",
        "path",
    ):
        assert field in created, field
    assert created["encrypted"] is True and created["kind"] == "manual"
    assert created["kms_key_id"].startswith("local:key/")
    assert created["row_counts"]["kb_entries"] == 3
    assert {"kb_audit", "kb_data_keys", "kb_meta", "kb_schema_migrations", "kb_tokens"} <= set(
        created["row_counts"]
    )
    path = Path(created["path"])
    assert path.parent == home / "snapshots" and path.stat().st_size == created["size_bytes"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"

    listed = json.loads(expect(cli("snapshot", "list", "--json"), 0).stdout)
    assert [s["id"] for s in listed] == [created["id"]]
    assert {k: listed[0][k] for k in created} == created
    human = expect(cli("snapshot", "list"), 0).stdout
    assert created["id"] in human and "manual" in human

    described = json.loads(expect(cli("snapshot", "describe", created["id"], "--json"), 0).stdout)
    manifest = described["manifest"]
    assert manifest["format"] == "sealedkb-snapshot" and manifest["version"] == 1
    assert manifest["snapshot_id"] == created["id"]
    assert {1, 2, 4} <= set(manifest["schema"]["migrations"])
    assert manifest["source"]["fingerprint"] and manifest["source"]["database"]
    assert manifest["kms_key_version"] == 1 and manifest["wrapped_key"]
    trailer = manifest["trailer"]["tables"]
    assert all(len(t["sha256"]) == 64 for t in trailer.values())
    # by name too
    assert (
        json.loads(expect(cli("snapshot", "describe", "before upgrade", "--json"), 0).stdout)["id"]
        == created["id"]
    )
    assert created["id"] in expect(cli("snapshot", "describe", created["id"]), 0).stdout
    expect(cli("snapshot", "describe", "snap-20000101-000000-00000000"), 3)
    expect(cli("snapshot", "describe", "../../etc/passwd"), 3)

    verified = json.loads(expect(cli("snapshot", "verify", created["id"], "--json"), 0).stdout)
    assert verified["ok"] is True and verified["tables"]["kb_entries"]["rows"] == 3
    assert "intact" in expect(cli("snapshot", "verify", created["id"]), 0).stdout
    deleted = json.loads(expect(cli("snapshot", "delete", created["id"], "--json"), 0).stdout)
    assert deleted["deleted"] is True and not path.exists()
    assert json.loads(expect(cli("snapshot", "list", "--json"), 0).stdout) == []


def test_snapshot_folder_setting(cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "elsewhere" / "snaps"
    env = {"SEALEDKB_SNAPSHOT_DIR": str(folder)}
    created = json.loads(expect(cli("snapshot", "create", "--json", env=env), 0).stdout)
    assert Path(created["path"]).parent == folder
    assert [
        s["id"] for s in json.loads(expect(cli("snapshot", "list", "--json", env=env), 0).stdout)
    ] == [created["id"]]
    assert json.loads(expect(cli("snapshot", "list", "--json"), 0).stdout) == []


def test_plaintext_knowledge_base_refuses(plain_kb: KnowledgeBase, settings: Settings) -> None:
    with pytest.raises(ValidationError, match="encryption is off"):
        Snapshots(settings, plain_kb).create()


# --- canary ---------------------------------------------------------------------------------


def needles(marker: str) -> list[bytes]:
    return sorted({f.encode() for f in (marker, marker.lower(), marker.upper())})


@pytest.fixture
def second_database(pg_server: EmbeddedPostgres, template_db: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db} STRATEGY file_copy")
    yield pg_server.uri(name)
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def fill_with_marker(kb: KnowledgeBase, marker: str) -> None:
    bulk_add(kb, 300, size=800, marker=marker)
    for i in range(5):
        kb.add(
            f"body with {marker} {i}",
            title=f"{marker} title",
            tags=[f"{marker}-tag"],
            source=f"https://x.test/{marker}",
            metadata={"m": marker},
        )


def all_copy_output(url: str) -> bytes:
    out = bytearray()
    with psycopg.connect(url, autocommit=True) as conn:
        sio.pin_session(conn)
        for table in sio.list_tables(conn):
            sio.copy_out(conn, table, out.extend)
    return bytes(out)


def test_canary_never_in_a_snapshot_but_in_plaintext_copy_output(
    kb: KnowledgeBase, settings: Settings, tmp_path: Path, second_database: str
) -> None:
    marker = "CanarySnap" + uuid.uuid4().hex[:10].upper()
    fill_with_marker(kb, marker)
    snaps = Snapshots(settings, kb)
    info = snaps.create(name="canary")
    snaps.copy(info.id, kb.keys.create("spare")["key_id"] if kb.keys else "")
    files = list(settings.snapshots_dir.iterdir())
    assert len([f for f in files if f.suffix == ".snap"]) == 2
    for f in files:
        data = f.read_bytes()
        for needle in needles(marker):
            assert needle not in data, f"marker found in {f.name}"
    # Decrypted and decompressed, the payload still holds no marker: the database only
    # ever saw ciphertext, and the snapshot copies what the database holds.
    env = read_envelope(info.path)
    with SnapshotReader(env, snaps._unwrap(env)) as reader:
        payload = b"".join(b for ts in reader.tables() for b in ts.blocks())
    assert len(payload) > 300 * 800
    assert not any(n in payload for n in needles(marker))

    # The control: the same COPY of a plaintext-mode database shows the marker,
    # so the search above can fail.
    plain_settings = load_settings(tmp_path / "plain-home", database_url=second_database)
    plain, _ = KnowledgeBase.init(plain_settings, EncryptionMode.OFF)
    try:
        fill_with_marker(plain, marker)
    finally:
        plain.close()
    dump = all_copy_output(second_database)
    assert marker.encode() in dump


# --- tampering --------------------------------------------------------------------------------


@pytest.fixture
def tamper_setup(
    cli: Cli, home: Path, database_url: str, make_settings: Callable[..., Settings]
) -> tuple[Cli, Snapshots, Path]:
    settings = make_settings()
    kb = KnowledgeBase.open(settings)
    try:
        add_varied(kb)
        bulk_add(kb, 120, size=900)
        snaps = Snapshots(settings, kb, chunk_size=SMALL_CHUNKS)
        info = snaps.create(name="tamper")
    finally:
        kb.close()
    env = read_envelope(info.path)
    assert env.chunk_count() >= 20, env.chunk_count()
    return cli, Snapshots(settings), info.path


def regions(path: Path) -> dict[str, int]:
    env = read_envelope(path)
    hlen = len(env.header_bytes)
    full = env.chunk_size + 16
    n = env.chunk_count()
    stream_end = env.stream_offset + env.stream_len
    tlen = len(env.trailer_bytes)
    return {
        "magic": 2,
        "version": 8,
        "header-length": 11,
        "header": 13 + hlen // 2,
        "header-checksum": 13 + hlen + 5,
        "header-mac": 13 + hlen + 32 + 5,
        "first-chunk": env.stream_offset + 3,
        "middle-chunk": env.stream_offset + (n // 2) * full + 100,
        "last-chunk": stream_end - 2,
        "trailer": stream_end + tlen // 2,
        "trailer-checksum": stream_end + tlen + 3,
        "trailer-mac": stream_end + tlen + 32 + 3,
        "trailer-length": env.size - 12 + 1,
        "end-marker": env.size - 3,
    }


EXPECTED_PART = {
    "magic": "not a sealedkb snapshot",
    "version": "format version",
    "header-length": "header",
    "header": "header is damaged",
    "header-checksum": "header is damaged",
    "header-mac": "header failed its authentication",
    "first-chunk": "chunk 0 of",
    "middle-chunk": "chunk .* of",
    "last-chunk": "chunk .* of",
    "trailer": "trailer is damaged",
    "trailer-checksum": "trailer is damaged",
    "trailer-mac": "trailer failed its authentication",
    "trailer-length": "trailer|end",
    "end-marker": "end marker",
}


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x20
    path.write_bytes(bytes(data))


def check_rejected(
    cli: Cli, snaps: Snapshots, path: Path, pattern: str, pg: EmbeddedPostgres, target: str
) -> None:
    sid = path.name.removesuffix(".snap")
    with pytest.raises(SnapshotIntegrityError, match=pattern) as info:
        snaps.verify(sid)
    assert info.value.exit_code == 6
    result = expect(cli("snapshot", "verify", sid, "--json"), 6)
    assert "INTEGRITY_ERROR" in result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["part"] and report["error"]["code"] == "INTEGRITY_ERROR"
    result = expect(cli("snapshot", "restore", sid, "--target", target), 6)
    assert not db_exists(pg, target), "a failed restore left its database behind"


def test_flipped_byte_in_each_part(
    tamper_setup: tuple[Cli, Snapshots, Path],
    pg_server: EmbeddedPostgres,
    scratch_names: Callable[[], str],
) -> None:
    """One flipped byte in each part of the file: verify and restore exit 6 with a
    message naming the part, and the restore leaves no database behind."""
    cli, snaps, path = tamper_setup
    original = path.read_bytes()
    for region, offset in regions(path).items():
        path.write_bytes(original)
        flip(path, offset)
        try:
            check_rejected(cli, snaps, path, EXPECTED_PART[region], pg_server, scratch_names())
        except AssertionError as exc:
            raise AssertionError(f"{region}: {exc}") from exc
    path.write_bytes(original)
    assert snaps.verify(path.name.removesuffix(".snap"))["ok"]


def test_flipped_byte_anywhere(tamper_setup: tuple[Cli, Snapshots, Path]) -> None:
    """40 random positions (seeded): every one is caught, by verify and by restore."""
    _cli, snaps, path = tamper_setup
    original = path.read_bytes()
    sid = path.name.removesuffix(".snap")
    rng = random.Random(6)
    for offset in rng.sample(range(len(original)), 40):
        data = bytearray(original)
        data[offset] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        with pytest.raises(SealedKBError) as info:
            snaps.verify(sid)
        assert info.value.exit_code == 6, (offset, info.value.message)
    path.write_bytes(original)
    assert snaps.verify(sid)["ok"]


def test_truncation(
    tamper_setup: tuple[Cli, Snapshots, Path],
    pg_server: EmbeddedPostgres,
    scratch_names: Callable[[], str],
) -> None:
    cli, snaps, path = tamper_setup
    original = path.read_bytes()
    env = read_envelope(path)
    full = env.chunk_size + 16
    cuts = {
        "last byte": len(original) - 1,
        "end marker": len(original) - 8,
        "inside the trailer": env.stream_offset + env.stream_len + 10,
        "after a whole chunk": env.stream_offset + 3 * full,
        "inside a chunk": env.stream_offset + 3 * full + 77,
        "inside the header": 40,
    }
    for what, size in cuts.items():
        path.write_bytes(original[:size])
        check_rejected(cli, snaps, path, "truncated|end|header", pg_server, scratch_names())
        del what


def test_reordered_dropped_and_spliced_chunks(
    tamper_setup: tuple[Cli, Snapshots, Path],
    pg_server: EmbeddedPostgres,
    scratch_names: Callable[[], str],
    make_settings: Callable[..., Settings],
) -> None:
    cli, snaps, path = tamper_setup
    original = path.read_bytes()
    env = read_envelope(path)
    full = env.chunk_size + 16
    o = env.stream_offset

    def chunk(i: int, data: bytes = original) -> bytes:
        return data[o + i * full : o + (i + 1) * full]

    # swap chunks 4 and 5
    swapped = original[: o + 4 * full] + chunk(5) + chunk(4) + original[o + 6 * full :]
    path.write_bytes(swapped)
    check_rejected(cli, snaps, path, "chunk 4 of", pg_server, scratch_names())

    # drop the last chunk, keep the trailer: the trailer no longer matches the stream
    n = env.chunk_count()
    last_start = o + (n - 1) * full
    dropped = original[:last_start] + original[o + env.stream_len :]
    path.write_bytes(dropped)
    check_rejected(
        cli, snaps, path, "not the length the trailer records", pg_server, scratch_names()
    )

    # splice chunk 2 of another snapshot of the same database (same chunk size)
    kb = KnowledgeBase.open(make_settings())
    try:
        other = Snapshots(make_settings(), kb, chunk_size=SMALL_CHUNKS).create()
    finally:
        kb.close()
    other_bytes = other.path.read_bytes()
    o2 = read_envelope(other.path).stream_offset
    spliced = (
        original[: o + 2 * full]
        + other_bytes[o2 + 2 * full : o2 + 3 * full]
        + original[o + 3 * full :]
    )
    path.write_bytes(spliced)
    check_rejected(cli, snaps, path, "chunk 2 of", pg_server, scratch_names())


def _rewrite_json(path: Path, part: str, edit: Callable[[bytes], bytes]) -> None:
    """An attacker's edit: change the header or trailer and fix its unkeyed checksum."""
    env = read_envelope(path)
    data = path.read_bytes()
    if part == "header":
        new = edit(env.header_bytes)
        assert len(new) == len(env.header_bytes)
        start = 13
    else:
        new = edit(env.trailer_bytes)
        assert len(new) == len(env.trailer_bytes)
        start = env.stream_offset + env.stream_len
    end = start + len(new)
    path.write_bytes(data[:start] + new + hashlib.sha256(new).digest() + data[end + 32 :])


def test_edits_with_fixed_checksums_fail_the_macs(
    tamper_setup: tuple[Cli, Snapshots, Path],
    pg_server: EmbeddedPostgres,
    scratch_names: Callable[[], str],
    make_settings: Callable[..., Settings],
) -> None:
    cli, snaps, path = tamper_setup
    original = path.read_bytes()
    env = read_envelope(path)
    # header: another creation time (same length)
    ts = env.header["created_at"].encode()
    newer = ts[:-2] + (b"1Z" if ts[-2:] != b"1Z" else b"2Z")
    _rewrite_json(path, "header", lambda b: b.replace(ts, newer))
    check_rejected(cli, snaps, path, "header failed its authentication", pg_server, scratch_names())
    # trailer: another row count
    path.write_bytes(original)
    rows = env.trailer["tables"]["kb_entries"]["rows"]
    _rewrite_json(
        path,
        "trailer",
        lambda b: b.replace(
            f'"rows":{rows}'.encode(), f'"rows":{rows + 1 if rows % 10 != 9 else rows - 1}'.encode()
        ),
    )
    check_rejected(
        cli, snaps, path, "trailer failed its authentication", pg_server, scratch_names()
    )
    # header: point it at another KMS key of the keystore
    path.write_bytes(original)
    kb = KnowledgeBase.open(make_settings())
    try:
        assert kb.keys is not None
        other = kb.keys.create("other")["key_id"]
    finally:
        kb.close()
    _rewrite_json(
        path, "header", lambda b: b.replace(env.header["kms_key_id"].encode(), other.encode())
    )
    check_rejected(cli, snaps, path, "wrapped key failed to open", pg_server, scratch_names())


# --- restore round trip ---------------------------------------------------------------------


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


# --- restore targets --------------------------------------------------------------------------


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
    snaps = Snapshots(settings, kb)
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
    snaps = Snapshots(settings, kb, chunk_size=SMALL_CHUNKS)
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
    snaps = Snapshots(settings, kb)
    info = snaps.create()
    import sealedkb.snapshots.service as mod

    real = mod.migrations()
    monkeypatch.setattr(mod, "migrations", lambda: real[:-1])
    target = scratch_names()
    with pytest.raises(ValidationError, match="newer sealedkb") as exc:
        snaps.restore(info.id, target)
    assert exc.value.exit_code == 2
    assert not db_exists(pg_server, target)


# --- keys: copy, disabled ----------------------------------------------------------------------


def test_copy_under_a_second_key_restores_with_the_first_disabled(
    cli: Cli,
    database_url: str,
    pg_server: EmbeddedPostgres,
    scratch_names: Callable[[], str],
    make_settings: Callable[..., Settings],
) -> None:
    for i in range(5):
        expect(cli("add", f"{SECRET} {i}", "-n", f"ns{i % 2}"), 0)
    first = json.loads(expect(cli("key", "describe", "--json"), 0).stdout)["key_id"]
    second = expect(cli("key", "create", "--description", "dr"), 0).stdout.strip()
    original = json.loads(expect(cli("snapshot", "create", "--json"), 0).stdout)
    copied = json.loads(
        expect(cli("snapshot", "copy", original["id"], "--kms-key-id", second, "--json"), 0).stdout
    )
    assert copied["id"] != original["id"] and copied["kms_key_id"] == second
    assert copied["copied_from"] == original["id"] and copied["kind"] == "manual"
    assert copied["created_at"] == original["created_at"]  # same point in time
    assert copied["row_counts"] == original["row_counts"]
    expect(cli("snapshot", "verify", copied["id"]), 0)

    expect(cli("key", "disable", first), 0)
    # the original needs the first key: exit 5, nothing created
    target = scratch_names()
    result = expect(cli("snapshot", "restore", original["id"], "--target", target), 5)
    assert "KEY_UNAVAILABLE" in result.output
    assert not db_exists(pg_server, target)
    expect(cli("snapshot", "verify", original["id"]), 5)
    # the copy does not
    target = scratch_names()
    restored = json.loads(
        expect(cli("snapshot", "restore", copied["id"], "--target", target, "--json"), 0).stdout
    )
    assert restored["row_counts"]["kb_entries"] == 5
    rkb = open_restored(make_settings(), pg_server.uri(target))
    try:
        assert rkb.kms_key_uri == second
        contents = sorted(e.content for e in rkb.list(limit=100))
        assert contents == sorted(f"{SECRET} {i}" for i in range(5))
        keys = sql(pg_server.uri(target), "SELECT DISTINCT kms_key_uri FROM kb_data_keys")
        assert keys == [(second,)]
    finally:
        rkb.close()
    expect(cli("key", "enable", first), 0)


def test_snapshot_with_the_key_disabled_exits_5_and_leaves_nothing(
    cli: Cli, home: Path, database_url: str
) -> None:
    expect(cli("add", f"{SECRET} x"), 0)
    expect(cli("key", "disable"), 0)
    result = expect(cli("snapshot", "create"), 5)
    assert "KEY_UNAVAILABLE" in result.output
    folder = home / "snapshots"
    assert not folder.exists() or list(folder.iterdir()) == []
    events = audit_rows(database_url, "CreateSnapshot")
    assert [(e["outcome"], e["error_code"]) for e in events] == [("failure", "KEY_UNAVAILABLE")]
    assert events[0]["details"]["kind"] == "manual"
    assert events[0]["details"]["snapshot_id"].startswith("snap-")
    expect(cli("key", "enable"), 0)
    expect(cli("snapshot", "create"), 0)


def test_verify_and_restore_without_a_keystore(
    kb: KnowledgeBase, settings: Settings, tmp_path: Path, scratch_names: Callable[[], str]
) -> None:
    info = Snapshots(settings, kb).create()
    other = load_settings(tmp_path / "no-keys", snapshot_dir=settings.snapshots_dir)
    with pytest.raises(KeyUnavailableError, match="keystore"):
        Snapshots(other).verify(info.id)
    with pytest.raises(KeyUnavailableError):
        Snapshots(other).restore(info.id, scratch_names())


# --- crashes ------------------------------------------------------------------------------------


def test_a_failed_create_leaves_no_file_and_stale_temp_files_are_ignored(
    kb: KnowledgeBase, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_varied(kb)
    snaps = Snapshots(settings, kb)
    calls = {"n": 0}
    real = sio.copy_out

    def dying(conn: Any, table: Any, sink: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the process were stopped mid-snapshot
        return real(conn, table, sink)

    monkeypatch.setattr(sio, "copy_out", dying)
    with pytest.raises(KeyboardInterrupt):
        snaps.create()
    monkeypatch.setattr(sio, "copy_out", real)
    assert list(settings.snapshots_dir.iterdir()) == []
    # a temporary file of a writer that died (SIGKILL) is never listed, and is cleaned up
    stale = settings.snapshots_dir / ".snap-20200101-000000-deadbeef.snap.tmp.999999999"
    stale.write_bytes(b"\x89SKBSNAP half a snapshot")
    assert snaps.list() == []
    info = snaps.create()
    assert [i.id for i in snaps.list()] == [info.id]
    assert not stale.exists()
    # a damaged file in the folder is listed as damaged, not skipped silently
    broken = settings.snapshots_dir / "snap-20200101-000000-00000001.snap"
    broken.write_bytes(b"garbage")
    listed = {i.id: i.to_dict() for i in snaps.list()}
    assert listed[broken.stem]["damaged"] is True and listed[info.id]["damaged"] is False


# --- retention, window, scheduler -------------------------------------------------------------


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def test_daily_window() -> None:
    w = DailyWindow.parse("03:00-04:00")
    assert w is not None
    day = datetime(2025, 5, 1, tzinfo=UTC)
    assert w.current(day.replace(hour=3, minute=30)) == day.replace(hour=3)
    assert w.current(day.replace(hour=4)) is None
    assert w.current(day.replace(hour=2, minute=59)) is None
    wrap = DailyWindow.parse("23:30-00:30")
    assert wrap is not None
    assert wrap.current(day.replace(hour=0, minute=10)) == day - timedelta(minutes=30)
    assert wrap.current(day.replace(hour=23, minute=45)) == day.replace(hour=23, minute=30)
    assert wrap.current(day.replace(hour=12)) is None
    assert DailyWindow.parse("off") is None
    with pytest.raises(ValidationError):
        DailyWindow.parse("03:00-03:00")


def test_retention_with_an_injected_clock(
    kb: KnowledgeBase, settings: Settings, database_url: str
) -> None:
    t0 = datetime(2025, 3, 20, 12, 0, tzinfo=UTC)
    clock = Clock(t0)
    snaps = Snapshots(settings, kb, now=clock)
    made: dict[str, str] = {}
    for label, days, kind in (
        ("auto-10d", 10, "automated"),
        ("auto-8d", 8, "automated"),
        ("auto-6d", 6, "automated"),
        ("auto-1d", 1, "automated"),
        ("manual-30d", 30, "manual"),
        ("manual-9d", 9, "manual"),
    ):
        clock.now = t0 - timedelta(days=days)
        made[label] = snaps.create(kind=kind).id
    clock.now = t0
    window = DailyWindow.parse("00:00-01:00")  # closed at noon: only retention runs
    assert window is not None
    scheduler = SnapshotScheduler(snaps, window, 7, now=clock)
    assert scheduler.tick() == "outside-window"
    left = {i.id for i in snaps.list()}
    assert left == {made["auto-6d"], made["auto-1d"], made["manual-30d"], made["manual-9d"]}
    assert scheduler.expired == 2
    deleted = audit_rows(database_url, "DeleteSnapshot")
    assert sorted(e["details"]["snapshot_id"] for e in deleted) == sorted(
        [made["auto-10d"], made["auto-8d"]]
    )
    assert all(
        e["details"] == {**e["details"], "kind": "automated", "reason": "retention"}
        for e in deleted
    )
    # a week later the other automated ones go too; manual ones stay until deleted
    clock.now = t0 + timedelta(days=7)
    scheduler.tick()
    assert {i.id for i in snaps.list()} == {made["manual-30d"], made["manual-9d"]}
    with pytest.raises(ValidationError):
        SnapshotScheduler(snaps, window, 36)


def test_scheduler_takes_one_per_window_and_retries_a_failure(
    kb: KnowledgeBase, settings: Settings, database_url: str
) -> None:
    day = datetime(2025, 6, 1, tzinfo=UTC)
    clock = Clock(day.replace(hour=3, minute=5))
    snaps = Snapshots(settings, kb, now=clock)
    window = DailyWindow.parse("03:00-04:00")
    assert window is not None and kb.keys is not None
    scheduler = SnapshotScheduler(snaps, window, 7, now=clock, retry_after=300)
    from sealedkb.monitoring.metrics import REGISTRY

    def metric(outcome: str) -> float:
        value = REGISTRY.get_sample_value(
            "sealedkb_snapshots_automated_total", {"outcome": outcome}
        )
        return value or 0.0

    failures_before, successes_before = metric("failure"), metric("success")
    kb.keys.disable()
    assert scheduler.tick() == "failed"
    assert scheduler.failures == 1 and scheduler.last_error
    assert metric("failure") == failures_before + 1
    assert snaps.list() == []
    clock.now += timedelta(minutes=2)
    assert scheduler.tick() == "waiting"  # retried after retry_after, not at once
    kb.keys.enable()
    clock.now += timedelta(minutes=4)
    assert scheduler.tick() == "created"
    clock.now += timedelta(minutes=10)
    assert scheduler.tick() == "done"  # one per window
    assert [i.kind for i in snaps.list()] == ["automated"]
    clock.now = day.replace(hour=5)
    assert scheduler.tick() == "outside-window"
    clock.now = day.replace(hour=3, minute=1) + timedelta(days=1)
    assert scheduler.tick() == "created"  # the next day's window
    assert metric("success") == successes_before + 2
    events = audit_rows(database_url, "CreateSnapshot")
    assert [(e["outcome"], e["details"]["kind"]) for e in events] == [
        ("failure", "automated"),
        ("success", "automated"),
        ("success", "automated"),
    ]
    assert events[0]["error_code"] == "KEY_UNAVAILABLE"


def _window_around_now() -> str:
    now = datetime.now(UTC)
    start, end = now - timedelta(minutes=5), now + timedelta(minutes=30)
    return f"{start:%H:%M}-{end:%H:%M}"


def test_serve_takes_an_automated_snapshot(
    kb: KnowledgeBase, home: Path, database_url: str, settings: Settings
) -> None:
    add_varied(kb)
    kb.close()
    with http_server(home, database_url, SEALEDKB_SNAPSHOT_WINDOW=_window_around_now()):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if Snapshots(settings).list():
                break
            time.sleep(0.2)
    listed = Snapshots(settings).list()
    assert [i.kind for i in listed] == ["automated"]
    events = audit_rows(database_url, "CreateSnapshot")
    assert [(e["principal"], e["outcome"]) for e in events] == [("sealedkb-service", "success")]
    assert events[0]["details"]["kind"] == "automated"
    assert events[0]["details"]["snapshot_id"] == listed[0].id


# --- drill, disaster recovery, audit --------------------------------------------------------


def test_drill(cli: Cli, database_url: str, pg_server: EmbeddedPostgres, home: Path) -> None:
    for i in range(4):
        expect(cli("add", f"{SECRET} {i}"), 0)
    report = json.loads(expect(cli("snapshot", "drill", "--json"), 0).stdout)
    assert report["ok"] is True
    assert [s["step"] for s in report["steps"]] == ["create", "restore", "verify", "drop"]
    assert all(s["seconds"] >= 0 for s in report["steps"])
    assert report["row_counts"]["kb_entries"] == 4
    assert not db_exists(pg_server, report["scratch_database"])
    assert report["kept"] is False
    assert json.loads(expect(cli("snapshot", "list", "--json"), 0).stdout) == []
    drills = audit_rows(database_url, "DrillSnapshot")
    assert drills[-1]["outcome"] == "success"
    assert drills[-1]["details"]["snapshot_id"] == report["snapshot_id"]
    assert {"create_ms", "restore_ms", "verify_ms", "drop_ms"} <= set(drills[-1]["details"])
    # an existing snapshot, kept
    sid = json.loads(expect(cli("snapshot", "create", "--json"), 0).stdout)["id"]
    again = json.loads(expect(cli("snapshot", "drill", "--snapshot", sid, "--json"), 0).stdout)
    assert [s["step"] for s in again["steps"]] == ["restore", "verify", "drop"]
    assert [s["id"] for s in json.loads(expect(cli("snapshot", "list", "--json"), 0).stdout)] == [
        sid
    ]
    assert "drill passed" in expect(cli("snapshot", "drill"), 0).stdout


def test_disaster_recovery_without_the_live_database(
    cli: Cli,
    home: Path,
    database_url: str,
    pg_server: EmbeddedPostgres,
    scratch_names: Callable[[], str],
) -> None:
    """The database is gone; the keystore and the snapshot folder are not."""
    for i in range(3):
        expect(cli("add", f"{SECRET} {i}"), 0)
    sid = json.loads(expect(cli("snapshot", "create", "--json"), 0).stdout)["id"]
    dbname = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {dbname} WITH (FORCE)")
    assert [s["id"] for s in json.loads(expect(cli("snapshot", "list", "--json"), 0).stdout)] == [
        sid
    ]
    result = expect(cli("snapshot", "verify", sid), 0)
    assert "no knowledge base reachable" in result.output
    target = scratch_names()
    restored = json.loads(
        expect(cli("snapshot", "restore", sid, "--target", target, "--json"), 0).stdout
    )
    assert restored["row_counts"]["kb_entries"] == 3
    # the restore is in the restored database's own trail
    events = audit_rows(pg_server.uri(target), "RestoreSnapshot")
    assert events and events[-1]["details"]["snapshot_id"] == sid
    # and that database is the knowledge base once the URL points at it
    env = {"SEALEDKB_DATABASE_URL": pg_server.uri(target)}
    listed = json.loads(expect(cli("list", "--json", env=env), 0).stdout)
    assert sorted(e["content"] for e in listed) == [f"{SECRET} {i}" for i in range(3)]
    expect(cli("snapshot", "create", env=env), 0)


def test_every_operation_is_audited(
    cli: Cli, database_url: str, scratch_names: Callable[[], str]
) -> None:
    expect(cli("add", f"{SECRET} 1"), 0)
    sid = json.loads(expect(cli("snapshot", "create", "--json"), 0).stdout)["id"]
    expect(cli("snapshot", "verify", sid), 0)
    expect(cli("snapshot", "restore", sid, "--target", scratch_names()), 0)
    other = expect(cli("key", "create"), 0).stdout.strip()
    copy_id = expect(cli("snapshot", "copy", sid, "--kms-key-id", other), 0).stdout.strip()
    expect(cli("snapshot", "delete", copy_id), 0)
    expect(cli("snapshot", "drill"), 0)
    for action in (
        "CreateSnapshot",
        "VerifySnapshot",
        "RestoreSnapshot",
        "CopySnapshot",
        "DeleteSnapshot",
        "DrillSnapshot",
    ):
        events = audit_rows(database_url, action)
        assert events, action
        for e in events:
            assert e["outcome"] == "success", (action, e)
            assert e["details"]["snapshot_id"].startswith("snap-"), (action, e)
            assert e["details"]["kind"] in ("manual", "automated"), (action, e)
            assert e["principal"] == "admin"
    copy_event = audit_rows(database_url, "CopySnapshot")[0]
    assert (
        copy_event["details"]["snapshot_id"] == sid and copy_event["details"]["copy_id"] == copy_id
    )
    assert copy_event["key_uri"] == other
    # failures are recorded too, with the error code
    bad = Path(json.loads(expect(cli("snapshot", "describe", sid, "--json"), 0).stdout)["path"])
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 1
    bad.write_bytes(bytes(data))
    expect(cli("snapshot", "verify", sid), 6)
    failed = audit_rows(database_url, "VerifySnapshot")[-1]
    assert (failed["outcome"], failed["error_code"]) == ("failure", "INTEGRITY_ERROR")
    assert failed["details"]["snapshot_id"] == sid
    # and the trail still verifies
    assert json.loads(expect(cli("audit", "verify", "--json"), 0).stdout)["ok"] is True


# --- tables and columns added by later migrations ---------------------------------------------

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
    import sealedkb.snapshots.service as snapshots_module
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
        info = Snapshots(settings, kb).create()
    finally:
        kb.close()
    snaps = Snapshots(settings)  # no live knowledge base needed from here on
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


def test_snapshot_is_consistent_under_concurrent_writes(
    kb: KnowledgeBase,
    settings: Settings,
    make_settings: Callable[..., Settings],
    scratch_names: Callable[[], str],
    pg_server: EmbeddedPostgres,
) -> None:
    import threading

    bulk_add(kb, 2000, size=500)
    stop = threading.Event()
    writer_kb = KnowledgeBase.open(make_settings())
    written: list[str] = []

    def write() -> None:
        while not stop.is_set():
            written.append(str(writer_kb.add(f"{SECRET} concurrent {len(written)}").id))

    t = threading.Thread(target=write)
    t.start()
    try:
        time.sleep(0.2)
        info = Snapshots(settings, kb).create()
    finally:
        stop.set()
        t.join()
        writer_kb.close()
    assert written
    target = scratch_names()
    result = Snapshots(settings, kb).restore(info.id, target)
    restored = {
        str(r[0])
        for r in sql(
            pg_server.uri(target), "SELECT id FROM kb_entries WHERE doc_sealed IS NOT NULL"
        )
    }
    assert result["row_counts"]["kb_entries"] == len(restored)
    # the concurrent entries that made it in are a prefix of what was written
    present = [eid in restored for eid in written]
    assert present == sorted(present, reverse=True)


def test_disaster_recovery_of_the_embedded_server(tmp_path: Path) -> None:
    """The product path: no database URL, the embedded server's data directory is lost;
    keys/ and snapshots/ survived. Restoring into the embedded database name brings
    the knowledge base back as it was."""
    import shutil

    home = tmp_path / "home"
    cli = make_cli(home, None)
    try:
        expect(cli("init"), 0)
        ids = [expect(cli("add", f"{SECRET} {i}"), 0).stdout.strip() for i in range(3)]
        sid = json.loads(expect(cli("snapshot", "create", "--json"), 0).stdout)["id"]
        EmbeddedPostgres(home / "pgdata").stop()
        shutil.rmtree(home / "pgdata")  # the disk holding the database is gone
        expect(cli("list"), 1)  # NOT_INITIALIZED
        restored = json.loads(
            expect(cli("snapshot", "restore", sid, "--target", "sealedkb", "--json"), 0).stdout
        )
        assert restored["created_database"] is True
        got = json.loads(expect(cli("get", ids[1], "--json"), 0).stdout)
        assert got["content"] == f"{SECRET} 1"
        assert len(json.loads(expect(cli("list", "--json"), 0).stdout)) == 3
        # a second restore over the (now live) database is refused
        expect(cli("snapshot", "restore", sid, "--target", "sealedkb"), 1)
        # The old chain's checkpoints vouch for events the restored chain does not have:
        # audit verify says so until audit/ is archived (runbook §22, cutting over).
        expect(cli("audit", "verify"), 6)
        (home / "audit").rename(home / "audit-before-restore")
        expect(cli("audit", "verify"), 0)
    finally:
        EmbeddedPostgres(home / "pgdata").stop()


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
    snaps = Snapshots(settings, kb)
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
