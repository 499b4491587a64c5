"""Encrypted snapshots: create, list, verify, restore, copy under another key,
delete, drill, and the automated daily snapshot with its retention
(DESIGN.md §6; format: docs/SNAPSHOT-FORMAT.md; runbook: docs/ENCRYPTION-KEY-MANAGEMENT.md §23).

A snapshot is a logical copy of every sealedkb table (COPY, so it does not
depend on the server's major version), zstd-compressed and sealed in STREAM
chunks under a fresh snapshot data key that the KMS key wraps, with the
snapshot id bound into the wrap as encryption context. Entries are already
sealed in the database, so a snapshot holds them sealed twice; the keystore
(``keys/`` and the root key) is all a restore needs besides the file.

Why these choices:

- Files are written under a temporary name (``.<id>.snap.tmp.<pid>``), fsynced
  and renamed into place only when complete, so a crash never leaves a half
  snapshot that ``list`` shows; a failed create removes its temporary file.
- Everything streams: COPY output is framed in 256 KiB blocks, compressed and
  sealed in 1 MiB chunks as it arrives; restore feeds COPY FROM the same way. No
  table is ever held in memory (except ``kb_data_keys`` and ``kb_meta`` during
  a copy, which hold a few rows).
- Restore loads into a new database (or an existing, empty one) in a single
  transaction: schema at the snapshot's migrations, COPY, counts and digests
  recomputed from the restored rows, a sample of sealed entries opened with the
  restored data keys, then the schema brought up to this code. Any failure rolls
  it all back, and a database created for the restore is dropped.
- A copy under another KMS key re-wraps the snapshot key *and* every data key
  inside the snapshot (``kb_data_keys``), and points ``kb_meta.kms_key_uri`` at
  the new key, so the copy restores with the original key disabled or destroyed.

Every operation appends an audit event (``CreateSnapshot``, ``VerifySnapshot``,
``RestoreSnapshot``, ``CopySnapshot``, ``DeleteSnapshot``, ``DrillSnapshot``)
with ``details`` holding at least ``snapshot_id`` and ``kind``; the SnapshotStale
alarm reads the newest successful ``CreateSnapshot`` whose kind is ``automated``.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Protocol

import psycopg
from psycopg import Connection
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from pydantic import SecretStr

from sealedkb import __version__
from sealedkb.audit.chain import AuditLog
from sealedkb.config import Settings
from sealedkb.crypto.keyring import encryption_context
from sealedkb.crypto.sealed import DataKey, FieldOpener
from sealedkb.crypto.stream import (
    DEFAULT_CHUNK_SIZE,
    SnapshotKeys,
    derive_keys,
    new_digest,
    random_nonce_prefix,
    random_salt,
    sha256,
)
from sealedkb.errors import (
    ConflictError,
    IntegrityError,
    KeyUnavailableError,
    NotFoundError,
    SealedKBError,
    ValidationError,
)
from sealedkb.formats.aad import ENTRIES_TABLE, entry_doc_aad
from sealedkb.formats.entry_doc import decode_doc
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.wiring import key_provider, tls_files
from sealedkb.keys.lifecycle import AuditedKeyUse
from sealedkb.keys.local import URI_PREFIX
from sealedkb.keys.provider import keystore_of
from sealedkb.model import KeyPurpose
from sealedkb.snapshots.fileformat import (
    Envelope,
    SnapshotIntegrityError,
    SnapshotReader,
    SnapshotWriter,
    authenticate,
    canonical_json,
    new_header,
    read_envelope,
    unb64,
)
from sealedkb.store import snapshot_io as sio
from sealedkb.store.copyfmt import CopyFormatError, encode_binary, parse_binary
from sealedkb.store.db import (
    Database,
    apply_migrations,
    classify_transport,
    connect,
    lock_schema,
    mapped_errors,
    migrations,
)

log = logging.getLogger("sealedkb.snapshots")

SUFFIX = ".snap"
ID_RE = re.compile(r"^snap-\d{8}-\d{6}-[0-9a-f]{8}$")
KINDS = ("manual", "automated")
DB_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
MAX_NAME = 100
RESTORE_SAMPLE = 32  # random sealed entries opened after a restore (plus one per data key)

# Actions recorded in the audit trail (the monitoring alarms read these names).
CREATE, VERIFY, RESTORE, COPY, DELETE, DRILL = (
    "CreateSnapshot",
    "VerifySnapshot",
    "RestoreSnapshot",
    "CopySnapshot",
    "DeleteSnapshot",
    "DrillSnapshot",
)


class SnapshotStorageError(SealedKBError):
    """The snapshot folder cannot be written or read (disk full, permissions)."""

    code = "SNAPSHOT_STORAGE_ERROR"
    exit_code = 1


class KeyUse(Protocol):
    """What snapshots need from the key provider (the audited wrapper or the raw one)."""

    def generate_data_key(
        self, key_uri: str, context: Mapping[str, str]
    ) -> tuple[bytes, bytes]: ...

    def decrypt(self, key_uri: str, blob: bytes, context: Mapping[str, str]) -> bytes: ...

    def encrypt(self, key_uri: str, plaintext: bytes, context: Mapping[str, str]) -> bytes: ...


def _utc_iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def new_snapshot_id(now: datetime) -> str:
    return f"snap-{now.astimezone(UTC):%Y%m%d-%H%M%S}-{os.urandom(4).hex()}"


def _snapshot_context(snapshot_id: str) -> dict[str, str]:
    """Encryption context of a snapshot data key: the wrap only opens for this id."""
    return {"sealedkb:purpose": KeyPurpose.SNAPSHOT.value, "sealedkb:snapshot_id": snapshot_id}


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class SnapshotInfo:
    """A snapshot as ``list`` shows it (header and trailer read, not yet verified)."""

    id: str
    path: Path
    size_bytes: int
    envelope: Envelope | None
    error: str | None = None

    @property
    def header(self) -> dict[str, Any]:
        return self.envelope.header if self.envelope else {}

    @property
    def kind(self) -> str | None:
        kind = self.header.get("kind")
        return str(kind) if kind else None

    @property
    def created_at(self) -> datetime | None:
        try:
            return _parse_time(str(self.header["created_at"]))
        except (KeyError, ValueError):
            return None

    def to_dict(self) -> dict[str, Any]:
        h = self.header
        t = self.envelope.trailer if self.envelope else {}
        return {
            "id": self.id,
            "name": h.get("name"),
            "encrypted": True,
            "kms_key_id": h.get("kms_key_id"),
            "kms_key_version": h.get("kms_key_version"),
            "created_at": h.get("created_at"),
            "kind": h.get("kind"),
            "size_bytes": self.size_bytes,
            "row_counts": {name: v.get("rows") for name, v in t.get("tables", {}).items()},
            "path": str(self.path),
            "schema_version": h.get("schema", {}).get("version"),
            "source_fingerprint": h.get("source", {}).get("fingerprint"),
            "copied_from": h.get("copied_from"),
            "damaged": self.error is not None,
            "error": self.error,
        }


class _FileOut:
    """A snapshot being written: a 0600 temporary file renamed into place on commit."""

    def __init__(self, folder: Path, snapshot_id: str) -> None:
        self.final = folder / f"{snapshot_id}{SUFFIX}"
        self.tmp = folder / f".{snapshot_id}{SUFFIX}.tmp.{os.getpid()}"
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.fh: IO[bytes] = os.fdopen(fd, "wb", buffering=1 << 20)

    def commit(self) -> Path:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.final)
        _fsync_dir(self.final.parent)
        return self.final

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()


class Snapshots:
    """Snapshot operations for one home.

    ``kb`` is the live knowledge base: the source of ``create`` and ``drill``, the
    audit trail every operation is recorded in, and the key provider acting for
    its principal. The other operations also work without it (disaster recovery:
    the database is gone, the keystore and the snapshot files are not); they are
    then recorded only in a restored database's own trail.
    """

    def __init__(
        self,
        settings: Settings,
        kb: KnowledgeBase | None = None,
        *,
        now: Callable[[], datetime] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.settings = settings
        self.kb = kb
        self.folder = settings.snapshots_dir
        self.chunk_size = chunk_size  # plaintext bytes per STREAM chunk (tests use small ones)
        self._now = now or (lambda: datetime.now(UTC))
        self._provider = kb.provider if kb is not None else None

    # --- helpers ---------------------------------------------------------------

    @property
    def audit(self) -> AuditLog | None:
        return self.kb.audit if self.kb is not None else None

    def _raw_provider(self) -> Any:
        if self._provider is None:
            provider = key_provider(self.settings)
            keystore = keystore_of(provider)
            if keystore is not None and not keystore.exists():
                raise KeyUnavailableError(
                    f"no keystore at {self.settings.keys_dir}: a snapshot needs the keystore "
                    "(keys/) and the root key it was made with; restore them from backup"
                )
            self._provider = provider
        return self._provider

    def _keys(self) -> KeyUse:
        provider = self._raw_provider()
        if self.audit is not None:
            return AuditedKeyUse(provider, self.audit)
        return provider  # type: ignore[no-any-return]

    def _record(self, action: str, key_uri: str | None, details: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit.record(action, key_uri=key_uri, details=details)

    def _record_error(
        self, action: str, exc: SealedKBError, key_uri: str | None, details: dict[str, Any]
    ) -> None:
        if self.audit is not None:
            self.audit.record_error(action, exc, key_uri=key_uri, details=details)
        else:
            log.warning("%s failed (%s); no audit trail to record it in", action, exc.code)

    def _require_kb(self) -> KnowledgeBase:
        if self.kb is None:
            raise ValidationError("this needs an initialised knowledge base ('sealedkb init')")
        if not self.kb.encrypted or self.kb.kms_key_uri is None:
            raise ValidationError(
                "encryption is off in this knowledge base: snapshots are sealed under its KMS "
                "key, and a plaintext knowledge base has none",
                field="encryption",
            )
        return self.kb

    def _folder(self) -> Path:
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise SnapshotStorageError(
                f"cannot create the snapshot folder {self.folder}: {exc.strerror}"
            ) from None
        return self.folder

    def _clean_temp(self) -> None:
        """Remove temporary files of snapshots whose writer died (crash, kill)."""
        for path in self.folder.glob(f".snap-*{SUFFIX}.tmp.*"):
            pid = path.name.rsplit(".", 1)[-1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                with contextlib.suppress(OSError):
                    path.unlink()

    def _unwrap(self, env: Envelope) -> SnapshotKeys:
        h = env.header
        ctx = h["encryption_context"]
        if ctx != _snapshot_context(h["snapshot_id"]):
            raise SnapshotIntegrityError(
                "header", "the header's encryption context does not name this snapshot"
            )
        try:
            material = self._keys().decrypt(
                h["kms_key_id"], unb64(h["wrapped_key"], "wrapped key"), ctx
            )
        except IntegrityError:
            raise SnapshotIntegrityError(
                "snapshot key",
                "the snapshot's wrapped key failed to open (altered, or bound to another snapshot)",
            ) from None
        return derive_keys(material, unb64(h["salt"], "salt"))

    # --- reading the folder ---------------------------------------------------------

    def list(self) -> list[SnapshotInfo]:
        """Every complete snapshot file in the folder, oldest first (no keys needed)."""
        if not self.folder.is_dir():
            return []
        out = []
        for path in self.folder.glob(f"snap-*{SUFFIX}"):
            sid = path.name[: -len(SUFFIX)]
            if ID_RE.match(sid):
                out.append(self._info(path))
        return sorted(out, key=lambda i: (i.header.get("created_at") or "", i.id))

    def _info(self, path: Path) -> SnapshotInfo:
        sid = path.name[: -len(SUFFIX)]
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

    def resolve(self, ref: str) -> Path:
        """A snapshot file from its id or its (unique) name."""
        ref = ref.strip()
        if ID_RE.match(ref):
            path = self.folder / f"{ref}{SUFFIX}"
            if path.is_file():
                return path
            raise NotFoundError(f"no snapshot {ref} in {self.folder}", field="snapshot")
        matches = [i for i in self.list() if i.header.get("name") == ref]
        if len(matches) == 1:
            return matches[0].path
        if matches:
            raise ValidationError(
                "several snapshots have this name; give the snapshot id", field="snapshot"
            )
        raise NotFoundError(f"no snapshot with this id or name in {self.folder}", field="snapshot")

    def describe(self, ref: str) -> dict[str, Any]:
        """Everything the header and trailer say (not authenticated: that is verify)."""
        info = self._info(self.resolve(ref))
        out = info.to_dict()
        if info.envelope is not None:
            h, t = info.envelope.header, info.envelope.trailer
            out["manifest"] = {**h, "trailer": t}
            out["chunks"] = info.envelope.chunk_count()
        return out

    # --- create ---------------------------------------------------------------------

    def create(self, *, name: str | None = None, kind: str = "manual") -> SnapshotInfo:
        kb = self._require_kb()
        if kind not in KINDS:
            raise ValidationError("kind must be manual or automated", field="kind")
        if name is not None and (not name or len(name) > MAX_NAME or not name.isprintable()):
            raise ValidationError(
                f"snapshot name must be 1-{MAX_NAME} printable characters", field="name"
            )
        assert kb.kms_key_uri is not None
        now = self._now()
        sid = new_snapshot_id(now)
        details: dict[str, Any] = {"snapshot_id": sid, "kind": kind}
        try:
            info = self._create(kb, kb.kms_key_uri, sid, name, kind, now)
        except SealedKBError as exc:
            self._record_error(CREATE, exc, kb.kms_key_uri, details)
            raise
        counts = (
            {k: v.get("rows") for k, v in info.envelope.trailer["tables"].items()}
            if (info.envelope)
            else {}
        )
        self._record(
            CREATE,
            kb.kms_key_uri,
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
        before changing anything, sealed under the KMS key the migration created
        (migrate/migrator.py). Otherwise like :meth:`create`; kind ``manual``."""
        if self.kb is None:
            raise ValidationError("this needs an initialised knowledge base ('sealedkb init')")
        now = self._now()
        sid = new_snapshot_id(now)
        details: dict[str, Any] = {"snapshot_id": sid, "kind": "manual", "purpose": "migration"}
        try:
            info = self._create(self.kb, kms_key_uri, sid, name, "manual", now)
        except SealedKBError as exc:
            self._record_error(CREATE, exc, kms_key_uri, details)
            raise
        self._record(CREATE, kms_key_uri, {**details, "size_bytes": info.size_bytes})
        return info

    def _create(
        self,
        kb: KnowledgeBase,
        kms_key_uri: str,
        sid: str,
        name: str | None,
        kind: str,
        now: datetime,
    ) -> SnapshotInfo:
        folder = self._folder()
        self._clean_temp()
        ctx = _snapshot_context(sid)
        keys = self._keys()
        material, wrapped = keys.generate_data_key(kms_key_uri, ctx)  # 5 if the key is off
        self._record(
            "GenerateDataKey",
            kms_key_uri,
            {"purpose": KeyPurpose.SNAPSHOT.value, "snapshot_id": sid},
        )
        salt, prefix = random_salt(), random_nonce_prefix()
        skeys = derive_keys(material, salt)
        out: _FileOut | None = None
        writers: builtins.list[SnapshotWriter] = []
        with (
            mapped_errors("snapshot"),
            connect(kb.target.url, allow_insecure=self.settings.database_allow_insecure) as conn,
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
                    created_at=_utc_iso(now),
                    kind=kind,
                    name=name,
                    kms_key_id=kms_key_uri,
                    kms_key_version=self._raw_provider().wrapped_version(wrapped),
                    wrapped_key=wrapped,
                    encryption_context=ctx,
                    salt=salt,
                    nonce_prefix=prefix,
                    source=source,
                    schema={"version": max(applied, default=0), "migrations": applied},
                    tables=[t.to_dict() for t in tables],
                    chunk_size=self.chunk_size,
                    extra={"sealedkb_version": __version__, "encryption_mode": kb.mode.value},
                )
                try:
                    out = _FileOut(folder, sid)
                except OSError as exc:
                    raise SnapshotStorageError(
                        f"cannot write in {folder}: {exc.strerror}"
                    ) from None
                writer = SnapshotWriter(out.fh, header, skeys)
                writers.append(writer)
                for table in tables:
                    tw = writer.table(table.name)
                    rows = sio.copy_out(conn, table, tw.write)
                    writer.add_result(table.name, tw.close(rows))
                conn.execute("COMMIT")
                writer.finish({"completed_at": _utc_iso(self._now())})
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
        return self._info(final)

    # --- verify ---------------------------------------------------------------------

    def verify(self, ref: str) -> dict[str, Any]:
        """Read the whole file: every chunk, every table's row count and digest.
        Restores nothing. Raises SnapshotIntegrityError (exit 6) naming the bad part."""
        path = self.resolve(ref)
        sid = path.name[: -len(SUFFIX)]
        details: dict[str, Any] = {"snapshot_id": sid, "kind": None}
        key_uri: str | None = None
        started = time.perf_counter()
        try:
            env = read_envelope(path)
            details["kind"] = env.header["kind"]
            key_uri = env.header["kms_key_id"]
            keys = self._unwrap(env)  # a KMS call: latency, not throughput
            read_started = time.perf_counter()
            report = self._verify_env(env, keys)
        except SealedKBError as exc:
            self._record_error(VERIFY, exc, key_uri, details)
            raise
        except OSError as exc:
            err = SnapshotStorageError(f"cannot read {path}: {exc.strerror}")
            self._record_error(VERIFY, err, key_uri, details)
            raise err from None
        done = time.perf_counter()
        reading = done - read_started
        report.update(
            {
                "id": sid,
                "kind": env.header["kind"],
                "kms_key_id": key_uri,
                "size_bytes": env.size,
                "seconds": round(done - started, 3),
                "read_seconds": round(reading, 3),
                # throughput of reading and checking the file (after the key unwrap)
                "mb_per_s": round(env.size / 1e6 / reading, 1) if reading > 0 else None,
            }
        )
        self._record(VERIFY, key_uri, {**details, "chunks": report["chunks"]})
        return report

    @staticmethod
    def _verify_env(env: Envelope, keys: SnapshotKeys) -> dict[str, Any]:
        tables: dict[str, Any] = {}
        with SnapshotReader(env, keys) as reader:
            for ts in reader.tables():
                for _ in ts.blocks():
                    pass
                check = ts.require_match()
                tables[ts.name] = {"rows": check.rows, "sha256": check.sha256, "ok": True}
        return {"ok": True, "chunks": env.chunk_count(), "tables": tables}

    # --- restore --------------------------------------------------------------------

    def _server_url(self) -> str:
        """A URL of the server the knowledge base runs on, for CREATE/DROP DATABASE."""
        if self.settings.database_url is not None:
            transport = classify_transport(
                self.settings.database_url.get_secret_value(),
                allow_insecure=self.settings.database_allow_insecure,
                tls=tls_files(self.settings),
            )
            return transport.conninfo
        from sealedkb.kb.wiring import make_home
        from sealedkb.store.embedded import EmbeddedPostgres

        make_home(self.settings)
        server = EmbeddedPostgres(self.settings.pgdata)
        server.start()  # in disaster recovery this initialises a fresh, empty server
        return server.uri("postgres")

    @contextlib.contextmanager
    def _admin(self) -> Iterator[Connection[TupleRow]]:
        """A connection for CREATE/DROP DATABASE: to the configured database, or to
        the ``postgres`` database of its server when that one is gone."""
        url = self._server_url()
        allow = self.settings.database_allow_insecure
        with mapped_errors("connect"):
            try:
                conn = connect(url, allow_insecure=allow)
            except psycopg.OperationalError:
                conn = connect(make_conninfo(url, dbname="postgres"), allow_insecure=allow)
        with conn:
            yield conn

    def _target(self, target: str) -> tuple[str, str, bool]:
        """(url, database name, created by us) for ``--target NAME|URL``."""
        text = target.strip()
        if "://" in text or "=" in text:
            transport = classify_transport(
                text,
                allow_insecure=self.settings.database_allow_insecure,
                tls=tls_files(self.settings),
            )
            try:
                dbname = conninfo_to_dict(transport.conninfo).get("dbname")
            except psycopg.ProgrammingError:
                raise ValidationError("the target URL is malformed", field="target") from None
            return transport.conninfo, str(dbname or "?"), False
        if not DB_NAME_RE.match(text):
            raise ValidationError(
                "the target must be a database URL or a new database name of 1-63 "
                "characters a-z, 0-9, '_' (starting with a letter or '_')",
                field="target",
            )
        return make_conninfo(self._server_url(), dbname=text), text, True

    def restore(self, ref: str, target: str, *, sample: int = RESTORE_SAMPLE) -> dict[str, Any]:
        """Restore into a new database (``target`` a name: CREATE DATABASE, refused if it
        exists) or an existing empty one (``target`` a URL: refused if any sealedkb table
        has rows). Never over a live database; on any failure nothing is left behind."""
        path = self.resolve(ref)
        sid = path.name[: -len(SUFFIX)]
        details: dict[str, Any] = {"snapshot_id": sid, "kind": None}
        key_uri: str | None = None
        started = time.perf_counter()
        try:
            env = read_envelope(path)
            details["kind"] = env.header["kind"]
            key_uri = env.header["kms_key_id"]
            wanted, keys = self._authenticated(env)  # before anything is created
            url, dbname, create = self._target(target)
            details["database"] = dbname
            result = self._restore(env, keys, wanted, url, dbname, create, sample)
        except SealedKBError as exc:
            self._record_error(RESTORE, exc, key_uri, details)
            raise
        seconds = time.perf_counter() - started
        result.update(
            {
                "id": sid,
                "kind": env.header["kind"],
                "kms_key_id": key_uri,
                "database": dbname,
                "url": _public_url(url),
                "created_database": create,
                "seconds": round(seconds, 3),
            }
        )
        self._record(
            RESTORE, key_uri, {**details, "entries": result["row_counts"].get(ENTRIES_TABLE)}
        )
        self._record_in_restored(url, sid, details)
        return result

    def _authenticated(self, env: Envelope) -> tuple[set[int], SnapshotKeys]:
        """The schema versions a restore builds, and the snapshot's keys, once the
        schema is known here and every chunk of the file has been authenticated."""
        wanted = self._check_schema(env)
        keys = self._unwrap(env)
        authenticate(env, keys)
        return wanted, keys

    @staticmethod
    def _check_schema(env: Envelope) -> set[int]:
        schema = env.header["schema"]
        wanted = schema.get("migrations")
        if not isinstance(wanted, list) or not all(isinstance(v, int) for v in wanted):
            raise SnapshotIntegrityError("header", "the header's schema is damaged")
        known = {v for v, _, _ in migrations()}
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise ValidationError(
                f"this snapshot was taken by a newer sealedkb (schema migrations "
                f"{', '.join(map(str, unknown))} are unknown here); restore it with that version",
                field="snapshot",
            )
        return set(wanted)

    def _restore(
        self,
        env: Envelope,
        keys: SnapshotKeys,
        wanted: set[int],
        url: str,
        dbname: str,
        create: bool,
        sample: int,
    ) -> dict[str, Any]:
        if create:
            with self._admin() as admin, mapped_errors("create database"):
                if sio.database_exists(admin, dbname):
                    raise ConflictError(
                        f"database {dbname} already exists: restore only goes into a new "
                        "database (choose another --target name)",
                        field="target",
                    )
                sio.create_database(admin, dbname)
        try:
            return self._load(env, keys, wanted, url, sample)
        except BaseException:
            if create:
                self._drop(dbname)
            raise

    def restore_over(
        self,
        ref: str,
        url: str,
        *,
        keep: frozenset[str] = frozenset({"kb_audit"}),
        after_load: Callable[[Connection[TupleRow]], None] | None = None,
        sample: int = RESTORE_SAMPLE,
    ) -> dict[str, Any]:
        """Replace the live sealedkb tables of the database at ``url`` by the snapshot,
        in one transaction (migration rollback). Tables in ``keep`` stay as they are:
        the audit trail is append-only, a rollback is recorded in it, not rewound.
        ``after_load`` runs in the same transaction. Readers block on the table locks
        and then see either the old or the restored tables, never a mix."""
        path = self.resolve(ref)
        sid = path.name[: -len(SUFFIX)]
        details: dict[str, Any] = {"snapshot_id": sid, "kind": None, "purpose": "rollback"}
        key_uri: str | None = None
        try:
            env = read_envelope(path)
            details["kind"] = env.header["kind"]
            key_uri = env.header["kms_key_id"]
            wanted, keys = self._authenticated(env)  # before anything is touched
            with (
                mapped_errors("restore"),
                connect(url, allow_insecure=self.settings.database_allow_insecure) as conn,
            ):
                sio.pin_session(conn)
                with conn.transaction():
                    lock_schema(conn)  # before the drops: openers wait, no lock cycle
                    for t in sio.list_tables(conn):
                        if t.name not in keep:
                            sio.drop_table(conn, t.name)
                    result = self._load_into(
                        conn, env, keys, wanted, sample, keep, audit_keys=False
                    )
                    if after_load is not None:
                        after_load(conn)
        except SealedKBError as exc:
            self._record_error(RESTORE, exc, key_uri, details)
            raise
        self._record(
            RESTORE, key_uri, {**details, "entries": result["row_counts"].get(ENTRIES_TABLE)}
        )
        return result

    def _drop(self, dbname: str) -> None:
        try:
            with self._admin() as admin, mapped_errors("drop database"):
                sio.drop_database(admin, dbname)
        except SealedKBError as exc:
            log.error("could not drop database %s after a failed restore: %s", dbname, exc)

    def _load(
        self, env: Envelope, keys: SnapshotKeys, wanted: set[int], url: str, sample: int
    ) -> dict[str, Any]:
        with (
            mapped_errors("restore"),
            connect(url, allow_insecure=self.settings.database_allow_insecure) as conn,
        ):
            sio.pin_session(conn)
            with conn.transaction():
                busy = sio.tables_with_rows(conn)
                if busy:
                    raise ConflictError(
                        f"the target database is not empty ({', '.join(busy)} hold rows): "
                        "restore only goes into a new or empty database",
                        field="target",
                    )
                return self._load_into(conn, env, keys, wanted, sample)

    def _load_into(
        self,
        conn: Connection[TupleRow],
        env: Envelope,
        keys: SnapshotKeys,
        wanted: set[int],
        sample: int,
        keep: frozenset[str] = frozenset(),
        *,
        audit_keys: bool = True,
    ) -> dict[str, Any]:
        """Load the snapshot in the caller's transaction. Tables in ``keep`` are not
        loaded (their stream is still read and checked against the manifest).
        ``audit_keys`` False: the key proofs are not audited one by one (restoring over
        a live database, whose audit trail this transaction has locked)."""
        tables = [sio.TableInfo.from_dict(t) for t in env.header["tables"]]
        expected = env.trailer["tables"]
        newer = sorted(set(sio.applied_migrations(conn)) - wanted)
        if newer:
            raise ConflictError(
                "the target database has schema migrations the snapshot does not "
                f"({', '.join(map(str, newer))}); restore into a new database "
                "(--target NAME) or an empty, unmigrated one",
                field="target",
            )
        apply_migrations(conn, only=wanted)
        present = {t.name: t for t in sio.list_tables(conn)}
        for t in tables:
            if t.name not in present or present[t.name].columns != t.columns:
                raise ValidationError(
                    f"table {t.name} of the snapshot does not match the schema this "
                    "sealedkb builds for its migrations; restore with the sealedkb "
                    "version that took it",
                    field="snapshot",
                )
        triggers = sio.user_trigger_tables(conn, [t.name for t in tables])
        for name in triggers:
            sio.set_user_triggers(conn, name, enabled=False)
        # The snapshot's own migration rows replace those just written.
        sio.truncate(conn, sio.MIGRATIONS_TABLE)
        by_name = {t.name: t for t in tables}
        with SnapshotReader(env, keys) as reader:
            for ts in reader.tables():
                if ts.name in keep:
                    for _block in ts.blocks(count=True):
                        pass
                    ts.require_match()
                    continue
                loaded = sio.copy_in(conn, by_name[ts.name], ts.blocks(count=False))
                ts.require_match(loaded_rows=loaded)
        for name in triggers:
            sio.set_user_triggers(conn, name, enabled=True)
        for t in tables:
            sio.reset_sequences(conn, t)
        # Recompute counts and digests from the restored rows themselves.
        counts: dict[str, int] = {}
        for t in tables:
            if t.name in keep:
                continue
            digest = new_digest()
            rows = sio.copy_out(conn, t, digest.update)
            exp = expected[t.name]
            if (
                rows != exp["rows"]
                or sio.count_rows(conn, t.name) != exp["rows"]
                or digest.hexdigest() != exp["sha256"]
            ):
                raise SnapshotIntegrityError(
                    f"table {t.name}",
                    f"table {t.name}: the restored rows do not match the manifest",
                )
            counts[t.name] = rows
        proof = self._prove_keys(conn, sample, audited=audit_keys)
        apply_migrations(conn)  # bring the schema up to this code
        return {"ok": True, "row_counts": counts, **proof}

    def _prove_keys(
        self, conn: Connection[TupleRow], sample: int, *, audited: bool = True
    ) -> dict[str, int]:
        """Unwrap the restored active data keys and open a sample of sealed entries
        (one per content data key, plus ``sample`` at random): proof that the keystore
        matches the restored data. KeyUnavailableError (exit 5) if the KMS key is not
        usable; SnapshotIntegrityError if a document does not open."""
        keys: KeyUse = self._keys() if audited else self._raw_provider()
        records = {k.id.bytes: k for k in sio.data_keys(conn)}
        unwrapped: dict[bytes, DataKey] = {}

        def resolve(key_id: bytes) -> DataKey:
            hit = unwrapped.get(key_id)
            if hit is None:
                rec = records.get(key_id)
                if rec is None:
                    raise IntegrityError("sealed value names a data key that does not exist")
                material = keys.decrypt(
                    rec.kms_key_uri,
                    rec.wrapped,
                    encryption_context(rec.namespace, rec.purpose, rec.id),
                )
                hit = unwrapped[key_id] = DataKey(key_id, material)
            return hit

        for key_id, rec in records.items():
            if rec.active:
                resolve(key_id)
        opener = FieldOpener(resolve)
        entries = sio.sample_sealed_entries(conn, sample)
        for entry_id, namespace, blob in entries:
            aad = entry_doc_aad(namespace, entry_id)
            try:
                decode_doc(opener.open(blob, aad))
            except IntegrityError:
                raise SnapshotIntegrityError(
                    "keys",
                    f"entry {entry_id} of the restored database does not open with the "
                    "restored data keys",
                ) from None
        return {"data_keys_unwrapped": len(unwrapped), "entries_opened": len(entries)}

    def _record_in_restored(self, url: str, sid: str, details: dict[str, Any]) -> None:
        """Continue the restored database's own audit chain with the restore, so its
        trail says where it came from. Best effort: the restore already committed."""
        try:
            db = Database(url, max_size=1, allow_insecure=self.settings.database_allow_insecure)
        except SealedKBError as exc:
            log.warning("restore not recorded in the restored audit trail: %s", exc.message)
            return
        try:
            trail = AuditLog(
                db,
                principal=self.audit.principal if self.audit else self.settings.principal,
                checkpoint_dir=self.settings.home / "audit-restored",
                mac_key=None,  # never checkpoint another chain into this home's audit/
                now=self._now,
            )
            trail.record(RESTORE, key_uri=None, details={**details, "restored": True})
        except SealedKBError as exc:
            log.warning("restore not recorded in the restored audit trail: %s", exc.message)
        finally:
            db.close()

    # --- copy -----------------------------------------------------------------------

    def _resolve_key(self, key: str) -> str:
        text = key.strip()
        uri = text if text.startswith(URI_PREFIX) else URI_PREFIX + text
        try:
            return URI_PREFIX + str(uuid.UUID(uri[len(URI_PREFIX) :]))
        except ValueError:
            raise ValidationError(
                "--kms-key-id must be a key URI (local:key/<uuid>) or its uuid",
                field="kms_key_id",
            ) from None

    def copy(self, ref: str, kms_key_id: str) -> SnapshotInfo:
        """Re-encrypt a snapshot under another KMS key: a new snapshot (kind manual,
        same point in time) whose snapshot key and every data key inside are wrapped
        under ``kms_key_id``; it is verified in full before it appears."""
        path = self.resolve(ref)
        sid = path.name[: -len(SUFFIX)]
        new_uri = self._resolve_key(kms_key_id)
        details: dict[str, Any] = {"snapshot_id": sid, "kind": None}
        try:
            env = read_envelope(path)
            details["kind"] = env.header["kind"]
            info = self._copy(env, new_uri, details)
        except SealedKBError as exc:
            self._record_error(COPY, exc, new_uri, details)
            raise
        self._record(COPY, new_uri, {**details, "from_kms_key_id": env.header["kms_key_id"]})
        return info

    def _copy(self, env: Envelope, new_uri: str, details: dict[str, Any]) -> SnapshotInfo:
        folder = self._folder()
        self._clean_temp()
        keys = self._keys()
        old = self._unwrap(env)
        now = self._now()
        copy_id = new_snapshot_id(now)
        details["copy_id"] = copy_id
        ctx = _snapshot_context(copy_id)
        material, wrapped = keys.generate_data_key(new_uri, ctx)
        self._record(
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
            kms_key_version=self._raw_provider().wrapped_version(wrapped),
            wrapped_key=wrapped,
            encryption_context=ctx,
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
                "copied_at": _utc_iso(now),
            },
        )
        new_keys = derive_keys(material, salt)
        try:
            out = _FileOut(folder, copy_id)
        except OSError as exc:
            raise SnapshotStorageError(f"cannot write in {folder}: {exc.strerror}") from None
        writer: SnapshotWriter | None = None
        try:
            writer = SnapshotWriter(out.fh, header, new_keys)
            with SnapshotReader(env, old) as reader:
                for ts in reader.tables():
                    tw = writer.table(ts.name)
                    if ts.name in ("kb_data_keys", "kb_meta"):
                        data = b"".join(ts.blocks())
                        check = ts.require_match()
                        tw.write(self._rekey_table(ts.meta, data, new_uri, keys))
                    else:
                        # No row walk here: the digest proves the bytes, and the copy
                        # is verified in full (rows counted) before it is renamed.
                        for block in ts.blocks(count=False):
                            tw.write(block)
                        check = ts.require_match()
                    assert check.expected_rows is not None
                    writer.add_result(ts.name, tw.close(check.expected_rows))
            writer.finish({"completed_at": _utc_iso(self._now()), "copied_from": h["snapshot_id"]})
            out.fh.flush()
            os.fsync(out.fh.fileno())
            # The copy must verify before it exists under its name.
            tmp_env = read_envelope(out.tmp)
            self._verify_env(tmp_env, new_keys)
            final = out.commit()
        except OSError as exc:
            if writer is not None:
                writer.abort()
            out.discard()
            raise SnapshotStorageError(
                f"cannot write the copy in {folder}: {exc.strerror}"
            ) from None
        except BaseException:
            if writer is not None:
                writer.abort()
            out.discard()
            raise
        return self._info(final)

    @staticmethod
    def _rekey_table(meta: dict[str, Any], data: bytes, new_uri: str, keys: KeyUse) -> bytes:
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
            ctx = encryption_context(
                ns.decode(), KeyPurpose(purpose.decode()), uuid.UUID(bytes=raw_id)
            )
            material = keys.decrypt(uri.decode(), wrapped, ctx)
            row[i_wrapped] = keys.encrypt(new_uri, material, ctx)
            row[i_uri] = new_uri.encode()
        return encode_binary(rows)

    # --- delete ---------------------------------------------------------------------

    def delete(self, ref: str, *, reason: str | None = None) -> dict[str, Any]:
        path = self.resolve(ref)
        info = self._info(path)
        details: dict[str, Any] = {"snapshot_id": info.id, "kind": info.kind}
        if reason:
            details["reason"] = reason
        key_uri = info.header.get("kms_key_id")
        try:
            try:
                path.unlink()
                _fsync_dir(path.parent)
            except FileNotFoundError:
                raise NotFoundError(f"no snapshot {info.id}", field="snapshot") from None
            except OSError as exc:
                raise SnapshotStorageError(f"cannot delete {path}: {exc.strerror}") from None
        except SealedKBError as exc:
            self._record_error(DELETE, exc, key_uri, details)
            raise
        self._record(DELETE, key_uri, details)
        return {"id": info.id, "kind": info.kind, "deleted": True, "path": str(path)}

    def expire(self, retention_days: int) -> builtins.list[str]:
        """Delete automated snapshots older than ``retention_days`` (manual ones stay)."""
        cutoff = self._now() - timedelta(days=retention_days)
        gone = []
        for info in self.list():
            created = info.created_at
            if info.kind == "automated" and created is not None and created < cutoff:
                try:
                    self.delete(info.id, reason="retention")
                    gone.append(info.id)
                except SealedKBError as exc:
                    log.error("expired snapshot %s not deleted: %s", info.id, exc.message)
        return gone

    # --- drill ----------------------------------------------------------------------

    def drill(self, *, snapshot: str | None = None, keep: bool = False) -> dict[str, Any]:
        """create -> restore into a scratch database -> verify -> drop, each step timed.
        With ``snapshot``, drills that one instead of creating one. The drill's own
        snapshot is deleted afterwards unless ``keep``."""
        kb = self._require_kb()
        scratch = f"sealedkb_drill_{os.urandom(4).hex()}"
        steps: builtins.list[dict[str, Any]] = []
        details: dict[str, Any] = {"snapshot_id": snapshot, "kind": None}
        created: str | None = None
        started = time.perf_counter()

        def step(name: str, fn: Callable[[], Any]) -> Any:
            t0 = time.perf_counter()
            result = fn()
            steps.append({"step": name, "seconds": round(time.perf_counter() - t0, 3)})
            return result

        try:
            if snapshot is None:
                info = step("create", lambda: self.create(name="drill"))
                created = info.id
            else:
                info = self._info(self.resolve(snapshot))
            details.update({"snapshot_id": info.id, "kind": info.kind})
            restored = step("restore", lambda: self.restore(info.id, scratch))
            verified = step("verify", lambda: self.verify(info.id))
            step("drop", lambda: self._drop(scratch))
        except SealedKBError as exc:
            self._drop(scratch)  # a failed drill keeps its snapshot, for investigation
            self._record_error(DRILL, exc, kb.kms_key_uri, details)
            raise
        if created is not None and not keep:
            self.delete(created, reason="drill")
        total = time.perf_counter() - started
        self._record(
            DRILL,
            kb.kms_key_uri,
            {**details, **{f"{s['step']}_ms": _ms(s["seconds"]) for s in steps}},
        )
        return {
            "ok": True,
            "snapshot_id": info.id,
            "kind": info.kind,
            "kept": created is None or keep,
            "scratch_database": scratch,
            "steps": steps,
            "seconds": round(total, 3),
            "row_counts": restored["row_counts"],
            "entries_opened": restored["entries_opened"],
            "verify_mb_per_s": verified["mb_per_s"],
            "size_bytes": info.size_bytes,
        }


