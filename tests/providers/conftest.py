"""moto (AWS KMS) and OpenBao (Vault Transit) for the tests of this folder
(tests/providers/services.py): one each per test process, started on first use,
stopped when the session ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.providers import services
from tests.providers.services import MotoKms, OpenBao


@pytest.fixture(scope="session")
def moto_kms() -> Iterator[MotoKms]:
    server = services.moto_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBao]:
    server = services.openbao_server()
    try:
        yield server
    finally:
        server.stop()
