"""KMIP key servers: ``kmip:<uid>`` (PyKMIP client, KMIP 1.4).

The KMS key is an AES-256 symmetric key on the server; each material version is
one KMIP object (rotation creates and activates a new one, old ones stay to
unwrap; KMIP's ReKey is not offered by every server). Data keys are wrapped on
the server with AES-GCM, the AAD being the encryption context (keys/external.py),
through hand-built KMIP 1.4 Encrypt/Decrypt payloads (PyKMIP's high-level client
drops the GCM tag); body ``nonce (12) | tag (16) | ciphertext``.

The connection is mutual TLS 1.2 (PyKMIP's server offers no more): the client
certificate's CN is the identity the server knows and owns the objects by; the
server's certificate is verified against ``SEALEDKB_KMIP_CA``, with its host name.
The audit MAC (checkpoints, token MACs) is the server's HMAC-SHA256 under a key
object named ``sealedkb-audit-mac`` (usage MAC Generate/Verify), made on first use.

Lifecycle: Create + Activate make a key or a version; Locate finds the MAC key
and the adoption markers; destroying a key after its pending window (our own
bookkeeping, keys/external.py) is Revoke (cessation of operation) + Destroy of
every version (crypto-shredding). Disable/enable, rotation schedule, pending
window and key policy are the bookkeeping of keys/external.py: KMIP cannot make
a revoked key active again. An unreachable server is KEY_UNAVAILABLE; the next
call reconnects, so the knowledge base recovers by itself when it returns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import ssl
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sealedkb.config import Settings
from sealedkb.crypto.kdf import random_bytes
from sealedkb.errors import ConfigError, IntegrityError, KeyUnavailableError, ValidationError
from sealedkb.keys.external import ExternalKeyProvider

log = logging.getLogger("sealedkb.keys.kmip")

SCHEME = "kmip"
_UID = re.compile(r"^kmip:([A-Za-z0-9][A-Za-z0-9._-]{0,127})$")
MAC_KEY_NAME = "sealedkb-audit-mac"
_ADOPTED_PREFIX = "sealedkb-adopted:"
_NONCE, _TAG = 12, 16


def _kmip() -> Any:
    try:
        import kmip
        from kmip.pie import client as _client  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the KMIP provider needs PyKMIP: pip install 'sealedkb[kmip]'", field="kms_key_id"
        ) from None
    # PyKMIP logs connection errors itself; ours say what happened, without noise.
    logging.getLogger("kmip").setLevel(logging.CRITICAL)
    return kmip


def parse_uri(key_uri: str) -> str:
    m = _UID.match(key_uri)
    if m is None:
        if not key_uri.startswith("kmip:"):
            raise KeyUnavailableError("not a key of the KMIP provider (kmip:<uid>)")
        raise ValidationError(
            "a KMIP key URI looks like kmip:<unique identifier>", field="kms_key_id"
        )
    return m.group(1)


class KmipService:
    """The KeyService of keys/external.py over one KMIP server."""

    scheme = SCHEME

    def __init__(
        self,
        host: str,
        port: int,
        *,
        cert: Path,
        key: Path,
        ca: Path,
        timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.cert = cert
        self.key = key
        self.ca = ca
        self.timeout = timeout
        self._client: Any = None
        self._lock = threading.RLock()
        self._mac_uid: str | None = None

    # --- the connection ---------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # PyKMIP's server speaks TLS 1.2
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(self.ca))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx

    def _connect(self) -> Any:
        kmip = _kmip()
        from kmip.core import enums
        from kmip.pie.client import ProxyKmipClient
        from kmip.services.kmip_client import KMIPProxy

        ctx = self._context()
        host, timeout = self.host, self.timeout

        class VerifiedProxy(KMIPProxy):  # type: ignore[misc]
            """KMIPProxy with a TLS 1.2 context that checks the server's host name."""

            def _create_socket(self, sock: socket.socket) -> None:
                self.socket = ctx.wrap_socket(sock, server_hostname=host)
                self.socket.settimeout(timeout)

        client = ProxyKmipClient(
            hostname=self.host,
            port=self.port,
            config_file=os.devnull,
            kmip_version=enums.KMIPVersion.KMIP_1_4,
        )
        client.proxy = VerifiedProxy(
            host=self.host,
            port=self.port,
            certfile=str(self.cert),
            keyfile=str(self.key),
            ca_certs=str(self.ca),
            timeout=max(1, int(timeout)),
            config_file=os.devnull,
            kmip_version=enums.KMIPVersion.KMIP_1_4,
        )
        try:
            client.open()
        except (OSError, ssl.SSLError, kmip.pie.exceptions.ClientConnectionFailure) as exc:
            raise KeyUnavailableError(
                f"the KMIP server {self.host}:{self.port} is unreachable ({type(exc).__name__})"
            ) from None
        return client

    def _call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(client)``; a lost connection is retried once on a new one, then
        KeyUnavailableError (the next call tries again)."""
        kmip = _kmip()
        from kmip.core import enums

        with self._lock:
            for attempt in (1, 2):
                if self._client is None:
                    self._client = self._connect()
                try:
                    return fn(self._client)
                except (
                    kmip.pie.exceptions.KmipOperationFailure,
                    kmip.core.exceptions.OperationFailure,
                ) as exc:
                    reason = getattr(exc, "reason", None)
                    if reason == enums.ResultReason.ITEM_NOT_FOUND:
                        raise KeyUnavailableError(
                            f"the KMIP server has no such object ({what})",
                            key_state="Destroyed",
                        ) from None
                    if reason == enums.ResultReason.PERMISSION_DENIED:
                        raise KeyUnavailableError(
                            f"the KMIP server refused {what}: the object is not active or not ours"
                        ) from None
                    if what == "Decrypt":  # the server says only "operation failed"
                        raise _DecryptRefused from None
                    raise KeyUnavailableError(
                        f"the KMIP server refused {what} ({getattr(reason, 'name', 'failed')})"
                    ) from None
                except (OSError, ssl.SSLError, EOFError, ValueError, TypeError) as exc:
                    self._drop()
                    if attempt == 2:
                        raise KeyUnavailableError(
                            f"the KMIP server {self.host}:{self.port} is unavailable "
                            f"({type(exc).__name__} during {what})"
                        ) from None
                except Exception as exc:  # PyKMIP's message-level errors
                    self._drop()
                    if attempt == 2:
                        raise KeyUnavailableError(
                            f"the KMIP server {self.host}:{self.port} failed "
                            f"({type(exc).__name__} during {what})"
                        ) from None
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # the connection is gone either way
                client.close()

    def close(self) -> None:
        with self._lock:
            self._drop()

    # --- objects -----------------------------------------------------------------

    def _create(self, name: str, usage: list[Any], *, activate: bool = True) -> str:
        from kmip.core import enums

        def run(c: Any) -> str:
            uid = str(
                c.create(
                    enums.CryptographicAlgorithm.AES,
                    256,
                    name=name,
                    cryptographic_usage_mask=usage,
                )
            )
            if activate:
                c.activate(uid)
            return uid

        return str(self._call("Create", run))

    def _locate(self, name: str) -> list[str]:
        from kmip.core import enums

        def run(c: Any) -> list[str]:
            attr = c.attribute_factory.create_attribute(enums.AttributeType.NAME, name)
            return [str(u) for u in c.locate(attributes=[attr])]

        result: list[str] = self._call("Locate", run)
        return result

    def _usage_wrap(self) -> list[Any]:
        from kmip.core import enums

        return [enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT]

    # --- KeyService -----------------------------------------------------------------

    def parse_uri(self, key_uri: str) -> str:
        return parse_uri(key_uri)

    def new_key(self, version: int) -> tuple[str, str]:
        from kmip.core import enums

        uid = self._create("sealedkb-kms-key", self._usage_wrap())
        # known to sealedkb: a lost record is never taken for a key to adopt
        self._create(_ADOPTED_PREFIX + uid, [enums.CryptographicUsageMask.EXPORT], activate=False)
        return f"kmip:{uid}", uid

    def new_version(self, key_uri: str, version: int) -> str:
        return self._create(f"sealedkb-kms-key:{parse_uri(key_uri)}:v{version}", self._usage_wrap())

    def adopt(self, key_uri: str) -> str | None:
        """An active AES-256 key made on the server by other means, adopted once (a
        marker object named ``sealedkb-adopted:<uid>`` records it; keys sealedkb
        makes get it when made)."""
        from kmip.core import enums

        uid = parse_uri(key_uri)
        if self._locate(_ADOPTED_PREFIX + uid):
            return None

        def facts(c: Any) -> dict[str, Any]:
            _uid, attrs = c.get_attributes(
                uid, ["State", "Cryptographic Algorithm", "Cryptographic Length"]
            )
            return {a.attribute_name.value: a.attribute_value.value for a in attrs}

        try:
            found = self._call("GetAttributes", facts)
        except KeyUnavailableError:
            return None
        if (
            found.get("Cryptographic Algorithm") != enums.CryptographicAlgorithm.AES
            or found.get("Cryptographic Length") != 256
        ):
            raise ValidationError(f"KMIP object {uid} is not an AES-256 key", field="kms_key_id")
        if found.get("State") != enums.State.ACTIVE:
            raise ValidationError(
                f"KMIP key {uid} is not Active (activate it on the server first)",
                field="kms_key_id",
            )
        self._create(_ADOPTED_PREFIX + uid, [enums.CryptographicUsageMask.EXPORT], activate=False)
        return uid

    def _params(self) -> Any:
        from kmip.core import enums
        from kmip.core.attributes import CryptographicParameters

        return CryptographicParameters(
            block_cipher_mode=enums.BlockCipherMode.GCM,
            cryptographic_algorithm=enums.CryptographicAlgorithm.AES,
            tag_length=_TAG,
        )

    def wrap(self, handle: str, plaintext: bytes, aad: bytes) -> bytes:
        from kmip.core import enums
        from kmip.core.messages import payloads

        nonce = random_bytes(_NONCE)
        request = payloads.EncryptRequestPayload(
            unique_identifier=handle,
            cryptographic_parameters=self._params(),
            data=plaintext,
            iv_counter_nonce=nonce,
            auth_additional_data=aad,
        )
        resp = self._call(
            "Encrypt", lambda c: c.proxy.send_request_payload(enums.Operation.ENCRYPT, request)
        )
        tag = bytes(resp.auth_tag or b"")
        if len(tag) != _TAG:
            raise KeyUnavailableError("the KMIP server returned no GCM tag (KMIP 1.4 needed)")
        return nonce + tag + bytes(resp.data)

    def unwrap(self, handle: str, body: bytes, aad: bytes) -> bytes:
        try:
            return self._decrypt(handle, body, aad)
        except _DecryptRefused:
            pass
        # A bad tag and a server failing for its own reasons (shutting down, its store
        # unavailable) give the same "operation failed": only a server that still
        # round-trips under this key and context shows that the blob is bad.
        probe = random_bytes(32)
        try:
            echoed = self._decrypt(handle, self.wrap(handle, probe, aad), aad)
        except _DecryptRefused:
            raise KeyUnavailableError(
                "the KMIP server fails Decrypt now (it does not decrypt a fresh probe either)"
            ) from None
        if echoed != probe:
            raise KeyUnavailableError("the KMIP server answers Decrypt wrongly")
        raise IntegrityError("wrapped data key failed authentication")

    def _decrypt(self, handle: str, body: bytes, aad: bytes) -> bytes:
        """One Decrypt; _DecryptRefused when the server refuses without a reason."""
        from kmip.core import enums
        from kmip.core.messages import payloads

        if len(body) < _NONCE + _TAG + 1:
            raise IntegrityError("wrapped data key is malformed")
        request = payloads.DecryptRequestPayload(
            unique_identifier=handle,
            cryptographic_parameters=self._params(),
            data=body[_NONCE + _TAG :],
            iv_counter_nonce=body[:_NONCE],
            auth_additional_data=aad,
            auth_tag=body[_NONCE : _NONCE + _TAG],
        )
        resp = self._call(
            "Decrypt", lambda c: c.proxy.send_request_payload(enums.Operation.DECRYPT, request)
        )
        return bytes(resp.data)

    def destroy(self, handle: str) -> None:
        from kmip.core import enums

        def run(c: Any) -> None:
            try:
                c.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, handle)
            except Exception as exc:  # already revoked: destroy anyway
                log.debug("KMIP revoke before destroy: %s", type(exc).__name__)
            c.destroy(handle)

        try:
            self._call("Destroy", run)
        except KeyUnavailableError as exc:
            if exc.key_state != "Destroyed":  # gone already: nothing to do
                raise

    def _mac_key(self) -> str:
        from kmip.core import enums

        if self._mac_uid is not None:
            return self._mac_uid
        found = self._locate(MAC_KEY_NAME)
        if len(found) > 1:
            raise IntegrityError(f"the KMIP server holds more than one {MAC_KEY_NAME!r} key")
        if found:
            self._mac_uid = found[0]
        else:
            log.info("creating the audit MAC key on the KMIP server")
            usage = enums.CryptographicUsageMask
            self._mac_uid = self._create(MAC_KEY_NAME, [usage.MAC_GENERATE, usage.MAC_VERIFY])
        return self._mac_uid

    def mac(self, message: bytes) -> bytes:
        from kmip.core import enums

        uid = self._mac_key()
        _uid, value = self._call(
            "MAC", lambda c: c.mac(message, uid, enums.CryptographicAlgorithm.HMAC_SHA256)
        )
        return bytes(value)


class _DecryptRefused(Exception):
    """The server refused a Decrypt without saying why (unwrap decides what it means)."""


_services: dict[tuple[str, int, str, str, str], KmipService] = {}
_services_lock = threading.Lock()


def close_connections() -> None:
    """Close every KMIP connection of this process (the next call reconnects)."""
    with _services_lock:
        services = list(_services.values())
    for service in services:
        service.close()


def kmip_provider(
    settings: Settings,
    *,
    principal: str,
    now: Callable[[], datetime] | None = None,
) -> ExternalKeyProvider:
    """The ``kmip`` scheme's factory: server and client certificate from settings.
    Providers of the same server share one connection."""
    missing = [
        name
        for name, value in (
            ("SEALEDKB_KMIP_CERT", settings.kmip_cert),
            ("SEALEDKB_KMIP_KEY", settings.kmip_key),
            ("SEALEDKB_KMIP_CA", settings.kmip_ca),
        )
        if value is None
    ]
    if missing:
        raise ConfigError(
            "the KMIP provider needs mutual TLS: set " + ", ".join(missing), field="kmip_cert"
        )
    assert settings.kmip_cert and settings.kmip_key and settings.kmip_ca
    ident = (
        settings.kmip_host,
        settings.kmip_port,
        str(settings.kmip_cert),
        str(settings.kmip_key),
        str(settings.kmip_ca),
    )
    with _services_lock:
        service = _services.get(ident)
        if service is None:
            service = _services[ident] = KmipService(
                settings.kmip_host,
                settings.kmip_port,
                cert=settings.kmip_cert,
                key=settings.kmip_key,
                ca=settings.kmip_ca,
                timeout=settings.kmip_timeout,
            )
    return ExternalKeyProvider(
        service,
        settings.keys_dir / SCHEME,
        principal=principal,
        service_principal=settings.service_principal,
        now=now,
    )
