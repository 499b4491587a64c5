"""Which database connections must use verified TLS, and how that is enforced.

The rule (docs/DESIGN.md §8, verified TLS to the database): a connection may go
without TLS only when *every* target is a Unix socket or an explicit loopback
host. Anything else needs ``sslmode=verify-full`` (chain *and* host name checked) against a
configured CA, TLS 1.2 or newer; weaker settings are refused with exit code 7
unless the operator opts out with ``SEALEDKB_DATABASE_ALLOW_INSECURE`` (logged,
and shown by ``status``).

It is enforced three times, because each layer alone can be talked around:

1. :func:`classify_transport` judges the URL *as libpq will read it*: the URL
   plus the ``PG*`` environment variables libpq falls back to, with ``host``
   and ``hostaddr`` judged together (``hostaddr`` is where libpq connects,
   ``host`` is the name the certificate must carry), and returns a conninfo in
   which every judged value is spelled out, so a later change of the
   environment cannot change what was judged. It also pins
   ``ssl_min_protocol_version=TLSv1.2`` and ``gssencmode=disable`` (with
   GSSAPI credentials around, libpq would otherwise prefer GSS encryption and
   skip TLS and its verification altogether).
2. libpq itself, with ``sslmode=verify-full``, refuses an unverifiable server.
3. :func:`check_connection` looks at the live connection (the IP address it
   really reached, the name it verified, whether TLS is on and which version)
   and closes it if the rule is broken — e.g. ``localhost`` that resolves to a
   remote address. It runs on the first connection and on every pooled one.

When libpq refuses a TLS connection, :func:`explain_connect_failure` names the
cause (libpq says "certificate verify failed" for an unknown CA and for an
expired certificate alike; a probe with Python's ``ssl`` tells them apart).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sealedkb.errors import ConfigError, DatabaseError, TransportRefusedError
from sealedkb.store.tls import ACCEPTED_PROTOCOLS, probe, session_of

log = logging.getLogger("sealedkb.store")

DEFAULT_PORT = 5432
MIN_PROTOCOL = "TLSv1.2"
_OLD_PROTOCOLS = frozenset({"tlsv1", "tlsv1.0", "tlsv1.1", "sslv3"})

# libpq reads these when the connection string leaves the keyword out.
_ENV_FALLBACKS = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE",
}

_SSLROOTCERT_FIX = (
    "set SEALEDKB_DATABASE_SSLROOTCERT (or sslrootcert= in the URL) to the PEM file of the CA "
    "that issued the database server's certificate"
)

#: cause -> (reason template, fix template). Templates may use {where}, {host},
#: {ca} and {detail}. Reasons never contain the URL, a password or SQL.
CAUSES: dict[str, tuple[str, str]] = {
    "no-ca": (
        "no CA certificate is configured to verify the database server at {where}",
        _SSLROOTCERT_FIX,
    ),
    "ca-not-found": (
        "the CA certificate file {ca} does not exist or cannot be read",
        _SSLROOTCERT_FIX,
    ),
    "bad-ca-file": (
        "the CA certificate file {ca} cannot be used ({detail})",
        _SSLROOTCERT_FIX,
    ),
    "client-file-not-found": (
        "the TLS client {detail} does not exist or cannot be read",
        "set SEALEDKB_DATABASE_SSLCERT and SEALEDKB_DATABASE_SSLKEY to existing PEM files",
    ),
    "bad-client-files": (
        "the TLS client certificate or key cannot be used ({detail})",
        "point SEALEDKB_DATABASE_SSLCERT/SEALEDKB_DATABASE_SSLKEY at a matching PEM certificate "
        "and key; the key must be readable by its owner only (chmod 600)",
    ),
    "client-certificate": (
        "the database server at {where} refused the connection's TLS client certificate "
        "(or requires one)",
        "set SEALEDKB_DATABASE_SSLCERT and SEALEDKB_DATABASE_SSLKEY to a client certificate "
        "the server trusts",
    ),
    "plaintext-server": (
        "the database server at {where} does not offer TLS (plaintext only)",
        "enable TLS on the server (ssl = on with a certificate and key; RDS always offers it); "
        "sealedkb never falls back to plaintext for a remote host",
    ),
    "unknown-ca": (
        "the database server's certificate at {where} is not signed by the CA in {ca} ({detail})",
        _SSLROOTCERT_FIX,
    ),
    "expired-certificate": (
        "the database server's certificate at {where} has expired",
        "renew the server certificate and reload the server (check the clocks if it should "
        "still be valid)",
    ),
    "certificate-not-yet-valid": (
        "the database server's certificate at {where} is not valid yet",
        "check the clocks of this machine and of the server, or reissue the certificate",
    ),
    "hostname-mismatch": (
        "the database server's certificate at {where} is not valid for the host name {host}",
        "connect with a name the certificate lists in its subjectAltName (the URL's host; use "
        "hostaddr= to pick the IP address), or reissue the certificate for {host}",
    ),
    "certificate-verify-failed": (
        "the database server's certificate at {where} failed verification ({detail})",
        _SSLROOTCERT_FIX,
    ),
    "old-protocol": (
        "the database server at {where} offers no TLS version sealedkb accepts (TLS 1.2 or newer)",
        "enable TLS 1.2 or 1.3 on the server (PostgreSQL: ssl_min_protocol_version = 'TLSv1.2')",
    ),
    "handshake-failed": (
        "the TLS handshake with the database server at {where} failed ({detail})",
        "run 'sealedkb doctor' to check the server's certificate and TLS settings",
    ),
}


def refusal(cause: str, **values: str) -> TransportRefusedError:
    """A TransportRefusedError for one of :data:`CAUSES`, message and fix filled in."""
    reason, fix = CAUSES[cause]
    fields = {"where": "?", "host": "?", "ca": "?", "detail": "?", **values}
    return TransportRefusedError(
        reason.format(**fields), cause=cause, fix=fix.format(**fields), field="database_url"
    )


@dataclass(frozen=True)
class TlsFiles:
    """TLS files from the settings (``SEALEDKB_DATABASE_SSLROOTCERT`` ...)."""

    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """One TCP target: the name (verified against the certificate) and the address."""

    host: str
    hostaddr: str | None
    port: int

    @property
    def where(self) -> str:
        return f"{self.host or self.hostaddr}:{self.port}"


@dataclass(frozen=True)
class Transport:
    """How sealedkb reaches its database, as judged before connecting.

    ``kind``: ``unix-socket`` | ``loopback`` (TCP to 127.0.0.1/::1/localhost,
    TLS not required) | ``tls`` (``sslmode=verify-full``) | ``insecure-tcp``
    (remote without verified TLS: only with the opt-out). ``conninfo`` is what
    to connect with; it may hold a password and is never logged or printed.
    """

    kind: str
    host: str | None
    sslmode: str | None
    conninfo: str = field(default="", repr=False, compare=False)
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None
    endpoints: tuple[Endpoint, ...] = ()


def _is_loopback_ip(value: str) -> bool:
    try:
        return ipaddress.ip_address(value.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP literal; any other name counts as remote."""
    return host == "localhost" or _is_loopback_ip(host)


