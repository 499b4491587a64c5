"""Taking a snapshot: every sealedkb table COPYed out in one consistent read,
framed, zstd-compressed and sealed in STREAM chunks under a fresh snapshot data
key that the KMS key wraps, with the snapshot id bound into the wrap.

Everything streams: COPY output is framed in 256 KiB blocks, compressed and
sealed in 1 MiB chunks as it arrives; no table is ever held in memory.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import psycopg

from sealedkb import __version__
from sealedkb.crypto.stream import derive_keys, random_nonce_prefix, random_salt, sha256
from sealedkb.errors import SealedKBError, ValidationError
from sealedkb.formats.aad import ENTRIES_TABLE
from sealedkb.model import KeyPurpose
from sealedkb.snapshots.base import (
    CREATE,
    LiveDatabase,
    SnapshotContext,
    log,
    require_encrypted,
    snapshot_context,
)
from sealedkb.snapshots.fileformat import SnapshotWriter, canonical_json, new_header
from sealedkb.snapshots.store import (
    KINDS,
    PendingSnapshot,
    SnapshotInfo,
    SnapshotStorageError,
    new_snapshot_id,
    utc_iso,
)
from sealedkb.store import snapshot_io as sio
from sealedkb.store.db import connect, mapped_errors

MAX_NAME = 100


class SnapshotCreator:
    """Snapshots of one live database."""

    def __init__(self, ctx: SnapshotContext, database: LiveDatabase | None) -> None:
        self.ctx = ctx
        self.database = database

    def create(self, *, name: str | None = None, kind: str = "manual") -> SnapshotInfo:
        database, kms_key_uri = require_encrypted(self.database)
        if kind not in KINDS:
            raise ValidationError("kind must be manual or automated", field="kind")
        if name is not None and (not name or len(name) > MAX_NAME or not name.isprintable()):
            raise ValidationError(
                f"snapshot name must be 1-{MAX_NAME} printable characters", field="name"
            )
        now = self.ctx.now()
        sid = new_snapshot_id(now)
        details: dict[str, Any] = {"snapshot_id": sid, "kind": kind}
        try:
            info = self._create(database, kms_key_uri, sid, name, kind, now)
        except SealedKBError as exc:
            self.ctx.record_error(CREATE, exc, kms_key_uri, details)
            raise
        counts = info.row_counts()
        self.ctx.record(
            CREATE,
            kms_key_uri,
            {
                **details,
                "size_bytes": info.size_bytes,
                "tables": len(counts),
                "entries": counts.get(ENTRIES_TABLE),
                "kms_key_version": info.header.get("kms_key_version"),
            },
        )
        return info

    def create_rollback_point(self, kms_key_uri: str, *, name: str) -> SnapshotInfo:
        """The snapshot an in-place migration takes of a *plaintext* knowledge base
        before changing anything, sealed under the KMS key the migration created.
        Otherwise like :meth:`create`; kind ``manual``."""
        if self.database is None:
            raise ValidationError("this needs an initialised knowledge base ('sealedkb init')")
        now = self.ctx.now()
        sid = new_snapshot_id(now)
        details: dict[str, Any] = {"snapshot_id": sid, "kind": "manual", "purpose": "migration"}
        try:
            info = self._create(self.database, kms_key_uri, sid, name, "manual", now)
        except SealedKBError as exc:
            self.ctx.record_error(CREATE, exc, kms_key_uri, details)
            raise
        self.ctx.record(CREATE, kms_key_uri, {**details, "size_bytes": info.size_bytes})
        return info

    def _create(
        self,
        database: LiveDatabase,
        kms_key_uri: str,
        sid: str,
        name: str | None,
        kind: str,
        now: datetime,
    ) -> SnapshotInfo:
        ctx = self.ctx
        folder = ctx.folder.ensure()
        ctx.folder.clean_temp()
        wrap_ctx = snapshot_context(sid)
        material, wrapped = ctx.keys().generate_data_key(kms_key_uri, wrap_ctx)  # 5 if off
        ctx.record(
            "GenerateDataKey",
            kms_key_uri,
            {"purpose": KeyPurpose.SNAPSHOT.value, "snapshot_id": sid},
        )
        salt, prefix = random_salt(), random_nonce_prefix()
        skeys = derive_keys(material, salt)
        out: PendingSnapshot | None = None
        writers: list[SnapshotWriter] = []
        with (
            mapped_errors("snapshot"),
            connect(database.url, allow_insecure=ctx.settings.allow_insecure) as conn,
        ):
            try:
                sio.pin_session(conn)
                facts = sio.source_facts(conn)
                try:  # the knowledge base's identity, kept across restores
                    kb_id: str | None = sio.meta_set_default(conn, "kb_id", str(uuid.uuid4()))
                except psycopg.Error:  # a read-only database (e.g. a standby)
                    kb_id = sio.meta_value(conn, "kb_id")
                sio.begin_consistent_read(conn)
                tables = sio.list_tables(conn)
                applied = sio.applied_migrations(conn)
                source = {
                    "kb_id": kb_id,
                    **facts,
                    "fingerprint": sha256(
                        canonical_json(
                            {
                                "kb_id": kb_id,
                                "database": facts["database"],
                                "system_identifier": facts["system_identifier"],
                            }
                        )
                    ).hex()[:32],
                }
                header = new_header(
                    snapshot_id=sid,
                    created_at=utc_iso(now),
                    kind=kind,
                    name=name,
                    kms_key_id=kms_key_uri,
                    kms_key_version=ctx.raw_keys().wrapped_version(wrapped),
                    wrapped_key=wrapped,
                    encryption_context=wrap_ctx,
                    salt=salt,
                    nonce_prefix=prefix,
                    source=source,
                    schema={"version": max(applied, default=0), "migrations": applied},
                    tables=[t.to_dict() for t in tables],
                    chunk_size=ctx.chunk_size,
                    extra={
                        "sealedkb_version": __version__,
                        "encryption_mode": database.encryption_mode,
                    },
                )
                # a temporary file renamed on commit, or a multipart upload completed
                # on commit (a bucket); SnapshotStorageError if it cannot be started
                out = ctx.folder.new_file(sid)
                writer = SnapshotWriter(out.fh, header, skeys)
                writers.append(writer)
                for table in tables:
                    tw = writer.table(table.name)
                    rows = sio.copy_out(conn, table, tw.write)
                    writer.add_result(table.name, tw.close(rows))
                conn.execute("COMMIT")
                writer.finish({"completed_at": utc_iso(ctx.now())})
                final = out.commit()
            except OSError as exc:
                for w in writers:
                    w.abort()
                if out is not None:
                    out.discard()
                raise SnapshotStorageError(
                    f"cannot write the snapshot in {folder}: {exc.strerror}"
                ) from None
            except BaseException:
                for w in writers:
                    w.abort()
                if out is not None:
                    out.discard()
                raise
        log.info("snapshot %s written (%s)", sid, kind)
        return ctx.folder.info(final)
