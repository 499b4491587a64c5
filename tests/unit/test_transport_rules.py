"""The transport rule before connecting: which URLs need verified TLS, and what is refused.

Pure judgement of connection strings (no server needed); the same rules against
real TLS endpoints are in tests/integration/test_tls_transport.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from sealedkb.errors import ConfigError, TransportRefusedError
from sealedkb.store.transport import TlsFiles, classify_transport

PG_ENV = (
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLMINPROTOCOLVERSION",
    "PGGSSENCMODE",
    "PGSERVICE",
)


@pytest.fixture(autouse=True)
def _no_pg_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in PG_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "nohome"))  # no ~/.postgresql/root.crt


@pytest.fixture
def ca(tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")  # existence is all the rule checks
    return str(path)


def refused(url: str, **kwargs: object) -> TransportRefusedError:
    with pytest.raises(TransportRefusedError) as info:
        classify_transport(url, **kwargs)  # type: ignore[arg-type]
    assert info.value.exit_code == 7
    assert info.value.code == "TRANSPORT_REFUSED"
    return info.value


# --- what needs no TLS --------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@/db?host=/run/postgresql",
        "postgresql:///db",  # libpq's default socket
        "host=/tmp port=5432 dbname=db",
        # "@name" (abstract namespace) is not here: it has no file permissions and
        # counts as a network address (test_attack_abstract_socket.py).
    ],
)
def test_unix_sockets_need_no_tls(url: str) -> None:
    t = classify_transport(url)
    assert t.kind == "unix-socket"
    assert t.conninfo == url  # nothing added to a socket URL


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@localhost/db?sslmode=disable",
        "postgresql://u@127.0.0.1:6432/db",
        "postgresql://u@[::1]/db?sslmode=prefer",
        "host=localhost hostaddr=127.0.0.1 sslmode=disable",
        "host=127.0.0.1,localhost sslmode=disable",
    ],
)
def test_explicit_loopback_needs_no_tls(url: str) -> None:
    t = classify_transport(url)
    assert t.kind == "loopback"
    # the minimum TLS version is pinned even here, should TLS be negotiated
    assert conninfo_to_dict(t.conninfo)["ssl_min_protocol_version"] == "TLSv1.2"


# --- what is refused ---------------------------------------------------------------


@pytest.mark.parametrize("sslmode", [None, "disable", "allow", "prefer", "require", "verify-ca"])
def test_weak_sslmode_on_a_remote_host_is_refused(sslmode: str | None, ca: str) -> None:
    url = "postgresql://kb:hunter2@db.example.com:5432/kb?sslrootcert=" + ca
    if sslmode:
        url += f"&sslmode={sslmode}"
    exc = refused(url)
    assert exc.cause == "weak-sslmode"
    assert f"sslmode={sslmode or 'prefer'}" in exc.message
    assert "sslmode=verify-full" in exc.message  # says what to set ...
    assert "SEALEDKB_DATABASE_SSLROOTCERT" in exc.message
    assert "SEALEDKB_DATABASE_ALLOW_INSECURE" in exc.message  # ... and how to opt out
    assert "hunter2" not in exc.message
    assert "db.example.com:5432" in exc.message


@pytest.mark.parametrize(
    "url",
    [
        # hostaddr is where libpq connects: a loopback *name* does not make it local
        "host=localhost hostaddr=10.0.0.5 sslmode=disable",
        # a socket path with a hostaddr is TCP to that address
        "host=/tmp hostaddr=10.0.0.5 sslmode=disable",
        # a remote-looking name pinned to loopback still needs TLS (the name is verified)
        "host=db.test hostaddr=127.0.0.1 sslmode=require",
        # one remote host among local ones
        "host=localhost,db.example.com sslmode=disable",
        "host=localhost,localhost hostaddr=127.0.0.1,10.1.1.1 sslmode=disable",
        # names that merely look local
        "host=localhost.example.com sslmode=disable",
        "host=127.0.0.1.nip.io sslmode=disable",
    ],
)
def test_hostaddr_and_multi_host_tricks_are_refused(url: str) -> None:
    assert refused(url).cause == "weak-sslmode"


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({"PGHOST": "db.example.com"}, "postgresql:///kb"),
        ({"PGHOSTADDR": "10.0.0.5"}, "postgresql://u@localhost/kb"),
        ({"PGSSLMODE": "require"}, "postgresql://u@db.example.com/kb"),
    ],
)
def test_libpq_environment_is_judged_too(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], url: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    refused(url)


def test_environment_values_are_spelled_out(monkeypatch: pytest.MonkeyPatch, ca: str) -> None:
    """What was judged is written into the conninfo: a later env change cannot alter it."""
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    monkeypatch.setenv("PGSSLROOTCERT", ca)
    t = classify_transport("postgresql://u@db.example.com/kb")
    assert t.kind == "tls"
    params = conninfo_to_dict(t.conninfo)
    assert params["sslmode"] == "verify-full"
    assert params["sslrootcert"] == ca
    assert params["gssencmode"] == "disable"  # GSS encryption would bypass TLS verification
    assert params["ssl_min_protocol_version"] == "TLSv1.2"


def test_service_files_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert refused("service=prod").cause == "service-file"
    monkeypatch.setenv("PGSERVICE", "prod")
    refused("postgresql://u@localhost/kb")


def test_verify_full_needs_a_ca(tmp_path: Path) -> None:
    exc = refused("postgresql://u@db.example.com/kb?sslmode=verify-full")
    assert exc.cause == "no-ca"
    assert "SEALEDKB_DATABASE_SSLROOTCERT" in exc.message
    missing = tmp_path / "missing.pem"
    exc = refused(f"postgresql://u@db.example.com/kb?sslmode=verify-full&sslrootcert={missing}")
    assert exc.cause == "ca-not-found"
    assert str(missing) in exc.message


def test_libpq_default_root_crt_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / "h"
    (home / ".postgresql").mkdir(parents=True)
    (home / ".postgresql" / "root.crt").write_text("x")
    monkeypatch.setenv("HOME", str(home))
    t = classify_transport("postgresql://u@db.example.com/kb?sslmode=verify-full")
    assert t.sslrootcert == str(home / ".postgresql" / "root.crt")


def test_settings_fill_in_tls_files(ca: str, tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("c")
    key.write_text("k")
    url = "postgresql://kb:pw@db.example.com/kb?sslmode=verify-full"
    t = classify_transport(url, tls=TlsFiles(sslrootcert=ca, sslcert=str(cert), sslkey=str(key)))
    assert t.kind == "tls"
    params = conninfo_to_dict(t.conninfo)
    assert (params["sslrootcert"], params["sslcert"], params["sslkey"]) == (ca, str(cert), str(key))
    assert params["password"] == "pw"
    assert "pw" not in repr(t)  # conninfo is kept out of repr
    # the URL and the settings must not disagree
    with pytest.raises(ConfigError) as info:
        classify_transport(url + "&sslrootcert=/other/ca.pem", tls=TlsFiles(sslrootcert=ca))
    assert info.value.field == "database_sslrootcert"
    # a configured client certificate that is missing is refused, not silently skipped
    exc = refused(url, tls=TlsFiles(sslrootcert=ca, sslcert=str(tmp_path / "gone.pem")))
    assert exc.cause == "client-file-not-found"


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1.1"])
def test_tls_older_than_1_2_is_refused(version: str, ca: str) -> None:
    url = f"postgresql://u@db.example.com/kb?sslmode=verify-full&sslrootcert={ca}"
    assert refused(f"{url}&ssl_min_protocol_version={version}").cause == "old-protocol"
    t = classify_transport(f"{url}&ssl_min_protocol_version=TLSv1.3")
    assert conninfo_to_dict(t.conninfo)["ssl_min_protocol_version"] == "TLSv1.3"


def test_gss_encryption_cannot_replace_tls(ca: str) -> None:
    url = f"postgresql://u@db.example.com/kb?sslmode=verify-full&sslrootcert={ca}"
    assert refused(url + "&gssencmode=prefer").cause == "gssencmode"


def test_verify_full_remote_is_tls(ca: str) -> None:
    t = classify_transport(
        f"postgresql://u@db.example.com:6432/kb?sslmode=verify-full&sslrootcert={ca}"
    )
    assert (t.kind, t.sslmode, t.sslrootcert) == ("tls", "verify-full", ca)
    assert [e.where for e in t.endpoints] == ["db.example.com:6432"]


def test_opt_out_is_explicit_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    url = "postgresql://kb:hunter2@db.example.com/kb?sslmode=require"
    with caplog.at_level(logging.WARNING, logger="sealedkb.store"):
        t = classify_transport(url, allow_insecure=True)
    assert t.kind == "insecure-tcp"
    assert "TLS verification for the remote database db.example.com:5432 is OFF" in caplog.text
    assert "SEALEDKB_DATABASE_ALLOW_INSECURE" in caplog.text
    assert "hunter2" not in caplog.text
    # the opt-out does not lower the minimum TLS version
    params = conninfo_to_dict(t.conninfo)
    assert params["ssl_min_protocol_version"] == "TLSv1.2"
