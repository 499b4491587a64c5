"""The data-key ring: unwrap once, cache with a bounded age, hand out keys by purpose.

Data keys live wrapped in ``kb_data_keys`` (one active key per namespace and
purpose). The ring unwraps a key through the key provider on first use and keeps
it for at most ``max_age`` seconds, so there are no provider calls per row and a
disabled KMS key takes effect within that bound. The encryption context binds
namespace, purpose and the data key's id into the wrap, so a wrapped key copied
to another row fails to unwrap.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sealedkb.crypto.blind import Blinder
from sealedkb.crypto.sealed import DataKey, FieldOpener, FieldSealer
from sealedkb.errors import IntegrityError
from sealedkb.keys.provider import KeyProvider
from sealedkb.model import KeyPurpose, WrappedDataKey

if TYPE_CHECKING:
    from sealedkb.crypto.vectors import VectorCipher  # imports numpy: loaded on first use

DEFAULT_MAX_AGE = 300.0


class DataKeyStore(Protocol):
    """What the ring needs from storage (implemented in store/datakeys.py)."""

    def get_data_key(self, key_id: uuid.UUID) -> WrappedDataKey | None: ...

    def get_active_data_key(self, namespace: str, purpose: KeyPurpose) -> WrappedDataKey | None: ...

    def insert_data_key(self, key: WrappedDataKey) -> WrappedDataKey:
        """Insert as the active key; on a race, return the key that won."""
        ...


def encryption_context(namespace: str, purpose: KeyPurpose, key_id: uuid.UUID) -> dict[str, str]:
    return {
        "sealedkb:namespace": namespace,
        "sealedkb:purpose": purpose.value,
        "sealedkb:data_key_id": str(key_id),
    }


@dataclass
class _Cached:
    key: DataKey
    record: WrappedDataKey
    expires: float


class KeyRing:
    def __init__(
        self,
        provider: KeyProvider,
        store: DataKeyStore,
        kms_key_uri: str,
        *,
        max_age: float = DEFAULT_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.store = store
        self.kms_key_uri = kms_key_uri
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.RLock()
        self._keys: dict[bytes, _Cached] = {}
        self._active: dict[tuple[str, KeyPurpose], uuid.UUID] = {}
        self._sealers: dict[bytes, FieldSealer] = {}
        self._blinders: dict[bytes, Blinder] = {}
        self._vector_ciphers: dict[tuple[bytes, int, float], VectorCipher] = {}
        self._writers: dict[str, tuple[FieldSealer, Blinder, float]] = {}
        self._ciphers_by_ns: dict[tuple[str, int, float], tuple[VectorCipher, float]] = {}
        self.opener = FieldOpener(self._resolve)
        self.unwrap_calls = 0
        # Data-key cache hits and misses, read by monitoring/metrics.py (plain ints: crypto/ does
        # not import a metrics library). Incremented without a lock on the hot path, so
        # under heavy thread contention a count may rarely be lost; they are metrics.
        self.cache_hits = 0
        self.cache_misses = 0
        self.open_failures = 0  # sealed values that failed to open (IntegrityError)

    def clear(self) -> None:
        """Forget every unwrapped key (e.g. after a key state change)."""
        with self._lock:
            self._keys.clear()
            self._active.clear()
            self._sealers.clear()
            self._blinders.clear()
            self._vector_ciphers.clear()
            self._writers.clear()
            self._ciphers_by_ns.clear()
            self.opener.clear()

    # --- unwrap with a bounded cache -----------------------------------------

    def _unwrap(self, rec: WrappedDataKey) -> DataKey:
        ctx = encryption_context(rec.namespace, rec.purpose, rec.id)
        self.unwrap_calls += 1
        try:
            material = self.provider.decrypt(rec.kms_key_uri, rec.wrapped, ctx)
        except IntegrityError:
            raise IntegrityError("a wrapped data key failed to open") from None
        return DataKey(rec.id.bytes, material)

    def _cached(self, rec: WrappedDataKey) -> DataKey:
        now = self._clock()
        with self._lock:
            hit = self._keys.get(rec.id.bytes)
            if hit is not None and hit.expires > now:
                self.cache_hits += 1
                return hit.key
        self.cache_misses += 1
        key = self._unwrap(rec)  # outside the lock: may be a network call
        with self._lock:
            self._keys[rec.id.bytes] = _Cached(key, rec, now + self.max_age)
            self._sealers.pop(rec.id.bytes, None)
            self._blinders.pop(rec.id.bytes, None)
        return key

    def _resolve(self, key_id: bytes) -> DataKey:
        hit = self._keys.get(key_id)  # lock-free read: the hot path of every open
        if hit is not None and hit.expires > self._clock():
            self.cache_hits += 1
            return hit.key
        rec = hit.record if hit is not None else None
        if rec is None:
            rec = self.store.get_data_key(uuid.UUID(bytes=key_id))
            if rec is None:
                # The key id is read before authentication: an unknown one is tampering.
                raise IntegrityError("sealed value names a data key that does not exist")
        return self._cached(rec)

    # --- active keys -------------------------------------------------------

    def _active_record(self, namespace: str, purpose: KeyPurpose) -> WrappedDataKey:
        with self._lock:
            kid = self._active.get((namespace, purpose))
            hit = self._keys.get(kid.bytes) if kid else None
            # Re-read the active key when the cache entry expires, so a data key
            # rotated by another process is picked up within max_age.
            if hit is not None and hit.expires > self._clock():
                return hit.record
        rec = self.store.get_active_data_key(namespace, purpose)
        if rec is None:
            rec = self._create(namespace, purpose)
        with self._lock:
            self._active[(namespace, purpose)] = rec.id
        return rec

    def _create(self, namespace: str, purpose: KeyPurpose) -> WrappedDataKey:
        kid = uuid.uuid4()
        material, wrapped = self.provider.generate_data_key(
            self.kms_key_uri, encryption_context(namespace, purpose, kid)
        )
        rec = self.store.insert_data_key(
            WrappedDataKey(kid, namespace, purpose, self.kms_key_uri, wrapped)
        )
        if rec.id == kid:
            with self._lock:
                self._keys[kid.bytes] = _Cached(
                    DataKey(kid.bytes, material), rec, self._clock() + self.max_age
                )
        return rec

    def sealer(self, namespace: str, purpose: KeyPurpose = KeyPurpose.CONTENT) -> FieldSealer:
        rec = self._active_record(namespace, purpose)
        key = self._cached(rec)
        with self._lock:
            sealer = self._sealers.get(key.key_id)
            if sealer is None:
                sealer = self._sealers[key.key_id] = FieldSealer(key)
            return sealer

    def blinder(self, namespace: str) -> Blinder:
        rec = self._active_record(namespace, KeyPurpose.INDEX)
        key = self._cached(rec)
        with self._lock:
            blinder = self._blinders.get(key.key_id)
            if blinder is None:
                blinder = self._blinders[key.key_id] = Blinder(key.material)
            return blinder

    def vector_cipher(self, namespace: str, dim: int, beta: float) -> VectorCipher:
        """DCPE under the namespace's ``vector`` data key (rotation derived once, cached;
        every add and every search asks, so a hit is a lock-free read, as in writer)."""
        hit = self._ciphers_by_ns.get((namespace, dim, beta))
        if hit is not None and hit[1] > self._clock():
            self.cache_hits += 1
            return hit[0]
        rec = self._active_record(namespace, KeyPurpose.VECTOR)
        key = self._cached(rec)
        cache_key = (key.key_id, dim, beta)
        cipher = self._vector_ciphers.get(cache_key)
        if cipher is None:
            from sealedkb.crypto.vectors import VectorCipher

            cipher = VectorCipher(key.material, dim, beta)
            with self._lock:
                self._vector_ciphers[cache_key] = cipher
        with self._lock:
            cached = self._keys.get(key.key_id)
            if cached is not None:
                self._ciphers_by_ns[(namespace, dim, beta)] = (cipher, cached.expires)
        return cipher

    def _named_record(
        self, namespace: str, purpose: KeyPurpose, key_id: uuid.UUID
    ) -> WrappedDataKey:
        rec = self.store.get_data_key(key_id)
        if rec is None or rec.namespace != namespace or rec.purpose is not purpose:
            raise IntegrityError("a data key row does not match its namespace and purpose")
        return rec

    def blinder_of(self, namespace: str, key_id: uuid.UUID) -> Blinder:
        """The blinder of one named index data key of ``namespace`` (a retired one,
        while ``sealedkb reindex`` moves the namespace off it)."""
        key = self._cached(self._named_record(namespace, KeyPurpose.INDEX, key_id))
        with self._lock:
            blinder = self._blinders.get(key.key_id)
            if blinder is None:
                blinder = self._blinders[key.key_id] = Blinder(key.material)
            return blinder

    def vector_cipher_of(
        self, namespace: str, key_id: uuid.UUID, dim: int, beta: float
    ) -> VectorCipher:
        """DCPE under one named vector data key of ``namespace`` (as :meth:`blinder_of`)."""
        key = self._cached(self._named_record(namespace, KeyPurpose.VECTOR, key_id))
        cache_key = (key.key_id, dim, beta)
        cipher = self._vector_ciphers.get(cache_key)
        if cipher is None:
            from sealedkb.crypto.vectors import VectorCipher

            cipher = VectorCipher(key.material, dim, beta)
            with self._lock:
                self._vector_ciphers[cache_key] = cipher
        return cipher

    def writer(self, namespace: str) -> tuple[FieldSealer, Blinder]:
        """The content sealer and tag blinder of a namespace, cached together until the
        first of their data keys expires (the write path calls this once per entry)."""
        hit = self._writers.get(namespace)  # lock-free read, as in _resolve
        if hit is not None and hit[2] > self._clock():
            self.cache_hits += 1
            return hit[0], hit[1]
        sealer = self.sealer(namespace, KeyPurpose.CONTENT)
        blinder = self.blinder(namespace)
        with self._lock:
            ids = (sealer.key_id, self._active[(namespace, KeyPurpose.INDEX)].bytes)
            expires = min(self._keys[i].expires for i in ids if i in self._keys)
            self._writers[namespace] = (sealer, blinder, expires)
        return sealer, blinder

    def forget_active(self, namespace: str | None = None) -> None:
        """Drop the cached choice of active data keys (all namespaces, or one), so the
        next write re-reads ``kb_data_keys``: used right after a data-key rotation in
        this process. Other processes pick the new key up within ``max_age``."""
        with self._lock:
            for ns, purpose in list(self._active):
                if namespace is None or ns == namespace:
                    del self._active[(ns, purpose)]
            for ns in list(self._writers):
                if namespace is None or ns == namespace:
                    del self._writers[ns]
            for k in list(self._ciphers_by_ns):
                if namespace is None or k[0] == namespace:
                    del self._ciphers_by_ns[k]

    def open(self, blob: bytes, aad: bytes) -> bytes:
        try:
            return self.opener.open(blob, aad)
        except IntegrityError:
            # Counted for the IntegrityFailures alarm (monitoring/metrics.py reads it).
            self.open_failures += 1
            raise

    def open_many(self, blobs: Sequence[bytes], aads: Sequence[bytes]) -> list[bytes]:
        """Open several sealed values; raises OpenFailedError (an IntegrityError) with
        the index of the first that fails."""
        try:
            return self.opener.open_many(blobs, aads)
        except IntegrityError:
            self.open_failures += 1
            raise

    def check_available(self, namespace: str) -> None:
        """Raise KeyUnavailableError unless this namespace's keys unwrap now (no cache)."""
        rec = self.store.get_active_data_key(namespace, KeyPurpose.CONTENT)
        if rec is None:
            # No data key yet: a throw-away wrap proves the KMS key is usable.
            self.provider.encrypt(self.kms_key_uri, bytes(32), {"sealedkb:probe": namespace})
            return
        self._unwrap(rec)
