"""The snapshot folder: naming, listing, atomic writes, the scheduler's lock file,
and which snapshots the retention expires. Files only: no keys, no database, no
audit trail (the operations that use it record themselves).

Files are written under a temporary name (``.<id>.snap.tmp.<pid>``), fsynced and
renamed into place only when complete, so a crash never leaves a half snapshot
that ``list`` shows; a failed write removes its temporary file, and the temporary
files of a writer that died are removed by the next one.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Protocol, cast

from sealedkb._fs import fsync_dir, pid_alive, try_file_lock
from sealedkb.errors import NotFoundError, SealedKBError, ValidationError
from sealedkb.objectstore import ObjectPath
from sealedkb.snapshots.fileformat import Envelope, Header, SnapshotIntegrityError, read_envelope
from sealedkb.snapshots.results import SnapshotDescription, SnapshotSummary

SUFFIX = ".snap"
ID_RE = re.compile(r"^snap-\d{8}-\d{6}-[0-9a-f]{8}$")
KINDS = ("manual", "automated")

# A snapshot file in a folder, or an object in a bucket (snapshots/s3.py).
SnapshotLocation = Path | ObjectPath


class SnapshotStorageError(SealedKBError):
    """The snapshot folder cannot be written or read (disk full, permissions)."""

    code = "SNAPSHOT_STORAGE_ERROR"
    exit_code = 1


def utc_iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def new_snapshot_id(now: datetime) -> str:
    return f"snap-{now.astimezone(UTC):%Y%m%d-%H%M%S}-{os.urandom(4).hex()}"


def snapshot_id_of(path: SnapshotLocation) -> str:
    return path.name[: -len(SUFFIX)]


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot as ``list`` shows it (header and trailer read, not yet verified)."""

    id: str
    path: SnapshotLocation
    size_bytes: int
    envelope: Envelope | None
    error: str | None = None

    @property
    def header(self) -> Header:
        return self.envelope.header if self.envelope else Header()

    @property
    def kind(self) -> str | None:
        kind = self.header.get("kind")
        return str(kind) if kind else None

    @property
    def kms_key_id(self) -> str | None:
        value = self.header.get("kms_key_id")
        return str(value) if value else None

    @property
    def created_at(self) -> datetime | None:
        try:
            return parse_time(str(self.header["created_at"]))
        except (KeyError, ValueError):
            return None

    def row_counts(self) -> dict[str, int | None]:
        t = self.envelope.trailer if self.envelope else {}
        return {name: v.get("rows") for name, v in t.get("tables", {}).items()}

    def to_dict(self) -> SnapshotSummary:
        h = self.header
        return {
            "id": self.id,
            "name": h.get("name"),
            "encrypted": True,
            "kms_key_id": h.get("kms_key_id"),
            "kms_key_version": h.get("kms_key_version"),
            "created_at": h.get("created_at"),
            "kind": h.get("kind"),
            "size_bytes": self.size_bytes,
            "row_counts": self.row_counts(),
            "path": str(self.path),
            "schema_version": h.get("schema", {}).get("version"),
            "source_fingerprint": h.get("source", {}).get("fingerprint"),
            "copied_from": h.get("copied_from"),
            "damaged": self.error is not None,
            "error": self.error,
        }

    def describe(self) -> SnapshotDescription:
        """Everything the header and trailer say (not authenticated: that is verify)."""
        out = cast(SnapshotDescription, dict(self.to_dict()))
        if self.envelope is not None:
            h, t = self.envelope.header, self.envelope.trailer
            out["manifest"] = {**h, "trailer": t}
            out["chunks"] = self.envelope.chunk_count()
        return out


class PendingSnapshot(Protocol):
    """A snapshot being written: nothing is listed until ``commit``; ``discard``
    leaves nothing behind."""

    @property
    def fh(self) -> IO[bytes]: ...

    def sync(self) -> None: ...

    def commit(self) -> SnapshotLocation: ...

    def discard(self) -> None: ...


class PendingFile:
    """A snapshot being written: a 0600 temporary file renamed into place on commit."""

    def __init__(self, folder: Path, snapshot_id: str) -> None:
        self.final = folder / f"{snapshot_id}{SUFFIX}"
        self.tmp = folder / f".{snapshot_id}{SUFFIX}.tmp.{os.getpid()}"
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.fh: IO[bytes] = os.fdopen(fd, "wb", buffering=1 << 20)

    def sync(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def commit(self) -> Path:
        self.sync()
        self.fh.close()
        os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)
        return self.final

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()