def _is_socket(host: str) -> bool:
    """A Unix socket in a folder (libpq: an absolute path). libpq's "@name" abstract
    namespace has no file permissions: any local user can bind the name first, so it
    counts as a network address (it needs verified TLS like any other)."""
    return host == "" or host.startswith("/")


def _split(value: Any) -> list[str]:
    return [part.strip() for part in str(value or "").split(",")] if value else []


def _targets(params: dict[str, Any]) -> list[tuple[str, str]]:
    """(host, hostaddr) pairs as libpq pairs them; ("", "") for its default socket."""
    hosts, addrs = _split(params.get("host")), _split(params.get("hostaddr"))
    pairs = list(zip_longest(hosts, addrs, fillvalue=""))
    return pairs or [("", "")]


def _is_local(host: str, hostaddr: str) -> bool:
    """Plaintext allowed: a socket, or loopback by *both* name and address.

    With ``hostaddr`` libpq connects there (TCP, even if ``host`` is a socket
    path) and verifies the certificate against ``host``; both must be loopback,
    so neither ``host=localhost&hostaddr=10.0.0.5`` nor a remote-looking name
    pinned to 127.0.0.1 passes without TLS.
    """
    if hostaddr:
        return _is_loopback_ip(hostaddr) and (host == "" or is_loopback_host(host))
    return _is_socket(host) or is_loopback_host(host)


