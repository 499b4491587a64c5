"""One conformance suite for every key provider (docs/DESIGN.md §4: "all providers
pass one shared conformance test suite").

Each provider is a ``Backend``: a way to build a provider client acting for the
admin principal, with two fresh KMS keys, and to build a second client of the same
key service (another process). Only ``local`` exists today (and the instrumented
wrapper around it, which must behave the same); an AWS KMS, Vault, PKCS#11 or
KMIP backend is added as one more entry in ``BACKENDS`` (skipping itself when its
service is not configured), and every test below runs against it unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sealedkb.config import Settings
from sealedkb.errors import (
    AccessDeniedError,
    IntegrityError,
    KeyUnavailableError,
    ValidationError,
)
from sealedkb.keys.instrumented import InstrumentedKeyProvider
from sealedkb.keys.migrate import SchemeRouter
from sealedkb.keys.provider import KeyProvider, KeyState, keystore_of, scheme_of
from sealedkb.keys.registry import provider_for
from sealedkb.monitoring.telemetry import Telemetry


def context(namespace: str = "default", purpose: str = "content") -> dict[str, str]:
    return {
        "sealedkb:namespace": namespace,
        "sealedkb:purpose": purpose,
        "sealedkb:data_key_id": "6f1c0000-0000-4000-8000-000000000001",
    }


CTX = context()


@dataclass
class Backend:
    provider: KeyProvider
    key_uri: str
    other_key_uri: str
    reopen: Callable[[], KeyProvider]  # a second client of the same key service
    # False for a key service without Disabled / PendingDeletion states (Vault
    # Transit): those commands must then refuse with a ValidationError.
    key_states: bool = True


def _local(tmp_path: Path) -> Backend:
    settings = Settings(home=tmp_path / "home", embedder="none")
    provider = provider_for(settings)
    keystore = keystore_of(provider)
    assert keystore is not None
    keystore.initialize()
    return Backend(
        provider,
        provider.create_key("conformance").key_id,
        provider.create_key("conformance (other)").key_id,
        lambda: provider_for(settings),
    )


def _local_instrumented(tmp_path: Path) -> Backend:
    inner = _local(tmp_path)
    telemetry = Telemetry()
    return Backend(
        InstrumentedKeyProvider(inner.provider, telemetry),
        inner.key_uri,
        inner.other_key_uri,
        lambda: InstrumentedKeyProvider(inner.reopen(), telemetry),
    )


def _local_routed(tmp_path: Path) -> Backend:
    """The key ring's view while custody changes (keys/migrate.py): the same provider
    behind a router by key URI scheme."""
    inner = _local(tmp_path)
    settings = Settings(home=tmp_path / "home", embedder="none")

    def routed() -> KeyProvider:
        return SchemeRouter(inner.reopen(), lambda uri: provider_for(settings, uri))

    return Backend(
        SchemeRouter(inner.provider, lambda uri: provider_for(settings, uri)),
        inner.key_uri,
        inner.other_key_uri,
        routed,
    )


def _external(settings: Settings, scheme: str) -> Backend:
    # The factory of a scheme serves every key of it; any URI of the scheme picks it.
    any_key = {"pkcs11": "pkcs11:token=t;object=o", "kmip": "kmip:0"}[scheme]
    provider = provider_for(settings, any_key)
    return Backend(
        provider,
        provider.create_key("conformance").key_id,
        provider.create_key("conformance (other)").key_id,
        lambda: provider_for(settings, any_key),
    )


def _pkcs11(tmp_path: Path) -> Backend:
    from tests.providers_hsm.services import softhsm

    hsm = softhsm()
    return _external(Settings(home=tmp_path / "home", embedder="none", **hsm.settings()), "pkcs11")


def _pkcs11_kwp(tmp_path: Path) -> Backend:  # RFC 5649 key wrap instead of AES-GCM
    from tests.providers_hsm.services import softhsm

    hsm = softhsm()
    return _external(
        Settings(
            home=tmp_path / "home", embedder="none", **hsm.settings(pkcs11_mechanism="aes-kwp")
        ),
        "pkcs11",
    )


def _kmip(tmp_path: Path) -> Backend:
    from tests.providers_hsm.services import kmip_server

    server = kmip_server()
    return _external(Settings(home=tmp_path / "home", embedder="none", **server.settings()), "kmip")


def _aws_kms(tmp_path: Path) -> Backend:  # moto in server mode
    from tests.providers.services import moto_server

    kms = moto_server()
    settings = Settings(
        home=tmp_path / "home", embedder="none", **kms.settings(aws_mac_key_id=kms.mac_key())
    )
    provider = provider_for(settings, "aws-kms:alias/any")
    return Backend(
        provider,
        provider.create_key("conformance").key_id,
        provider.create_key("conformance (other)").key_id,
        lambda: provider_for(settings, "aws-kms:alias/any"),
    )


def _vault(tmp_path: Path) -> Backend:  # a real OpenBao server
    from tests.providers.services import openbao_server

    bao = openbao_server()
    settings = Settings(home=tmp_path / "home", embedder="none", **bao.settings())
    provider = provider_for(settings, "vault:transit/transit/any")
    return Backend(
        provider,
        provider.create_key("conformance").key_id,
        provider.create_key("conformance (other)").key_id,
        lambda: provider_for(settings, "vault:transit/transit/any"),
        key_states=False,
    )


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "local": _local,
    "local-instrumented": _local_instrumented,
    "local-routed": _local_routed,
    "pkcs11": _pkcs11,
    "pkcs11-kwp": _pkcs11_kwp,
    "kmip": _kmip,
    "aws-kms": _aws_kms,
    "vault": _vault,
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield BACKENDS[request.param](tmp_path)


# --- the Protocol ---------------------------------------------------------------


def test_is_a_key_provider(backend: Backend) -> None:
    p = backend.provider
    assert isinstance(p, KeyProvider)
    assert scheme_of(backend.key_uri) == p.scheme
    assert p.describe_key(backend.key_uri).key_id == backend.key_uri
    assert backend.key_uri in {m.key_id for m in p.list_keys()}
    assert backend.key_uri != backend.other_key_uri


# --- wrap / unwrap ----------------------------------------------------------------


def test_generate_data_key_round_trip(backend: Backend) -> None:
    p = backend.provider
    plaintext, wrapped = p.generate_data_key(backend.key_uri, CTX)
    assert len(plaintext) == 32
    assert plaintext not in wrapped
    assert p.decrypt(backend.key_uri, wrapped, CTX) == plaintext
    assert backend.reopen().decrypt(backend.key_uri, wrapped, CTX) == plaintext
    again, _ = p.generate_data_key(backend.key_uri, CTX)
    assert again != plaintext  # fresh material every time


def test_encrypt_decrypt_round_trip(backend: Backend) -> None:
    p = backend.provider
    for material in (b"\x00" * 32, bytes(range(64)), b"k" * 4096):
        blob = p.encrypt(backend.key_uri, material, CTX)
        assert p.decrypt(backend.key_uri, blob, CTX) == material
    with pytest.raises(ValidationError):
        p.encrypt(backend.key_uri, b"k" * 4097, CTX)


@pytest.mark.parametrize(
    "other",
    [
        context(namespace="other"),
        context(purpose="index"),
        {**CTX, "sealedkb:data_key_id": "6f1c0000-0000-4000-8000-000000000002"},
        {**CTX, "extra": "x"},
        {k: v for k, v in CTX.items() if k != "sealedkb:purpose"},
        {},
    ],
    ids=["namespace", "purpose", "data-key-id", "extra-entry", "missing-entry", "empty"],
)
def test_context_is_bound(backend: Backend, other: dict[str, str]) -> None:
    p = backend.provider
    _, wrapped = p.generate_data_key(backend.key_uri, CTX)
    with pytest.raises(IntegrityError):
        p.decrypt(backend.key_uri, wrapped, other)
    with pytest.raises(IntegrityError):
        p.re_encrypt(backend.key_uri, wrapped, other)


def test_wrapped_key_bound_to_its_kms_key(backend: Backend) -> None:
    p = backend.provider
    _, wrapped = p.generate_data_key(backend.key_uri, CTX)
    with pytest.raises(IntegrityError):
        p.decrypt(backend.other_key_uri, wrapped, CTX)


def test_tampered_wrapped_key(backend: Backend) -> None:
    p = backend.provider
    _, wrapped = p.generate_data_key(backend.key_uri, CTX)
    for i in (len(wrapped) - 1, len(wrapped) // 2):
        flipped = bytearray(wrapped)
        flipped[i] ^= 0x01
        with pytest.raises(IntegrityError):
            p.decrypt(backend.key_uri, bytes(flipped), CTX)
    for bad in (b"", wrapped[:3], wrapped[:-1]):
        with pytest.raises(IntegrityError):
            p.decrypt(backend.key_uri, bad, CTX)


# --- rotation ---------------------------------------------------------------------


def test_rotation_keeps_old_wrapped_keys_and_rewrap_moves_them(backend: Backend) -> None:
    p = backend.provider
    plaintext, old = p.generate_data_key(backend.key_uri, CTX)
    v1 = p.wrapped_version(old)
    meta = p.rotate_key(backend.key_uri)
    assert meta.versions == p.describe_key(backend.key_uri).versions >= 2
    assert p.decrypt(backend.key_uri, old, CTX) == plaintext  # old version still unwraps
    assert backend.reopen().decrypt(backend.key_uri, old, CTX) == plaintext
    moved = p.re_encrypt(backend.key_uri, old, CTX)
    assert p.wrapped_version(moved) > v1
    assert p.wrapped_version(moved) == p.wrapped_version(p.encrypt(backend.key_uri, b"x", CTX))
    assert p.decrypt(backend.key_uri, moved, CTX) == plaintext
    with pytest.raises(IntegrityError):  # re-wrapping keeps the context binding
        p.decrypt(backend.key_uri, moved, context(namespace="other"))


# --- disable / enable, deletion ------------------------------------------------------


def _refused(p: KeyProvider, uri: str, wrapped: bytes, state: KeyState) -> None:
    for call in (
        lambda: p.decrypt(uri, wrapped, CTX),
        lambda: p.encrypt(uri, b"k" * 32, CTX),
        lambda: p.generate_data_key(uri, CTX),
        lambda: p.re_encrypt(uri, wrapped, CTX),
    ):
        with pytest.raises(KeyUnavailableError) as exc:
            call()
        assert exc.value.key_state == state.value


def _no_key_states(backend: Backend, plaintext: bytes, wrapped: bytes) -> None:
    """A key service without key states refuses every state change, changing nothing."""
    p = backend.provider
    for call in (
        lambda: p.disable_key(backend.key_uri),
        lambda: p.enable_key(backend.key_uri),
        lambda: p.schedule_key_deletion(backend.key_uri, 7),
        lambda: p.cancel_key_deletion(backend.key_uri),
    ):
        with pytest.raises(ValidationError) as exc:
            call()
        assert exc.value.exit_code == 2 and "Vault" in exc.value.message
    assert p.describe_key(backend.key_uri).state is KeyState.ENABLED
    assert p.decrypt(backend.key_uri, wrapped, CTX) == plaintext


def test_disable_refuses_and_enable_recovers(backend: Backend) -> None:
    p = backend.provider
    plaintext, wrapped = p.generate_data_key(backend.key_uri, CTX)
    if not backend.key_states:
        _no_key_states(backend, plaintext, wrapped)
        return
    assert p.disable_key(backend.key_uri).state is KeyState.DISABLED
    _refused(p, backend.key_uri, wrapped, KeyState.DISABLED)
    _refused(backend.reopen(), backend.key_uri, wrapped, KeyState.DISABLED)  # other clients too
    # the other key is untouched
    _, other = p.generate_data_key(backend.other_key_uri, CTX)
    assert len(p.decrypt(backend.other_key_uri, other, CTX)) == 32
    assert p.enable_key(backend.key_uri).state is KeyState.ENABLED
    assert p.decrypt(backend.key_uri, wrapped, CTX) == plaintext
    assert backend.reopen().decrypt(backend.key_uri, wrapped, CTX) == plaintext


def test_pending_deletion_refuses_and_cancel_recovers(backend: Backend) -> None:
    p = backend.provider
    plaintext, wrapped = p.generate_data_key(backend.key_uri, CTX)
    if not backend.key_states:
        _no_key_states(backend, plaintext, wrapped)
        return
    meta = p.schedule_key_deletion(backend.key_uri, 7)
    assert meta.state is KeyState.PENDING_DELETION and meta.deletion_date is not None
    _refused(p, backend.key_uri, wrapped, KeyState.PENDING_DELETION)
    assert p.destroy_key_if_due(backend.key_uri) is None  # the window has not passed
    assert p.cancel_key_deletion(backend.key_uri).state is KeyState.DISABLED
    p.enable_key(backend.key_uri)
    assert p.decrypt(backend.key_uri, wrapped, CTX) == plaintext


def test_unknown_key_is_unavailable(backend: Backend) -> None:
    p = backend.provider
    _, wrapped = p.generate_data_key(backend.key_uri, CTX)
    unknown = backend.key_uri.replace(backend.key_uri[-12:], uuid.uuid4().hex[:12])
    with pytest.raises(KeyUnavailableError):
        p.decrypt(unknown, wrapped, CTX)


# --- principals and the audit MAC -------------------------------------------------------


def test_policy_applies_to_other_principals(backend: Backend) -> None:
    p = backend.provider
    _, wrapped = p.generate_data_key(backend.key_uri, CTX)
    stranger = p.for_principal("mallory")
    assert stranger.principal == "mallory"
    with pytest.raises(AccessDeniedError):
        stranger.decrypt(backend.key_uri, wrapped, CTX)
    with pytest.raises(AccessDeniedError):
        stranger.disable_key(backend.key_uri)
    assert p.describe_key(backend.key_uri).state is KeyState.ENABLED


def test_audit_mac(backend: Backend) -> None:
    p = backend.provider
    mac = p.generate_mac(b"checkpoint")
    assert p.verify_mac(b"checkpoint", mac)
    assert backend.reopen().verify_mac(b"checkpoint", mac)
    assert not p.verify_mac(b"checkpoinT", mac)
    assert not p.verify_mac(b"checkpoint", bytes(len(mac)))
