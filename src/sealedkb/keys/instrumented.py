"""A KeyProvider that times and counts every call of the provider it wraps.

The provider seam is the one place every key operation crosses, whatever the
provider (local keystore today, KMIP or AWS KMS later), so it is where
key-provider requests are measured: by operation (the method name) and outcome
(``ok`` or the error's stable code), with the latency. A refusal because of the
key's state (``KeyUnavailableError.key_state``) is counted on its own, which is
what the KeyDisabled and KeyUsedWhilePendingDeletion alarms watch.

Counting goes to a :class:`~sealedkb.monitoring.telemetry.Telemetry` (plain integers); no
metrics library is imported here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Self, TypeVar

from sealedkb.errors import KeyUnavailableError, SealedKBError
from sealedkb.keys.provider import (
    DEFAULT_PENDING_WINDOW_DAYS,
    DEFAULT_ROTATION_DAYS,
    KeyMetadata,
    KeyProvider,
)
from sealedkb.monitoring.telemetry import Telemetry

T = TypeVar("T")


class InstrumentedKeyProvider(KeyProvider):
    """Delegates every KeyProvider method to ``inner``, recording each call.

    It implements the Protocol explicitly and forwards nothing implicitly: a method
    added to :class:`KeyProvider` leaves this class abstract (a type error where it
    is built) until it is measured here too."""

    def __init__(self, inner: KeyProvider, telemetry: Telemetry) -> None:
        self.inner = inner
        self.telemetry = telemetry
        self.scheme = inner.scheme
        self.principal = inner.principal

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            result = fn()
        except KeyUnavailableError as exc:
            self.telemetry.key_call(
                operation, exc.code, time.perf_counter() - started, exc.key_state
            )
            raise
        except SealedKBError as exc:
            self.telemetry.key_call(operation, exc.code, time.perf_counter() - started)
            raise
        except Exception:
            self.telemetry.key_call(operation, "INTERNAL_ERROR", time.perf_counter() - started)
            raise
        self.telemetry.key_call(operation, "ok", time.perf_counter() - started)
        return result

    def for_principal(self, principal: str) -> Self:
        return type(self)(self.inner.for_principal(principal), self.telemetry)

    # --- data-key operations ---------------------------------------------------

    def encrypt(self, key_uri: str, plaintext: bytes, context: Mapping[str, str]) -> bytes:
        return self._call("Encrypt", lambda: self.inner.encrypt(key_uri, plaintext, context))

    def decrypt(self, key_uri: str, blob: bytes, context: Mapping[str, str]) -> bytes:
        return self._call("Decrypt", lambda: self.inner.decrypt(key_uri, blob, context))

    def generate_data_key(self, key_uri: str, context: Mapping[str, str]) -> tuple[bytes, bytes]:
        return self._call("GenerateDataKey", lambda: self.inner.generate_data_key(key_uri, context))

    def re_encrypt(self, key_uri: str, blob: bytes, context: Mapping[str, str]) -> bytes:
        return self._call("ReEncrypt", lambda: self.inner.re_encrypt(key_uri, blob, context))

    def wrapped_version(self, blob: bytes) -> int:
        return int(self.inner.wrapped_version(blob))  # parses bytes; no provider call

    # --- key management ----------------------------------------------------------

    def create_key(self, description: str = "") -> KeyMetadata:
        return self._call("CreateKey", lambda: self.inner.create_key(description))

    def describe_key(self, key_uri: str) -> KeyMetadata:
        return self._call("DescribeKey", lambda: self.inner.describe_key(key_uri))

    def list_keys(self) -> list[KeyMetadata]:
        return self._call("ListKeys", lambda: self.inner.list_keys())

    def rotate_key(self, key_uri: str) -> KeyMetadata:
        return self._call("RotateKey", lambda: self.inner.rotate_key(key_uri))

    def enable_key_rotation(
        self, key_uri: str, period_days: int = DEFAULT_ROTATION_DAYS
    ) -> KeyMetadata:
        return self._call(
            "EnableKeyRotation", lambda: self.inner.enable_key_rotation(key_uri, period_days)
        )

    def disable_key_rotation(self, key_uri: str) -> KeyMetadata:
        return self._call("DisableKeyRotation", lambda: self.inner.disable_key_rotation(key_uri))

    def disable_key(self, key_uri: str) -> KeyMetadata:
        return self._call("DisableKey", lambda: self.inner.disable_key(key_uri))

    def enable_key(self, key_uri: str) -> KeyMetadata:
        return self._call("EnableKey", lambda: self.inner.enable_key(key_uri))

    def schedule_key_deletion(
        self, key_uri: str, pending_window_days: int = DEFAULT_PENDING_WINDOW_DAYS
    ) -> KeyMetadata:
        return self._call(
            "ScheduleKeyDeletion",
            lambda: self.inner.schedule_key_deletion(key_uri, pending_window_days),
        )

    def cancel_key_deletion(self, key_uri: str) -> KeyMetadata:
        return self._call("CancelKeyDeletion", lambda: self.inner.cancel_key_deletion(key_uri))

    def get_key_policy(self, key_uri: str) -> dict[str, Any]:
        return self._call("GetKeyPolicy", lambda: self.inner.get_key_policy(key_uri))

    def put_key_policy(
        self, key_uri: str, policy: dict[str, Any], *, bypass_lockout_check: bool = False
    ) -> KeyMetadata:
        return self._call(
            "PutKeyPolicy",
            lambda: self.inner.put_key_policy(
                key_uri, policy, bypass_lockout_check=bypass_lockout_check
            ),
        )

    def rotate_key_if_due(self, key_uri: str) -> KeyMetadata | None:
        return self._call("RotateKeyIfDue", lambda: self.inner.rotate_key_if_due(key_uri))

    def destroy_key_if_due(self, key_uri: str) -> KeyMetadata | None:
        return self._call("DestroyKeyIfDue", lambda: self.inner.destroy_key_if_due(key_uri))

    def generate_mac(self, message: bytes) -> bytes:
        return self._call("GenerateMac", lambda: self.inner.generate_mac(message))

    def verify_mac(self, message: bytes, mac: bytes) -> bool:
        return self._call("VerifyMac", lambda: self.inner.verify_mac(message, mac))