def _public_url(url: str) -> str:
    """The URL without a password, for output."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "?"
    params.pop("password", None)
    return make_conninfo("", **params)


def open_restored(settings: Settings, url: str) -> KnowledgeBase:
    """A KnowledgeBase on a restored database, with this home's keystore: for tests,
    drills and checking a restore by hand. Its audit checkpoints go to
    ``<home>/audit-restored/``, never into ``audit/`` (another chain's checkpoint
    there would make ``audit verify`` of the live database fail)."""
    kb = KnowledgeBase.open(settings.model_copy(update={"database_url": SecretStr(url)}))
    kb.audit.checkpoint_dir = settings.home / "audit-restored"
    return kb


# --- automated snapshots -----------------------------------------------------------------


@dataclass(frozen=True)
class DailyWindow:
    """A daily UTC window ``HH:MM-HH:MM`` (may wrap past midnight)."""

    start_minute: int
    length_minutes: int

    @classmethod
    def parse(cls, text: str) -> DailyWindow | None:
        if text == "off":
            return None
        m = re.fullmatch(r"(\d\d):(\d\d)-(\d\d):(\d\d)", text)
        if not m:
            raise ValidationError("snapshot window must be HH:MM-HH:MM (UTC) or off")
        a = int(m.group(1)) * 60 + int(m.group(2))
        b = int(m.group(3)) * 60 + int(m.group(4))
        length = (b - a) % (24 * 60)
        if not 0 <= a < 24 * 60 or length == 0:
            raise ValidationError("snapshot window must be HH:MM-HH:MM (UTC) or off")
        return cls(a, length)

    def current(self, now: datetime) -> datetime | None:
        """The start of the window ``now`` falls in, or None outside it."""
        now = now.astimezone(UTC)
        start = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(
            minutes=self.start_minute
        )
        if start > now:
            start -= timedelta(days=1)
        return start if now < start + timedelta(minutes=self.length_minutes) else None


def _metrics() -> Any:
    from prometheus_client import Counter

    from sealedkb.monitoring.metrics import REGISTRY

    return Counter(
        "sealedkb_snapshots_automated",
        "Automated snapshot attempts by outcome (success or failure).",
        ["outcome"],
        registry=REGISTRY,
    )


_COUNTER: Any = None
_COUNTER_LOCK = threading.Lock()


def _counter() -> Any:
    """``sealedkb_snapshots_automated_total{outcome}`` on /metrics (made on first use,
    with both outcomes at 0, so a scrape shows the series before the first window)."""
    global _COUNTER
    with _COUNTER_LOCK:
        if _COUNTER is None:
            _COUNTER = _metrics()
            for outcome in ("success", "failure"):
                _COUNTER.labels(outcome=outcome)
    return _COUNTER


def _count(outcome: str) -> None:
    _counter().labels(outcome=outcome).inc()


class SnapshotScheduler:
    """Automated snapshots while ``serve`` runs: once per daily window, retried after
    a failure while the window lasts, and expired after the retention. Several
    serving processes share the folder: a lock file lets one of them take it."""

    def __init__(
        self,
        snapshots: Snapshots,
        window: DailyWindow,
        retention_days: int,
        *,
        now: Callable[[], datetime] | None = None,
        interval: float = 60.0,
        retry_after: float = 300.0,
    ) -> None:
        if not 1 <= retention_days <= 35:
            raise ValidationError("retention must be 1-35 days", field="snapshot_retention_days")
        self.snapshots = snapshots
        self.window = window
        self.retention_days = retention_days
        self._now = now or (lambda: datetime.now(UTC))
        self.interval = interval
        self.retry_after = timedelta(seconds=retry_after)
        self.created = 0
        self.failures = 0
        self.expired = 0
        self.last_error: str | None = None
        self._next_try: datetime | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _done_in(self, start: datetime) -> bool:
        for info in self.snapshots.list():
            created = info.created_at
            if info.kind == "automated" and created is not None and created >= start:
                return True
        return False

    @contextlib.contextmanager
    def _locked(self) -> Iterator[bool]:
        folder = self.snapshots._folder()
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def tick(self) -> str:
        """One round: expire, then snapshot if the window is open and today's is missing.
        Returns what happened (created, failed, done, waiting, busy, outside-window)."""
        self.expired += len(self.snapshots.expire(self.retention_days))
        now = self._now()
        start = self.window.current(now)
        if start is None:
            self._next_try = None
            return "outside-window"
        if self._next_try is not None and now < self._next_try:
            return "waiting"
        with self._locked() as mine:
            if not mine:
                return "busy"
            if self._done_in(start):
                return "done"
            try:
                info = self.snapshots.create(kind="automated")
            except SealedKBError as exc:
                self.failures += 1
                self.last_error = exc.message
                self._next_try = now + self.retry_after
                _count("failure")
                log.error(
                    "automated snapshot failed (%s: %s); retrying in %d s",
                    exc.code,
                    exc.message,
                    self.retry_after.total_seconds(),
                )
                return "failed"
        self.created += 1
        self.last_error = None
        self._next_try = None
        _count("success")
        log.info("automated snapshot %s written", info.id)
        return "created"

    def _loop(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # a background loop must survive a bad round
                log.exception("snapshot scheduler round failed")
            if self._stop.wait(self.interval):
                return

    def start(self) -> SnapshotScheduler:
        _counter()
        self._thread = threading.Thread(target=self._loop, name="sealedkb-snapshots", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)


def start_scheduler(kb: KnowledgeBase) -> SnapshotScheduler | None:
    """For ``serve``: automated snapshots in ``SEALEDKB_SNAPSHOT_WINDOW`` (None when the
    window is off or the knowledge base is not encrypted). Stop it before closing."""
    window = DailyWindow.parse(kb.settings.snapshot_window)
    if window is None or not kb.encrypted:
        return None
    return SnapshotScheduler(
        Snapshots(kb.settings, kb), window, kb.settings.snapshot_retention_days
    ).start()
