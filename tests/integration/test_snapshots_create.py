"""Taking snapshots on a real PostgreSQL: the CLI and its JSON, the folder setting, a
plaintext knowledge base refused, the canary never in a snapshot, a failed create
leaving nothing, and consistency under concurrent writes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.cli_helpers import Cli
from tests.cli_helpers import initialised_cli as initialised_cli  # the module's cli ran init
from tests.integration.test_tamper_cli import expect, sql
from tests.snapshot_helpers import (
    SECRET,
    add_varied,
    bulk_add,
)

from sealedkb.config import Settings, load_settings
from sealedkb.errors import (
    ValidationError,
)
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.snapshotting import snapshots_for
from sealedkb.model import EncryptionMode
from sealedkb.snapshots.fileformat import SnapshotReader, read_envelope
from sealedkb.store import snapshot_io as sio
from sealedkb.store.embedded import EmbeddedPostgres

pytest_plugins = ["tests.snapshot_fixtures"]


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
        snapshots_for(settings, plain_kb).create()


def needles(marker: str) -> list[bytes]:
    return sorted({f.encode() for f in (marker, marker.lower(), marker.upper())})


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
    snaps = snapshots_for(settings, kb)
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
    with SnapshotReader(env, snaps.unwrap(env)) as reader:
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


def test_a_failed_create_leaves_no_file_and_stale_temp_files_are_ignored(
    kb: KnowledgeBase, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_varied(kb)
    snaps = snapshots_for(settings, kb)
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
    writing = threading.Event()  # set once some entries are in: the snapshot starts mid-stream
    writer_kb = KnowledgeBase.open(make_settings())
    written: list[str] = []

    def write() -> None:
        while not stop.is_set():
            written.append(str(writer_kb.add(f"{SECRET} concurrent {len(written)}").id))
            if len(written) >= 5:
                writing.set()

    t = threading.Thread(target=write)
    t.start()
    try:
        assert writing.wait(timeout=30)
        info = snapshots_for(settings, kb).create()
    finally:
        stop.set()
        t.join()
        writer_kb.close()
    assert written
    target = scratch_names()
    result = snapshots_for(settings, kb).restore(info.id, target)
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
