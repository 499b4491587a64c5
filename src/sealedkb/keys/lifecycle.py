"""Key lifecycle as the knowledge base runs it: each provider operation paired with
its audit event, KMS key rotation followed by re-wrapping every data key,
data-key rotation, online re-encryption of entries, and the key service's own
schedule (automatic rotation, destruction after the pending window).

Transactions and the audit trail (docs/DESIGN.md §5):

- Database changes (re-wrapped data keys, rotated data keys, re-sealed rows) and
  their events commit in one transaction.
- Keystore-file changes (rotate, disable, policy, ...) have no transaction of
  their own. They run *inside* the database transaction that appends their event,
  while it holds the audit lock, and that transaction commits right after the
  file is replaced. A failure before the file change rolls back and is recorded
  as a failed event; the one window left is a crash (or a database failure)
  between the file replace and the commit, where the key changed but no event
  was written. ``key describe`` always shows the true state.
- Operations that change nothing (a denied or failed call, an unwrap) are
  recorded in a transaction of their own.

Every step is resumable: re-wrapping picks the data keys not yet under the
newest key version, re-encryption the rows still under a retired data key, so
running either again after a crash finishes the job.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Self

from sealedkb._periodic import PeriodicTask
from sealedkb.audit.chain import AuditLog
from sealedkb.crypto.keyring import KeyRing, encryption_context
from sealedkb.errors import (
    IntegrityError,
    NotFoundError,
    SealedKBError,
    ValidationError,
)
from sealedkb.formats.aad import embedding_aad, entry_doc_aad
from sealedkb.keys import request_ids
from sealedkb.keys.local import URI_PREFIX
from sealedkb.keys.policy import SYSTEM_PRINCIPAL, parse_policy_text
from sealedkb.keys.provider import (
    DEFAULT_PENDING_WINDOW_DAYS,
    DEFAULT_ROTATION_DAYS,
    KeyMetadata,
    KeyProvider,
    KeyState,
    schedules_itself,
)
from sealedkb.model import KeyPurpose, WrappedDataKey, validate_namespace
from sealedkb.store.datakeys import DataKeyTable
from sealedkb.store.db import Database
from sealedkb.store.jobs import Leadership
from sealedkb.store.rekey import RekeyTable

log = logging.getLogger("sealedkb.lifecycle")

DEFAULT_REWRAP_BATCH = 100
DEFAULT_REENCRYPT_BATCH = 500
MAX_BATCH = 10000
MAX_PASSES = 3


def _ctx_namespace(context: Mapping[str, str]) -> str | None:
    return context.get("sealedkb:namespace") or context.get("sealedkb:probe")


def _ctx_details(context: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "sealedkb:purpose" in context:
        out["purpose"] = context["sealedkb:purpose"]
    if "sealedkb:data_key_id" in context:
        out["data_key_id"] = context["sealedkb:data_key_id"]
    if "sealedkb:probe" in context:
        out["probe"] = True
    return out


def _request_id_detail() -> dict[str, Any]:
    rid = request_ids.last()
    return {} if rid is None else {"kms_request_id": rid}


def _with_request_id(kw: dict[str, Any]) -> dict[str, Any]:
    """The event's arguments with the key service's request id of the call just
    made (keys/request_ids.py), when it gave one."""
    return {**kw, "details": {**kw.get("details", {}), **_request_id_detail()}}


class AuditedKeyUse(KeyProvider):
    """The key provider as the key ring sees it: every wrap and unwrap is recorded.

    Unwraps (Decrypt) happen outside any entry transaction, on a cache miss, so
    their events get a transaction of their own; they are rare thanks to the
    cache. A new data key's GenerateDataKey event is written by
    :class:`AuditedDataKeys` in the transaction that stores it; only a failed call
    is recorded here.

    Key management calls pass straight through: :class:`KeyLifecycle` records each
    of them in the transaction that makes the change. Every method is spelled out
    (no implicit forwarding), so a method added to :class:`KeyProvider` leaves this
    class abstract until someone decides here how it is audited."""

    def __init__(self, provider: KeyProvider, audit: AuditLog) -> None:
        self.inner = provider
        self.audit = audit
        self.scheme = provider.scheme
        self.principal = provider.principal

    def for_principal(self, principal: str) -> Self:
        return type(self)(self.inner.for_principal(principal), self.audit)

    def decrypt(self, key_uri: str, blob: bytes, context: Mapping[str, str]) -> bytes:
        kw: dict[str, Any] = {
            "key_uri": key_uri,
            "namespace": _ctx_namespace(context),
            "details": _ctx_details(context),
        }
        request_ids.clear()
        try:
            material = self.inner.decrypt(key_uri, blob, context)
        except SealedKBError as exc:
            self.audit.record_error("Decrypt", exc, **_with_request_id(kw))
            raise
        self.audit.record("Decrypt", **_with_request_id(kw))
        return material

    def generate_data_key(self, key_uri: str, context: Mapping[str, str]) -> tuple[bytes, bytes]:
        request_ids.clear()
        try:
            return self.inner.generate_data_key(key_uri, context)
        except SealedKBError as exc:
            self.audit.record_error(
                "GenerateDataKey",
                exc,
                **_with_request_id(
                    {
                        "key_uri": key_uri,
                        "namespace": _ctx_namespace(context),
                        "details": _ctx_details(context),
                    }
                ),
            )
            raise

    def encrypt(self, key_uri: str, plaintext: bytes, context: Mapping[str, str]) -> bytes:
        """Only the availability probe wraps directly; record it like any other call."""
        kw: dict[str, Any] = {
            "key_uri": key_uri,
            "namespace": _ctx_namespace(context),
            "details": _ctx_details(context),
        }
        request_ids.clear()
        try:
            blob = self.inner.encrypt(key_uri, plaintext, context)
        except SealedKBError as exc:
            self.audit.record_error("Encrypt", exc, **_with_request_id(kw))
            raise
        self.audit.record("Encrypt", **_with_request_id(kw))
        return blob

    def re_encrypt(self, key_uri: str, blob: bytes, context: Mapping[str, str]) -> bytes:
        """Recorded per batch by :meth:`KeyLifecycle.rewrap`, in its transaction."""
        return self.inner.re_encrypt(key_uri, blob, context)

    def wrapped_version(self, blob: bytes) -> int:
        return self.inner.wrapped_version(blob)  # parses bytes; no key is used

    # --- key management: recorded by KeyLifecycle ------------------------------

    def create_key(self, description: str = "") -> KeyMetadata:
        return self.inner.create_key(description)

    def describe_key(self, key_uri: str) -> KeyMetadata:
        return self.inner.describe_key(key_uri)

    def list_keys(self) -> list[KeyMetadata]:
        return self.inner.list_keys()

    def rotate_key(self, key_uri: str) -> KeyMetadata:
        return self.inner.rotate_key(key_uri)

    def enable_key_rotation(
        self, key_uri: str, period_days: int = DEFAULT_ROTATION_DAYS
    ) -> KeyMetadata:
        return self.inner.enable_key_rotation(key_uri, period_days)

    def disable_key_rotation(self, key_uri: str) -> KeyMetadata:
        return self.inner.disable_key_rotation(key_uri)

    def disable_key(self, key_uri: str) -> KeyMetadata:
        return self.inner.disable_key(key_uri)

    def enable_key(self, key_uri: str) -> KeyMetadata:
        return self.inner.enable_key(key_uri)

    def schedule_key_deletion(
        self, key_uri: str, pending_window_days: int = DEFAULT_PENDING_WINDOW_DAYS
    ) -> KeyMetadata:
        return self.inner.schedule_key_deletion(key_uri, pending_window_days)

    def cancel_key_deletion(self, key_uri: str) -> KeyMetadata:
        return self.inner.cancel_key_deletion(key_uri)

    def get_key_policy(self, key_uri: str) -> dict[str, Any]:
        return self.inner.get_key_policy(key_uri)

    def put_key_policy(
        self, key_uri: str, policy: dict[str, Any], *, bypass_lockout_check: bool = False
    ) -> KeyMetadata:
        return self.inner.put_key_policy(key_uri, policy, bypass_lockout_check=bypass_lockout_check)

    def rotate_key_if_due(self, key_uri: str) -> KeyMetadata | None:
        return self.inner.rotate_key_if_due(key_uri)

    def destroy_key_if_due(self, key_uri: str) -> KeyMetadata | None:
        return self.inner.destroy_key_if_due(key_uri)

    # --- audit checkpoints (the audit log's own key; nothing to record) ----------

    def generate_mac(self, message: bytes) -> bytes:
        return self.inner.generate_mac(message)

    def verify_mac(self, message: bytes, mac: bytes) -> bool:
        return self.inner.verify_mac(message, mac)


class AuditedDataKeys:
    """kb_data_keys for the key ring, recording a new data key's GenerateDataKey
    event in the transaction that inserts it."""

    def __init__(self, table: DataKeyTable, audit: AuditLog) -> None:
        self.table = table
        self.audit = audit

    def get_data_key(self, key_id: uuid.UUID) -> WrappedDataKey | None:
        return self.table.get_data_key(key_id)

    def get_active_data_key(self, namespace: str, purpose: KeyPurpose) -> WrappedDataKey | None:
        return self.table.get_active_data_key(namespace, purpose)

    def insert_data_key(self, key: WrappedDataKey) -> WrappedDataKey:
        with self.audit.transaction("data key insert") as conn:
            winner = RekeyTable.insert_data_key(conn, key)
            self.audit.append(
                conn,
                "GenerateDataKey",
                key_uri=key.kms_key_uri,
                namespace=key.namespace,
                details={
                    "purpose": key.purpose.value,
                    "data_key_id": str(key.id),
                    # a concurrent writer may have created this namespace's key first
                    "stored": winner.id == key.id,
                    # the key service's id of the GenerateDataKey call just made
                    **_request_id_detail(),
                },
            )
        return winner


class KeyLifecycle:
    """Key and data-key operations of one knowledge base, each audited."""

    def __init__(
        self,
        db: Database,
        provider: KeyProvider,
        kms_key_uri: str,
        audit: AuditLog,
        keyring: KeyRing,
        *,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.db = db
        self.provider = provider
        # The key service's clock, for deciding what is due (the provider's own
        # ``*_if_due`` checks decide again under its lock).
        self._now = now or (lambda: datetime.now(UTC))
        self.kms_key_uri = kms_key_uri
        self.audit = audit
        self.keyring = keyring
        self.rekey = RekeyTable(db)

    # --- helpers -------------------------------------------------------------

    def resolve(self, key: str | None) -> str:
        """A key URI from what the operator typed: none (this knowledge base's key),
        a full ``local:key/<uuid>`` URI or the bare uuid."""
        if key is None or key == "":
            return self.kms_key_uri
        text = key.strip()
        if ":" in text and not text.startswith(URI_PREFIX):
            return text  # another provider's key URI: that provider checks it
        uri = text if text.startswith(URI_PREFIX) else URI_PREFIX + text
        try:
            return URI_PREFIX + str(uuid.UUID(uri[len(URI_PREFIX) :]))
        except ValueError:
            raise ValidationError(
                "KEY must be a key URI (local:key/<uuid>) or its uuid", field="key"
            ) from None

    def _key_op(
        self,
        action: str,
        uri: str,
        op: Callable[[], KeyMetadata | None],
        details: Callable[[KeyMetadata], dict[str, Any]] | None = None,
        *,
        principal: str | None = None,
    ) -> KeyMetadata | None:
        """Run a keystore change inside the transaction that records it (module doc)."""
        try:
            with self.audit.transaction(action) as conn:
                meta = op()
                if meta is not None:
                    self.audit.append(
                        conn,
                        action,
                        key_uri=uri,
                        details=details(meta) if details else {},
                        principal=principal,
                    )
        except SealedKBError as exc:
            self.audit.record_error(action, exc, key_uri=uri, principal=principal)
            raise
        return meta

    def _must(self, meta: KeyMetadata | None) -> KeyMetadata:
        assert meta is not None
        return meta

    # --- KMS keys ------------------------------------------------------------

    def list_keys(self) -> list[dict[str, Any]]:
        return [
            {**m.to_dict(), "in_use": m.key_id == self.kms_key_uri}
            for m in self.provider.list_keys()
        ]

    def describe(self, key: str | None = None) -> dict[str, Any]:
        uri = self.resolve(key)
        try:
            meta = self.provider.describe_key(uri)
        except SealedKBError as exc:
            if exc.exit_code == 4:  # reads are recorded only when refused
                self.audit.record_error("DescribeKey", exc, key_uri=uri)
            raise
        return {**meta.to_dict(), "in_use": uri == self.kms_key_uri}

    def create(self, description: str = "") -> dict[str, Any]:
        try:
            meta = self.provider.create_key(description)
        except SealedKBError as exc:
            self.audit.record_error("CreateKey", exc)
            raise
        self.audit.record("CreateKey", key_uri=meta.key_id)
        return meta.to_dict()

    def rotate(
        self,
        key: str | None = None,
        *,
        batch_size: int = DEFAULT_REWRAP_BATCH,
        rewrap_only: bool = False,
    ) -> dict[str, Any]:
        """On-demand rotation, then every data key re-wrapped under the new version.
        ``rewrap_only`` finishes an interrupted re-wrap without a new version."""
        uri = self.resolve(key)
        _check_batch(batch_size)
        if rewrap_only:
            rewrapped = self.rewrap(uri, batch_size=batch_size)
            return {**self.describe(uri), "data_keys_rewrapped": rewrapped}
        meta = self._must(
            self._key_op(
                "RotateKey",
                uri,
                lambda: self.provider.rotate_key(uri),
                lambda m: {"version": m.versions, "automatic": False},
            )
        )
        rewrapped = self.rewrap(uri, batch_size=batch_size)
        return {**meta.to_dict(), "data_keys_rewrapped": rewrapped}

    def rewrap(
        self,
        uri: str,
        *,
        batch_size: int = DEFAULT_REWRAP_BATCH,
        provider: KeyProvider | None = None,
    ) -> int:
        """Re-wrap (ReEncrypt, inside the provider) every data key of ``uri`` that is
        not under its newest version; a transaction and an event per batch. Reads go
        on meanwhile: old versions still unwrap. Idempotent, so a rerun resumes."""
        p = provider or self.provider
        principal = p.principal if p is not self.provider else None
        newest = p.for_principal(SYSTEM_PRINCIPAL).describe_key(uri).versions
        stale = [k for k in self.rekey.data_keys_of(uri) if p.wrapped_version(k.wrapped) < newest]
        total = 0
        for start in range(0, len(stale), batch_size):
            chunk = stale[start : start + batch_size]
            try:
                new = [
                    (
                        k.id,
                        k.wrapped,
                        p.re_encrypt(
                            uri, k.wrapped, encryption_context(k.namespace, k.purpose, k.id)
                        ),
                    )
                    for k in chunk
                ]
            except SealedKBError as exc:
                self.audit.record_error(
                    "ReEncrypt",
                    exc,
                    key_uri=uri,
                    details={"to_version": newest},
                    principal=principal,
                )
                raise
            with self.audit.transaction("re-wrap data keys") as conn:
                done = RekeyTable.replace_wrapped(conn, new)
                self.audit.append(
                    conn,
                    "ReEncrypt",
                    key_uri=uri,
                    details={"data_keys": done, "to_version": newest},
                    principal=principal,
                )
            total += done
        return total

    def set_rotation(
        self, key: str | None, enabled: bool, period_days: int | None = None
    ) -> dict[str, Any]:
        uri = self.resolve(key)
        if enabled:
            days = 365 if period_days is None else period_days
            meta = self._key_op(
                "EnableKeyRotation",
                uri,
                lambda: self.provider.enable_key_rotation(uri, days),
                lambda m: {"rotation_period_days": m.rotation_period_days},
            )
        else:
            if period_days is not None:
                raise ValidationError(
                    "--period-days only goes with 'rotation enable'", field="period_days"
                )
            meta = self._key_op(
                "DisableKeyRotation", uri, lambda: self.provider.disable_key_rotation(uri)
            )
        return self._must(meta).to_dict()

    def disable(self, key: str | None = None) -> dict[str, Any]:
        uri = self.resolve(key)
        meta = self._key_op("DisableKey", uri, lambda: self.provider.disable_key(uri))
        if uri == self.kms_key_uri:
            self.keyring.clear()  # this process stops using it at once
        return self._must(meta).to_dict()

    def enable(self, key: str | None = None) -> dict[str, Any]:
        uri = self.resolve(key)
        return self._must(
            self._key_op("EnableKey", uri, lambda: self.provider.enable_key(uri))
        ).to_dict()

    def schedule_deletion(
        self, key: str | None = None, pending_window_days: int = 30
    ) -> dict[str, Any]:
        uri = self.resolve(key)
        meta = self._key_op(
            "ScheduleKeyDeletion",
            uri,
            lambda: self.provider.schedule_key_deletion(uri, pending_window_days),
            lambda m: {
                "pending_window_days": pending_window_days,
                "deletion_date": m.deletion_date.isoformat() if m.deletion_date else None,
            },
        )
        if uri == self.kms_key_uri:
            self.keyring.clear()
        return self._must(meta).to_dict()

    def cancel_deletion(self, key: str | None = None) -> dict[str, Any]:
        uri = self.resolve(key)
        return self._must(
            self._key_op("CancelKeyDeletion", uri, lambda: self.provider.cancel_key_deletion(uri))
        ).to_dict()

    def get_policy(self, key: str | None = None) -> dict[str, Any]:
        uri = self.resolve(key)
        try:
            return self.provider.get_key_policy(uri)
        except SealedKBError as exc:
            if exc.exit_code == 4:
                self.audit.record_error("GetKeyPolicy", exc, key_uri=uri)
            raise

    def put_policy(
        self, key: str | None, text: str, *, bypass_lockout_check: bool = False
    ) -> dict[str, Any]:
        uri = self.resolve(key)

        def op() -> KeyMetadata:
            # ValidationError: nothing changes. Another provider's key takes that key
            # service's own document (an AWS KMS key policy), which the provider checks.
            policy = (
                parse_policy_text(text).to_dict()
                if uri.startswith(URI_PREFIX)
                else _policy_document(text)
            )
            return self.provider.put_key_policy(
                uri, policy, bypass_lockout_check=bypass_lockout_check
            )

        self._key_op(
            "PutKeyPolicy",
            uri,
            op,
            lambda m: {"bypass_lockout_check": bypass_lockout_check},
        )
        return self.provider.for_principal(SYSTEM_PRINCIPAL).get_key_policy(uri)

    # --- the key service's own schedule ---------------------------------------

    def run_due(self) -> list[dict[str, Any]]:
        """Destroy keys whose pending window has passed; rotate keys whose rotation
        period has passed, then re-wrap their data keys. Done as the key service
        (no policy applies, principal ``sealedkb:system``). Cheap when nothing is
        due: one read of each key record. Errors are logged, never raised: this
        runs at start-up of every command and must not stop one. A key service
        that keeps the schedule itself (AWS KMS, Vault) is not asked at all."""
        done: list[dict[str, Any]] = []
        if schedules_itself(self.provider):
            return done
        system = self.provider.for_principal(SYSTEM_PRINCIPAL)
        try:
            keys = system.list_keys()
        except SealedKBError as exc:
            log.debug("key schedule not checked: %s", exc.message)
            return done
        now = self._now()
        for meta in keys:
            uri = meta.key_id
            try:
                if (
                    meta.state is KeyState.PENDING_DELETION
                    and meta.deletion_date is not None
                    and now >= meta.deletion_date
                ):
                    destroyed = self._key_op(
                        "DestroyKey",
                        uri,
                        lambda u=uri: system.destroy_key_if_due(u),  # type: ignore[misc]
                        lambda m: {"versions_destroyed": m.versions},
                        principal=SYSTEM_PRINCIPAL,
                    )
                    if destroyed is not None:
                        if uri == self.kms_key_uri:
                            self.keyring.clear()
                        done.append({"action": "DestroyKey", "key_id": uri})
                elif meta.next_rotation_date is not None and now >= meta.next_rotation_date:
                    rotated = self._key_op(
                        "RotateKey",
                        uri,
                        lambda u=uri: system.rotate_key_if_due(u),  # type: ignore[misc]
                        lambda m: {"version": m.versions, "automatic": True},
                        principal=SYSTEM_PRINCIPAL,
                    )
                    if rotated is not None:
                        n = self.rewrap(uri, provider=system)
                        done.append(
                            {"action": "RotateKey", "key_id": uri, "data_keys_rewrapped": n}
                        )
            except SealedKBError as exc:
                log.warning("scheduled key work on %s failed: %s", uri, exc.message)
        return done

    # --- data keys -------------------------------------------------------------

    def rotate_data_keys(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """New content data keys for new writes (one per namespace, or the one given);
        the old ones are retired, still there to open existing rows until
        ``reencrypt`` has moved them. Index keys are not rotated: see the runbook."""
        ns = validate_namespace(namespace) if namespace is not None else None
        namespaces = self.rekey.active_namespaces(KeyPurpose.CONTENT, ns)
        if ns is not None and not namespaces:
            raise NotFoundError(f"namespace {ns} has no data keys yet", field="namespace")
        out = []
        for name in namespaces:
            kid = uuid.uuid4()
            ctx = encryption_context(name, KeyPurpose.CONTENT, kid)
            try:
                _material, wrapped = self.provider.generate_data_key(self.kms_key_uri, ctx)
            except SealedKBError as exc:
                self.audit.record_error(
                    "RotateDataKey",
                    exc,
                    key_uri=self.kms_key_uri,
                    namespace=name,
                    details={"purpose": KeyPurpose.CONTENT.value},
                )
                raise
            new = WrappedDataKey(kid, name, KeyPurpose.CONTENT, self.kms_key_uri, wrapped)
            with self.audit.transaction("data key rotation") as conn:
                retired = RekeyTable.rotate_data_key(conn, new)
                details = {
                    "purpose": KeyPurpose.CONTENT.value,
                    "data_key_id": str(kid),
                    "retired_data_key_id": str(retired) if retired else None,
                }
                self.audit.append(
                    conn,
                    "GenerateDataKey",
                    key_uri=self.kms_key_uri,
                    namespace=name,
                    details={"purpose": KeyPurpose.CONTENT.value, "data_key_id": str(kid)},
                )
                self.audit.append(
                    conn, "RotateDataKey", key_uri=self.kms_key_uri, namespace=name, details=details
                )
            self.keyring.forget_active(name)
            out.append({"namespace": name, **details})
        return out

    def reencrypt(
        self,
        namespace: str | None = None,
        *,
        batch_size: int = DEFAULT_REENCRYPT_BATCH,
        pause: float = 0.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Move every entry sealed under a retired content key to its namespace's active
        key, online: a batch is read, opened and re-sealed outside any transaction,
        then written back in one transaction (with its event) only where the row is
        unchanged (same version and ciphertext). Readers never see a row that does
        not open; a concurrent update simply wins. Version and updated_at are kept:
        the entry did not change. Killed at any point, a rerun finishes the rest."""
        ns = validate_namespace(namespace) if namespace is not None else None
        _check_batch(batch_size)
        if not 0 <= pause <= 60:
            raise ValidationError("--pause must be between 0 and 60 seconds", field="pause")
        total = self.rekey.counts(ns)["on_retired_keys"]
        done = 0
        failed: list[str] = []
        for _ in range(MAX_PASSES):
            moved_this_pass = 0
            after: uuid.UUID | None = None
            while True:
                rows = self.rekey.stale_batch(ns, after, batch_size)
                if not rows:
                    break
                after = rows[-1].id
                resealed = []
                for row in rows:
                    # Every sealed column of the row moves: the document and the
                    # exact embedding (both under the namespace's content key).
                    doc_aad = entry_doc_aad(row.namespace, row.id)
                    emb_aad = embedding_aad(row.namespace, row.id)
                    try:
                        plain = self.keyring.open(row.doc_sealed, doc_aad)
                        emb = (
                            self.keyring.open(row.embedding_sealed, emb_aad)
                            if row.embedding_sealed is not None
                            else None
                        )
                    except IntegrityError:
                        if str(row.id) not in failed:
                            failed.append(str(row.id))
                        continue
                    sealer = self.keyring.sealer(row.namespace, KeyPurpose.CONTENT)
                    resealed.append(
                        (
                            row,
                            sealer.seal(plain, doc_aad),
                            sealer.seal(emb, emb_aad) if emb is not None else None,
                        )
                    )
                if not resealed:
                    continue
                with self.audit.transaction("re-encryption") as conn:
                    moved = sum(
                        RekeyTable.reseal(conn, row, doc, emb) for row, doc, emb in resealed
                    )
                    self.audit.append(
                        conn,
                        "ReEncryptEntries",
                        key_uri=self.kms_key_uri,
                        namespace=ns,
                        details={"rows": moved, "skipped": len(resealed) - moved},
                    )
                done += moved
                moved_this_pass += moved
                if progress is not None:
                    progress(done, total)
                if pause:
                    time.sleep(pause)
            if moved_this_pass == 0:
                break
        remaining = self.rekey.counts(ns)["on_retired_keys"]
        return {
            "namespace": ns,
            "reencrypted": done,
            "remaining": remaining,
            "failed": len(failed),
            "failed_ids": failed[:20],
        }

    def status(self) -> dict[str, Any]:
        """Rotation and data-key facts for ``status``."""
        out: dict[str, Any] = {}
        try:
            meta = self.provider.for_principal(SYSTEM_PRINCIPAL).describe_key(self.kms_key_uri)
            newest = meta.versions
            out["key_rotation"] = {
                "enabled": meta.rotation_enabled,
                "period_days": meta.rotation_period_days,
                "next_rotation_date": (
                    meta.next_rotation_date.isoformat() if meta.next_rotation_date else None
                ),
                "versions": meta.versions,
                "deletion_date": meta.deletion_date.isoformat() if meta.deletion_date else None,
            }
            keys = self.rekey.data_keys_of(self.kms_key_uri)
            out["data_keys_on_newest_key_version"] = sum(
                1 for k in keys if self.provider.wrapped_version(k.wrapped) == newest
            )
        except SealedKBError:
            out["key_rotation"] = None
            out["data_keys_on_newest_key_version"] = None
        out["data_keys_by_state"] = self.rekey.data_key_counts()
        by_key = self.rekey.counts()
        # Rows count as on a retired key when either sealed column is; the exact
        # embeddings alone are reported beside it.
        out["embeddings_on_retired_keys"] = by_key.pop("embeddings_on_retired_keys")
        out["entries_by_data_key"] = by_key
        return out


def _context(key: WrappedDataKey) -> dict[str, str]:
    return encryption_context(key.namespace, key.purpose, key.id)


def _policy_document(text: str) -> dict[str, Any]:
    """A key service's own policy document: a JSON object of at most 32 KB."""
    if len(text.encode("utf-8", "surrogatepass")) > 32 * 1024:
        raise ValidationError("a key policy is limited to 32 KB", field="policy")
    try:
        doc = json.loads(text)
    except ValueError:
        raise ValidationError("the key policy is not valid JSON", field="policy") from None
    if not isinstance(doc, dict):
        raise ValidationError("a key policy must be a JSON object", field="policy")
    return doc


def _check_batch(batch_size: int) -> None:
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValidationError(f"batch size must be between 1 and {MAX_BATCH}", field="batch_size")


class Housekeeper:
    """What a long-running process (``serve``) does in the background: the key
    schedule at start and then every ``interval`` seconds, and an audit checkpoint
    at least every ``interval`` seconds (default 60)."""

    def __init__(
        self,
        lifecycle: KeyLifecycle | None,
        audit: AuditLog,
        interval: float = 60.0,
        leadership: Leadership | None = None,
    ) -> None:
        self.lifecycle = lifecycle
        self.audit = audit
        self.interval = interval
        self.leadership = leadership
        self._periodic = PeriodicTask(
            "sealedkb-housekeeper",
            interval,
            self.run_guarded,
            run_first=False,  # start() runs the first round itself
            what="housekeeping round",
            logger=log,
        )
        self.runs = 0

    def run_once(self) -> None:
        try:
            if self.lifecycle is not None:
                self.lifecycle.run_due()
        finally:
            self.audit.checkpoint_quietly()
            self.runs += 1

    def run_guarded(self) -> None:
        """A round: on every replica without ``leadership``, else only on the leader."""
        if self.leadership is None:
            self.run_once()
        else:
            self.leadership.run(self.run_once)

    def start(self) -> Housekeeper:
        self.run_guarded()
        self._periodic.start()
        return self

    def stop(self) -> None:
        self._periodic.stop(timeout=10)
        self.audit.checkpoint_quietly()