def _ports(params: dict[str, Any], count: int) -> list[int]:
    ports = _split(params.get("port")) or [str(DEFAULT_PORT)]
    if len(ports) == 1:
        ports = ports * count
    out = []
    for p in ports:
        try:
            out.append(int(p) if p else DEFAULT_PORT)
        except ValueError:
            raise DatabaseError("the database port is not a number") from None
    return out


def _parse(url: str) -> dict[str, Any]:
    try:
        params: dict[str, Any] = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise DatabaseError("database URL is malformed") from None
    return params


def classify_transport(
    url: str, *, allow_insecure: bool = False, tls: TlsFiles | None = None
) -> Transport:
    """Judge where ``url`` connects and refuse it unless its transport is safe enough.

    Raises TransportRefusedError (exit 7) naming what to set; returns the
    Transport whose ``conninfo`` spells out every value that was judged.
    """
    params = _parse(url)
    explicit: dict[str, str] = {}
    # libpq fills what the URL leaves out from PG* variables; judge what it will use,
    # and write it down so a later change of the environment cannot change it.
    for key, env in _ENV_FALLBACKS.items():
        if not params.get(key) and os.environ.get(env):
            params[key] = explicit[key] = os.environ[env]
    if params.get("service") or os.environ.get("PGSERVICE"):
        raise TransportRefusedError(
            "connection service files are not supported",
            fix="put host, sslmode and sslrootcert in SEALEDKB_DATABASE_URL",
            cause="service-file",
            field="database_url",
        )
    _merge_tls_files(params, explicit, tls or TlsFiles())

    pairs = _targets(params)
    sslmode = str(params["sslmode"]) if params.get("sslmode") else None
    ports = _ports(params, len(pairs))
    endpoints = tuple(
        Endpoint(h, a or None, ports[i] if i < len(ports) else DEFAULT_PORT)
        for i, (h, a) in enumerate(pairs)
        if a or not _is_socket(h)
    )
    shown = str(params.get("host") or params.get("hostaddr") or "") or None
    where = ", ".join(e.where for e in endpoints)

    if all(not a and _is_socket(h) for h, a in pairs):
        kind = "unix-socket"
    elif sslmode == "verify-full":
        kind = "tls"
    elif all(_is_local(h, a) for h, a in pairs):
        kind = "loopback"
    elif allow_insecure:
        kind = "insecure-tcp"
        log.warning(
            "TLS verification for the remote database %s is OFF (sslmode=%s, "
            "SEALEDKB_DATABASE_ALLOW_INSECURE=true): traffic and credentials can be read or "
            "changed in transit",
            where,
            sslmode or "prefer",
        )
    else:
        hint = " (verify-ca does not check the host name)" if sslmode == "verify-ca" else ""
        raise TransportRefusedError(
            f"refusing to connect to the remote database host {where} without verified TLS: "
            f"sslmode={sslmode or 'prefer'}{hint}",
            fix="add sslmode=verify-full to SEALEDKB_DATABASE_URL and set "
            "SEALEDKB_DATABASE_SSLROOTCERT to the CA certificate of the server (or, accepting "
            "the risk, set SEALEDKB_DATABASE_ALLOW_INSECURE=true)",
            cause="weak-sslmode",
            field="database_url",
        )

    if kind != "unix-socket":
        _pin_tls_parameters(params, explicit, sslmode, kind, where)
    conninfo = make_conninfo(url, **explicit) if explicit else url
    return Transport(
        kind,
        shown,
        sslmode,
        conninfo,
        sslrootcert=_opt(params.get("sslrootcert")),
        sslcert=_opt(params.get("sslcert")),
        sslkey=_opt(params.get("sslkey")),
        endpoints=endpoints,
    )


