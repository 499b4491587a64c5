"""The key-provider seam: one small Protocol, selected by key URI scheme.

A provider holds KMS keys (key-encryption keys) that never leave it. sealedkb
asks it to encrypt (wrap) and decrypt (unwrap) data keys, always with an
encryption context that the provider binds into the ciphertext, as AWS KMS does.

Errors a provider raises (from sealedkb.errors):
- KeyUnavailableError: key disabled, pending deletion, destroyed, unknown,
  provider unreachable, or the root key does not open the keystore;
- AccessDeniedError: the key policy denies the action;
- IntegrityError: a wrapped key is malformed or bound to another context;
- ConflictError: the key is in a state the operation does not allow (AWS's
  KMSInvalidStateException), e.g. enabling a key that is pending deletion;
- ValidationError: an argument is out of range (nothing changes).

A provider instance acts for one principal (``principal``); ``for_principal``
returns one acting for another, sharing caches. The key policy (keys/policy.py)
is evaluated against that principal for every action.

Every module outside keys/ types against :class:`KeyProvider`; which provider
serves a key URI is chosen by its scheme in keys/registry.py. Setting a
keystore up (creating it, naming its root-key source, custody warnings) is not
part of the key service: a provider that keeps a keystore of its own also
implements :class:`LocalKeystore`, which only the init, doctor and status paths
use (through :func:`keystore_of`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, Self, runtime_checkable


class KeyState(StrEnum):
    ENABLED = "Enabled"
    DISABLED = "Disabled"
    PENDING_DELETION = "PendingDeletion"
    DESTROYED = "Destroyed"


@dataclass(frozen=True, slots=True)
class KeyMetadata:
    key_id: str  # the full key URI, e.g. local:key/6f1c...
    state: KeyState
    created_at: datetime
    description: str
    rotation_enabled: bool
    rotation_period_days: int
    next_rotation_date: datetime | None
    versions: int
    deletion_date: datetime | None
    provider: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "state": self.state.value,
            "created_at": self.created_at.isoformat(),
            "description": self.description,
            "rotation_enabled": self.rotation_enabled,
            "rotation_period_days": self.rotation_period_days,
            "next_rotation_date": (
                self.next_rotation_date.isoformat() if self.next_rotation_date else None
            ),
            "versions": self.versions,
            "deletion_date": self.deletion_date.isoformat() if self.deletion_date else None,
            "provider": self.provider,
        }


MIN_ROTATION_DAYS = 90
MAX_ROTATION_DAYS = 2560
DEFAULT_ROTATION_DAYS = 365
MIN_PENDING_WINDOW_DAYS = 7
MAX_PENDING_WINDOW_DAYS = 30
DEFAULT_PENDING_WINDOW_DAYS = 30


@runtime_checkable
class KeyProvider(Protocol):
    scheme: str
    principal: str

    def for_principal(self, principal: str) -> Self:
        """The same provider acting for another principal (policies apply to it)."""
        ...

    def create_key(self, description: str = "") -> KeyMetadata: ...

    def describe_key(self, key_uri: str) -> KeyMetadata: ...

    def list_keys(self) -> list[KeyMetadata]: ...

    def encrypt(self, key_uri: str, plaintext: bytes, context: Mapping[str, str]) -> bytes:
        """Wrap up to 4 KiB of key material under the key's newest version."""
        ...

    def decrypt(self, key_uri: str, blob: bytes, context: Mapping[str, str]) -> bytes:
        """Unwrap; the context must equal the one given to encrypt."""
        ...

    def generate_data_key(self, key_uri: str, context: Mapping[str, str]) -> tuple[bytes, bytes]:
        """A fresh 256-bit data key: (plaintext, wrapped under the newest version)."""
        ...

    def re_encrypt(self, key_uri: str, blob: bytes, context: Mapping[str, str]) -> bytes:
        """Unwrap and wrap again under the key's newest version, inside the provider."""
        ...

    def wrapped_version(self, blob: bytes) -> int:
        """The key material version a wrapped blob names (read before authentication)."""
        ...

    # --- lifecycle (docs/DESIGN.md §4; AWS KMS semantics) ---------------------------

    def rotate_key(self, key_uri: str) -> KeyMetadata:
        """On-demand rotation: a new material version; old versions keep unwrapping."""
        ...

    def enable_key_rotation(
        self, key_uri: str, period_days: int = DEFAULT_ROTATION_DAYS
    ) -> KeyMetadata: ...

    def disable_key_rotation(self, key_uri: str) -> KeyMetadata: ...

    def disable_key(self, key_uri: str) -> KeyMetadata: ...

    def enable_key(self, key_uri: str) -> KeyMetadata: ...

    def schedule_key_deletion(
        self, key_uri: str, pending_window_days: int = DEFAULT_PENDING_WINDOW_DAYS
    ) -> KeyMetadata: ...

    def cancel_key_deletion(self, key_uri: str) -> KeyMetadata:
        """PendingDeletion -> Disabled (as AWS KMS)."""
        ...

    def get_key_policy(self, key_uri: str) -> dict[str, Any]: ...

    def put_key_policy(
        self, key_uri: str, policy: dict[str, Any], *, bypass_lockout_check: bool = False
    ) -> KeyMetadata: ...

    # --- the key service's own schedule (no policy applies) --------------------

    def rotate_key_if_due(self, key_uri: str) -> KeyMetadata | None:
        """Automatic rotation: rotate when the period has passed; None if not due."""
        ...

    def destroy_key_if_due(self, key_uri: str) -> KeyMetadata | None:
        """Destroy the key material once the pending window has passed; None if not due."""
        ...

    # --- audit checkpoints ----------------------------------------------------

    def generate_mac(self, message: bytes) -> bytes:
        """HMAC-SHA256 under the provider's audit key (never leaves the provider)."""
        ...

    def verify_mac(self, message: bytes, mac: bytes) -> bool: ...


