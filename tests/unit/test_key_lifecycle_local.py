"""Key lifecycle and key policies in the local provider (docs/DESIGN.md §4), clock injected."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sealedkb.errors import (
    AccessDeniedError,
    ConflictError,
    KeyUnavailableError,
    ValidationError,
)
from sealedkb.keys.local import LocalKeyProvider, RootKeySource
from sealedkb.keys.policy import SYSTEM_PRINCIPAL
from sealedkb.keys.provider import KeyProvider, KeyState

CTX = {"sealedkb:namespace": "default", "sealedkb:purpose": "content"}
T0 = datetime(2030, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def provider(tmp_path: Path, clock: Clock) -> LocalKeyProvider:
    p = LocalKeyProvider(tmp_path / "keys", RootKeySource(), now=clock)
    p.initialize()
    return p


@pytest.fixture
def uri(provider: LocalKeyProvider) -> str:
    return provider.create_key("k").key_id


def record_bytes(p: LocalKeyProvider, uri: str) -> bytes:
    return (p.keys_dir / f"{uri.removeprefix('local:key/')}.json").read_bytes()


def test_protocol_conformance(provider: LocalKeyProvider) -> None:
    assert isinstance(provider, KeyProvider)


def test_new_key_defaults(provider: LocalKeyProvider, uri: str) -> None:
    meta = provider.describe_key(uri)
    assert meta.state is KeyState.ENABLED
    assert meta.rotation_enabled and meta.rotation_period_days == 365
    assert meta.next_rotation_date == T0 + timedelta(days=365)
    assert meta.versions == 1 and meta.deletion_date is None
    d = meta.to_dict()
    for field in (
        "key_id",
        "state",
        "created_at",
        "rotation_enabled",
        "rotation_period_days",
        "next_rotation_date",
        "versions",
        "deletion_date",
    ):
        assert field in d
    with pytest.raises(ValidationError):
        provider.create_key("x" * 257)


def test_rotate_keeps_old_versions(provider: LocalKeyProvider, uri: str) -> None:
    dk, old = provider.generate_data_key(uri, CTX)
    assert provider.wrapped_version(old) == 1
    meta = provider.rotate_key(uri)
    assert meta.versions == 2
    # on-demand rotation does not move the automatic schedule
    assert meta.next_rotation_date == T0 + timedelta(days=365)
    assert provider.decrypt(uri, old, CTX) == dk
    assert provider.wrapped_version(provider.encrypt(uri, dk, CTX)) == 2
    new = provider.re_encrypt(uri, old, CTX)
    assert provider.wrapped_version(new) == 2
    assert provider.decrypt(uri, new, CTX) == dk
    # a fresh process reads the new version from the file
    assert LocalKeyProvider(provider.keys_dir).decrypt(uri, new, CTX) == dk


def test_rotate_needs_enabled(provider: LocalKeyProvider, uri: str) -> None:
    provider.disable_key(uri)
    before = record_bytes(provider, uri)
    with pytest.raises(ConflictError, match="Disabled"):
        provider.rotate_key(uri)
    assert record_bytes(provider, uri) == before


@pytest.mark.parametrize("days", [89, 2561, 0, -1])
def test_rotation_period_bounds(provider: LocalKeyProvider, uri: str, days: int) -> None:
    before = record_bytes(provider, uri)
    with pytest.raises(ValidationError) as exc:
        provider.enable_key_rotation(uri, days)
    assert exc.value.exit_code == 2
    assert record_bytes(provider, uri) == before


def test_automatic_rotation(provider: LocalKeyProvider, uri: str, clock: Clock) -> None:
    assert provider.enable_key_rotation(uri, 90).next_rotation_date == T0 + timedelta(days=90)
    assert provider.enable_key_rotation(uri, 2560).rotation_period_days == 2560
    provider.enable_key_rotation(uri, 90)
    clock.advance(days=89)
    assert provider.rotate_key_if_due(uri) is None
    clock.advance(days=1)
    meta = provider.rotate_key_if_due(uri)
    assert meta is not None and meta.versions == 2
    assert meta.next_rotation_date == clock.now + timedelta(days=90)
    assert provider.rotate_key_if_due(uri) is None  # not twice
    provider.disable_key_rotation(uri)
    clock.advance(days=1000)
    assert provider.rotate_key_if_due(uri) is None
    assert provider.describe_key(uri).next_rotation_date is None
    # re-enabling starts a new period from now, not from the last rotation
    assert provider.enable_key_rotation(uri).next_rotation_date == clock.now + timedelta(days=365)
    # a disabled key does not rotate
    provider.disable_key(uri)
    clock.advance(days=400)
    assert provider.rotate_key_if_due(uri) is None
    assert provider.describe_key(uri).next_rotation_date is None


def test_disable_enable(provider: LocalKeyProvider, uri: str) -> None:
    dk, wrapped = provider.generate_data_key(uri, CTX)
    assert provider.disable_key(uri).state is KeyState.DISABLED
    assert provider.disable_key(uri).state is KeyState.DISABLED  # idempotent
    for call in (
        lambda: provider.decrypt(uri, wrapped, CTX),
        lambda: provider.encrypt(uri, dk, CTX),
        lambda: provider.generate_data_key(uri, CTX),
        lambda: provider.re_encrypt(uri, wrapped, CTX),
    ):
        with pytest.raises(KeyUnavailableError, match="Disabled"):
            call()
    assert provider.enable_key(uri).state is KeyState.ENABLED
    assert provider.decrypt(uri, wrapped, CTX) == dk


@pytest.mark.parametrize("days", [6, 31, 0, 365])
def test_deletion_window_bounds(provider: LocalKeyProvider, uri: str, days: int) -> None:
    before = record_bytes(provider, uri)
    with pytest.raises(ValidationError) as exc:
        provider.schedule_key_deletion(uri, days)
    assert exc.value.exit_code == 2 and exc.value.field == "pending_window_days"
    assert record_bytes(provider, uri) == before


def test_schedule_cancel_enable(provider: LocalKeyProvider, uri: str, clock: Clock) -> None:
    dk, wrapped = provider.generate_data_key(uri, CTX)
    meta = provider.schedule_key_deletion(uri, 7)
    assert meta.state is KeyState.PENDING_DELETION
    assert meta.deletion_date == T0 + timedelta(days=7)
    assert meta.next_rotation_date is None
    assert provider.schedule_key_deletion.__defaults__ == (30,)
    with pytest.raises(KeyUnavailableError, match="PendingDeletion"):
        provider.decrypt(uri, wrapped, CTX)
    for call in (provider.enable_key, provider.disable_key, provider.rotate_key):
        with pytest.raises(ConflictError, match="cancel the deletion"):
            call(uri)
    with pytest.raises(ConflictError):
        provider.schedule_key_deletion(uri, 7)
    clock.advance(days=6)
    assert provider.destroy_key_if_due(uri) is None
    assert provider.cancel_key_deletion(uri).state is KeyState.DISABLED
    assert provider.describe_key(uri).deletion_date is None
    with pytest.raises(KeyUnavailableError, match="Disabled"):
        provider.decrypt(uri, wrapped, CTX)
    provider.enable_key(uri)
    assert provider.decrypt(uri, wrapped, CTX) == dk
    with pytest.raises(ConflictError):
        provider.cancel_key_deletion(uri)


def test_default_window_is_30_days(provider: LocalKeyProvider, uri: str) -> None:
    assert provider.schedule_key_deletion(uri).deletion_date == T0 + timedelta(days=30)


def test_destruction_shreds_the_material(
    provider: LocalKeyProvider, uri: str, clock: Clock
) -> None:
    dk, wrapped = provider.generate_data_key(uri, CTX)
    provider.rotate_key(uri)
    materials = [v["material"] for v in json.loads(record_bytes(provider, uri))["versions"]]
    provider.schedule_key_deletion(uri, 7)
    clock.advance(days=7)
    with pytest.raises(ConflictError, match="ended"):
        provider.cancel_key_deletion(uri)
    meta = provider.destroy_key_if_due(uri)
    assert meta is not None and meta.state is KeyState.DESTROYED and meta.deletion_date is None
    assert provider.destroy_key_if_due(uri) is None
    # no material anywhere in the keystore folder (temporary files included)
    for path in provider.keys_dir.iterdir():
        data = path.read_bytes()
        for m in materials:
            assert m.encode() not in data and base64.b64decode(m) not in data
    # even someone holding the root key who forces the state back cannot unwrap
    rec = provider._load(uri)
    rec["state"] = "Enabled"
    provider._store(rec)
    fresh = LocalKeyProvider(provider.keys_dir)
    with pytest.raises(KeyUnavailableError, match="destroyed"):
        fresh.decrypt(uri, wrapped, CTX)
    with pytest.raises(KeyUnavailableError, match="destroyed"):
        fresh.encrypt(uri, dk, CTX)
    # the process that destroyed it forgot the cached material too
    with pytest.raises(KeyUnavailableError):
        provider.decrypt(uri, wrapped, CTX)


def deny(principal: str, *actions: str) -> dict[str, Any]:
    return {
        "Version": "1",
        "Statement": [
            {"Sid": "All", "Effect": "Allow", "Principal": "*", "Action": "*"},
            {"Sid": "No", "Effect": "Deny", "Principal": principal, "Action": list(actions)},
        ],
    }


def test_policy_enforced_per_principal(provider: LocalKeyProvider, uri: str) -> None:
    dk, wrapped = provider.generate_data_key(uri, CTX)
    alice = provider.for_principal("alice")
    with pytest.raises(AccessDeniedError) as exc:  # not in the default policy
        alice.decrypt(uri, wrapped, CTX)
    assert exc.value.exit_code == 4 and "alice" in exc.value.message
    service = provider.for_principal("sealedkb-service")
    assert service.decrypt(uri, wrapped, CTX) == dk
    with pytest.raises(AccessDeniedError):
        service.disable_key(uri)
    provider.put_key_policy(uri, deny("alice", "Decrypt", "ScheduleKeyDeletion"))
    assert alice.encrypt(uri, dk, CTX)
    with pytest.raises(AccessDeniedError, match="denied by statement No"):
        alice.decrypt(uri, wrapped, CTX)
    before = record_bytes(provider, uri)
    with pytest.raises(AccessDeniedError):
        alice.schedule_key_deletion(uri, 7)
    assert record_bytes(provider, uri) == before
    assert provider.describe_key(uri).state is KeyState.ENABLED
    assert provider.get_key_policy(uri)["Statement"][1]["Sid"] == "No"


def test_lockout_check(provider: LocalKeyProvider, uri: str) -> None:
    before = record_bytes(provider, uri)
    with pytest.raises(ValidationError, match="PutKeyPolicy"):
        provider.put_key_policy(uri, deny("admin", "PutKeyPolicy"))
    assert record_bytes(provider, uri) == before
    provider.put_key_policy(uri, deny("admin", "PutKeyPolicy"), bypass_lockout_check=True)
    with pytest.raises(AccessDeniedError):
        provider.put_key_policy(uri, deny("bob", "Decrypt"))


def test_system_principal_is_not_subject_to_policy(
    provider: LocalKeyProvider, uri: str, clock: Clock
) -> None:
    provider.put_key_policy(uri, deny("*", "RotateKey", "DescribeKey"), bypass_lockout_check=True)
    clock.advance(days=366)
    system = provider.for_principal(SYSTEM_PRINCIPAL)
    meta = system.rotate_key_if_due(uri)
    assert meta is not None and meta.versions == 2
    with pytest.raises(AccessDeniedError):
        provider.describe_key(uri)
    assert [k.versions for k in provider.list_keys()] == [2]


def test_audit_mac(provider: LocalKeyProvider, tmp_path: Path) -> None:
    mac = provider.generate_mac(b"checkpoint")
    assert len(mac) == 32
    assert provider.verify_mac(b"checkpoint", mac)
    assert not provider.verify_mac(b"checkpoint!", mac)
    other = LocalKeyProvider(tmp_path / "other")
    other.initialize()
    assert not other.verify_mac(b"checkpoint", mac)
