"""Copying a snapshot under another KMS key (rekey).

A copy re-wraps the snapshot key *and* every data key inside the snapshot
(``kb_data_keys``), and points ``kb_meta.kms_key_uri`` at the new key, so the copy
restores with the original key disabled or destroyed. Only those two tables (a few
rows) are held in memory; the others stream through. The copy is verified in full
before it appears under its name.
"""

from __future__ import annotations

import uuid
from typing import Any

from sealedkb import __version__
from sealedkb.crypto.keyring import encryption_context
from sealedkb.crypto.stream import derive_keys, random_nonce_prefix, random_salt
from sealedkb.errors import SealedKBError, ValidationError
from sealedkb.keys.local import URI_PREFIX
from sealedkb.model import KeyPurpose
from sealedkb.snapshots.base import COPY, KeyUse, SnapshotContext, snapshot_context
from sealedkb.snapshots.fileformat import (
    Envelope,
    SnapshotIntegrityError,
    SnapshotReader,
    SnapshotWriter,
    new_header,
    read_envelope,
)
from sealedkb.snapshots.store import (
    PendingFile,
    SnapshotInfo,
    SnapshotStorageError,
    new_snapshot_id,
    snapshot_id_of,
    utc_iso,
)
from sealedkb.snapshots.verify import check_stream
from sealedkb.store.copyfmt import CopyFormatError, encode_binary, parse_binary
from sealedkb.store.snapshot_io import TableMeta

REKEYED_TABLES = ("kb_data_keys", "kb_meta")


def resolve_key(key: str) -> str:
    """The KMS key URI of ``--kms-key-id`` (a key URI or its uuid)."""
    text = key.strip()
    uri = text if text.startswith(URI_PREFIX) else URI_PREFIX + text
    try:
        return URI_PREFIX + str(uuid.UUID(uri[len(URI_PREFIX) :]))
    except ValueError:
        raise ValidationError(
            "--kms-key-id must be a key URI (local:key/<uuid>) or its uuid",
            field="kms_key_id",
        ) from None


def rekey_table(meta: TableMeta, data: bytes, new_uri: str, keys: KeyUse) -> bytes:
    """kb_data_keys: every data key unwrapped and wrapped again under ``new_uri``
    (same encryption context); kb_meta: ``kms_key_uri`` set to ``new_uri``."""
    if meta["format"] != "binary":
        raise ValidationError(f"table {meta['name']} is not in binary COPY format")
    cols = [c["name"] for c in meta["columns"]]
    try:
        rows = parse_binary(data)
    except CopyFormatError as exc:
        raise SnapshotIntegrityError(f"table {meta['name']}", str(exc)) from None

    def col(name: str) -> int:
        try:
            return cols.index(name)
        except ValueError:
            raise ValidationError(
                f"table {meta['name']} has no column {name}; cannot re-key this snapshot"
            ) from None

    if meta["name"] == "kb_meta":
        k, v = col("key"), col("value")
        for row in rows:
            if row[k] == b"kms_key_uri":
                row[v] = new_uri.encode()
        return encode_binary(rows)
    i_id, i_ns, i_purpose = col("id"), col("namespace"), col("purpose")
    i_uri, i_wrapped = col("kms_key_uri"), col("wrapped")
    for row in rows:
        raw_id, ns, purpose, uri, wrapped = (
            row[i_id],
            row[i_ns],
            row[i_purpose],
            row[i_uri],
            row[i_wrapped],
        )
        if None in (raw_id, ns, purpose, uri, wrapped):
            raise SnapshotIntegrityError("table kb_data_keys", "a data key row is incomplete")
        assert raw_id and ns and purpose and uri and wrapped
        ctx = encryption_context(ns.decode(), KeyPurpose(purpose.decode()), uuid.UUID(bytes=raw_id))
        material = keys.decrypt(uri.decode(), wrapped, ctx)
        row[i_wrapped] = keys.encrypt(new_uri, material, ctx)
        row[i_uri] = new_uri.encode()
    return encode_binary(rows)