class SnapshotFolder:
    """The folder of snapshot files (``SEALEDKB_SNAPSHOTS_DIR``)."""

    remote = False  # True for a bucket (snapshots/s3.py)

    def __init__(self, path: Path) -> None:
        self.path = path

    def ensure(self) -> Path:
        """The folder, created (0700) if missing; SnapshotStorageError if it cannot be."""
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise SnapshotStorageError(
                f"cannot create the snapshot folder {self.path}: {exc.strerror}"
            ) from None
        return self.path

    def clean_temp(self) -> None:
        """Remove temporary files of snapshots whose writer died (crash, kill)."""
        for path in self.path.glob(f".snap-*{SUFFIX}.tmp.*"):
            pid = path.name.rsplit(".", 1)[-1]
            if pid.isdigit() and not pid_alive(int(pid)):
                with contextlib.suppress(OSError):
                    path.unlink()

    def new_file(self, snapshot_id: str) -> PendingSnapshot:
        """A temporary file for a new snapshot, in a folder that exists and is clean."""
        folder = self.ensure()
        try:
            return PendingFile(folder, snapshot_id)
        except OSError as exc:
            raise SnapshotStorageError(f"cannot write in {folder}: {exc.strerror}") from None

    def list(self) -> list[SnapshotInfo]:
        """Every complete snapshot file in the folder, oldest first (no keys needed)."""
        if not self.path.is_dir():
            return []
        out = []
        for path in self.path.glob(f"snap-*{SUFFIX}"):
            if ID_RE.match(snapshot_id_of(path)):
                out.append(self.info(path))
        return sorted(out, key=lambda i: (i.header.get("created_at") or "", i.id))

    def info(self, path: SnapshotLocation) -> SnapshotInfo:
        assert isinstance(path, Path)  # objects: S3SnapshotFolder.info
        sid = snapshot_id_of(path)
        try:
            size = path.stat().st_size
            env = read_envelope(path)
        except SnapshotIntegrityError as exc:
            return SnapshotInfo(sid, path, path.stat().st_size, None, exc.message)
        except OSError as exc:
            raise SnapshotStorageError(f"cannot read {path}: {exc.strerror}") from None
        if env.header.get("snapshot_id") != sid:
            return SnapshotInfo(sid, path, size, None, "the header names another snapshot id")
        return SnapshotInfo(sid, path, size, env)

    def resolve(self, ref: str) -> SnapshotLocation:
        """A snapshot file from its id or its (unique) name."""
        ref = ref.strip()
        if ID_RE.match(ref):
            path = self.path / f"{ref}{SUFFIX}"
            if path.is_file():
                return path
            raise NotFoundError(f"no snapshot {ref} in {self.path}", field="snapshot")
        matches = [i for i in self.list() if i.header.get("name") == ref]
        if len(matches) == 1:
            return matches[0].path
        if matches:
            raise ValidationError(
                "several snapshots have this name; give the snapshot id", field="snapshot"
            )
        raise NotFoundError(f"no snapshot with this id or name in {self.path}", field="snapshot")

    def remove(self, path: SnapshotLocation, snapshot_id: str) -> None:
        assert isinstance(path, Path)  # objects: S3SnapshotFolder.remove
        try:
            path.unlink()
            fsync_dir(path.parent)
        except FileNotFoundError:
            raise NotFoundError(f"no snapshot {snapshot_id}", field="snapshot") from None
        except OSError as exc:
            raise SnapshotStorageError(f"cannot delete {path}: {exc.strerror}") from None

    def expired(self, cutoff: datetime) -> builtins.list[SnapshotInfo]:
        """Automated snapshots taken before ``cutoff`` (manual ones are kept until deleted)."""
        return [
            info
            for info in self.list()
            if info.kind == "automated" and info.created_at is not None and info.created_at < cutoff
        ]

    def automated_since(self, start: datetime) -> bool:
        """Whether an automated snapshot was taken at or after ``start``."""
        for info in self.list():
            created = info.created_at
            if info.kind == "automated" and created is not None and created >= start:
                return True
        return False

    @contextlib.contextmanager
    def locked(self) -> Iterator[bool]:
        """The folder's lock file, taken without waiting: True if this process has it
        (several serving processes share one folder)."""
        folder = self.ensure()
        with try_file_lock(folder / ".lock") as mine:
            yield mine
