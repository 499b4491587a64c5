"""The snapshot folder without a database (snapshots/store.py): naming, listing,
lookup by id or name, atomic writes, stale temporary files, which snapshots the
retention expires, and the scheduler's lock."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sealedkb.crypto.stream import derive_keys, random_nonce_prefix, random_salt
from sealedkb.errors import NotFoundError, ValidationError
from sealedkb.snapshots.fileformat import SnapshotWriter, new_header
from sealedkb.snapshots.store import (
    ID_RE,
    PendingFile,
    SnapshotFolder,
    SnapshotStorageError,
    new_snapshot_id,
    utc_iso,
)

T0 = datetime(2025, 3, 20, 12, 0, tzinfo=UTC)


def write_snapshot(
    folder: SnapshotFolder, created: datetime, kind: str = "manual", name: str | None = None
) -> str:
    """A complete (empty) snapshot file, written as create writes one."""
    sid = new_snapshot_id(created)
    header = new_header(
        snapshot_id=sid,
        created_at=utc_iso(created),
        kind=kind,
        name=name,
        kms_key_id="local:key/00000000-0000-4000-8000-000000000000",
        kms_key_version=1,
        wrapped_key=b"\x01" * 66,
        encryption_context={"sealedkb:purpose": "snapshot", "sealedkb:snapshot_id": sid},
        salt=random_salt(),
        nonce_prefix=random_nonce_prefix(),
        source={},
        schema={"version": 1, "migrations": [1]},
        tables=[],
        chunk_size=4096,
    )
    out = folder.new_file(sid)
    writer = SnapshotWriter(out.fh, header, derive_keys(os.urandom(32), random_salt()))
    writer.finish({"completed_at": utc_iso(created)})
    out.commit()
    return sid


@pytest.fixture
def folder(tmp_path: Path) -> SnapshotFolder:
    return SnapshotFolder(tmp_path / "snapshots")


def test_ids_name_their_time() -> None:
    sid = new_snapshot_id(T0)
    assert ID_RE.match(sid) and sid.startswith("snap-20250320-120000-")
    assert new_snapshot_id(T0) != sid


def test_a_missing_folder_lists_nothing_and_is_created_private(folder: SnapshotFolder) -> None:
    assert folder.list() == []
    folder.ensure()
    assert oct(folder.path.stat().st_mode & 0o777) == "0o700"


def test_listing_is_oldest_first_and_lookup_by_id_or_name(folder: SnapshotFolder) -> None:
    newer = write_snapshot(folder, T0, name="after")
    older = write_snapshot(folder, T0 - timedelta(days=1), name="before")
    assert [i.id for i in folder.list()] == [older, newer]
    assert folder.resolve(newer).name == f"{newer}.snap"
    assert folder.resolve("before").name == f"{older}.snap"
    info = folder.info(folder.resolve(older))
    assert info.kind == "manual" and info.created_at == T0 - timedelta(days=1)
    summary = info.to_dict()
    assert summary["encrypted"] is True and summary["damaged"] is False
    assert summary["row_counts"] == {} and summary["name"] == "before"


@pytest.mark.parametrize(
    "ref", ["snap-20000101-000000-00000000", "../../etc/passwd", "no such name"]
)
def test_unknown_references_are_not_found(folder: SnapshotFolder, ref: str) -> None:
    write_snapshot(folder, T0)
    with pytest.raises(NotFoundError):
        folder.resolve(ref)


def test_a_shared_name_needs_the_id(folder: SnapshotFolder) -> None:
    write_snapshot(folder, T0, name="twice")
    write_snapshot(folder, T0, name="twice")
    with pytest.raises(ValidationError, match="several snapshots"):
        folder.resolve("twice")


def test_a_damaged_file_is_listed_as_damaged(folder: SnapshotFolder) -> None:
    good = write_snapshot(folder, T0)
    (folder.path / "snap-20200101-000000-00000001.snap").write_bytes(b"garbage")
    listed = {i.id: i.to_dict() for i in folder.list()}
    assert listed["snap-20200101-000000-00000001"]["damaged"] is True
    assert listed[good]["damaged"] is False


def test_pending_files_appear_only_on_commit(folder: SnapshotFolder) -> None:
    out = folder.new_file(new_snapshot_id(T0))
    out.fh.write(b"partial")
    assert folder.list() == [] and out.tmp.exists()
    assert oct(out.tmp.stat().st_mode & 0o777) == "0o600"
    out.discard()
    assert list(folder.path.iterdir()) == []


def test_temporary_files_of_dead_writers_are_removed(folder: SnapshotFolder) -> None:
    folder.ensure()
    dead = folder.path / ".snap-20200101-000000-deadbeef.snap.tmp.999999999"
    alive = folder.path / f".snap-20200101-000000-0000beef.snap.tmp.{os.getpid()}"
    dead.write_bytes(b"x")
    alive.write_bytes(b"x")
    folder.clean_temp()
    assert not dead.exists() and alive.exists()


def test_only_old_automated_snapshots_expire(folder: SnapshotFolder) -> None:
    made = {
        (days, kind): write_snapshot(folder, T0 - timedelta(days=days), kind)
        for days, kind in ((10, "automated"), (6, "automated"), (30, "manual"))
    }
    cutoff = T0 - timedelta(days=7)
    assert [i.id for i in folder.expired(cutoff)] == [made[(10, "automated")]]
    assert folder.automated_since(T0 - timedelta(days=6))
    assert not folder.automated_since(T0 - timedelta(days=5))


def test_one_holder_of_the_lock(folder: SnapshotFolder) -> None:
    with folder.locked() as first:
        assert first is True
        with folder.locked() as second:  # another open file description: refused
            assert second is False
    with folder.locked() as again:
        assert again is True


def test_an_unwritable_folder_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(SnapshotStorageError):
        SnapshotFolder(blocker / "snapshots").ensure()
    with pytest.raises(OSError):
        PendingFile(blocker, "snap-20250101-000000-00000000")
