"""Test helper (not a conftest): TLS endpoints for PostgreSQL, made with pgbouncer.

The embedded PostgreSQL wheel is built without OpenSSL, so it cannot speak TLS
itself. pgbouncer (Debian package) in front of it can: it terminates client TLS
on 127.0.0.1 and talks to the embedded server over its Unix socket
(shared/PLATFORM-NOTES.md, "TLS to PostgreSQL"). One pgbouncer per variant:
a good certificate, an expired one, one about to expire, TLS 1.2 or 1.3 only,
client certificates required, or no TLS at all (a plaintext-only server).

Certificates come from ``trustme``: a CA, a second unrelated CA (the "wrong
CA"), and leaf certificates for the name ``db.test``. Tests connect with
``host=db.test&hostaddr=127.0.0.1``: libpq reaches the loopback endpoint but
verifies the certificate against ``db.test``, and sealedkb treats the
connection as remote (the name is not loopback), so the TLS rules apply.

pgbouncer, like PostgreSQL, refuses to run as root; as root it runs as the
owner of the embedded server's socket folder (``-u``), which can reach the
socket. Also used by ``bench/bench_tls.py``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import trustme

#: The name in the test certificates; not loopback, so sealedkb requires TLS.
TLS_HOST = "db.test"
#: A name the certificates do not carry.
WRONG_HOST = "other.test"

_PGBOUNCER_PATHS = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def find_pgbouncer() -> str | None:
    """pgbouncer's path (Debian puts it in /usr/sbin, often not on PATH)."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return next((p for p in _PGBOUNCER_PATHS if os.access(p, os.X_OK)), None)


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


class TestCerts:
    """CAs and certificates for the endpoints, written once into ``folder``."""

    __test__ = False  # not a pytest test class

    def __init__(self, folder: Path, owner: tuple[int, int] | None) -> None:
        self.folder = folder
        self._owner = owner
        folder.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        self._ca = trustme.CA()
        self.ca = self._write_pem(folder / "ca.pem", self._ca.cert_pem.bytes())
        self.wrong_ca = self._write_pem(folder / "wrong-ca.pem", trustme.CA().cert_pem.bytes())
        year = now + dt.timedelta(days=365)
        self.good = self._leaf("good", TLS_HOST, not_after=year)
        self.expired = self._leaf(
            "expired",
            TLS_HOST,
            not_before=now - dt.timedelta(days=60),
            not_after=now - dt.timedelta(days=1),
        )
        self.expiring = self._leaf("expiring", TLS_HOST, not_after=now + dt.timedelta(days=10))
        self.client = self._leaf("client", "sealedkb-client", not_after=year)

    def _write_pem(self, path: Path, data: bytes, mode: int = 0o644) -> Path:
        path.write_bytes(data)
        os.chmod(path, mode)
        if self._owner is not None:
            os.chown(path, *self._owner)
        return path

    def _leaf(
        self,
        name: str,
        identity: str,
        *,
        not_after: dt.datetime,
        not_before: dt.datetime | None = None,
    ) -> CertFiles:
        leaf = self._ca.issue_cert(identity, not_before=not_before, not_after=not_after)
        chain = b"".join(p.bytes() for p in leaf.cert_chain_pems[:1])
        cert = self._write_pem(self.folder / f"{name}.crt", chain)
        key = self._write_pem(self.folder / f"{name}.key", leaf.private_key_pem.bytes(), 0o600)
        return CertFiles(cert, key)


