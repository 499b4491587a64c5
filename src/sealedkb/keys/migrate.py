"""Changing custody: every data key re-wrapped from the current KMS key (any
provider) to another one (any provider), online, then ``kb_meta.kms_key_uri``
switched (``sealedkb key migrate --to URI``; runbook "Changing custody").

How it runs (docs/ENCRYPTION-KEY-MANAGEMENT.md):

1. The target is a key URI (it must exist and be Enabled) or a bare scheme
   (``local``, ``pkcs11``, ``kmip``, ...): a new key is created there.
2. Each data key not yet under the target (table ``kb_data_keys``, active and
   retired alike) is unwrapped by its own provider and wrapped by the target, in a
   small transaction of its own with an optimistic check (the row must still hold
   the wrap that was read) and its audit event. A crash or a kill leaves every row
   either under the old key or under the new one; a rerun continues with what is
   left. Readers go on meanwhile: :class:`SchemeRouter` lets a knowledge base
   unwrap data keys of any provider, whatever its own key is.
3. Every data key under the target is unwrapped once (nothing is switched to a
   key that cannot open the data), and the audit chain is verified under the old
   MAC key (custody never launders a rewritten trail).
4. The switch: one transaction locks ``kb_data_keys`` against new inserts, checks
   that none is left under another key, points ``kb_meta.kms_key_uri`` at the target,
   writes the values the knowledge base re-signed under the new provider, and
   records ``SwitchKmsKey``. The audit checkpoints signed by the old provider move
   to ``audit/custody-<time>/`` just before it, and the new provider signs a new
   checkpoint right after.

Afterwards the old provider is not needed: the knowledge base opens with the new
one alone. Bearer tokens are MACed by the provider's MAC key, so tokens issued
before the switch stop working (re-issue them); processes that were serving
during the switch keep the old key for new data keys until restarted (a rerun
moves those too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from sealedkb.audit.chain import AuditLog
from sealedkb.crypto.keyring import encryption_context
from sealedkb.errors import (
    ConflictError,
    IntegrityError,
    KeyUnavailableError,
    SealedKBError,
    ValidationError,
)
from sealedkb.keys.provider import (
    DEFAULT_PENDING_WINDOW_DAYS,
    DEFAULT_ROTATION_DAYS,
    KeyMetadata,
    KeyProvider,
    KeyState,
    keystore_of,
    scheme_of,
)
from sealedkb.model import WrappedDataKey
from sealedkb.store.custody import CustodyTable
from sealedkb.store.db import Database

log = logging.getLogger("sealedkb.keys.migrate")

MAX_PASSES = 5
ProviderOf = Callable[[str], KeyProvider]  # the provider that serves a key URI
# Values of kb_meta the knowledge base signs under its provider, re-signed for the
# new one: (old provider, new provider, new key URI) -> {kb_meta key: value}.
Resigner = Callable[[KeyProvider, KeyProvider, str], dict[str, str]]


@dataclass(frozen=True, slots=True)
class CustodyReport:
    """What ``key migrate`` did (or, with ``dry_run``, would do)."""

    from_key: str
    to_key: str
    dry_run: bool
    data_keys: int
    to_rewrap: int
    rewrapped: int = 0
    changed_meanwhile: int = 0
    switched: bool = False
    checkpoints_archived: int = 0
    checkpoint_archive: str | None = None
    new_key_created: bool = False
    seconds: float = 0.0
    by_kms_key: dict[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["warnings"] = list(self.warnings)
        return out


class SchemeRouter(KeyProvider):
    """A provider that serves key URIs of every scheme: calls naming a key go to the
    provider of that key's scheme (built on first use), the rest to ``primary``.
    While custody changes, a knowledge base's data keys sit under two providers;
    its key ring unwraps each with its own. Every method is spelled out."""

    def __init__(self, primary: KeyProvider, provider_of: ProviderOf) -> None:
        self.primary = primary
        self.scheme = primary.scheme
        self.principal = primary.principal
        self._provider_of = provider_of
        self._others: dict[str, KeyProvider] = {}

    def _for(self, key_uri: str) -> KeyProvider:
        scheme = scheme_of(key_uri)
        if scheme == self.primary.scheme:
            return self.primary
        other = self._others.get(scheme)
        if other is None:
            other = self._others[scheme] = self._provider_of(key_uri)
        return other

    def for_principal(self, principal: str) -> Self:
        provider_of = self._provider_of

        def other_of(uri: str) -> KeyProvider:
            return provider_of(uri).for_principal(principal)

        return type(self)(self.primary.for_principal(principal), other_of)

    def create_key(self, description: str = "") -> KeyMetadata:
        return self.primary.create_key(description)

    def describe_key(self, key_uri: str) -> KeyMetadata:
        return self._for(key_uri).describe_key(key_uri)

    def list_keys(self) -> list[KeyMetadata]:
        return self.primary.list_keys()

    def encrypt(self, key_uri: str, plaintext: bytes, context: Mapping[str, str]) -> bytes:
        return self._for(key_uri).encrypt(key_uri, plaintext, context)

    def decrypt(self, key_uri: str, blob: bytes, context: Mapping[str, str]) -> bytes:
        return self._for(key_uri).decrypt(key_uri, blob, context)

    def generate_data_key(self, key_uri: str, context: Mapping[str, str]) -> tuple[bytes, bytes]:
        return self._for(key_uri).generate_data_key(key_uri, context)

    def re_encrypt(self, key_uri: str, blob: bytes, context: Mapping[str, str]) -> bytes:
        return self._for(key_uri).re_encrypt(key_uri, blob, context)

    def wrapped_version(self, blob: bytes) -> int:
        return self.primary.wrapped_version(blob)

    def rotate_key(self, key_uri: str) -> KeyMetadata:
        return self._for(key_uri).rotate_key(key_uri)

    def enable_key_rotation(
        self, key_uri: str, period_days: int = DEFAULT_ROTATION_DAYS
    ) -> KeyMetadata:
        return self._for(key_uri).enable_key_rotation(key_uri, period_days)

    def disable_key_rotation(self, key_uri: str) -> KeyMetadata:
        return self._for(key_uri).disable_key_rotation(key_uri)

    def disable_key(self, key_uri: str) -> KeyMetadata:
        return self._for(key_uri).disable_key(key_uri)

    def enable_key(self, key_uri: str) -> KeyMetadata:
        return self._for(key_uri).enable_key(key_uri)

    def schedule_key_deletion(
        self, key_uri: str, pending_window_days: int = DEFAULT_PENDING_WINDOW_DAYS
    ) -> KeyMetadata:
        return self._for(key_uri).schedule_key_deletion(key_uri, pending_window_days)

    def cancel_key_deletion(self, key_uri: str) -> KeyMetadata:
        return self._for(key_uri).cancel_key_deletion(key_uri)

    def get_key_policy(self, key_uri: str) -> dict[str, Any]:
        return self._for(key_uri).get_key_policy(key_uri)

    def put_key_policy(
        self, key_uri: str, policy: dict[str, Any], *, bypass_lockout_check: bool = False
    ) -> KeyMetadata:
        return self._for(key_uri).put_key_policy(
            key_uri, policy, bypass_lockout_check=bypass_lockout_check
        )

    def rotate_key_if_due(self, key_uri: str) -> KeyMetadata | None:
        return self._for(key_uri).rotate_key_if_due(key_uri)

    def destroy_key_if_due(self, key_uri: str) -> KeyMetadata | None:
        return self._for(key_uri).destroy_key_if_due(key_uri)

    def generate_mac(self, message: bytes) -> bytes:
        return self.primary.generate_mac(message)

    def verify_mac(self, message: bytes, mac: bytes) -> bool:
        return self.primary.verify_mac(message, mac)


class KeyCustody:
    """Moves one knowledge base's data keys to another KMS key (module doc)."""

    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        kms_key_uri: str,
        provider_of: ProviderOf,
        *,
        checkpoint_dir: Path,
        resign: Resigner | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.db = db
        self.audit = audit
        self.kms_key_uri = kms_key_uri
        self._provider_of = provider_of
        self._providers: dict[str, KeyProvider] = {}
        self.table = CustodyTable(db)
        self.checkpoint_dir = checkpoint_dir
        self._resign = resign
        self._now = now or (lambda: datetime.now(UTC))

    def _provider(self, key_uri: str) -> KeyProvider:
        scheme = scheme_of(key_uri)
        p = self._providers.get(scheme)
        if p is None:
            p = self._providers[scheme] = self._provider_of(key_uri)
        return p

    # --- the target -----------------------------------------------------------------

    def _target(self, to: str, *, dry_run: bool) -> tuple[str, bool]:
        """(key URI, created). A bare scheme creates a key there (not in a dry run)."""
        text = (to or "").strip()
        if not text or len(text) > 512:
            raise ValidationError("--to must be a key URI or a provider name", field="to")
        if ":" not in text:
            probe = self._provider(text + ":")  # a bare scheme: its provider (or ConfigError)
            if dry_run:
                return f"{text}:<new key>", False
            keystore = keystore_of(probe)
            if keystore is not None and not keystore.exists():
                keystore.initialize()
            try:
                meta = probe.create_key("sealedkb knowledge base key (custody change)")
            except SealedKBError as exc:
                self.audit.record_error("CreateKey", exc)
                raise
            self.audit.record("CreateKey", key_uri=meta.key_id, details={"in_use": False})
            return meta.key_id, True
        meta = self._provider(text).describe_key(text)
        if meta.state is not KeyState.ENABLED:
            raise KeyUnavailableError(
                f"cannot move data keys to {text}: it is {meta.state.value}",
                key_state=meta.state.value,
            )
        return meta.key_id, False

    # --- the run --------------------------------------------------------------------

    def run(self, to: str, *, dry_run: bool = False) -> CustodyReport:
        started = time.monotonic()
        target, created = self._target(to, dry_run=dry_run)
        counts = self.table.counts_by_kms_key()
        total = sum(counts.values())
        pending = total - counts.get(target, 0)
        if target == self.kms_key_uri and pending == 0:
            raise ValidationError(f"this knowledge base is already under {target}", field="to")
        warnings = (
            "bearer tokens issued before the switch stop working: re-issue them "
            "(sealedkb token create)",
            "restart serving processes after the switch (they keep the old key for new "
            "data keys; a rerun of key migrate moves those too)",
        )
        if dry_run:
            return CustodyReport(
                self.kms_key_uri,
                target,
                True,
                total,
                pending,
                by_kms_key=counts,
                warnings=warnings,
            )
        log.info("custody change to %s: %d data keys to re-wrap", target, pending)
        rewrapped = changed = 0
        for _ in range(MAX_PASSES):
            left = self.table.not_under(target)
            if not left:
                break
            for key in left:
                done = self._rewrap(key, target)
                rewrapped += done
                changed += 1 - done
        self._check_under(target)
        switched, archived, archive = self._switch(target, rewrapped)
        return CustodyReport(
            self.kms_key_uri,
            target,
            False,
            total,
            pending,
            rewrapped=rewrapped,
            changed_meanwhile=changed,
            switched=switched,
            checkpoints_archived=archived,
            checkpoint_archive=archive,
            new_key_created=created,
            seconds=round(time.monotonic() - started, 3),
            by_kms_key=self.table.counts_by_kms_key(),
            warnings=warnings,
        )

    def _rewrap(self, key: WrappedDataKey, target: str) -> int:
        ctx = encryption_context(key.namespace, key.purpose, key.id)
        try:
            material = self._provider(key.kms_key_uri).decrypt(key.kms_key_uri, key.wrapped, ctx)
            wrapped = self._provider(target).encrypt(target, material, ctx)
        except SealedKBError as exc:
            self.audit.record_error(
                "MigrateDataKey",
                exc,
                key_uri=target,
                namespace=key.namespace,
                details={"data_key_id": str(key.id), "from_key": key.kms_key_uri},
            )
            raise
        with self.audit.transaction("custody re-wrap") as conn:
            if not CustodyTable.swap(conn, key.id, key.kms_key_uri, key.wrapped, target, wrapped):
                return 0  # changed meanwhile (a rerun or a rotation): the next pass decides
            self.audit.append(
                conn,
                "MigrateDataKey",
                key_uri=target,
                namespace=key.namespace,
                details={
                    "data_key_id": str(key.id),
                    "purpose": key.purpose.value,
                    "from_key": key.kms_key_uri,
                },
            )
        return 1

    def _check_under(self, target: str) -> None:
        """Every data key under the target unwraps with it (before anything switches)."""
        p = self._provider(target)
        for key in self.table.under(target):
            ctx = encryption_context(key.namespace, key.purpose, key.id)
            try:
                p.decrypt(target, key.wrapped, ctx)
            except IntegrityError:
                raise IntegrityError(
                    f"data key {key.id} under {target} does not open; nothing was switched"
                ) from None

    def _switch(self, target: str, rewrapped: int) -> tuple[bool, int, str | None]:
        old_uri = self.kms_key_uri
        old = self._provider(old_uri)
        new = self._provider(target)
        if target == old_uri:  # a rerun that moved stragglers: nothing to switch
            return False, 0, None
        report = AuditLog(
            self.db,
            principal=self.audit.principal,
            checkpoint_dir=self.checkpoint_dir,
            mac_key=old,
        ).verify()
        if not report.ok:
            raise IntegrityError(
                "the audit trail does not verify under the current key "
                f"({report.problem} at seq {report.first_bad_seq}); custody not switched"
            )
        meta = self._resign(old, new, target) if self._resign is not None else {}
        # The old provider's checkpoints are set aside before the switch commits: a
        # crash after the commit then leaves no checkpoint the new key cannot verify
        # (the next command signs one), only an archive.
        stamp = self._now().strftime("%Y%m%dT%H%M%SZ")
        archive = self.checkpoint_dir / f"custody-{stamp}"
        archived = self.audit.archive_checkpoints(archive)
        with self.audit.transaction("custody switch") as conn:
            left = CustodyTable.switch(conn, old_uri, target, meta)
            if left < 0:
                raise ConflictError(
                    "kb_meta no longer names the key this run started from; run it again"
                )
            if left > 0:
                raise ConflictError(
                    f"{left} data keys were created under another key meanwhile; run "
                    "key migrate again"
                )
            self.audit.append(
                conn,
                "SwitchKmsKey",
                key_uri=target,
                details={"from_key": old_uri, "data_keys_rewrapped": rewrapped},
            )
        self.kms_key_uri = target
        log.warning("custody changed: this knowledge base is now sealed under %s", target)
        # From here on this process signs checkpoints with the new provider.
        self.audit.mac_key = new
        self.audit.checkpoint()
        return True, archived, str(archive) if archived else None
