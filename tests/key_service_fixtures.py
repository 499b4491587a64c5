"""Session fixtures for the external key services, one definition each: moto (AWS
KMS) and OpenBao (Vault Transit) from tests/providers/services.py, SoftHSM2 and
PyKMIP from tests/providers_hsm/services.py. Each service is one per test process
(started on first use, stopped when the session ends). The conftests of
tests/providers and tests/providers_hsm import these, so a test in either folder
can be parametrised over every provider."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.providers import services as remote
from tests.providers.services import MotoKms, OpenBao
from tests.providers_hsm import services as hsm
from tests.providers_hsm.services import KmipServer, SoftHsm


@pytest.fixture(scope="session")
def moto_kms() -> Iterator[MotoKms]:
    server = remote.moto_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBao]:
    server = remote.openbao_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def softhsm() -> SoftHsm:
    return hsm.softhsm()


@pytest.fixture(scope="session")
def kmip_server() -> Iterator[KmipServer]:
    server = hsm.kmip_server()
    try:
        yield server
    finally:
        server.stop()
