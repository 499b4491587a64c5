"""What TLS a PostgreSQL connection negotiated, and why a TLS handshake failed.

Two tools, both transport (no keys, no plaintext), so they live in ``store``:

- :func:`session_of` reads the negotiated protocol and cipher of a live psycopg
  connection. psycopg only exposes ``pgconn.ssl_in_use``; the rest comes from
  libpq's ``PQsslAttribute``, called through ctypes. A ``PGconn*`` may only be
  handed to the libpq that created it (two libpq copies in one process do not
  share struct layouts), so we call into the very library psycopg loaded: the
  ctypes handle of the pure-Python implementation, or the ``libpq`` mapped into
  this process for the compiled ones (``psycopg_binary`` bundles its own).
- :func:`probe` repeats the TLS handshake with Python's ``ssl`` module
  (PostgreSQL's SSLRequest, then a handshake against the same CA, client
  certificate and host name). libpq reports every chain problem as the same
  "certificate verify failed"; OpenSSL's verify code, which ``ssl`` exposes,
  tells an expired certificate from an unknown CA, so error messages and
  ``doctor`` can name the cause. It also fetches the server certificate for
  the expiry check.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import socket
import ssl
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from psycopg import pq

log = logging.getLogger("sealedkb.store.tls")

#: TLS versions sealedkb accepts (docs/DESIGN.md §8: minimum TLS 1.2).
ACCEPTED_PROTOCOLS = frozenset({"TLSv1.2", "TLSv1.3"})

_SSL_REQUEST = struct.pack("!ii", 8, 80877103)  # PostgreSQL protocol: SSLRequest

# OpenSSL X509_V_ERR_* codes -> sealedkb cause names.
_VERIFY_CAUSES = {
    9: "certificate-not-yet-valid",
    10: "expired-certificate",
    18: "unknown-ca",  # self-signed leaf
    19: "unknown-ca",  # self-signed certificate in chain
    20: "unknown-ca",  # unable to get local issuer certificate
    21: "unknown-ca",  # unable to verify the first certificate
    62: "hostname-mismatch",
    64: "hostname-mismatch",  # IP address mismatch
}


@dataclass(frozen=True)
class TlsSession:
    """The negotiated TLS parameters of one connection (None where libpq is silent)."""

    protocol: str | None
    cipher: str | None
    key_bits: int | None
    library: str | None


@cache
def _libpq() -> Any:
    """ctypes handle on the libpq psycopg uses, or None when it cannot be found."""
    if pq.__impl__ == "python":
        from psycopg.pq import _pq_ctypes

        lib: Any = getattr(_pq_ctypes, "pq", None)
    else:
        path = _mapped_libpq()
        if path is None:
            log.debug("cannot tell which libpq psycopg (%s) loaded", pq.__impl__)
            return None
        try:
            lib = ctypes.CDLL(path)  # already loaded: dlopen returns the same handle
        except OSError:
            log.debug("cannot open %s", path)
            return None
    fn = getattr(lib, "PQsslAttribute", None)
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    fn.restype = ctypes.c_char_p
    return fn


def _mapped_libpq() -> str | None:
    """Path of the libpq shared object mapped into this process (Linux /proc)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            paths = {
                line.split(None, 5)[-1].strip()
                for line in fh
                if "libpq" in line and len(line.split(None, 5)) == 6
            }
    except OSError:
        return None
    paths = {p for p in paths if Path(p).name.startswith("libpq")}
    if pq.__impl__ == "binary" and len(paths) > 1:
        paths = {p for p in paths if "psycopg_binary" in p}
    return next(iter(paths)) if len(paths) == 1 else None


