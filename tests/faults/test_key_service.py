"""The key service slow (2 s per reply), throttling and down, for each external
provider with a server (AWS KMS on moto, Vault Transit on OpenBao, KMIP on PyKMIP;
PKCS#11 has no server), reached through tests/faults/proxy.py while writer
threads add entries: a slow service slows calls within bounds but fails none; a
throttling one and a down one make calls fail with KEY_UNAVAILABLE within a
bounded time, after a bounded number of attempts; nothing is acknowledged that
does not read back, no row is half-written, and once the service answers again
the same process recovers without a restart."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from tests.faults.conftest import Load, assert_no_loss
from tests.faults.proxy import FaultProxy
from tests.providers.services import MotoKms, OpenBao
from tests.providers_hsm.services import KmipServer

from sealedkb.config import Settings
from sealedkb.errors import KeyUnavailableError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.keys import aws_kms
from sealedkb.keys.registry import provider_for
from sealedkb.model import EncryptionMode

SLOW = 2.0  # seconds the slow service takes before each reply
#: Key-service calls one add makes with nothing cached (it unwraps its namespace's
#: content, index and vector data keys; measured: 5 (Vault) to 10 (AWS KMS, KMIP)
#: requests): with a slow service the first add after the cache is dropped waits
#: for each in turn, and two writers share the one slow service.
CALLS_PER_ADD = 12


def _http(status: str, body: dict[str, Any], **headers: str) -> bytes:
    raw = json.dumps(body).encode()
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(raw)}", "Connection: close"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + raw


# What each service really answers when it throttles: AWS KMS a 400 with
# ThrottlingException (botocore's standard mode retries it), Vault a 429 from a
# rate-limit quota. KMIP has no throttling reply.
THROTTLED = {
    "aws-kms": _http(
        "400 Bad Request",
        {"__type": "ThrottlingException", "message": "Rate exceeded"},
        Content_Type="application/x-amz-json-1.1",
        x_amzn_RequestId=str(uuid.uuid4()),
    ),
    "vault": _http(
        "429 Too Many Requests",
        {"errors": ['request path "transit/": rate limit quota exceeded']},
        Content_Type="application/json",
    ),
}


@dataclass
class Service:
    name: str
    proxy: FaultProxy
    settings: dict[str, Any]  # provider settings, pointing at the proxy
    key_uri: str


def _aws(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Service:
    moto: MotoKms = request.getfixturevalue("moto_kms")
    direct = moto.settings(aws_mac_key_id=moto.mac_key())
    uri = provider_for(make_settings(**direct), "aws-kms:alias/x").create_key("faults").key_id
    proxy = FaultProxy(target_port=moto.port).start()
    return Service(
        "aws-kms", proxy, {**direct, "aws_endpoint_url": f"http://127.0.0.1:{proxy.port}"}, uri
    )


def _vault(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Service:
    bao: OpenBao = request.getfixturevalue("openbao")
    name = bao.backed_up_key(f"faults-{uuid.uuid4().hex[:8]}")
    proxy = FaultProxy(target_port=bao.port).start()
    extra = bao.settings(vault_addr=f"http://127.0.0.1:{proxy.port}")
    return Service("vault", proxy, extra, f"vault:transit/transit/{name}")


def _kmip(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Service:
    server: KmipServer = request.getfixturevalue("kmip_server")
    direct = server.settings()
    uri = provider_for(make_settings(**direct), "kmip:0").create_key("faults").key_id
    proxy = FaultProxy(target_port=server.port).start()
    return Service("kmip", proxy, {**direct, "kmip_port": proxy.port}, uri)


@pytest.fixture(params=["aws-kms", "vault", "kmip"])
def service(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
) -> Iterator[Service]:
    make = {"aws-kms": _aws, "vault": _vault, "kmip": _kmip}[request.param]
    svc = make(request, make_settings)
    try:
        yield svc
    finally:
        if svc.name == "kmip":
            from sealedkb.keys.kmip import close_connections

            close_connections()
        svc.proxy.stop()


def _wait_for(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _need_the_service(kb: KnowledgeBase) -> None:
    """Drop every unwrapped data key, as their cache expiry would: the next calls
    need the key service (deterministic, instead of waiting out data_key_max_age)."""
    assert kb.keyring is not None
    kb.keyring.clear()


def _refused_within(kb: KnowledgeBase, entry_id: str, seconds: float) -> None:
    _need_the_service(kb)
    started = time.monotonic()
    with pytest.raises(KeyUnavailableError) as refused:
        kb.get(entry_id)
    assert refused.value.code == "KEY_UNAVAILABLE" and refused.value.exit_code == 5
    assert time.monotonic() - started < seconds, "the refusal was not bounded"


def test_key_service_slow_throttling_down_then_back(
    service: Service, make_settings: Callable[..., Settings], database_url: str
) -> None:
    proxy = service.proxy
    settings = make_settings(kms_key_uri=service.key_uri, data_key_max_age=60.0, **service.settings)
    threads_before = threading.active_count()
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
    first = kb.add("written before any fault", title="faults")
    load = Load(kb, writers=2).start()
    try:
        _wait_for(lambda: load.acked_count() >= 5, 30, "no writes before the faults")

        # slow: every reply 2 s late; calls wait for it (well inside the client
        # timeouts) and none fails
        proxy.reply_delay = SLOW
        proxy.drop_all()  # kept-alive connections pass through the slow path too
        mark = load.acked_count()
        _need_the_service(kb)
        _wait_for(lambda: load.longest >= SLOW, 30, "no call reached the slow service")
        _wait_for(lambda: load.acked_count() >= mark + 3, 30, "no progress while slow")
        assert not load.codes, load.codes
        # bounded: each key-service call waits one slow reply, no timeout, no retry
        assert load.longest < CALLS_PER_ADD * SLOW + 10, load.longest
        proxy.reply_delay = 0.0

        # throttling: refused with KEY_UNAVAILABLE after bounded attempts
        if service.name in THROTTLED:
            proxy.answer = THROTTLED[service.name]
            proxy.drop_all()
            answered_before = proxy.answered
            _refused_within(kb, str(first.id), 15.0)
            _wait_for(
                lambda: load.refused("KEY_UNAVAILABLE") >= 2,
                30,
                "writers not refused while throttled",
            )
            attempts = proxy.answered - answered_before
            refusals = load.refused("KEY_UNAVAILABLE") + 1
            # botocore's standard mode: MAX_ATTEMPTS per call; Vault: one
            per_call = aws_kms.MAX_ATTEMPTS if service.name == "aws-kms" else 1
            assert attempts <= per_call * (refusals + load.writers), (attempts, refusals)
            proxy.answer = None
            mark = load.acked_count()
            _wait_for(lambda: load.acked_count() >= mark + 3, 30, "no recovery after throttling")

        # down: every connection reset
        proxy.down = True
        proxy.drop_all()
        refused_before = load.refused("KEY_UNAVAILABLE")
        _refused_within(kb, str(first.id), 15.0)
        _wait_for(
            lambda: load.refused("KEY_UNAVAILABLE") >= refused_before + 2,
            30,
            "writers not refused while down",
        )
        acked_down = load.acked_count()
        time.sleep(0.5)
        assert load.acked_count() == acked_down, (
            "a write was acknowledged while the service was down"
        )

        # back: the same process recovers, no restart
        proxy.reset()
        _wait_for(lambda: load.acked_count() >= acked_down + 5, 30, "no recovery after the outage")
        assert kb.get(first.id).content == "written before any fault"
    finally:
        proxy.reset()
        load.stop()
    assert not load.foreign, load.foreign
    assert set(load.codes) <= {"KEY_UNAVAILABLE"}, load.codes
    assert_no_loss(kb, database_url, load.acked)
    kb.close()
    _wait_for(lambda: threading.active_count() <= threads_before, 10, "threads leaked")
