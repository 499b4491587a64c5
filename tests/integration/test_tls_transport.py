"""Verified TLS to PostgreSQL, end to end through the CLI, against real TLS endpoints.

pgbouncer terminates TLS in front of the session's embedded PostgreSQL
(tests/tlsserver.py). URLs use ``host=db.test&hostaddr=127.0.0.1``: libpq
reaches the loopback endpoint but verifies the certificate against
``db.test``, a name sealedkb treats as remote, so every TLS rule applies.

For each refusal: exit code 7, a message that names the cause and the fix, and
nothing written (no rows, no data keys, no keystore).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from tests.cli_helpers import Cli, make_cli
from tests.tlsserver import WRONG_HOST, Bouncer, TlsEndpoints
from typer.testing import Result

from sealedkb.errors import TransportRefusedError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.store.db import Database
from sealedkb.store.embedded import EmbeddedPostgres

PASSWORD = "hunter2-not-shown"  # pgbouncer trusts everyone; the password must never print


def dbname(database_url: str) -> str:
    return str(conninfo_to_dict(database_url)["dbname"])


def counts(socket_url: str) -> tuple[int, int]:
    with psycopg.connect(socket_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM kb_entries), (SELECT count(*) FROM kb_data_keys)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def with_password(url: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@", 1)


@pytest.fixture
def root_key(tmp_path: Path) -> Path:
    """A production-style root key file outside the home (so no custody warning)."""
    path = tmp_path / "secrets" / "root.key"
    path.parent.mkdir()
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


@pytest.fixture
def cli(home: Path, root_key: Path) -> Cli:
    """The shared CLI runner without a database: each call names its ``url=``."""
    return make_cli(home, None, env={"SEALEDKB_ROOT_KEY_FILE": str(root_key)})


def expect(result: Result, code: int) -> Result:
    detail = f"exit {result.exit_code}, output:\n{result.output}\nexception: {result.exception!r}"
    assert result.exit_code == code, detail
    assert result.exception is None or isinstance(result.exception, SystemExit), detail
    assert PASSWORD not in result.output
    assert "Traceback" not in result.output
    return result


# --- through the TLS endpoint ------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "protocol"), [("good", "TLSv1.3"), ("tls12", "TLSv1.2"), ("tls13", "TLSv1.3")]
)
def test_crud_and_status_through_verified_tls(
    cli: Cli, tls_endpoints: TlsEndpoints, database_url: str, variant: str, protocol: str
) -> None:
    url = with_password(
        tls_endpoints.get(variant).url(dbname(database_url), ca=tls_endpoints.certs.ca)
    )
    expect(cli("init", url=url), 0)
    entry_id = expect(cli("add", "over TLS", "--tag", "net", url=url), 0).stdout.strip()
    assert "over TLS" in expect(cli("get", entry_id, url=url), 0).stdout
    status = json.loads(expect(cli("status", "--json", url=url), 0).stdout)
    db = status["database"]
    assert db["transport"] == "tls"
    assert db["tls_protocol"] == protocol
    assert db["tls_cipher"]  # e.g. TLS_AES_256_GCM_SHA384 / ECDHE-ECDSA-AES256-GCM-SHA384
    assert not any("TLS" in w for w in status["warnings"])
    human = expect(cli("status", url=url), 0).stdout
    assert f"tls ({protocol}, {db['tls_cipher']})" in human
    assert counts(database_url) == (1, 3)  # data keys: content, index, vector


@pytest.mark.db_transports("socket")  # even under --db-transport=tls
def test_status_over_a_unix_socket_has_no_tls(cli: Cli, database_url: str) -> None:
    expect(cli("init", url=database_url), 0)
    db = json.loads(expect(cli("status", "--json", url=database_url), 0).stdout)["database"]
    assert (db["transport"], db["tls_protocol"], db["tls_cipher"]) == ("unix-socket", None, None)


def test_ca_from_the_setting_instead_of_the_url(
    cli: Cli, tls_endpoints: TlsEndpoints, database_url: str
) -> None:
    url = tls_endpoints.get().url(dbname(database_url))  # no sslrootcert in the URL
    env = {"SEALEDKB_DATABASE_SSLROOTCERT": str(tls_endpoints.certs.ca)}
    expect(cli("init", url=url, env=env), 0)
    status = json.loads(expect(cli("status", "--json", url=url, env=env), 0).stdout)
    assert status["database"]["tls_protocol"] in ("TLSv1.2", "TLSv1.3")
    # ... and a URL that names another CA is a configuration error, not a guess
    other = url + "&sslrootcert=" + str(tls_endpoints.certs.wrong_ca)
    result = expect(cli("status", url=other, env=env), 2)
    assert "SEALEDKB_DATABASE_SSLROOTCERT" in result.output


def test_client_certificate(cli: Cli, tls_endpoints: TlsEndpoints, database_url: str) -> None:
    """A server that requires client certificates: refused without one, works with one."""
    c = tls_endpoints.certs
    url = tls_endpoints.get("client-cert").url(dbname(database_url), ca=c.ca)
    result = expect(cli("init", url=url), 7)
    assert "client certificate" in result.output
    assert "SEALEDKB_DATABASE_SSLCERT" in result.output
    env = {
        "SEALEDKB_DATABASE_SSLCERT": str(c.client.cert),
        "SEALEDKB_DATABASE_SSLKEY": str(c.client.key),
    }
    expect(cli("init", url=url, env=env), 0)
    status = json.loads(expect(cli("status", "--json", url=url, env=env), 0).stdout)
    assert status["database"]["transport"] == "tls"


# --- refusals: exit 7, the cause named, nothing written ------------------------------------

REFUSALS = {
    "wrong CA": (
        "good",
        {"ca": "wrong_ca"},
        ["not signed by the CA", "SEALEDKB_DATABASE_SSLROOTCERT"],
    ),
    "wrong hostname": (
        "good",
        {"host": WRONG_HOST},
        ["not valid for the host name other.test", "subjectAltName"],
    ),
    "expired certificate": ("expired", {}, ["has expired", "renew the server certificate"]),
    "plaintext-only server": ("plaintext", {}, ["does not offer TLS", "enable TLS on the server"]),
    "TLS 1.1 only": ("tls11", {}, ["no TLS version sealedkb accepts", "TLS 1.2 or 1.3"]),
}


def refusal_url(tls_endpoints: TlsEndpoints, name: str, db: str) -> str:
    variant, opts, _ = REFUSALS[name]
    ca = getattr(tls_endpoints.certs, str(opts.get("ca", "ca")))
    host = str(opts.get("host", "db.test"))
    return with_password(tls_endpoints.get(variant).url(db, ca=ca, host=host))


@pytest.mark.parametrize("name", list(REFUSALS))
def test_tls_failures_are_refused_with_their_cause(
    cli: Cli, home: Path, tls_endpoints: TlsEndpoints, database_url: str, name: str
) -> None:
    url = refusal_url(tls_endpoints, name, dbname(database_url))
    before = counts(database_url)
    for args in (("init",), ("add", "must not be stored"), ("status", "--json")):
        result = expect(cli(*args, url=url), 7)
        assert "error[TRANSPORT_REFUSED]" in result.output
        for words in REFUSALS[name][2]:
            assert words in result.output, result.output
    assert counts(database_url) == before
    assert not (home / "keys").exists()  # no keystore made either


@pytest.mark.parametrize("sslmode", ["disable", "allow", "prefer", "require", "verify-ca"])
def test_weak_sslmode_on_a_remote_host_is_refused(
    cli: Cli, home: Path, tls_endpoints: TlsEndpoints, database_url: str, sslmode: str
) -> None:
    ep = tls_endpoints.get("good")
    url = with_password(ep.url(dbname(database_url), sslmode=sslmode, ca=tls_endpoints.certs.ca))
    before = counts(database_url)
    result = expect(cli("init", url=url), 7)
    assert f"sslmode={sslmode}" in result.output
    assert "sslmode=verify-full" in result.output
    assert "SEALEDKB_DATABASE_SSLROOTCERT" in result.output
    assert counts(database_url) == before
    assert not (home / "keys").exists()


def test_opt_out_works_and_is_visible(
    cli: Cli, tls_endpoints: TlsEndpoints, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"SEALEDKB_DATABASE_ALLOW_INSECURE": "true"}
    db = dbname(database_url)
    for ep, sslmode in (
        (tls_endpoints.get("good"), "require"),
        (tls_endpoints.get("plaintext"), "disable"),
    ):
        url = with_password(ep.url(db, sslmode=sslmode))
        expect(cli("init", url=url, env=env), 0)
        expect(cli("add", f"stored with sslmode={sslmode}", url=url, env=env), 0)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="sealedkb"):
            result = expect(cli("status", "--json", url=url, env=env), 0)
        status = json.loads(result.stdout)
        assert status["database"]["transport"] == "insecure-tcp"
        assert any("not TLS-verified" in w for w in status["warnings"])
        # the log (stderr outside pytest) says so too, without the password
        assert "TLS verification for the remote database db.test" in caplog.text
        assert "SEALEDKB_DATABASE_ALLOW_INSECURE=true" in caplog.text
        assert PASSWORD not in caplog.text
        expected = None if sslmode == "disable" else ("TLSv1.2", "TLSv1.3")
        assert status["database"]["tls_protocol"] == expected or status["database"][
            "tls_protocol"
        ] in (expected or ())
    assert counts(database_url)[0] == 2


def test_loopback_without_tls_is_allowed(
    cli: Cli, tls_endpoints: TlsEndpoints, database_url: str
) -> None:
    url = tls_endpoints.get("plaintext").url(
        dbname(database_url), host="localhost", sslmode="disable"
    )
    expect(cli("init", url=url), 0)
    status = json.loads(expect(cli("status", "--json", url=url), 0).stdout)
    assert status["database"]["transport"] == "loopback"
    assert status["database"]["tls_protocol"] is None
    assert status["warnings"] == []


# --- defence in depth: the live connection is checked too ---------------------------------


def _non_loopback_ipv4() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent; picks the outgoing interface
        except OSError:
            return None
        addr = str(s.getsockname()[0])
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


def test_live_connection_to_a_remote_address_without_verify_full_is_closed(
    tls_endpoints: TlsEndpoints, pg_server: EmbeddedPostgres, database_url: str
) -> None:
    """Database() skips the URL rule entirely; check_connection still refuses.

    The endpoint listens on this machine's non-loopback address and demands a
    client certificate, so nobody else on the network can use it meanwhile.
    """
    addr = _non_loopback_ipv4()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    c = tls_endpoints.certs
    bouncer = Bouncer(
        tls_endpoints.folder / f"remote-{os.getpid()}",  # reachable by the server user
        pg_server.socket_dir,
        certs=c.good,
        client_ca=c.ca,
        listen=addr,
        run_as=tls_endpoints.run_as,
        owner=tls_endpoints.owner,
    )
    try:
        url = (
            f"postgresql://postgres@{addr}:{bouncer.port}/{dbname(database_url)}"
            f"?sslmode=verify-ca&sslrootcert={c.ca}&sslcert={c.client.cert}&sslkey={c.client.key}"
        )
        with psycopg.connect(url) as conn:  # the endpoint itself works
            assert conn.pgconn.ssl_in_use
        with pytest.raises(TransportRefusedError) as info:
            Database(url)
        assert "without verified TLS" in info.value.message
        Database(url, allow_insecure=True).close()  # the opt-out applies here too
    finally:
        bouncer.stop()


# --- the service fixtures through TLS (how CRUD and search tests join) -------------------


@pytest.mark.db_transports("tls")
def test_service_fixtures_go_through_tls(kb: KnowledgeBase) -> None:
    """``pytest.mark.db_transports`` puts ``database_url`` (and so ``kb``) behind TLS."""
    entry = kb.add("through the endpoint", tags=["net"])
    assert kb.get(entry.id).content == "through the endpoint"
    db = kb.status()["database"]
    assert db["transport"] == "tls"
    assert db["tls_protocol"] in ("TLSv1.2", "TLSv1.3")
    assert db["tls_cipher"]