@runtime_checkable
class LocalKeystore(Protocol):
    """Administration of a keystore the provider keeps itself (the local provider's
    folder of files). Remote key services (AWS KMS, Vault, an HSM) have none."""

    def exists(self) -> bool:
        """Whether the keystore has been created."""
        ...

    def initialize(self) -> None:
        """Create the keystore if missing (idempotent; never replaces a root key)."""
        ...

    def root_key_source(self) -> str:
        """How the root key is obtained (``file``, ``passphrase``, ``generated``)."""
        ...

    def warnings(self) -> list[str]:
        """Operator-facing warnings about custody (e.g. a development root key)."""
        ...


@runtime_checkable
class SelfScheduling(Protocol):
    """A key service that runs the key schedule itself (AWS KMS rotates and deletes
    keys on its own; Vault's ``auto_rotate_period``): its ``rotate_key_if_due`` and
    ``destroy_key_if_due`` never have anything to do, so the knowledge base does not
    list its keys at every start to look for due work."""

    schedules_itself: bool


@dataclass(frozen=True, slots=True)
class ProviderDiagnosis:
    """What a key service tells about itself beyond the key's metadata (``doctor``):
    the permissions sealedkb needs that the credentials lack, named as the service
    names them, and the service's clock where it tells it."""

    missing_permissions: tuple[str, ...] = ()
    server_time: datetime | None = None
    checked_permissions: int = 0  # how many permissions the service was asked about


@runtime_checkable
class SelfDiagnosing(Protocol):
    """A key service that can report on the credentials sealedkb uses (Vault's
    ``sys/capabilities-self``) or its clock (the HTTP ``Date`` of AWS KMS and
    Vault). Providers without either (an HSM library, KMIP) do not implement it."""

    def diagnose(self, key_uri: str) -> ProviderDiagnosis: ...


def diagnosis_of(provider: KeyProvider, key_uri: str) -> ProviderDiagnosis | None:
    """The provider's self-report, or None where it has none."""
    return provider.diagnose(key_uri) if isinstance(provider, SelfDiagnosing) else None


def schedules_itself(provider: KeyProvider) -> bool:
    return isinstance(provider, SelfScheduling) and provider.schedules_itself is True


def keystore_of(provider: KeyProvider) -> LocalKeystore | None:
    """The provider's own keystore administration, or None for a remote key service."""
    return provider if isinstance(provider, LocalKeystore) else None


def scheme_of(key_uri: str) -> str:
    scheme, sep, _ = key_uri.partition(":")
    if not sep or not scheme:
        from sealedkb.errors import ValidationError

        raise ValidationError("key URI must look like <scheme>:<id>", field="kms_key_id")
    return scheme
