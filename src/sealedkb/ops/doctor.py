"""``sealedkb doctor``: check an installation and say how to fix what is wrong.

Each check is a small function returning :class:`Check` results (OK, WARN or
FAIL, one line of what was found and, unless OK, one line of what to do).
Checks that need something an earlier check could not provide (settings, a
database connection) report SKIP instead of piling up failures with one cause.
The doctor only reads: it starts the embedded server if it exists (as every
command does) but creates nothing, migrates nothing and writes no key.

Messages never carry a password, the database URL, key material or SQL.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import psycopg

from sealedkb.config import CONFIG_FILE, Settings, load_settings
from sealedkb.crypto.certs import CertInfo, describe_der, describe_pem_file
from sealedkb.errors import (
    AccessDeniedError,
    NotInitializedError,
    SealedKBError,
    TransportRefusedError,
)
from sealedkb.kb.wiring import DatabaseTarget, key_provider, resolve_database
from sealedkb.keys.provider import (
    KeyMetadata,
    KeyProvider,
    KeyState,
    ProviderDiagnosis,
    diagnosis_of,
    keystore_of,
)
from sealedkb.store import diagnostics
from sealedkb.store.db import MIN_SERVER_VERSION, connect
from sealedkb.store.tls import ACCEPTED_PROTOCOLS, probe, session_of
from sealedkb.store.transport import CAUSES, Endpoint

#: Local clock vs. the key service's, in seconds, beyond which AWS SigV4 refuses requests.
KEY_SERVICE_SKEW_FAIL_SECONDS = 300.0
#: The encryption context of the doctor's own data key (made, unwrapped, discarded).
PROBE_CONTEXT = {"sealedkb:namespace": "sealedkb-doctor", "sealedkb:purpose": "probe"}
#: A certificate that expires within this many days is a warning.
EXPIRY_WARN_DAYS = 30
#: Local clock vs. the database server's, in seconds, beyond which to warn.
CLOCK_SKEW_WARN_SECONDS = 60.0
#: pgvector with HNSW indexes.
PGVECTOR_MIN = (0, 5, 0)
#: A local clock before this date is certainly wrong (sealedkb did not exist).
_EARLIEST_SANE_CLOCK = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status.value,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass
class _State:
    """What earlier checks learnt, for the later ones."""

    home: Path | None
    settings: Settings | None = None
    target: DatabaseTarget | None = None
    conn: psycopg.Connection[Any] | None = None
    meta: dict[str, str] | None = None
    provider: KeyProvider | None = None  # the knowledge base's key provider, once reached
    key: KeyMetadata | None = None  # its KMS key, as the provider describes it
    diagnosis: ProviderDiagnosis | None = None  # the provider's self-report, if it has one
    notes: dict[str, str] = field(default_factory=dict)


_CheckFn = Callable[[_State], Check]
_CHECKS: list[tuple[str, tuple[str, ...], _CheckFn]] = []


def _check(name: str, *needs: str) -> Callable[[_CheckFn], _CheckFn]:
    """Register a check; ``needs`` names _State fields that must be set to run it."""

    def register(fn: _CheckFn) -> _CheckFn:
        _CHECKS.append((name, needs, fn))
        return fn

    return register


_NEEDS_TEXT = {
    "settings": "the settings are invalid",
    "target": "the database is not configured usably",
    "conn": "no database connection",
    "provider": "the key provider was not reached",
    "key": "the KMS key was not described",
}


def run(home: Path | str | None = None) -> list[Check]:
    """Run every check in order; never raises for what it diagnoses."""
    state = _State(Path(home) if home is not None else None)
    results: list[Check] = []
    try:
        for name, needs, fn in _CHECKS:
            missing = [n for n in needs if getattr(state, n) is None]
            if missing:
                results.append(Check(name, Status.SKIP, f"not checked: {_NEEDS_TEXT[missing[0]]}"))
                continue
            try:
                results.append(fn(state))
            except TransportRefusedError as exc:
                results.append(Check(name, Status.FAIL, exc.reason, exc.fix))
            except SealedKBError as exc:
                results.append(Check(name, Status.FAIL, exc.message, _generic_fix(exc)))
            except Exception as exc:  # a bug in a check must not hide the others
                results.append(
                    Check(name, Status.FAIL, f"the check itself failed ({type(exc).__name__})")
                )
    finally:
        if state.conn is not None:
            state.conn.close()
    return results


def failed(checks: list[Check]) -> bool:
    return any(c.status is Status.FAIL for c in checks)


def _generic_fix(exc: SealedKBError) -> str:
    if isinstance(exc, NotInitializedError):
        return "run 'sealedkb init' (or point SEALEDKB_HOME / --home at the right folder)"
    if exc.code == "CONFIG_ERROR":
        return "correct that setting (SEALEDKB_* environment variable or config.toml)"
    if exc.code == "KEY_UNAVAILABLE":
        return (
            "provide the root key used at init (SEALEDKB_ROOT_KEY_FILE or SEALEDKB_PASSPHRASE) "
            "and the keys/ folder; see docs/ENCRYPTION-KEY-MANAGEMENT.md"
        )
    return "see docs/ENCRYPTION-KEY-MANAGEMENT.md, troubleshooting"


# --- configuration -------------------------------------------------------------


@_check("config")
def _config(state: _State) -> Check:
    state.settings = load_settings(state.home)
    return Check("config", Status.OK, f"settings are valid (home {state.settings.home})")


# --- database ------------------------------------------------------------------


def _describe_transport(target: DatabaseTarget) -> str:
    t = target.transport
    where = ", ".join(e.where for e in t.endpoints)
    if t.kind == "unix-socket":
        origin = "embedded server" if target.kind == "embedded" else "external server"
        return f"Unix socket ({origin}); TLS not needed"
    if t.kind == "loopback":
        return f"loopback TCP {where}; traffic stays on this machine, TLS not required"
    ca = t.sslrootcert or "system store"
    client = f", client certificate {t.sslcert}" if t.sslcert else ""
    return f"sslmode=verify-full to {where}, CA {ca}{client}"


@_check("database.transport", "settings")
def _transport(state: _State) -> Check:
    assert state.settings is not None
    state.target = resolve_database(state.settings, create=False)
    t = state.target.transport
    if t.kind == "insecure-tcp":
        where = ", ".join(e.where for e in t.endpoints)
        return Check(
            "database.transport",
            Status.WARN,
            f"TLS verification is OFF for {where} (sslmode={t.sslmode or 'prefer'}, "
            "SEALEDKB_DATABASE_ALLOW_INSECURE=true)",
            "remove the opt-out; use sslmode=verify-full and SEALEDKB_DATABASE_SSLROOTCERT",
        )
    return Check("database.transport", Status.OK, _describe_transport(state.target))


_CONNECT_REASONS = (
    ("password authentication failed", "the password was rejected"),
    ("no password supplied", "the server wants a password"),
    ("does not exist", "the database or role does not exist"),
    ("connection refused", "connection refused: is the server running on that port?"),
    ("timeout expired", "timed out"),
    ("could not translate host name", "the host name does not resolve"),
    ("no pg_hba.conf entry", "the server's pg_hba.conf does not admit this client"),
    ("too many connections", "the server has too many connections"),
)


@_check("database.connection", "target")
def _connection(state: _State) -> Check:
    assert state.target is not None and state.settings is not None
    try:
        conn = connect(state.target.url, allow_insecure=state.settings.database_allow_insecure)
    except psycopg.Error as exc:
        low = str(exc).lower()
        reason = next((r for marker, r in _CONNECT_REASONS if marker in low), type(exc).__name__)
        return Check(
            "database.connection",
            Status.FAIL,
            f"cannot connect to the database: {reason}",
            "check that the server runs and the URL's host, port, user, password and database",
        )
    state.conn = conn
    version = diagnostics.server_version(conn)
    if conn.info.server_version < MIN_SERVER_VERSION:
        return Check(
            "database.connection",
            Status.FAIL,
            f"PostgreSQL {version} is too old",
            "use PostgreSQL 15 or newer",
        )
    with contextlib.suppress(psycopg.Error):
        state.meta = diagnostics.kb_meta(conn)
    return Check("database.connection", Status.OK, f"PostgreSQL {version} reachable")


@_check("database.tls", "conn", "target")
def _tls(state: _State) -> Check:
    assert state.conn is not None and state.target is not None
    kind = state.target.transport.kind
    session = session_of(state.conn.pgconn)
    if session is None:
        if kind == "insecure-tcp":
            return Check(
                "database.tls",
                Status.WARN,
                "the connection to a remote database is not encrypted (opt-out in effect)",
                "enable TLS on the server and use sslmode=verify-full",
            )
        where = "Unix socket" if kind == "unix-socket" else "loopback"
        return Check("database.tls", Status.OK, f"not used ({where}: local traffic only)")
    if session.protocol is not None and session.protocol not in ACCEPTED_PROTOCOLS:
        return Check(
            "database.tls",
            Status.FAIL,
            f"negotiated {session.protocol}, older than TLS 1.2",
            "enable TLS 1.2 or 1.3 on the server",
        )
    bits = f", {session.key_bits}-bit" if session.key_bits else ""
    return Check(
        "database.tls",
        Status.OK,
        f"{session.protocol or 'TLS (version unknown)'}, "
        f"{session.cipher or 'cipher unknown'}{bits}",
    )


def _date(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _expiry(info: CertInfo, what: str, fix: str) -> tuple[Status, str, str | None]:
    days = info.days_left()
    if days < 0:
        return Status.FAIL, f"{what} {info.subject} expired on {_date(info.not_after)}", fix
    if days < EXPIRY_WARN_DAYS:
        return (
            Status.WARN,
            f"{what} {info.subject} expires in {days:.0f} days ({_date(info.not_after)})",
            fix,
        )
    return Status.OK, f"{what} {info.subject} valid until {_date(info.not_after)}", None


@_check("database.certificate", "target")
def _certificate(state: _State) -> Check:
    """Chain, host name and expiry of the server certificate (and the CA, client cert)."""
    assert state.target is not None
    t = state.target.transport
    if t.kind == "unix-socket" or not t.endpoints:
        return Check("database.certificate", Status.OK, "not applicable (Unix socket)")
    if t.sslmode not in ("verify-full", "verify-ca"):
        status = Status.WARN if t.kind == "insecure-tcp" else Status.OK
        return Check(
            "database.certificate",
            status,
            f"not verified (sslmode={t.sslmode or 'prefer'})",
            "use sslmode=verify-full" if status is Status.WARN else None,
        )
    ep: Endpoint = t.endpoints[0]
    result = probe(
        ep.host or str(ep.hostaddr),
        ep.port,
        hostaddr=ep.hostaddr,
        cafile=t.sslrootcert,
        certfile=t.sslcert,
        keyfile=t.sslkey,
    )
    if result.cause is not None and result.cause != "client-certificate":
        reason, fix = CAUSES.get(result.cause, CAUSES["handshake-failed"])
        values = {
            "where": ep.where,
            "host": ep.host,
            "ca": t.sslrootcert or "?",
            "detail": result.detail,
        }
        message = reason.format(**values)
        if result.peer_der is not None and result.cause == "expired-certificate":
            with contextlib.suppress(SealedKBError):
                message += f" (on {_date(describe_der(result.peer_der).not_after)})"
        return Check("database.certificate", Status.FAIL, message, fix.format(**values))
    found: list[tuple[Status, str, str | None]] = []
    issuer = None
    if result.peer_der is not None:
        leaf = describe_der(result.peer_der)
        issuer = leaf.issuer
        status, text, renew = _expiry(
            leaf, "server certificate", "renew the database server's certificate before it expires"
        )
        found.append((status, f"chain and host name {ep.host} verified; {text}", renew))
    if t.sslrootcert and t.sslrootcert != "system":
        for ca in describe_pem_file(Path(t.sslrootcert)):
            if issuer is None or ca.subject == issuer:
                found.append(
                    _expiry(ca, "CA", "replace the CA before it expires and reissue certificates")
                )
    if t.sslcert:
        client = describe_pem_file(Path(t.sslcert))[0]
        found.append(
            _expiry(
                client,
                "client certificate",
                "renew the client certificate (SEALEDKB_DATABASE_SSLCERT)",
            )
        )
    order = {Status.OK: 0, Status.WARN: 1, Status.FAIL: 2}
    worst = max(found, key=lambda f: order[f[0]])
    if worst[0] is Status.OK:
        return Check("database.certificate", Status.OK, "; ".join(f[1] for f in found))
    return Check("database.certificate", worst[0], worst[1], worst[2])


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for p in version.split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@_check("database.pgvector", "conn")
def _pgvector(state: _State) -> Check:
    assert state.conn is not None
    installed, available = diagnostics.pgvector_versions(state.conn)
    version = installed or available
    if version is None:
        return Check(
            "database.pgvector",
            Status.FAIL,
            "the pgvector extension is not available on this server",
            "install pgvector on the server (https://github.com/pgvector/pgvector) or use the "
            "embedded default",
        )
    if _version_tuple(version) < PGVECTOR_MIN:
        return Check(
            "database.pgvector",
            Status.WARN,
            f"pgvector {version} is older than 0.5.0 (no HNSW index)",
            "upgrade pgvector (ALTER EXTENSION vector UPDATE after installing the new version)",
        )
    where = "installed" if installed else "available, not yet installed in this database"
    return Check("database.pgvector", Status.OK, f"pgvector {version} {where}")


# --- keys -------------------------------------------------------------------------


@_check("keys.provider", "settings", "conn")
def _provider(state: _State) -> Check:
    assert state.settings is not None
    meta = state.meta
    if meta is None or "encryption" not in meta:
        return Check(
            "keys.provider",
            Status.FAIL,
            "the database holds no sealedkb knowledge base",
            "run 'sealedkb init', or check SEALEDKB_DATABASE_URL names the right database",
        )
    if meta["encryption"] != "on":
        return Check(
            "keys.provider",
            Status.WARN,
            "encryption is off: entries are stored in plaintext",
            "use a knowledge base initialised with --encryption on",
        )
    provider = key_provider(state.settings, key_uri=meta.get("kms_key_uri"))
    keystore = keystore_of(provider)
    if keystore is not None and not keystore.exists():
        return Check(
            "keys.provider",
            Status.FAIL,
            f"no keystore at {state.settings.keys_dir}",
            "restore the keys/ folder (and the root key) from backup",
        )
    key_uri = meta.get("kms_key_uri")
    if key_uri is None:
        return Check("keys.provider", Status.FAIL, "the knowledge base names no KMS key", None)
    key = provider.describe_key(key_uri)
    state.provider, state.key = provider, key
    state_name = key.state.value
    if state_name != "Enabled":
        return Check(
            "keys.provider",
            Status.FAIL,
            f"KMS key {key_uri} is {state_name}: the knowledge base cannot be read or written",
            "enable the key again (or restore it from backup); see "
            "docs/ENCRYPTION-KEY-MANAGEMENT.md",
        )
    source = keystore.root_key_source() if keystore is not None else provider.scheme
    return Check(
        "keys.provider",
        Status.OK,
        f"{provider.scheme} provider reachable, KMS key {key_uri} Enabled, root key: {source}",
    )


@_check("keys.access", "provider", "key")
def _access(state: _State) -> Check:
    """The permissions sealedkb needs, learnt by using the key as the knowledge base
    does (a data key made and unwrapped under the doctor's own context, then
    discarded; an audit MAC made and verified) and, where the service tells, from
    its report on the credentials (Vault's capabilities)."""
    assert state.provider is not None and state.key is not None
    provider, key_uri = state.provider, state.key.key_id
    if state.key.state is not KeyState.ENABLED:
        return Check("keys.access", Status.SKIP, "not checked: the KMS key is not Enabled")
    missing: list[str] = []
    failures: list[str] = []

    def attempt(what: str, fn: Callable[[], object]) -> object | None:
        try:
            return fn()
        except AccessDeniedError as exc:
            missing.append(f"{what}: {exc.message}")
        except SealedKBError as exc:
            failures.append(f"{what}: {exc.message}")
        return None

    made = attempt("GenerateDataKey", lambda: provider.generate_data_key(key_uri, PROBE_CONTEXT))
    if isinstance(made, tuple):
        plain, wrapped = made
        opened = attempt("Decrypt", lambda: provider.decrypt(key_uri, wrapped, PROBE_CONTEXT))
        if opened is not None and opened != plain:
            failures.append("Decrypt: the key service returned another data key")
    mac = attempt("GenerateMac", lambda: provider.generate_mac(b"sealedkb doctor probe"))
    if isinstance(mac, bytes):
        ok = attempt("VerifyMac", lambda: provider.verify_mac(b"sealedkb doctor probe", mac))
        if ok is False:
            failures.append("VerifyMac: the key service does not verify its own MAC")
    diagnosis = attempt("diagnose", lambda: diagnosis_of(provider, key_uri))
    if isinstance(diagnosis, ProviderDiagnosis):
        state.diagnosis = diagnosis
        missing += [f"missing {p}" for p in diagnosis.missing_permissions]
    fix_doc = "see docs/ENCRYPTION-KEY-MANAGEMENT.md, the chapter of the " + provider.scheme
    if missing:
        return Check(
            "keys.access",
            Status.FAIL,
            "the credentials lack permissions sealedkb needs: " + "; ".join(missing),
            f"grant them to the credentials sealedkb uses ({fix_doc} provider)",
        )
    if failures:
        return Check(
            "keys.access",
            Status.FAIL,
            "the key service refused: " + "; ".join(failures),
            f"{fix_doc} provider, troubleshooting",
        )
    told = (
        f", and the service reports all {state.diagnosis.checked_permissions} permissions granted"
        if state.diagnosis is not None and state.diagnosis.checked_permissions
        else ""
    )
    return Check(
        "keys.access",
        Status.OK,
        "GenerateDataKey, Decrypt, GenerateMac and VerifyMac work with " + key_uri + told,
    )


@_check("keys.rotation", "key")
def _rotation(state: _State) -> Check:
    assert state.key is not None
    key = state.key
    versions = f"{key.versions} version{'s' if key.versions != 1 else ''}"
    if not key.rotation_enabled:
        return Check(
            "keys.rotation",
            Status.WARN,
            f"automatic rotation of {key.key_id} is off ({versions})",
            "sealedkb key rotation enable (or the key service's own schedule; "
            "docs/ENCRYPTION-KEY-MANAGEMENT.md)",
        )
    due = f", next on {_date(key.next_rotation_date)}" if key.next_rotation_date else ""
    return Check(
        "keys.rotation",
        Status.OK,
        f"rotates every {key.rotation_period_days} days{due} ({versions})",
    )


@_check("keys.deletion", "key")
def _deletion(state: _State) -> Check:
    assert state.key is not None
    key = state.key
    if key.state is KeyState.PENDING_DELETION:
        when = key.deletion_date
        left = (
            f" on {_date(when)} ({max(0, (when - dt.datetime.now(dt.UTC)).days)} days left)"
            if when is not None
            else ""
        )
        return Check(
            "keys.deletion",
            Status.FAIL,
            f"KMS key {key.key_id} is scheduled for deletion{left}: after it every entry is lost",
            "sealedkb key cancel-deletion, then sealedkb key enable",
        )
    if key.state is KeyState.DESTROYED:
        return Check(
            "keys.deletion",
            Status.FAIL,
            f"KMS key {key.key_id} is destroyed: its data cannot be read again",
            "restore from a snapshot taken under another key (snapshot copy)",
        )
    return Check("keys.deletion", Status.OK, "no deletion scheduled")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


@_check("keys.custody", "settings")
def _custody(state: _State) -> Check:
    s = state.settings
    assert s is not None
    if s.root_key_file is not None:
        if _inside(s.root_key_file, s.home):
            return Check(
                "keys.custody",
                Status.WARN,
                f"the root key file {s.root_key_file} sits inside SEALEDKB_HOME, beside the data",
                "keep the root key file elsewhere (another disk, a secret-manager mount) and "
                "back it up apart from the data",
            )
        return Check("keys.custody", Status.OK, f"root key file kept apart: {s.root_key_file}")
    if s.passphrase is not None:
        return Check("keys.custody", Status.OK, "root key derived from a passphrase (Argon2id)")
    if (s.keys_dir / "root.key").exists():
        return Check(
            "keys.custody",
            Status.WARN,
            "development root key: keys/root.key sits beside the data",
            "for production set SEALEDKB_ROOT_KEY_FILE (kept elsewhere) or SEALEDKB_PASSPHRASE; "
            "see docs/ENCRYPTION-KEY-MANAGEMENT.md",
        )
    return Check("keys.custody", Status.OK, "no keystore in this home (nothing to keep)")


def _too_open(path: Path, allowed: int) -> bool:
    try:
        return bool(stat.S_IMODE(path.stat().st_mode) & ~allowed & 0o777)
    except OSError:
        return False


@_check("keys.permissions", "settings")
def _permissions(state: _State) -> Check:
    s = state.settings
    assert s is not None
    bad: list[str] = []
    files: list[Path] = []
    if s.keys_dir.is_dir():
        if _too_open(s.keys_dir, 0o700):
            bad.append(str(s.keys_dir))
        files += [p for p in sorted(s.keys_dir.iterdir()) if p.is_file()]
    files += [p for p in (s.root_key_file, s.database_sslkey) if p is not None and p.exists()]
    config = s.home / CONFIG_FILE
    if config.exists():
        files.append(config)
    bad += [str(p) for p in files if _too_open(p, 0o600)]
    if bad:
        shown = " ".join(bad[:6]) + (" ..." if len(bad) > 6 else "")
        return Check(
            "keys.permissions",
            Status.FAIL,
            f"readable or writable by group or others: {shown}",
            f"chmod 600 the files (chmod 700 the keys folder): {shown}",
        )
    if not files:
        return Check("keys.permissions", Status.OK, "no key files in this home yet")
    return Check(
        "keys.permissions",
        Status.OK,
        f"{len(files)} key and secret files allow no group/other access"
        + (", keys/ is 0700" if s.keys_dir.is_dir() else ""),
    )


# --- local folders and clock ---------------------------------------------------------


@_check("snapshots.folder", "settings")
def _snapshots(state: _State) -> Check:
    assert state.settings is not None
    folder = state.settings.snapshots_dir
    fix = f"make {folder} a folder writable by this user (or set SEALEDKB_SNAPSHOT_DIR)"
    if folder.exists():
        if not folder.is_dir():
            return Check("snapshots.folder", Status.FAIL, f"{folder} is not a folder", fix)
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
                pass
        except OSError:
            return Check("snapshots.folder", Status.FAIL, f"cannot write in {folder}", fix)
        return Check("snapshots.folder", Status.OK, f"{folder} is writable")
    parent = folder.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if os.access(parent, os.W_OK | os.X_OK):
        return Check("snapshots.folder", Status.OK, f"{folder} can be created")
    return Check("snapshots.folder", Status.FAIL, f"{folder} cannot be created ({parent})", fix)


@_check("clock", "conn")
def _clock(state: _State) -> Check:
    assert state.conn is not None
    before = time.time()
    server = diagnostics.server_clock(state.conn)
    after = time.time()
    local = dt.datetime.fromtimestamp((before + after) / 2, dt.UTC)
    fix = "synchronise this machine's and the database server's clocks (NTP)"
    if local < _EARLIEST_SANE_CLOCK:
        return Check("clock", Status.FAIL, f"the local clock says {_date(local)}", fix)
    skew = (server - local).total_seconds()
    told = state.diagnosis.server_time if state.diagnosis is not None else None
    kms_skew = (told - local).total_seconds() if told is not None else None
    if kms_skew is not None and abs(kms_skew) > KEY_SERVICE_SKEW_FAIL_SECONDS:
        return Check(
            "clock",
            Status.FAIL,
            f"the local clock and the key service's differ by {kms_skew:+.0f} s "
            "(signed requests are refused beyond 300 s)",
            "synchronise this machine's clock (NTP)",
        )
    if abs(skew) > CLOCK_SKEW_WARN_SECONDS or (
        kms_skew is not None and abs(kms_skew) > CLOCK_SKEW_WARN_SECONDS
    ):
        kms = f", the key service's by {kms_skew:+.0f} s" if kms_skew is not None else ""
        return Check(
            "clock",
            Status.WARN,
            f"the local clock and the database server's differ by {skew:+.0f} s{kms} "
            "(certificate validity and key rotation dates depend on them)",
            fix,
        )
    # an HTTP Date has whole seconds
    kms = f", with the key service ({kms_skew:+.0f} s)" if kms_skew is not None else ""
    return Check("clock", Status.OK, f"in step with the database server ({skew:+.1f} s){kms}")