def session_of(pgconn: Any) -> TlsSession | None:
    """TLS parameters of a live connection; None when it does not use TLS.

    ``pgconn`` is ``conn.pgconn`` of an open psycopg connection.
    """
    if not pgconn.ssl_in_use:
        return None
    fn = _libpq()
    if fn is None:
        return TlsSession(None, None, None, None)

    def attr(name: bytes) -> str | None:
        raw = fn(ctypes.c_void_p(pgconn.pgconn_ptr), name)
        return raw.decode("ascii", "replace") if raw else None

    bits = attr(b"key_bits")
    return TlsSession(
        protocol=attr(b"protocol"),
        cipher=attr(b"cipher"),
        key_bits=int(bits) if bits and bits.isdigit() else None,
        library=attr(b"library"),
    )


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of one TLS handshake attempt made with Python's ``ssl`` module.

    ``cause`` is None when the handshake and every verification succeeded.
    ``peer_der`` is the server's leaf certificate (DER) when the server sent one,
    even when verification failed (fetched again without verification).
    """

    cause: str | None
    detail: str
    protocol: str | None = None
    cipher: str | None = None
    peer_der: bytes | None = None


def _context(
    cafile: str | None, certfile: str | None, keyfile: str | None, *, verify: bool
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        if cafile and cafile != "system":
            ctx.load_verify_locations(cafile=cafile)
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if certfile:
        ctx.load_cert_chain(certfile, keyfile or None)
    return ctx


def _handshake(
    address: str, port: int, server_name: str, ctx: ssl.SSLContext, timeout: float
) -> ssl.SSLSocket | None:
    """Open TCP, send SSLRequest; None when the server answers 'N' (no TLS)."""
    sock = socket.create_connection((address, port), timeout=timeout)
    try:
        sock.sendall(_SSL_REQUEST)
        answer = sock.recv(1)
        if answer != b"S":
            sock.close()
            return None
        return ctx.wrap_socket(sock, server_hostname=server_name)
    except BaseException:
        sock.close()
        raise


def probe(
    host: str,
    port: int,
    *,
    hostaddr: str | None = None,
    cafile: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    timeout: float = 5.0,
) -> ProbeResult:
    """Handshake with a PostgreSQL server as ``sslmode=verify-full`` would.

    Connects to ``hostaddr`` (or ``host``) and checks the certificate against
    ``cafile`` (``"system"`` or None: the system store) and the name ``host``.
    Never raises for network or TLS problems: they come back as a cause.
    """
    address = hostaddr or host
    try:
        ctx = _context(cafile, certfile, keyfile, verify=True)
    except (OSError, ssl.SSLError) as exc:
        log.debug("cannot load TLS files: %s", type(exc).__name__)
        return ProbeResult("bad-tls-files", "the CA or client certificate files cannot be loaded")
    try:
        tls = _handshake(address, port, host, ctx, timeout)
        if tls is None:
            return ProbeResult("plaintext-server", "the server does not offer TLS")
        with tls:
            return ProbeResult(
                None,
                "verified",
                protocol=tls.version(),
                cipher=(tls.cipher() or (None,))[0],
                peer_der=tls.getpeercert(binary_form=True),
            )
    except ssl.SSLCertVerificationError as exc:
        cause = _VERIFY_CAUSES.get(exc.verify_code, "certificate-verify-failed")
        detail = str(exc.verify_message or "certificate verify failed")
        peer = _unverified_peer(address, port, host, certfile, keyfile, timeout)
        return ProbeResult(cause, detail, peer_der=peer)
    except ssl.SSLError as exc:
        reason = str(exc.reason or "").lower()
        if "protocol" in reason or "version" in reason:
            return ProbeResult("old-protocol", "the server offers no TLS version >= 1.2")
        if "certificate required" in reason or "handshake failure" in reason:
            return ProbeResult("client-certificate", f"handshake refused ({reason})")
        return ProbeResult("handshake-failed", f"TLS handshake failed ({reason or 'unknown'})")
    except OSError as exc:
        log.debug("TLS probe of %s:%s failed: %s", address, port, type(exc).__name__)
        return ProbeResult("unreachable", f"cannot reach {address}:{port} ({type(exc).__name__})")


def _unverified_peer(
    address: str,
    port: int,
    host: str,
    certfile: str | None,
    keyfile: str | None,
    timeout: float,
) -> bytes | None:
    """The server's certificate without verifying it (to report on a failed one)."""
    try:
        ctx = _context(None, certfile, keyfile, verify=False)
    except (OSError, ssl.SSLError):
        return None
    with contextlib.suppress(OSError, ssl.SSLError):
        tls = _handshake(address, port, host, ctx, timeout)
        if tls is not None:
            with tls:
                return tls.getpeercert(binary_form=True)
    return None