def copy(ctx: SnapshotContext, ref: str, kms_key_id: str) -> SnapshotInfo:
    """Re-encrypt a snapshot under another KMS key: a new snapshot (kind manual,
    same point in time) whose snapshot key and every data key inside are wrapped
    under ``kms_key_id``; it is verified in full before it appears."""
    if ctx.folder.remote:
        raise ValidationError(
            "snapshot copy works on a snapshot folder, not a bucket: copy into a local "
            "folder (SEALEDKB_SNAPSHOT_DIR) and upload the result",
            field="snapshot",
        )
    path = ctx.folder.resolve(ref)
    sid = snapshot_id_of(path)
    new_uri = resolve_key(kms_key_id)
    details: dict[str, Any] = {"snapshot_id": sid, "kind": None}
    try:
        env = read_envelope(path)
        details["kind"] = env.header["kind"]
        info = _copy(ctx, env, new_uri, details)
    except SealedKBError as exc:
        ctx.record_error(COPY, exc, new_uri, details)
        raise
    ctx.record(COPY, new_uri, {**details, "from_kms_key_id": env.header["kms_key_id"]})
    return info


def _copy(
    ctx: SnapshotContext, env: Envelope, new_uri: str, details: dict[str, Any]
) -> SnapshotInfo:
    folder = ctx.folder.ensure()
    ctx.folder.clean_temp()
    keys = ctx.keys()
    old = ctx.unwrap(env)
    now = ctx.now()
    copy_id = new_snapshot_id(now)
    details["copy_id"] = copy_id
    wrap_ctx = snapshot_context(copy_id)
    material, wrapped = keys.generate_data_key(new_uri, wrap_ctx)
    ctx.record(
        "GenerateDataKey",
        new_uri,
        {"purpose": KeyPurpose.SNAPSHOT.value, "snapshot_id": copy_id},
    )
    salt, prefix = random_salt(), random_nonce_prefix()
    h = env.header
    header = new_header(
        snapshot_id=copy_id,
        created_at=h["created_at"],  # the data's point in time, not the copy's
        kind="manual",  # copies are kept until deleted (as AWS does)
        name=h.get("name"),
        kms_key_id=new_uri,
        kms_key_version=ctx.raw_keys().wrapped_version(wrapped),
        wrapped_key=wrapped,
        encryption_context=wrap_ctx,
        salt=salt,
        nonce_prefix=prefix,
        source=h["source"],
        schema=h["schema"],
        tables=h["tables"],
        chunk_size=env.chunk_size,
        extra={
            "sealedkb_version": __version__,
            "encryption_mode": h.get("encryption_mode", "on"),
            "copied_from": h["snapshot_id"],
            "copied_at": utc_iso(now),
        },
    )
    new_keys = derive_keys(material, salt)
    out = ctx.folder.new_file(copy_id)
    writer: SnapshotWriter | None = None
    try:
        writer = SnapshotWriter(out.fh, header, new_keys)
        with SnapshotReader(env, old) as reader:
            for ts in reader.tables():
                tw = writer.table(ts.name)
                if ts.name in REKEYED_TABLES:
                    data = b"".join(ts.blocks())
                    check = ts.require_match()
                    tw.write(rekey_table(ts.meta, data, new_uri, keys))
                else:
                    # No row walk here: the digest proves the bytes, and the copy
                    # is verified in full (rows counted) before it is renamed.
                    for block in ts.blocks(count=False):
                        tw.write(block)
                    check = ts.require_match()
                assert check.expected_rows is not None
                writer.add_result(ts.name, tw.close(check.expected_rows))
        writer.finish({"completed_at": utc_iso(ctx.now()), "copied_from": h["snapshot_id"]})
        out.sync()
        # The copy must verify before it exists under its name.
        assert isinstance(out, PendingFile)  # copy refuses a bucket (above)
        check_stream(read_envelope(out.tmp), new_keys)
        final = out.commit()
    except OSError as exc:
        if writer is not None:
            writer.abort()
        out.discard()
        raise SnapshotStorageError(f"cannot write the copy in {folder}: {exc.strerror}") from None
    except BaseException:
        if writer is not None:
            writer.abort()
        out.discard()
        raise
    return ctx.folder.info(final)
