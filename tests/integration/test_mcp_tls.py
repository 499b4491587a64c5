"""The HTTP MCP server over TLS (transport security): the client round trip over HTTPS with a
test CA, HSTS, refusal of an unverified client, mutual TLS, and refusal of a
non-loopback bind without TLS."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import trustme
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from tests.integration.test_mcp import roundtrip
from tests.mcp_helpers import free_port, server_env

from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client_ca = trustme.CA()
    client = client_ca.issue_cert("agent@example.test")
    paths = {
        "ca": tmp_path / "ca.pem",
        "cert": tmp_path / "server.pem",
        "key": tmp_path / "server.key",
        "client_ca": tmp_path / "client-ca.pem",
        "client": tmp_path / "client.pem",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    for pem in server.cert_chain_pems[1:]:
        pem.write_to_path(str(paths["cert"]), append=True)
    server.private_key_pem.write_to_path(str(paths["key"]))
    paths["key"].chmod(0o600)
    client_ca.cert_pem.write_to_path(str(paths["client_ca"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    return paths


def start(home: Path, url: str, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sealedkb",
            "serve",
            "--transport",
            "http",
            "--port",
            str(port),
            *args,
        ],
        env=server_env(home, url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return proc, port


def wait_ready(proc: subprocess.Popen[bytes], base: str, verify: Any) -> None:
    for _ in range(300):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        try:
            if httpx.get(base + "/healthz", verify=verify, timeout=1).status_code == 200:
                return
        except httpx.ConnectError:
            pass
        except httpx.HTTPError:
            pass
        import time

        time.sleep(0.1)
    raise AssertionError("server did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)
    if proc.stderr:
        proc.stderr.close()


def test_mcp_over_https_with_test_ca(
    make_settings: Callable[..., Settings], home: Path, database_url: str, certs: dict[str, Path]
) -> None:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON)
    _, token = kb.create_token("agent", "writer", ["default"])
    kb.close()
    proc, port = start(
        home, database_url, "--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"])
    )
    base = f"https://127.0.0.1:{port}"
    ctx = ssl.create_default_context(cafile=str(certs["ca"]))
    try:
        wait_ready(proc, base, ctx)
        resp = httpx.get(base + "/healthz", verify=ctx)
        assert resp.headers["strict-transport-security"].startswith("max-age=")
        # A client that does not trust the server's CA is refused by its own TLS check.
        with pytest.raises(httpx.ConnectError):
            httpx.get(base + "/healthz", timeout=5)
        # Nothing below TLS 1.2 is negotiated.
        old = ssl.create_default_context(cafile=str(certs["ca"]))
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises(httpx.ConnectError):
            httpx.get(base + "/healthz", verify=old, timeout=5)

        async def go() -> None:
            async with (
                httpx.AsyncClient(
                    verify=ctx, headers={"Authorization": f"Bearer {token}"}, timeout=30
                ) as client,
                Client(streamable_http_client(base + "/mcp", http_client=client)) as c,
            ):
                await roundtrip(c)

        asyncio.run(go())
    finally:
        stop(proc)


def test_mutual_tls_requires_a_client_certificate(
    make_settings: Callable[..., Settings], home: Path, database_url: str, certs: dict[str, Path]
) -> None:
    KnowledgeBase.init(make_settings(), EncryptionMode.ON)[0].close()
    proc, port = start(
        home,
        database_url,
        "--tls-cert",
        str(certs["cert"]),
        "--tls-key",
        str(certs["key"]),
        "--tls-client-ca",
        str(certs["client_ca"]),
    )
    base = f"https://127.0.0.1:{port}"
    with_cert = ssl.create_default_context(cafile=str(certs["ca"]))
    with_cert.load_cert_chain(str(certs["client"]))
    without = ssl.create_default_context(cafile=str(certs["ca"]))
    try:
        wait_ready(proc, base, with_cert)
        assert httpx.get(base + "/healthz", verify=with_cert).status_code == 200
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            httpx.get(base + "/healthz", verify=without, timeout=5)
    finally:
        stop(proc)


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_non_loopback_bind_without_tls_is_refused(
    make_settings: Callable[..., Settings], home: Path, database_url: str, host: str
) -> None:
    KnowledgeBase.init(make_settings(), EncryptionMode.ON)[0].close()
    proc = subprocess.run(
        [sys.executable, "-m", "sealedkb", "serve", "--transport", "http", "--host", host],
        env=server_env(home, database_url),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 7
    assert b"--tls-cert" in proc.stderr
