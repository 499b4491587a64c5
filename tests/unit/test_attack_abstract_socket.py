"""A local user who binds an abstract Unix socket name first (no file permissions
guard it) must not receive sealedkb's database traffic in clear: ``host=@name`` is
judged as a network address and needs verified TLS."""

from __future__ import annotations

import pytest

from sealedkb.errors import TransportRefusedError
from sealedkb.store.transport import classify_transport


@pytest.mark.parametrize(
    "url",
    [
        "postgresql:///kb?host=@sealedkb",
        "postgresql:///kb?host=@sealedkb&sslmode=require",
        "host=@pg dbname=kb",
    ],
)
def test_abstract_socket_without_verified_tls_is_refused(url: str) -> None:
    with pytest.raises(TransportRefusedError):
        classify_transport(url)


def test_a_socket_folder_stays_local() -> None:
    assert classify_transport("postgresql:///kb?host=/run/postgresql").kind == "unix-socket"
