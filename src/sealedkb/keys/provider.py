"""The key-provider seam: one small Protocol, selected by key URI scheme.

A provider holds KMS keys (key-encryption keys) that never leave it. sealedkb
asks it to encrypt (wrap) and decrypt (unwrap) data keys, always with an
encryption context that the provider binds into the ciphertext, as AWS KMS does.

Errors a provider raises (from sealedkb.errors):
- KeyUnavailableError: key disabled, pending deletion, destroyed, unknown,
  provider unreachable, or the root key does not open the keystore;
- AccessDeniedError: the key policy denies the action;
- IntegrityError: a wrapped key is malformed or bound to another context.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable


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


@runtime_checkable
class KeyProvider(Protocol):
    scheme: str

    def create_key(self, description: str = "") -> KeyMetadata: ...

    def describe_key(self, key_uri: str) -> KeyMetadata: ...

    def list_keys(self) -> list[KeyMetadata]: ...

    def encrypt(self, key_uri: str, plaintext: bytes, context: Mapping[str, str]) -> bytes:
        """Wrap up to 4 KiB of key material under the key's newest version."""
        ...

    def decrypt(self, key_uri: str, blob: bytes, context: Mapping[str, str]) -> bytes:
        """Unwrap; the context must equal the one given to encrypt."""
        ...

    def warnings(self) -> list[str]:
        """Operator-facing warnings about custody (e.g. a development root key)."""
        ...


def scheme_of(key_uri: str) -> str:
    scheme, sep, _ = key_uri.partition(":")
    if not sep or not scheme:
        from sealedkb.errors import ValidationError

        raise ValidationError("key URI must look like <scheme>:<id>", field="kms_key_id")
    return scheme