def _opt(value: Any) -> str | None:
    return str(value) if value else None


def _merge_tls_files(params: dict[str, Any], explicit: dict[str, str], files: TlsFiles) -> None:
    """Settings fill in TLS files the URL leaves out; a contradiction is an error."""
    for key in ("sslrootcert", "sslcert", "sslkey"):
        value = getattr(files, key)
        if not value:
            continue
        current = params.get(key)
        if current and str(current) != str(value):
            raise ConfigError(
                f"SEALEDKB_DATABASE_{key.upper()} and {key}= in the database URL (or "
                f"PG{key.upper()}) name different files; keep one",
                field=f"database_{key}",
            )
        params[key] = explicit[key] = str(value)


def _pin_tls_parameters(
    params: dict[str, Any], explicit: dict[str, str], sslmode: str | None, kind: str, where: str
) -> None:
    """Minimum TLS version, no GSS encryption, and a usable CA for verify-* modes."""
    first = where.split(", ")[0]
    minimum = str(params.get("ssl_min_protocol_version") or "")
    if minimum.lower() in _OLD_PROTOCOLS:
        raise TransportRefusedError(
            f"ssl_min_protocol_version={minimum} allows TLS older than 1.2",
            fix="remove ssl_min_protocol_version from the URL (sealedkb requires TLSv1.2 or "
            "newer) or set it to TLSv1.3",
            cause="old-protocol",
            field="database_url",
        )
    if not minimum:
        explicit["ssl_min_protocol_version"] = MIN_PROTOCOL
    if kind == "tls":
        gss = str(params.get("gssencmode") or "")
        if gss and gss != "disable":
            raise TransportRefusedError(
                f"gssencmode={gss} would let GSSAPI encryption replace verified TLS",
                fix="remove gssencmode from the URL and PGGSSENCMODE from the environment",
                cause="gssencmode",
                field="database_url",
            )
        explicit["gssencmode"] = "disable"
    if sslmode not in ("verify-full", "verify-ca"):
        return
    ca = _opt(params.get("sslrootcert"))
    if ca is None:
        default = Path.home() / ".postgresql" / "root.crt"  # libpq's own default
        if not default.is_file():
            raise refusal("no-ca", where=first)
        ca = params["sslrootcert"] = explicit["sslrootcert"] = str(default)
    if ca != "system" and not os.access(ca, os.R_OK):
        raise refusal("ca-not-found", ca=ca, where=first)
    for key, what in (("sslcert", "certificate"), ("sslkey", "key")):
        path = _opt(params.get(key))
        if path and not os.access(path, os.R_OK):
            raise refusal("client-file-not-found", detail=f"{what} file {path}", where=first)


# --- after connecting -----------------------------------------------------------


