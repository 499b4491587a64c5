"""Clock jumps (forward past a rotation or deletion date, backward) seen by the key
service through an injected clock, while reader threads keep unwrapping data keys:
no key material is destroyed before its deletion date, a rotation keeps every old
version, and a backward jump never brings a deletion forward."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sealedkb.errors import KeyUnavailableError
from sealedkb.keys.local import LocalKeyProvider, RootKeySource
from sealedkb.keys.provider import KeyState

CTX = {"sealedkb:namespace": "default", "sealedkb:purpose": "content"}
T0 = datetime(2030, 1, 1, tzinfo=UTC)


class JumpingClock:
    def __init__(self) -> None:
        self.now = T0
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def jump(self, **kw: float) -> None:
        with self._lock:
            self.now += timedelta(**kw)


@pytest.fixture
def clock() -> JumpingClock:
    return JumpingClock()


@pytest.fixture
def provider(tmp_path: Path, clock: JumpingClock) -> LocalKeyProvider:
    p = LocalKeyProvider(tmp_path / "keys", RootKeySource(), now=clock)
    p.initialize()
    return p


class Readers:
    """Threads unwrapping data keys of an enabled key the whole time: every unwrap
    must succeed (a jump must not touch a key that is not due)."""

    def __init__(self, provider: LocalKeyProvider, uri: str, wrapped: list[bytes]) -> None:
        self.provider, self.uri, self.wrapped = provider, uri, wrapped
        self.failures: list[BaseException] = []
        self.unwraps = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(2)]

    def _run(self) -> None:
        while not self._stop.is_set():
            for w in self.wrapped:
                try:
                    self.provider.decrypt(self.uri, w, CTX)
                    self.unwraps += 1
                except BaseException as exc:
                    self.failures.append(exc)
                    return

    def __enter__(self) -> Readers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)


@pytest.fixture
def busy_key(provider: LocalKeyProvider) -> Iterator[tuple[str, list[bytes]]]:
    uri = provider.create_key("busy").key_id
    yield uri, [provider.generate_data_key(uri, CTX)[1] for _ in range(3)]


def test_forward_past_rotation_rotates_once_and_keeps_old_versions(
    provider: LocalKeyProvider, clock: JumpingClock, busy_key: tuple[str, list[bytes]]
) -> None:
    uri, wrapped = busy_key
    provider.enable_key_rotation(uri, 90)
    with Readers(provider, uri, wrapped) as readers:
        clock.jump(days=1000)  # eleven periods missed at once
        meta = provider.rotate_key_if_due(uri)
        assert meta is not None and meta.versions == 2  # one rotation, not eleven
        assert provider.rotate_key_if_due(uri) is None
        assert meta.next_rotation_date == clock.now + timedelta(days=90)
        clock.jump(days=-2000)  # and back before the key existed
        assert provider.rotate_key_if_due(uri) is None
        assert provider.destroy_key_if_due(uri) is None
    assert not readers.failures and readers.unwraps > 0, readers.failures
    for w in wrapped:  # the version-1 data keys still unwrap
        provider.decrypt(uri, w, CTX)


def test_backward_jump_never_brings_a_deletion_forward(
    provider: LocalKeyProvider, clock: JumpingClock, busy_key: tuple[str, list[bytes]]
) -> None:
    busy, busy_wrapped = busy_key
    doomed = provider.create_key("doomed").key_id
    dk, doomed_wrapped = provider.generate_data_key(doomed, CTX)
    meta = provider.schedule_key_deletion(doomed, 7)
    assert meta.deletion_date == T0 + timedelta(days=7)
    with Readers(provider, busy, busy_wrapped) as readers:
        for days in (-365, +300, +64, -1, +6.99):  # ends a little before T0 + 7 days
            clock.jump(days=days)
            assert provider.destroy_key_if_due(doomed) is None, clock.now
            assert provider.destroy_key_if_due(busy) is None
        assert clock.now < T0 + timedelta(days=7)
        assert provider.describe_key(doomed).deletion_date == T0 + timedelta(days=7)
    assert not readers.failures and readers.unwraps > 0, readers.failures
    # the material is all there: cancelling the deletion gives the data key back
    provider.cancel_key_deletion(doomed)
    provider.enable_key(doomed)
    assert provider.decrypt(doomed, doomed_wrapped, CTX) == dk


def test_forward_past_a_deletion_date_destroys_only_that_key(
    provider: LocalKeyProvider, clock: JumpingClock, busy_key: tuple[str, list[bytes]]
) -> None:
    busy, busy_wrapped = busy_key
    soon = provider.create_key("soon").key_id
    later = provider.create_key("later").key_id
    _, soon_wrapped = provider.generate_data_key(soon, CTX)
    later_dk, later_wrapped = provider.generate_data_key(later, CTX)
    provider.schedule_key_deletion(soon, 7)
    provider.schedule_key_deletion(later, 30)
    with Readers(provider, busy, busy_wrapped) as readers:
        clock.jump(days=10)  # past the first date only
        for uri in (busy, soon, later):
            provider.destroy_key_if_due(uri)
        clock.jump(days=-10)
    assert not readers.failures and readers.unwraps > 0, readers.failures
    assert provider.describe_key(soon).state is KeyState.DESTROYED
    with pytest.raises(KeyUnavailableError):
        provider.decrypt(soon, soon_wrapped, CTX)
    assert provider.describe_key(later).state is KeyState.PENDING_DELETION
    assert provider.describe_key(busy).state is KeyState.ENABLED
    provider.cancel_key_deletion(later)
    provider.enable_key(later)
    assert provider.decrypt(later, later_wrapped, CTX) == later_dk