class Bouncer:
    """One running pgbouncer; ``stop()`` ends it."""

    def __init__(
        self,
        folder: Path,
        backend_socket_dir: Path,
        *,
        certs: CertFiles | None,
        protocols: str = "secure",
        client_ca: Path | None = None,
        listen: str = "127.0.0.1",
        run_as: str | None = None,
        owner: tuple[int, int] | None = None,
    ) -> None:
        self.folder = folder
        self.listen = listen
        folder.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            os.chown(folder, *owner)
        self.log_file = folder / "pgbouncer.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        binary = find_pgbouncer()
        if binary is None:
            raise FileNotFoundError("pgbouncer is not installed")
        for _attempt in range(5):  # another process may grab the free port first
            self.port = _free_port(listen)
            ini = folder / "pgbouncer.ini"
            ini.write_text(
                self._config(backend_socket_dir, certs, protocols, client_ca), encoding="utf-8"
            )
            if owner is not None:
                os.chown(ini, *owner)
            argv = [binary, *(["-u", run_as] if run_as else []), str(ini)]
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            if self._wait_ready(10.0):
                return
            self.stop()
        raise RuntimeError(f"pgbouncer did not start; see {self.log_file}")

    def _config(
        self,
        socket_dir: Path,
        certs: CertFiles | None,
        protocols: str,
        client_ca: Path | None,
    ) -> str:
        lines = [
            "[databases]",
            f"* = host={socket_dir} port=5432",
            "[pgbouncer]",
            f"listen_addr = {self.listen}",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {self.folder / 'users.txt'}",
            "pool_mode = session",
            "max_client_conn = 200",
            "default_pool_size = 40",
            "server_reset_query = DISCARD ALL",
            "ignore_startup_parameters = extra_float_digits,options",
            f"logfile = {self.log_file}",
        ]
        if certs is None:
            lines.append("client_tls_sslmode = disable")
        else:
            lines += [
                "client_tls_sslmode = " + ("verify-full" if client_ca else "require"),
                f"client_tls_cert_file = {certs.cert}",
                f"client_tls_key_file = {certs.key}",
                f"client_tls_protocols = {protocols}",
            ]
            if client_ca is not None:
                lines.append(f"client_tls_ca_file = {client_ca}")
        (self.folder / "users.txt").write_text('"postgres" ""\n', encoding="utf-8")
        return "\n".join(lines) + "\n"

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.listen, self.port), timeout=0.5),
            ):
                return True
            time.sleep(0.02)
        return False

    def url(
        self,
        dbname: str,
        *,
        host: str = TLS_HOST,
        sslmode: str | None = "verify-full",
        ca: Path | None = None,
        **extra: str,
    ) -> str:
        """A libpq URI through this endpoint: ``host`` verified, the listen address reached."""
        query = {"hostaddr": self.listen, **extra}
        if sslmode is not None:
            query["sslmode"] = sslmode
        if ca is not None:
            query["sslrootcert"] = str(ca)
        params = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
        return f"postgresql://postgres@{host}:{self.port}/{quote(dbname, safe='')}?{params}"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # pgbouncer: immediate shutdown
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class TlsEndpoints:
    """pgbouncer variants in front of one embedded server, started on first use."""

    VARIANTS = (
        "good",  # TLS 1.2 and 1.3, certificate for db.test valid a year
        "tls12",  # TLS 1.2 only
        "tls13",  # TLS 1.3 only
        "tls11",  # TLS 1.1 only: no version sealedkb accepts
        "expired",  # certificate expired yesterday
        "expiring",  # certificate expires in 10 days
        "plaintext",  # no TLS at all
        "client-cert",  # requires a client certificate signed by the test CA
    )

    def __init__(self, folder: Path, backend_socket_dir: Path) -> None:
        self.folder = folder
        self.backend = backend_socket_dir
        st = os.stat(backend_socket_dir)
        # As root, pgbouncer runs as the socket folder's owner and must read its files.
        self.run_as = pwd.getpwuid(st.st_uid).pw_name if os.geteuid() == 0 else None
        self.owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
        folder.mkdir(parents=True, exist_ok=True)
        if self.owner is not None:
            os.chmod(folder, 0o711)
        self.certs = TestCerts(folder / "certs", self.owner)
        if self.owner is not None:
            os.chmod(self.certs.folder, 0o711)
        self._running: dict[str, Bouncer] = {}

    def get(self, variant: str = "good") -> Bouncer:
        if variant not in self._running:
            self._running[variant] = self._start(variant)
        return self._running[variant]

    def _start(self, variant: str) -> Bouncer:
        c = self.certs
        certs: CertFiles | None = {
            "expired": c.expired,
            "expiring": c.expiring,
            "plaintext": None,
        }.get(variant, c.good)
        if variant not in self.VARIANTS:
            raise ValueError(f"unknown endpoint variant {variant!r}")
        protocols = {"tls11": "tlsv1.1", "tls12": "tlsv1.2", "tls13": "tlsv1.3"}.get(
            variant, "secure"
        )
        return Bouncer(
            self.folder / variant,
            self.backend,
            certs=certs,
            protocols=protocols,
            client_ca=c.ca if variant == "client-cert" else None,
            run_as=self.run_as,
            owner=self.owner,
        )

    def close(self) -> None:
        for bouncer in self._running.values():
            bouncer.stop()
        self._running.clear()
