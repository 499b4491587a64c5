"""A running ``sealedkb serve`` (HTTP MCP) under load while its key service's server
stops and comes back, for every provider that has a server (AWS KMS on moto, Vault
Transit on OpenBao, KMIP on PyKMIP; a PKCS#11 token is a library in the process):

- reads and writes turn into KEY_UNAVAILABLE within the data-key cache bound (plus
  the provider's bounded retries), never another error, and ``/readyz`` answers 503;
- nothing is half-written: the entries in the database are exactly those whose
  ``kb_add`` succeeded, and each reads back whole;
- when the server returns the same ``serve`` process recovers by itself (calls
  succeed, ``/readyz`` 200) without a restart.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from tests.faults.proxy import FaultProxy
from tests.mcp_helpers import error_of, http_client, http_server
from tests.providers.services import MotoKms, OpenBao
from tests.providers_hsm.services import KmipServer

from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.keys.registry import provider_for
from sealedkb.model import EncryptionMode

CACHE_BOUND = 1.0  # SEALEDKB_DATA_KEY_MAX_AGE of the served knowledge base
# A key call the provider cannot answer gives up within its retry and timeout bounds
# (botocore retries, the Vault and KMIP client timeouts): a call that started this long
# after the stop must be KEY_UNAVAILABLE.
FAIL_WITHIN = CACHE_BOUND + 12.0
RECOVER_WITHIN = 30.0
TOOLS = {"kb_add", "kb_get", "kb_search"}


@dataclass
class Outage:
    """A provider with a server: settings, the serve process's environment, the key
    to init with, and how to stop and start its server."""

    settings: dict[str, Any]
    env: dict[str, str]
    key_uri: str
    stop: Callable[[], None]
    start: Callable[[], None]


@pytest.fixture
def kms_proxy(moto_kms: MotoKms) -> Iterator[FaultProxy]:
    """moto behind a TCP proxy: a stopped ThreadedMotoServer still answers on the
    keep-alive connections its handler threads hold, so the outage is the proxy
    cutting every connection and refusing new ones (moto keeps its keys)."""
    proxy = FaultProxy(target_port=moto_kms.port).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def _aws(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Outage:
    kms: MotoKms = request.getfixturevalue("moto_kms")
    proxy: FaultProxy = request.getfixturevalue("kms_proxy")
    mac = kms.mac_key()
    extra = kms.settings(aws_mac_key_id=mac)
    uri = provider_for(make_settings(**extra), "aws-kms:alias/x").create_key("outage").key_id
    endpoint = f"http://127.0.0.1:{proxy.port}"
    env = {**kms.env(), "SEALEDKB_AWS_MAC_KEY_ID": mac, "SEALEDKB_AWS_ENDPOINT_URL": endpoint}

    def stop() -> None:
        proxy.down = True
        proxy.drop_all()

    def start() -> None:
        proxy.down = False

    return Outage({**extra, "aws_endpoint_url": endpoint}, env, uri, stop, start)


def _vault(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Outage:
    """A dev server keeps nothing: it comes back with its keys restored from Transit
    backups, as a server restored after losing its host would."""
    bao: OpenBao = request.getfixturevalue("openbao")
    name = bao.backed_up_key(f"outage-{uuid.uuid4().hex[:8]}")
    mac = bao.backed_up_key(f"outage-mac-{uuid.uuid4().hex[:8]}", key_type="hmac")
    backups: dict[str, str] = {}

    def stop() -> None:
        backups.update({k: bao.backup(k) for k in (name, mac)})
        bao.stop()

    def start() -> None:
        bao.start()
        for key, data in backups.items():
            bao.restore(key, data)

    return Outage(
        bao.settings(vault_mac_key=mac),
        bao.env(SEALEDKB_VAULT_MAC_KEY=mac),
        f"vault:transit/transit/{name}",
        stop,
        start,
    )


def _kmip(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Outage:
    server: KmipServer = request.getfixturevalue("kmip_server")
    extra = server.settings()
    uri = provider_for(make_settings(**extra), "kmip:0").create_key("outage").key_id
    return Outage(extra, server.env(), uri, server.stop, server.start)


@pytest.fixture(params=["aws-kms", "vault", "kmip"])
def outage(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Outage:
    return {"aws-kms": _aws, "vault": _vault, "kmip": _kmip}[request.param](request, make_settings)


@dataclass
class Call:
    started: float
    tool: str
    error: str | None  # the MCP error code, None if it succeeded
    entry_id: str | None = None  # what a successful kb_add created


@dataclass
class Load:
    """Two MCP clients calling kb_add, kb_get and kb_search in turn until stopped."""

    base: str
    token: str
    seed_id: str
    calls: list[Call] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)
    failure: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by the test
            self.failure = exc

    async def _main(self) -> None:
        await asyncio.gather(self._client(0), self._client(1))

    async def _client(self, n: int) -> None:
        async with http_client(self.base, self.token) as client:
            i = 0
            while not self.stopped.is_set():
                i += 1
                tool, args = [
                    ("kb_add", {"content": f"load {n}-{i} {uuid.uuid4().hex}", "title": "load"}),
                    ("kb_get", {"id": self.seed_id}),
                    ("kb_search", {"query": "outage drill"}),
                ][i % 3]
                started = time.monotonic()
                result = await client.call_tool(tool, args)
                if result.is_error:
                    self.calls.append(Call(started, tool, str(error_of(result)["code"])))
                else:
                    created = str(result.structured_content["id"]) if tool == "kb_add" else None
                    self.calls.append(Call(started, tool, None, created))
                await asyncio.sleep(0.02)

    def wait_for_every_tool(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while {c.tool for c in list(self.calls) if c.error is None} != TOOLS:
            assert self.failure is None, self.failure
            assert time.monotonic() < deadline, "not every tool succeeded before the outage"
            time.sleep(0.05)

    def wait_for(self, since: float, ok: bool, timeout: float) -> float:
        """When the first call started after ``since`` that succeeded (ok) or failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.failure is None, self.failure
            for c in list(self.calls):
                if c.started >= since and (c.error is None) is ok:
                    return c.started
            time.sleep(0.05)
        raise AssertionError(f"no {'successful' if ok else 'failed'} call within {timeout} s")