def check_connection(conn: psycopg.Connection[Any], *, allow_insecure: bool = False) -> None:
    """Defence in depth on a live connection: the rule holds whatever was configured.

    Looks at the address libpq really reached (``PQhostaddr``, empty for a
    socket), the name it verified (``PQhost``), TLS in use, the sslmode in
    force and the negotiated protocol; closes the connection and raises
    TransportRefusedError when they break the rule.
    """
    pgconn = conn.pgconn
    addr = (pgconn.hostaddr or b"").decode("utf-8", "replace")
    host = (pgconn.host or b"").decode("utf-8", "replace")
    if not addr:
        return  # Unix socket
    session = session_of(pgconn)
    if session is not None and session.protocol and session.protocol not in ACCEPTED_PROTOCOLS:
        conn.close()
        raise TransportRefusedError(
            f"the database connection negotiated {session.protocol}",
            fix="enable TLS 1.2 or 1.3 on the server",
            cause="old-protocol",
            field="database_url",
        )
    if allow_insecure or (_is_loopback_ip(addr) and is_loopback_host(host)):
        return
    opts = {o.keyword.decode(): (o.val or b"").decode() for o in pgconn.info}
    if session is None or opts.get("sslmode") != "verify-full":
        conn.close()
        raise TransportRefusedError(
            f"connected to the remote database {host or addr} without verified TLS",
            fix="use sslmode=verify-full with SEALEDKB_DATABASE_SSLROOTCERT (check PGHOST, "
            "PGHOSTADDR and /etc/hosts: the name resolved to a remote address)",
            cause="weak-sslmode",
            field="database_url",
        )


# --- when connecting fails ------------------------------------------------------

_CLIENT_FILE_ERRORS = (
    "could not load private key",
    "private key file",
    "certificate present, but not private key",
    "could not read certificate file",
    "could not open certificate file",
    "could not load certificate",
)

_PROTOCOL_ERRORS = ("protocol version", "unsupported protocol", "no protocols available")


def explain_connect_failure(conninfo: str, exc: BaseException) -> TransportRefusedError | None:
    """Turn libpq's TLS failures into a TransportRefusedError naming the cause.

    Returns None for failures that are not about TLS (server down, bad
    password ...); those stay DatabaseErrors. libpq's own text goes to the debug
    log only (it names host and port, never the password).
    """
    text = str(exc)
    low = text.lower()
    log.debug("database connection failed: %s", text.strip().replace("\n", " | "))
    try:
        params = _parse(conninfo)
    except DatabaseError:
        return None
    sslmode = str(params.get("sslmode") or "")
    pairs = _targets(params)
    ports = _ports(params, len(pairs))
    tcp = [
        Endpoint(h, a or None, ports[i] if i < len(ports) else DEFAULT_PORT)
        for i, (h, a) in enumerate(pairs)
        if a or not _is_socket(h)
    ]
    if not tcp:
        return None
    ep = tcp[0]
    ca = str(params.get("sslrootcert") or "~/.postgresql/root.crt")
    values = {"where": ep.where, "host": ep.host or str(ep.hostaddr), "ca": ca}

    if "server does not support ssl" in low:
        return refusal("plaintext-server", **values)
    if "does not match host name" in low:
        return refusal("hostname-mismatch", **values)
    if "certificate verify failed" in low:
        result = probe(
            ep.host or str(ep.hostaddr),
            ep.port,
            hostaddr=ep.hostaddr,
            cafile=_opt(params.get("sslrootcert")),
            certfile=_opt(params.get("sslcert")),
            keyfile=_opt(params.get("sslkey")),
        )
        cause = result.cause if result.cause in CAUSES else "certificate-verify-failed"
        return refusal(cause, detail=result.detail, **values)
    if "root certificate file" in low or "could not read root certificate" in low:
        return refusal("bad-ca-file", detail="libpq cannot load it", **values)
    if "has group or world access" in low:
        return refusal("bad-client-files", detail="the key file is readable by others", **values)
    if any(marker in low for marker in _CLIENT_FILE_ERRORS):
        return refusal("bad-client-files", detail="libpq cannot load them", **values)
    if "certificate required" in low or "certificate unknown" in low or "bad certificate" in low:
        return refusal("client-certificate", **values)
    if any(m in low for m in _PROTOCOL_ERRORS):
        return refusal("old-protocol", **values)
    if sslmode in ("require", "verify-ca", "verify-full") and (
        "ssl error" in low or "ssl syscall" in low
    ):
        return refusal("handshake-failed", detail="see the debug log", **values)
    return None
