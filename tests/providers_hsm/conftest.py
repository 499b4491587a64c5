"""SoftHSM2 and PyKMIP for the tests of this folder (tests/providers_hsm/services.py):
one each per test process, started on first use, stopped when the session ends.
OpenBao (tests/providers/services.py) too, for the custody test that moves to
either an HSM or Vault Transit: the same process-wide server tests/providers uses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.providers import services as key_services
from tests.providers.services import OpenBao
from tests.providers_hsm import services
from tests.providers_hsm.services import KmipServer, SoftHsm


@pytest.fixture(scope="session")
def softhsm() -> SoftHsm:
    return services.softhsm()


@pytest.fixture(scope="session")
def kmip_server() -> Iterator[KmipServer]:
    server = services.kmip_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBao]:
    server = key_services.openbao_server()
    try:
        yield server
    finally:
        server.stop()
