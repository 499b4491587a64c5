"""What every snapshot operation shares: its settings, the folder, the key provider
(audited when there is an audit trail), the audit trail, the clock, and opening a
snapshot's wrapped key.

The operations take these narrow pieces, never the knowledge base: a snapshot is
made from a database URL and a KMS key, and most operations also run when the live
database is gone (disaster recovery: the keystore and the snapshot files are
enough); they are then recorded only in a restored database's own audit trail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sealedkb.audit.chain import AuditLog
from sealedkb.crypto.stream import DEFAULT_CHUNK_SIZE, SnapshotKeys, derive_keys
from sealedkb.errors import IntegrityError, KeyUnavailableError, SealedKBError, ValidationError
from sealedkb.keys.lifecycle import AuditedKeyUse
from sealedkb.keys.provider import KeyProvider
from sealedkb.model import KeyPurpose
from sealedkb.objectstore import Bucket, BucketConfig
from sealedkb.snapshots.fileformat import Envelope, SnapshotIntegrityError, unb64
from sealedkb.snapshots.s3 import S3SnapshotFolder
from sealedkb.snapshots.store import SnapshotFolder

log = logging.getLogger("sealedkb.snapshots")

# Actions recorded in the audit trail (the monitoring alarms read these names).
CREATE, VERIFY, RESTORE, COPY, DELETE, DRILL = (
    "CreateSnapshot",
    "VerifySnapshot",
    "RestoreSnapshot",
    "CopySnapshot",
    "DeleteSnapshot",
    "DrillSnapshot",
)


class KeyUse(Protocol):
    """What snapshots need from the key provider (the audited wrapper or the raw one)."""

    def generate_data_key(
        self, key_uri: str, context: Mapping[str, str]
    ) -> tuple[bytes, bytes]: ...

    def decrypt(self, key_uri: str, blob: bytes, context: Mapping[str, str]) -> bytes: ...

    def encrypt(self, key_uri: str, plaintext: bytes, context: Mapping[str, str]) -> bytes: ...


class DatabaseServer(Protocol):
    """The PostgreSQL server restores go to (built from the settings by the wiring)."""

    def admin_url(self) -> str:
        """A URL of the server the knowledge base runs on, for CREATE/DROP DATABASE
        (an embedded server is started, and in disaster recovery initialised, first)."""
        ...

    def checked_url(self, url: str) -> str:
        """``url`` once the transport rules (TLS, loopback) accept it."""
        ...


@dataclass(frozen=True)
class SnapshotSettings:
    """The settings values snapshots read."""

    folder: Path
    principal: str  # recorded in a restored database's trail when there is no live one
    restored_audit_dir: Path  # checkpoints of restored chains go here, never into audit/
    allow_insecure: bool = False  # database_allow_insecure
    bucket: BucketConfig | None = None  # snapshots in this S3 bucket instead of folder


@dataclass(frozen=True)
class LiveDatabase:
    """The knowledge base snapshots are taken of."""

    url: str = field(repr=False)
    encryption_mode: str  # EncryptionMode value, written into the header
    kms_key_uri: str | None  # None: a plaintext knowledge base

    @property
    def encrypted(self) -> bool:
        return self.encryption_mode == "on" and self.kms_key_uri is not None


def snapshot_context(snapshot_id: str) -> dict[str, str]:
    """Encryption context of a snapshot data key: the wrap only opens for this id."""
    return {"sealedkb:purpose": KeyPurpose.SNAPSHOT.value, "sealedkb:snapshot_id": snapshot_id}


def ms(seconds: float) -> int:
    return round(seconds * 1000)


class SnapshotContext:
    """The pieces one set of snapshot operations works with."""

    def __init__(
        self,
        settings: SnapshotSettings,
        *,
        provider: KeyProvider | None = None,
        open_keystore: Callable[[], KeyProvider] | None = None,
        audit: AuditLog | None = None,
        now: Callable[[], datetime] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.settings = settings
        self.folder: SnapshotFolder = (
            S3SnapshotFolder(Bucket(settings.bucket))
            if settings.bucket is not None
            else SnapshotFolder(settings.folder)
        )
        self.audit = audit
        self.chunk_size = chunk_size  # plaintext bytes per STREAM chunk (tests use small ones)
        self.now = now or (lambda: datetime.now(UTC))
        self._provider = provider
        self._open_keystore = open_keystore

    # --- keys ---------------------------------------------------------------------

    def raw_keys(self) -> KeyProvider:
        """The key provider itself (opened on first use when none was given)."""
        if self._provider is None:
            if self._open_keystore is None:
                raise KeyUnavailableError("no key provider: a snapshot needs the keystore")
            self._provider = self._open_keystore()
        return self._provider

    def keys(self) -> KeyUse:
        """The key provider, every call recorded in the audit trail when there is one."""
        provider = self.raw_keys()
        if self.audit is not None:
            return AuditedKeyUse(provider, self.audit)
        return provider

    def unwrap(self, env: Envelope) -> SnapshotKeys:
        """The keys of a snapshot, from its wrapped key (one KMS call)."""
        h = env.header
        ctx = h["encryption_context"]
        if ctx != snapshot_context(h["snapshot_id"]):
            raise SnapshotIntegrityError(
                "header", "the header's encryption context does not name this snapshot"
            )
        try:
            material = self.keys().decrypt(
                h["kms_key_id"], unb64(h["wrapped_key"], "wrapped key"), ctx
            )
        except IntegrityError:
            raise SnapshotIntegrityError(
                "snapshot key",
                "the snapshot's wrapped key failed to open (altered, or bound to another snapshot)",
            ) from None
        return derive_keys(material, unb64(h["salt"], "salt"))

    # --- audit --------------------------------------------------------------------

    def record(self, action: str, key_uri: str | None, details: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit.record(action, key_uri=key_uri, details=details)

    def record_error(
        self, action: str, exc: SealedKBError, key_uri: str | None, details: dict[str, Any]
    ) -> None:
        if self.audit is not None:
            self.audit.record_error(action, exc, key_uri=key_uri, details=details)
        else:
            log.warning("%s failed (%s); no audit trail to record it in", action, exc.code)


def require_encrypted(database: LiveDatabase | None) -> tuple[LiveDatabase, str]:
    """The live database and its KMS key, or why a snapshot cannot be taken."""
    if database is None:
        raise ValidationError("this needs an initialised knowledge base ('sealedkb init')")
    if not database.encrypted or database.kms_key_uri is None:
        raise ValidationError(
            "encryption is off in this knowledge base: snapshots are sealed under its KMS "
            "key, and a plaintext knowledge base has none",
            field="encryption",
        )
    return database, database.kms_key_uri