def test_serve_under_load_outage_and_recovery(
    outage: Outage, make_settings: Callable[..., Settings], home: Path, database_url: str
) -> None:
    settings = make_settings(kms_key_uri=outage.key_uri, **outage.settings)
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
    try:
        seed = kb.add("The outage drill entry.", title="outage drill")
        _, token = kb.create_token("agent", "writer", ["default"])
    finally:
        kb.close()
    env = {**outage.env, "SEALEDKB_DATA_KEY_MAX_AGE": str(CACHE_BOUND)}
    env.update(SEALEDKB_HTTP_RATE_PER_SECOND="1000", SEALEDKB_HTTP_RATE_BURST="1000")
    # a busy machine (other suites on 2 cores) can take a minute to start serve
    with http_server(home, database_url, start_timeout=120, **env) as (base, proc):
        assert httpx.get(base + "/readyz").status_code == 200
        load = Load(base, token, str(seed.id))
        worker = threading.Thread(target=load.run, daemon=True)
        worker.start()
        try:
            load.wait_for_every_tool(timeout=60)  # each succeeds before the outage
            outage.stop()
            stopped_at = time.monotonic()  # its server no longer answers from here on
            try:
                load.wait_for(stopped_at, ok=False, timeout=FAIL_WITHIN + 10)
                time.sleep(CACHE_BOUND + 1.5)  # calls keep failing meanwhile
                ready = httpx.get(base + "/readyz", timeout=20)
                assert ready.status_code == 503
                assert ready.json()["status"] == "inaccessible-encryption-credentials"
            finally:
                started_at = time.monotonic()
                outage.start()
            recovered = load.wait_for(started_at, ok=True, timeout=RECOVER_WITHIN)
            time.sleep(0.5)
            deadline = time.monotonic() + RECOVER_WITHIN
            while httpx.get(base + "/readyz", timeout=20).status_code != 200:
                assert time.monotonic() < deadline, "readyz did not recover"
                time.sleep(0.2)
        finally:
            load.stopped.set()
            worker.join(60)
        assert load.failure is None, load.failure
        assert proc.poll() is None  # the same process: no restart

    calls = load.calls
    # during the outage: only KEY_UNAVAILABLE, never another error, from every tool
    errors = {c.error for c in calls if c.error is not None}
    odd = [
        (c.tool, c.error, round(c.started - stopped_at, 2))
        for c in calls
        if c.error not in (None, "KEY_UNAVAILABLE")
    ]
    assert errors == {"KEY_UNAVAILABLE"}, (odd, round(started_at - stopped_at, 2))
    # past the cache bound nothing succeeds until the server is back
    late = [c for c in calls if stopped_at + CACHE_BOUND + 0.2 <= c.started < started_at]
    served = [(c.tool, round(c.started - stopped_at, 2)) for c in late if c.error is None]
    assert late and not served, (served, len(late))
    assert all(c.error == "KEY_UNAVAILABLE" for c in late)
    failed_tools = {c.tool for c in calls if c.error is not None}
    assert failed_tools == TOOLS, failed_tools
    assert any(c.error is None and c.started >= recovered for c in calls)
    first_failure = min(c.started for c in calls if c.error is not None)
    assert first_failure - stopped_at < FAIL_WITHIN

    # nothing half-written: exactly the successful adds are stored, each whole
    added = {c.entry_id for c in calls if c.tool == "kb_add" and c.error is None}
    assert len(added) >= 2
    again = KnowledgeBase.open(settings)
    try:
        stored = {str(e.id) for e in again.list(limit=1000)} - {str(seed.id)}
        assert stored == added
        for entry_id in stored:
            assert again.get(entry_id).content.startswith("load ")
    finally:
        again.close()
