"""The migration guard (migrate/guard.py): MACed under the keystore and counted only
while this home's guard file names it, so neither a forged nor a replayed kb_meta
value lets a plaintext knowledge base open beside the keystore."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sealedkb.config import Settings, load_settings
from sealedkb.kb.wiring import key_provider
from sealedkb.keys.provider import KeyProvider, keystore_of
from sealedkb.migrate.guard import (
    GUARD_FILE,
    Guard,
    disarm_guard,
    guard_allows_keystore,
    guard_is_armed,
    new_guard,
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(tmp_path / "home", database_url="postgresql://unused/x")


@pytest.fixture
def provider(settings: Settings) -> KeyProvider:
    p = key_provider(settings)
    keystore = keystore_of(p)
    assert keystore is not None
    keystore.initialize()
    return p


def _guard(provider: KeyProvider) -> Guard:
    return new_guard(provider, "local:key/00000000-0000-0000-0000-000000000001", "kb-1")


def test_an_armed_guard_allows(settings: Settings, provider: KeyProvider) -> None:
    guard = _guard(provider)
    assert not guard_allows_keystore(settings, guard.meta)  # written, not yet armed
    guard.arm(settings)
    assert guard_is_armed(settings, guard.meta)
    assert guard_allows_keystore(settings, guard.meta)
    assert (settings.home / GUARD_FILE).stat().st_mode & 0o077 == 0


def test_a_disarmed_or_older_guard_is_refused(settings: Settings, provider: KeyProvider) -> None:
    old, new = _guard(provider), _guard(provider)
    old.arm(settings)
    new.arm(settings)
    assert not guard_allows_keystore(settings, old.meta)  # replayed: another nonce
    assert guard_allows_keystore(settings, new.meta)
    disarm_guard(None, settings)
    assert not guard_allows_keystore(settings, new.meta)
    disarm_guard(None, settings)  # idempotent


def test_a_forged_guard_is_refused(settings: Settings, provider: KeyProvider) -> None:
    guard = _guard(provider)
    guard.arm(settings)
    value = json.loads(guard.meta)
    bad_mac = json.dumps({**value, "mac": "00" * 32})
    other_kb = json.dumps({**value, "kb_id": "kb-2"})
    for text in (bad_mac, other_kb, "", None, "not json", '{"kb_id": "kb-1"}'):
        assert not guard_allows_keystore(settings, text)


def test_the_guard_file_alone_is_not_enough(settings: Settings, provider: KeyProvider) -> None:
    """A guard file copied next to a kb_meta value MACed under another keystore."""
    guard = _guard(provider)
    guard.arm(settings)
    value = json.loads(guard.meta)
    forged = json.dumps({**value, "mac": "11" * 32})
    assert guard_is_armed(settings, forged)
    assert not guard_allows_keystore(settings, forged)
