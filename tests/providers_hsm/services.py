"""The key services the PKCS#11 and KMIP tests run against, on this machine only:

- SoftHSM2: a token in a temporary folder (``softhsm2-util --init-token``), with
  ``SOFTHSM2_CONF`` pointing at its config. A PKCS#11 library reads its config once
  per process, so there is one SoftHSM2 per test process (:func:`softhsm`).
- PyKMIP's server on 127.0.0.1 (mutual TLS 1.2, certificates from ``trustme``,
  SQLite in a temporary folder), one per test process (:func:`kmip_server`);
  :meth:`KmipServer.stop` (SIGINT) and :meth:`KmipServer.start` simulate an outage.

Both are started on first use and stopped when the session ends (the conftest's
session fixtures, with ``atexit`` as a safety net). Missing software skips the
tests, unless SEALEDKB_TEST_REQUIRE_HSM=1 (set by .ci/run) turns the skip into a
failure.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REQUIRE = os.environ.get("SEALEDKB_TEST_REQUIRE_HSM") == "1"
USER_PIN = "4711-test-pin"
SO_PIN = "0815-so-pin"
TOKEN = "sealedkb-test"
SOFTHSM_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


def unavailable(message: str) -> None:
    if REQUIRE:
        pytest.fail(message)
    pytest.skip(message)


# --- SoftHSM2 --------------------------------------------------------------------


@dataclass
class SoftHsm:
    folder: Path
    module: Path
    conf: Path
    token: str = TOKEN
    pin: str = USER_PIN

    def env(self) -> dict[str, str]:
        """What a sealedkb process needs to use the token (SOFTHSM2_CONF too)."""
        return {
            "SOFTHSM2_CONF": str(self.conf),
            "SEALEDKB_PKCS11_MODULE": str(self.module),
            "SEALEDKB_PKCS11_PIN": self.pin,
            "SEALEDKB_PKCS11_TOKEN": self.token,
        }

    def settings(self, **extra: Any) -> dict[str, Any]:
        return {
            "pkcs11_module": self.module,
            "pkcs11_pin": self.pin,
            "pkcs11_token": self.token,
            **extra,
        }


_softhsm: SoftHsm | None = None


def softhsm() -> SoftHsm:
    """The process's SoftHSM2 token (initialised on first use)."""
    global _softhsm
    if _softhsm is not None:
        return _softhsm
    module = next((Path(p) for p in SOFTHSM_MODULES if Path(p).exists()), None)
    util = shutil.which("softhsm2-util")
    if module is None or util is None:
        unavailable("SoftHSM2 is not installed (apt-get install -y softhsm2; scripts/test does)")
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        unavailable("python-pkcs11 is not installed (pip install -e '.[dev]')")
    assert module is not None and util is not None
    folder = Path(tempfile.mkdtemp(prefix="sealedkb-softhsm-"))
    (folder / "tokens").mkdir()
    conf = folder / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\n"
        "log.level = ERROR\nslots.removable = false\n"
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    subprocess.run(
        [util, "--init-token", "--free", "--label", TOKEN, "--pin", USER_PIN, "--so-pin", SO_PIN],
        env=env,
        check=True,
        capture_output=True,
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)  # read when the library loads
    _softhsm = SoftHsm(folder, module, conf)
    atexit.register(shutil.rmtree, folder, True)
    return _softhsm


# --- PyKMIP -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class KmipServer:
    folder: Path
    port: int
    ca: Path
    cert: Path
    key: Path
    other_cert: Path  # a second client identity (CN "mallory-client")
    other_key: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def settings(self, **extra: Any) -> dict[str, Any]:
        return {
            "kmip_host": "127.0.0.1",
            "kmip_port": self.port,
            "kmip_cert": self.cert,
            "kmip_key": self.key,
            "kmip_ca": self.ca,
            "kmip_timeout": 5.0,
            **extra,
        }

    def env(self) -> dict[str, str]:
        return {
            "SEALEDKB_KMIP_HOST": "127.0.0.1",
            "SEALEDKB_KMIP_PORT": str(self.port),
            "SEALEDKB_KMIP_CERT": str(self.cert),
            "SEALEDKB_KMIP_KEY": str(self.key),
            "SEALEDKB_KMIP_CA": str(self.ca),
        }

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        exe = Path(sys.executable).parent / "pykmip-server"
        log = self.folder / "server.log"
        self.proc = subprocess.Popen(
            [str(exe), "-f", str(self.folder / "server.conf"), "-l", str(log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("pykmip-server exited: " + log.read_text()[-2000:])
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("pykmip-server did not start")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # The server waits for open client sessions before it exits: close ours.
        from sealedkb.keys.kmip import close_connections

        close_connections()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_kmip: KmipServer | None = None


def kmip_server() -> KmipServer:
    """The process's PyKMIP server (started on first use)."""
    global _kmip
    if _kmip is not None:
        _kmip.start()
        return _kmip
    exe = Path(sys.executable).parent / "pykmip-server"
    try:
        import kmip  # noqa: F401
        import trustme
    except ImportError:
        unavailable("PyKMIP or trustme is not installed (pip install -e '.[dev]')")
    if not exe.exists():
        unavailable("pykmip-server is not installed (pip install -e '.[dev]')")
    folder = Path(tempfile.mkdtemp(prefix="sealedkb-kmip-"))
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost", common_name="kmip-server")
    client = ca.issue_cert("sealedkb-client@example.org", common_name="sealedkb-client")
    other = ca.issue_cert("mallory@example.org", common_name="mallory-client")
    paths: dict[str, Path] = {}
    for name, blob in (
        ("ca.pem", ca.cert_pem.bytes()),
        ("server.pem", server_cert.cert_chain_pems[0].bytes()),
        ("server.key", server_cert.private_key_pem.bytes()),
        ("client.pem", client.cert_chain_pems[0].bytes()),
        ("client.key", client.private_key_pem.bytes()),
        ("other.pem", other.cert_chain_pems[0].bytes()),
        ("other.key", other.private_key_pem.bytes()),
    ):
        paths[name] = folder / name
        paths[name].write_bytes(blob)
        paths[name].chmod(0o600)
    (folder / "policies").mkdir()
    port = _free_port()
    (folder / "server.conf").write_text(
        "[server]\n"
        "hostname=127.0.0.1\n"
        f"port={port}\n"
        f"certificate_path={paths['server.pem']}\n"
        f"key_path={paths['server.key']}\n"
        f"ca_path={paths['ca.pem']}\n"
        "auth_suite=TLS1.2\n"
        f"policy_path={folder / 'policies'}\n"
        "enable_tls_client_auth=True\n"
        "logging_level=WARNING\n"
        f"database_path={folder / 'pykmip.db'}\n"
    )
    server = KmipServer(
        folder,
        port,
        paths["ca.pem"],
        paths["client.pem"],
        paths["client.key"],
        paths["other.pem"],
        paths["other.key"],
    )
    atexit.register(shutil.rmtree, folder, True)  # atexit runs last-in first-out
    atexit.register(server.stop)
    server.start()
    _kmip = server
    return server


def stop_all() -> None:
    if _kmip is not None:
        _kmip.stop()
