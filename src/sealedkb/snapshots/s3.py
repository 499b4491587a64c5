"""Snapshots in an S3 bucket (``SEALEDKB_SNAPSHOT_BUCKET``), instead of a folder.

The same operations as :class:`~sealedkb.snapshots.store.SnapshotFolder`: a snapshot
is written as a stream in a multipart upload that is completed only when the whole
file is written (aborted on any failure, so ``list`` never shows half a snapshot);
verify, restore and describe read the object as a stream straight from the bucket
(ranged GETs pinned to its ETag); list, delete and the retention of automated
snapshots work on the bucket. The format is the file format, byte for byte.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, cast

from sealedkb.errors import NotFoundError, ValidationError
from sealedkb.objectstore import Bucket, ObjectPath, ObjectStoreError, ObjectUpload
from sealedkb.snapshots.fileformat import SnapshotIntegrityError, read_envelope
from sealedkb.snapshots.store import (
    ID_RE,
    SUFFIX,
    SnapshotFolder,
    SnapshotInfo,
    SnapshotLocation,
    SnapshotStorageError,
    snapshot_id_of,
)

__all__ = ["PendingObject", "S3SnapshotFolder"]


def _storage(exc: ObjectStoreError) -> SnapshotStorageError:
    return SnapshotStorageError(exc.message)


class PendingObject:
    """A snapshot being uploaded; appears in the bucket only on :meth:`commit`."""

    def __init__(self, bucket: Bucket, snapshot_id: str) -> None:
        self.bucket = bucket
        self.key = f"{snapshot_id}{SUFFIX}"
        try:
            self.upload = ObjectUpload(bucket, self.key)
        except ObjectStoreError as exc:
            raise _storage(exc) from None
        self._fh = cast(IO[bytes], self.upload)  # write-only stream: write, flush

    @property
    def fh(self) -> IO[bytes]:
        return self._fh

    def sync(self) -> None:
        """Parts are sent as they fill; durability comes with commit."""

    def commit(self) -> ObjectPath:
        try:
            self.upload.commit()
        except ObjectStoreError as exc:
            self.upload.discard()
            raise _storage(exc) from None
        return ObjectPath(self.bucket, self.key)

    def discard(self) -> None:
        self.upload.discard()


class S3SnapshotFolder(SnapshotFolder):
    """The snapshots of one bucket and key prefix."""

    remote = True

    def __init__(self, bucket: Bucket) -> None:
        super().__init__(Path(bucket.url()))
        self.bucket = bucket

    def __str__(self) -> str:
        return self.bucket.url()

    def ensure(self) -> Path:
        try:
            self.bucket.check()
        except ObjectStoreError as exc:
            raise _storage(exc) from None
        return self.path

    def clean_temp(self) -> None:
        """Nothing to clean: an unfinished upload is aborted, never listed."""

    def new_file(self, snapshot_id: str) -> PendingObject:
        self.ensure()
        return PendingObject(self.bucket, snapshot_id)

    def list(self) -> list[SnapshotInfo]:
        try:
            names = [
                o.key
                for o in self.bucket.list("snap-")
                if o.key.endswith(SUFFIX) and ID_RE.match(o.key[: -len(SUFFIX)])
            ]
        except ObjectStoreError as exc:
            raise _storage(exc) from None
        out = [self.info(ObjectPath(self.bucket, n)) for n in names]
        return sorted(out, key=lambda i: (i.header.get("created_at") or "", i.id))

    def info(self, path: SnapshotLocation) -> SnapshotInfo:
        sid = snapshot_id_of(path)
        try:
            env = read_envelope(path)
        except SnapshotIntegrityError as exc:
            size = self.bucket.head(path.name).size if isinstance(path, ObjectPath) else 0
            return SnapshotInfo(sid, path, size, None, exc.message)
        except ObjectStoreError as exc:
            raise _storage(exc) from None
        if env.header.get("snapshot_id") != sid:
            return SnapshotInfo(sid, path, env.size, None, "the header names another snapshot id")
        return SnapshotInfo(sid, path, env.size, env)

    def resolve(self, ref: str) -> SnapshotLocation:
        ref = ref.strip()
        if ID_RE.match(ref):
            try:
                found = self.bucket.exists(f"{ref}{SUFFIX}")
            except ObjectStoreError as exc:
                raise _storage(exc) from None
            if found:
                return ObjectPath(self.bucket, f"{ref}{SUFFIX}")
            raise NotFoundError(f"no snapshot {ref} in {self.bucket.url()}", field="snapshot")
        matches = [i for i in self.list() if i.header.get("name") == ref]
        if len(matches) == 1:
            return matches[0].path
        if matches:
            raise ValidationError(
                "several snapshots have this name; give the snapshot id", field="snapshot"
            )
        raise NotFoundError(
            f"no snapshot with this id or name in {self.bucket.url()}", field="snapshot"
        )

    def remove(self, path: SnapshotLocation, snapshot_id: str) -> None:
        try:
            if not self.bucket.exists(path.name):
                raise NotFoundError(f"no snapshot {snapshot_id}", field="snapshot")
            self.bucket.delete(path.name)
        except ObjectStoreError as exc:
            raise _storage(exc) from None

    @contextlib.contextmanager
    def locked(self) -> Iterator[bool]:
        """The scheduler is a singleton job (one replica runs it): always this one."""
        yield True
