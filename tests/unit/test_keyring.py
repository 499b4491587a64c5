"""The data-key ring: one data key per (namespace, purpose), bounded cache, revocation."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest

from sealedkb.crypto.keyring import DEFAULT_MAX_AGE, KeyRing, encryption_context
from sealedkb.errors import IntegrityError, KeyUnavailableError
from sealedkb.formats.aad import field_aad
from sealedkb.keys.local import LocalKeyProvider
from sealedkb.keys.provider import KeyState
from sealedkb.model import KeyPurpose, WrappedDataKey

MAX_AGE = 300.0


def aad(namespace: str = "default", column: str = "content", entry: str = "e1") -> bytes:
    return field_aad(namespace, "kb_entries", column, entry)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryDataKeyStore:
    """In-memory stand-in for kb_data_keys (crypto.keyring.DataKeyStore)."""

    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, WrappedDataKey] = {}
        self.hide_active = False  # simulate a concurrent writer racing us

    def get_data_key(self, key_id: uuid.UUID) -> WrappedDataKey | None:
        return self.rows.get(key_id)

    def get_active_data_key(self, namespace: str, purpose: KeyPurpose) -> WrappedDataKey | None:
        if self.hide_active:
            return None
        return self._active(namespace, purpose)

    def _active(self, namespace: str, purpose: KeyPurpose) -> WrappedDataKey | None:
        for row in self.rows.values():
            if row.namespace == namespace and row.purpose == purpose and row.active:
                return row
        return None

    def insert_data_key(self, key: WrappedDataKey) -> WrappedDataKey:
        winner = self._active(key.namespace, key.purpose)
        if winner is not None:
            return winner
        self.rows[key.id] = key
        return key


class CountingProvider:
    """Wraps the real local provider and counts its calls."""

    def __init__(self, inner: LocalKeyProvider) -> None:
        self.inner = inner
        self.scheme = inner.scheme
        self.decrypts = 0
        self.encrypts = 0

    def encrypt(self, key_uri: str, plaintext: bytes, context: Mapping[str, str]) -> bytes:
        self.encrypts += 1
        return self.inner.encrypt(key_uri, plaintext, context)

    def generate_data_key(self, key_uri: str, context: Mapping[str, str]) -> tuple[bytes, bytes]:
        self.encrypts += 1  # counts wraps: a new data key is one wrap
        return self.inner.generate_data_key(key_uri, context)

    def decrypt(self, key_uri: str, blob: bytes, context: Mapping[str, str]) -> bytes:
        self.decrypts += 1
        return self.inner.decrypt(key_uri, blob, context)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


class Env:
    def __init__(self, keys_dir: Path) -> None:
        self.local = LocalKeyProvider(keys_dir)
        self.local.initialize()
        self.kms_uri = self.local.create_key("test").key_id
        self.provider = CountingProvider(self.local)
        self.store = MemoryDataKeyStore()
        self.clock = FakeClock()

    def ring(self, max_age: float = MAX_AGE) -> KeyRing:
        return KeyRing(
            self.provider,  # type: ignore[arg-type]
            self.store,
            self.kms_uri,
            max_age=max_age,
            clock=self.clock,
        )

    def set_state(self, state: KeyState) -> None:
        """What `sealedkb key disable/enable` does, from another process."""
        other = LocalKeyProvider(self.local.keys_dir)
        rec = other._load(self.kms_uri)
        rec["state"] = state.value
        other._store(rec)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path / "keys")


# --- data keys per namespace and purpose -------------------------------------------


def test_default_max_age() -> None:
    assert DEFAULT_MAX_AGE == 300.0


def test_sealer_creates_one_key_and_reuses_it(env: Env) -> None:
    ring = env.ring()
    s1 = ring.sealer("default")
    s2 = ring.sealer("default", KeyPurpose.CONTENT)
    assert s1 is s2
    assert len(env.store.rows) == 1
    (row,) = env.store.rows.values()
    assert (row.namespace, row.purpose, row.kms_key_uri) == ("default", "content", env.kms_uri)
    assert s1.key_id == row.id.bytes
    assert env.provider.encrypts == 1
    assert env.provider.decrypts == 0  # the creator keeps the fresh key: no unwrap

    blob = s1.seal(b"hello", aad())
    assert blob[1:17] == row.id.bytes
    assert ring.open(blob, aad()) == b"hello"
    # Another ring over the same store reuses the stored key.
    other = env.ring()
    assert other.sealer("default").key_id == s1.key_id
    assert other.open(blob, aad()) == b"hello"
    assert len(env.store.rows) == 1


def test_different_namespaces_and_purposes_get_different_keys(env: Env) -> None:
    ring = env.ring()
    a = ring.sealer("default")
    b = ring.sealer("team-b")
    idx = ring.sealer("default", KeyPurpose.INDEX)
    vec = ring.sealer("default", KeyPurpose.VECTOR)
    ids = {a.key_id, b.key_id, idx.key_id, vec.key_id}
    assert len(ids) == 4
    assert len(env.store.rows) == 4
    assert {(r.namespace, r.purpose) for r in env.store.rows.values()} == {
        ("default", KeyPurpose.CONTENT),
        ("team-b", KeyPurpose.CONTENT),
        ("default", KeyPurpose.INDEX),
        ("default", KeyPurpose.VECTOR),
    }
    ba = a.seal(b"in a", aad("default"))
    bb = b.seal(b"in b", aad("team-b"))
    assert ring.open(ba, aad("default")) == b"in a"
    assert ring.open(bb, aad("team-b")) == b"in b"
    with pytest.raises(IntegrityError):
        ring.open(ba, aad("team-b"))


def test_blinder(env: Env) -> None:
    ring = env.ring()
    b1 = ring.blinder("default")
    assert ring.blinder("default") is b1
    assert b1.word_token("key") == env.ring().blinder("default").word_token("key")
    assert b1.word_token("key") != ring.blinder("team-b").word_token("key")
    # The index key is its own data key, not the content key.
    index_rows = [r for r in env.store.rows.values() if r.purpose == KeyPurpose.INDEX]
    assert {r.namespace for r in index_rows} == {"default", "team-b"}


def test_insert_race_uses_the_winner(env: Env) -> None:
    first = env.ring()
    blob = first.sealer("default").seal(b"first", aad())
    env.store.hide_active = True  # the second ring does not see the key and creates one
    second = env.ring()
    sealer = second.sealer("default")
    env.store.hide_active = False
    assert len(env.store.rows) == 1
    assert sealer.key_id == next(iter(env.store.rows)).bytes
    assert second.open(blob, aad()) == b"first"
    assert first.open(sealer.seal(b"second", aad()), aad()) == b"second"


# --- the bounded cache -------------------------------------------------------------


def test_unwrap_once_within_max_age(env: Env) -> None:
    blob = env.ring().sealer("default").seal(b"v", aad())
    ring = env.ring()
    start = env.provider.decrypts
    assert ring.open(blob, aad()) == b"v"
    assert ring.unwrap_calls == 1
    for _ in range(20):
        assert ring.open(blob, aad()) == b"v"
    ring.sealer("default").seal(b"w", aad())
    env.clock.advance(MAX_AGE - 1)
    assert ring.open(blob, aad()) == b"v"
    assert ring.unwrap_calls == 1
    assert env.provider.decrypts - start == 1

    env.clock.advance(2)  # now past max_age
    assert ring.open(blob, aad()) == b"v"
    assert ring.unwrap_calls == 2
    assert env.provider.decrypts - start == 2
    for _ in range(5):
        ring.open(blob, aad())
    assert ring.unwrap_calls == 2


def test_sealer_refreshes_after_max_age(env: Env) -> None:
    ring = env.ring()
    sealer = ring.sealer("default")
    assert ring.unwrap_calls == 0
    env.clock.advance(MAX_AGE + 1)
    again = ring.sealer("default")
    assert ring.unwrap_calls == 1
    assert again.key_id == sealer.key_id
    assert ring.open(again.seal(b"x", aad()), aad()) == b"x"


def test_clear_forgets_keys(env: Env) -> None:
    ring = env.ring()
    blob = ring.sealer("default").seal(b"v", aad())
    ring.clear()
    assert ring.open(blob, aad()) == b"v"
    assert ring.unwrap_calls == 1


def test_unknown_data_key(env: Env) -> None:
    ring = env.ring()
    blob = ring.sealer("default").seal(b"v", aad())
    env.store.rows.clear()
    fresh = env.ring()
    # The key id is read before authentication: an unknown id is tampering.
    with pytest.raises(IntegrityError):
        fresh.open(blob, aad())


# --- revocation and recovery ------------------------------------------------------


def test_disable_takes_effect_within_max_age_and_recovers(env: Env) -> None:
    ring = env.ring()
    blob = ring.sealer("default").seal(b"secret value", aad())
    idx_token = ring.blinder("default").word_token("key")
    env.clock.advance(10)

    env.set_state(KeyState.DISABLED)
    # Still cached: reads keep working until the cache entry expires.
    assert ring.open(blob, aad()) == b"secret value"
    env.clock.advance(MAX_AGE - 20)
    assert ring.open(blob, aad()) == b"secret value"

    env.clock.advance(11)  # past max_age since the key was cached
    for _ in range(2):
        with pytest.raises(KeyUnavailableError) as exc:
            ring.open(blob, aad())
        assert "secret value" not in str(exc.value)
        with pytest.raises(KeyUnavailableError):
            ring.sealer("default")
        with pytest.raises(KeyUnavailableError):
            ring.blinder("default")
    # A new namespace cannot get a data key either, and nothing half-made is stored.
    rows_before = dict(env.store.rows)
    with pytest.raises(KeyUnavailableError):
        ring.sealer("new-ns")
    assert env.store.rows == rows_before

    env.set_state(KeyState.ENABLED)
    # Recovery without a new KeyRing.
    assert ring.open(blob, aad()) == b"secret value"
    assert ring.blinder("default").word_token("key") == idx_token
    new_blob = ring.sealer("default").seal(b"after", aad())
    assert ring.open(new_blob, aad()) == b"after"
    ring.sealer("new-ns")


def test_pending_deletion_is_unavailable(env: Env) -> None:
    ring = env.ring()
    blob = ring.sealer("default").seal(b"v", aad())
    env.set_state(KeyState.PENDING_DELETION)
    env.clock.advance(MAX_AGE + 1)
    with pytest.raises(KeyUnavailableError):
        ring.open(blob, aad())


@pytest.mark.parametrize("max_age", [0.0, 1.0, 60.0])
def test_max_age_is_honoured(env: Env, max_age: float) -> None:
    ring = env.ring(max_age=max_age)
    blob = ring.sealer("default").seal(b"v", aad())
    env.set_state(KeyState.DISABLED)
    env.clock.advance(max_age)  # an entry expires at exactly cached_at + max_age
    with pytest.raises(KeyUnavailableError):
        ring.open(blob, aad())


# --- wrapped keys are bound to their row --------------------------------------------


def test_wrapped_key_copied_to_other_namespace(env: Env) -> None:
    ring = env.ring()
    blob = ring.sealer("team-a").seal(b"a's data", aad("team-a"))
    (row,) = env.store.rows.values()

    # The same row edited to claim another namespace (same id, same wrapped bytes).
    env.store.rows[row.id] = dataclasses.replace(row, namespace="team-b")
    fresh = env.ring()
    with pytest.raises(IntegrityError) as exc:
        fresh.open(blob, aad("team-a"))
    assert "a's data" not in str(exc.value)
    with pytest.raises(IntegrityError):
        fresh.sealer("team-b")

    # A copy under a new id, as the active key of another namespace.
    env.store.rows[row.id] = row
    copy = dataclasses.replace(row, id=uuid.uuid4(), namespace="team-b")
    env.store.rows[copy.id] = copy
    with pytest.raises(IntegrityError):
        env.ring().sealer("team-b")
    # The original row still works.
    assert env.ring().open(blob, aad("team-a")) == b"a's data"


def test_wrapped_key_copied_to_other_purpose(env: Env) -> None:
    ring = env.ring()
    ring.sealer("default", KeyPurpose.CONTENT)
    (row,) = env.store.rows.values()
    env.store.rows[row.id] = dataclasses.replace(row, purpose=KeyPurpose.INDEX)
    with pytest.raises(IntegrityError):
        env.ring().blinder("default")


def test_encryption_context() -> None:
    kid = uuid.UUID("00000000-0000-4000-8000-000000000001")
    assert encryption_context("default", KeyPurpose.INDEX, kid) == {
        "sealedkb:namespace": "default",
        "sealedkb:purpose": "index",
        "sealedkb:data_key_id": str(kid),
    }


# --- availability probe ----------------------------------------------------------


def test_check_available_without_data_key(env: Env) -> None:
    ring = env.ring()
    ring.check_available("default")
    assert env.store.rows == {}  # the probe stores nothing
    env.set_state(KeyState.DISABLED)
    with pytest.raises(KeyUnavailableError):
        ring.check_available("default")
    env.set_state(KeyState.ENABLED)
    ring.check_available("default")


def test_check_available_with_data_key(env: Env) -> None:
    ring = env.ring()
    ring.sealer("default").seal(b"v", aad())  # key created and cached
    before = ring.unwrap_calls
    ring.check_available("default")
    assert ring.unwrap_calls == before + 1  # bypasses the cache
    env.set_state(KeyState.DISABLED)
    with pytest.raises(KeyUnavailableError):
        ring.check_available("default")  # even though the key is still cached
    env.set_state(KeyState.ENABLED)
    ring.check_available("default")


def test_check_available_wrong_root_key(env: Env) -> None:
    env.ring().sealer("default")
    (env.local.keys_dir / "root.key").write_bytes(bytes(32))
    ring = KeyRing(LocalKeyProvider(env.local.keys_dir), env.store, env.kms_uri)
    with pytest.raises(KeyUnavailableError, match="wrong root key"):
        ring.check_available("default")
