"""The key-provider seam: providers chosen by key URI scheme, the local keystore's
administration apart from the key service, and wrappers that implement the
Protocol explicitly (a new Protocol method cannot slip through them unmeasured
or unaudited)."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from sealedkb.config import Settings
from sealedkb.errors import ConfigError, ValidationError
from sealedkb.kb.wiring import key_provider
from sealedkb.keys import registry
from sealedkb.keys.instrumented import InstrumentedKeyProvider
from sealedkb.keys.lifecycle import AuditedKeyUse
from sealedkb.keys.local import LocalKeyProvider
from sealedkb.keys.migrate import SchemeRouter
from sealedkb.keys.provider import KeyProvider, LocalKeystore, keystore_of
from sealedkb.monitoring.telemetry import Telemetry


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", embedder="none")


@pytest.fixture
def fake_scheme() -> Iterator[list[tuple[str, Callable[[], datetime] | None]]]:
    calls: list[tuple[str, Callable[[], datetime] | None]] = []

    def factory(
        settings: Settings, *, principal: str, now: Callable[[], datetime] | None
    ) -> KeyProvider:
        calls.append((principal, now))
        return LocalKeyProvider(settings.keys_dir, principal=principal, now=now)

    registry.register_scheme("test-kms", factory)
    try:
        yield calls
    finally:
        registry.unregister_scheme("test-kms")


def test_local_is_the_default_scheme(settings: Settings) -> None:
    assert "local" in registry.registered_schemes()
    p = registry.provider_for(settings)
    assert p.scheme == "local" and p.principal == "admin"
    assert registry.provider_for(settings, principal="ops").principal == "ops"
    uri = f"local:key/{uuid.uuid4()}"
    assert registry.provider_for(settings, uri).scheme == "local"
    assert key_provider(settings, key_uri=uri).scheme == "local"


def test_scheme_picks_the_provider(settings: Settings, fake_scheme: list[object]) -> None:
    def clock() -> datetime:
        return datetime(2030, 1, 1)

    p = registry.provider_for(settings, "test-kms:arn:key/1", principal="svc", now=clock)
    assert isinstance(p, KeyProvider)
    assert fake_scheme == [("svc", clock)]
    registry.provider_for(settings, f"local:key/{uuid.uuid4()}")
    assert len(fake_scheme) == 1  # the local scheme did not go through it


def test_unknown_scheme_is_a_config_error(settings: Settings) -> None:
    # (aws-kms and vault are registered now; a scheme nobody serves is still refused)
    assert {"aws-kms", "vault"} <= set(registry.registered_schemes())
    with pytest.raises(ConfigError, match="gcp-kms") as exc:
        registry.provider_for(settings, "gcp-kms:projects/111122223333/cryptoKeys/x")
    assert "111122223333" not in exc.value.message  # only the scheme is named
    assert exc.value.exit_code == 2


@pytest.mark.parametrize("uri", ["no-scheme", ":key/x", ""])
def test_malformed_key_uri(settings: Settings, uri: str) -> None:
    with pytest.raises(ValidationError):
        registry.provider_for(settings, uri)


def test_registration_rules(fake_scheme: list[object]) -> None:
    def factory(
        settings: Settings, *, principal: str, now: Callable[[], datetime] | None
    ) -> KeyProvider:
        raise AssertionError

    with pytest.raises(ValidationError, match="already registered"):
        registry.register_scheme("test-kms", factory)
    with pytest.raises(ValidationError, match="already registered"):
        registry.register_scheme("local", factory)
    with pytest.raises(ValidationError):
        registry.register_scheme("bad:scheme", factory)
    with pytest.raises(ValidationError):
        registry.unregister_scheme("local")


def test_keystore_administration_is_apart(settings: Settings) -> None:
    p = key_provider(settings)
    keystore = keystore_of(p)
    assert isinstance(keystore, LocalKeystore) and isinstance(p, LocalKeyProvider)
    assert keystore is p
    assert not keystore.exists()
    keystore.initialize()
    assert keystore.exists() and keystore.root_key_source() == "generated"
    assert any("development root key" in w for w in keystore.warnings())
    # the key service's Protocol has no keystore administration
    for name in ("exists", "initialize", "root_key_source", "warnings"):
        assert not hasattr(KeyProvider, name)
    # a wrapper is a key service, not a keystore
    assert keystore_of(InstrumentedKeyProvider(p, Telemetry())) is None


def _protocol_members() -> set[str]:
    names = {n for n in vars(KeyProvider) if not n.startswith("_")}
    return names | set(KeyProvider.__annotations__)


@pytest.mark.parametrize("wrapper", [InstrumentedKeyProvider, AuditedKeyUse, SchemeRouter])
def test_wrappers_implement_the_protocol_explicitly(wrapper: type[KeyProvider]) -> None:
    assert "__getattr__" not in vars(wrapper)
    assert KeyProvider in wrapper.__mro__  # declared, not just structurally similar
    methods = {n for n in _protocol_members() if inspect.isfunction(getattr(KeyProvider, n, None))}
    assert methods >= {"decrypt", "generate_data_key", "rotate_key", "verify_mac"}
    missing = sorted(n for n in methods if n not in vars(wrapper))
    assert missing == [], f"{wrapper.__name__} inherits Protocol stubs for {missing}"
    for name in methods:  # same parameters as the Protocol
        assert list(inspect.signature(getattr(wrapper, name)).parameters) == list(
            inspect.signature(getattr(KeyProvider, name)).parameters
        ), name


def test_instrumented_wrapper_counts_every_call(settings: Settings) -> None:
    p = key_provider(settings)
    keystore = keystore_of(p)
    assert keystore is not None
    keystore.initialize()
    telemetry = Telemetry()
    wrapped = InstrumentedKeyProvider(p, telemetry)
    uri = wrapped.create_key().key_id
    _, blob = wrapped.generate_data_key(uri, {"sealedkb:namespace": "default"})
    wrapped.for_principal("admin").decrypt(uri, blob, {"sealedkb:namespace": "default"})
    assert wrapped.for_principal("ops").principal == "ops"
    assert isinstance(wrapped.for_principal("ops"), InstrumentedKeyProvider)
