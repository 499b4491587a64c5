"""Key providers by key URI scheme: ``local:key/<uuid>``, ``aws-kms:<arn, key id or
alias>`` (keys/aws_kms.py) and ``vault:transit/<mount>/<key>`` (keys/vault.py);
``pkcs11:`` and ``kmip:`` register here the same way.

A scheme's factory builds a provider from the settings for one principal::

    register_scheme("local", local_provider)
    provider = provider_for(settings, "local:key/6f1c...", principal="admin")

With no key URI yet (``init`` before the first KMS key exists), the default
scheme (``local``) is used. An unknown scheme is a configuration error, named
in the message; nothing else about the URI is echoed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from sealedkb.config import Settings
from sealedkb.errors import ConfigError, ValidationError
from sealedkb.keys.local import SCHEME as LOCAL_SCHEME
from sealedkb.keys.local import local_provider
from sealedkb.keys.provider import KeyProvider, scheme_of

DEFAULT_SCHEME = LOCAL_SCHEME


class ProviderFactory(Protocol):
    """Builds the provider of one scheme from the settings, acting for ``principal``.
    ``now`` is the clock of the key service's schedule (tests inject one)."""

    def __call__(
        self,
        settings: Settings,
        *,
        principal: str,
        now: Callable[[], datetime] | None,
    ) -> KeyProvider: ...


_lock = threading.Lock()
_factories: dict[str, ProviderFactory] = {}


def register_scheme(scheme: str, factory: ProviderFactory, *, replace: bool = False) -> None:
    """Make ``factory`` serve key URIs ``<scheme>:...``. Registering a scheme twice is
    refused unless ``replace`` (so a plug-in cannot silently take over ``local``)."""
    if not scheme or not all(c.isalnum() or c in "-_" for c in scheme):
        raise ValidationError("a key URI scheme is letters, digits, '-' and '_'", field="scheme")
    with _lock:
        if scheme in _factories and not replace:
            raise ValidationError(
                f"key URI scheme {scheme!r} is already registered", field="scheme"
            )
        _factories[scheme] = factory


def unregister_scheme(scheme: str) -> None:
    """Forget a scheme (tests; a plug-in being unloaded). The built-in one stays."""
    if scheme == LOCAL_SCHEME:
        raise ValidationError("the local key provider cannot be unregistered", field="scheme")
    with _lock:
        _factories.pop(scheme, None)


def registered_schemes() -> tuple[str, ...]:
    with _lock:
        return tuple(sorted(_factories))


def provider_for(
    settings: Settings,
    key_uri: str | None = None,
    *,
    principal: str | None = None,
    now: Callable[[], datetime] | None = None,
) -> KeyProvider:
    """The provider that serves ``key_uri`` (default scheme when None), acting for
    ``principal`` (default: the configured one)."""
    scheme = DEFAULT_SCHEME if key_uri is None else scheme_of(key_uri)
    with _lock:
        factory = _factories.get(scheme)
    if factory is None:
        raise ConfigError(
            f"no key provider for key URI scheme {scheme[:40]!r} (known: "
            f"{', '.join(registered_schemes())})",
            field="kms_key_id",
        )
    return factory(settings, principal=principal or settings.principal, now=now)


def _aws_kms(
    settings: Settings, *, principal: str, now: Callable[[], datetime] | None
) -> KeyProvider:
    # Imported on first use: boto3 is an optional extra (sealedkb[aws]).
    from sealedkb.keys.aws_kms import aws_kms_provider

    return aws_kms_provider(settings, principal=principal, now=now)


def _vault(
    settings: Settings, *, principal: str, now: Callable[[], datetime] | None
) -> KeyProvider:
    # Imported on first use: hvac is an optional extra (sealedkb[vault]).
    from sealedkb.keys.vault import vault_provider

    return vault_provider(settings, principal=principal, now=now)


register_scheme(LOCAL_SCHEME, local_provider)
register_scheme("aws-kms", _aws_kms)
register_scheme("vault", _vault)


# --- PKCS#11 HSMs and KMIP servers: imported on first use (their client libraries
# are optional extras: sealedkb[pkcs11], sealedkb[kmip]) ---------------------------


def _pkcs11_factory(
    settings: Settings, *, principal: str, now: Callable[[], datetime] | None
) -> KeyProvider:
    from sealedkb.keys.pkcs11 import pkcs11_provider

    return pkcs11_provider(settings, principal=principal, now=now)


def _kmip_factory(
    settings: Settings, *, principal: str, now: Callable[[], datetime] | None
) -> KeyProvider:
    from sealedkb.keys.kmip import kmip_provider

    return kmip_provider(settings, principal=principal, now=now)


register_scheme("pkcs11", _pkcs11_factory)
register_scheme("kmip", _kmip_factory)
