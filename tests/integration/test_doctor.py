"""``sealedkb doctor`` against real servers: healthy setups, TLS failures, keys, folders.

A healthy setup (root key file kept outside the home, verified TLS or a Unix
socket) gives all OK and exit 0; every failure is a FAIL with a fix and exit 1;
a server certificate expiring in 10 days or the development root key is a WARN
(exit 0).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict
from tests.cli_helpers import make_cli
from tests.tlsserver import WRONG_HOST, TlsEndpoints
from typer.testing import Result

from sealedkb.ops import doctor as doctor_module

PASSWORD = "hunter2-not-shown"
Doctor = Callable[..., tuple[int, dict[str, dict[str, Any]], Result]]


def dbname(url: str) -> str:
    return str(conninfo_to_dict(url)["dbname"])


@pytest.fixture
def root_key(tmp_path: Path) -> Path:
    path = tmp_path / "secrets" / "root.key"
    path.parent.mkdir()
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


def invoke(home: Path, url: str, *args: str, env: dict[str, str] | None = None) -> Result:
    result = make_cli(home, url)(*args, env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert PASSWORD not in result.output
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def doctor(home: Path, root_key: Path) -> Doctor:
    def run(url: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Result]:
        env = {"SEALEDKB_ROOT_KEY_FILE": str(root_key), **(env or {})}
        result = invoke(home, url, "doctor", "--json", env=env)
        data = json.loads(result.stdout)
        assert data["ok"] is (result.exit_code == 0)
        checks = {c["name"]: c for c in data["checks"]}
        for c in checks.values():
            assert c["status"] in ("OK", "WARN", "FAIL", "SKIP")
            if c["status"] in ("WARN", "FAIL"):
                assert c["fix"], f"{c['name']} has no fix"
        return result.exit_code, checks, result

    return run


@pytest.fixture
def init(home: Path, root_key: Path) -> Callable[..., None]:
    def run(url: str, env: dict[str, str] | None = None) -> None:
        env = {"SEALEDKB_ROOT_KEY_FILE": str(root_key), **(env or {})}
        result = invoke(home, url, "init", env=env)
        assert result.exit_code == 0, result.output

    return run


def tls_url(endpoints: TlsEndpoints, db: str, variant: str = "good", **kw: Any) -> str:
    kw.setdefault("ca", endpoints.certs.ca)
    url = endpoints.get(variant).url(db, **kw)
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@", 1)


def statuses(checks: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: c["status"] for name, c in checks.items()}


ALL_CHECKS = {
    "config",
    "database.transport",
    "database.connection",
    "database.tls",
    "database.certificate",
    "database.pgvector",
    "keys.provider",
    "keys.access",
    "keys.rotation",
    "keys.deletion",
    "keys.custody",
    "keys.permissions",
    "snapshots.folder",
    "clock",
}


# --- healthy ------------------------------------------------------------------------


def test_healthy_tls_setup_is_all_ok(
    doctor: Doctor, init: Callable[..., None], tls_endpoints: TlsEndpoints, database_url: str
) -> None:
    url = tls_url(tls_endpoints, dbname(database_url))
    init(url)
    code, checks, result = doctor(url)
    assert set(checks) == ALL_CHECKS
    assert statuses(checks) == dict.fromkeys(ALL_CHECKS, "OK"), result.output
    assert code == 0
    assert checks["database.tls"]["message"].startswith(("TLSv1.3", "TLSv1.2"))
    cert = checks["database.certificate"]["message"]
    assert "chain and host name db.test verified" in cert
    assert "valid until" in cert
    assert "verify-full" in checks["database.transport"]["message"]


def test_healthy_socket_setup_is_all_ok_and_text_output(
    doctor: Doctor, init: Callable[..., None], home: Path, root_key: Path, database_url: str
) -> None:
    init(database_url)
    code, checks, _ = doctor(database_url)
    assert statuses(checks) == dict.fromkeys(ALL_CHECKS, "OK")
    assert code == 0
    text = invoke(home, database_url, "doctor", env={"SEALEDKB_ROOT_KEY_FILE": str(root_key)})
    assert text.exit_code == 0
    assert "OK    database.transport" in text.stdout
    assert "14 OK" in text.stdout


# --- TLS failures: FAIL with the fix -------------------------------------------------------

TLS_FAILURES = {
    "wrong CA": (
        {"ca": "wrong_ca"},
        "good",
        "not signed by the CA",
        "SEALEDKB_DATABASE_SSLROOTCERT",
    ),
    "wrong hostname": (
        {"host": WRONG_HOST},
        "good",
        "not valid for the host name",
        "subjectAltName",
    ),
    "expired certificate": ({}, "expired", "has expired", "renew the server certificate"),
    "plaintext-only server": ({}, "plaintext", "does not offer TLS", "enable TLS on the server"),
}


@pytest.mark.parametrize("name", list(TLS_FAILURES))
def test_tls_failures_fail_with_their_fix(
    doctor: Doctor, home: Path, tls_endpoints: TlsEndpoints, database_url: str, name: str
) -> None:
    opts, variant, says, fix = TLS_FAILURES[name]
    if "ca" in opts:
        opts = {"ca": tls_endpoints.certs.wrong_ca}
    url = tls_url(tls_endpoints, dbname(database_url), variant, **opts)
    code, checks, result = doctor(url)
    assert code == 1
    for check in ("database.connection", "database.certificate"):
        assert checks[check]["status"] == "FAIL", result.output
        assert says in checks[check]["message"], checks[check]
        assert fix in checks[check]["fix"]
    if variant == "expired":  # the doctor reads the date off the refused certificate
        assert "has expired (on 20" in checks["database.certificate"]["message"]
    # what needs a connection is skipped, not failed a second time
    for check in ("database.tls", "database.pgvector", "keys.provider", "clock"):
        assert checks[check]["status"] == "SKIP"
    text = invoke(home, url, "doctor")  # the human form
    assert text.exit_code == 1
    assert "FAIL  database.certificate" in text.stdout
    assert "fix: " in text.stdout


@pytest.mark.parametrize("sslmode", ["disable", "require", "verify-ca"])
def test_weak_sslmode_fails_with_its_fix(
    doctor: Doctor, tls_endpoints: TlsEndpoints, database_url: str, sslmode: str
) -> None:
    url = tls_url(tls_endpoints, dbname(database_url), sslmode=sslmode)
    code, checks, _ = doctor(url)
    assert code == 1
    transport = checks["database.transport"]
    assert transport["status"] == "FAIL"
    assert f"sslmode={sslmode}" in transport["message"]
    assert "sslmode=verify-full" in transport["fix"]
    assert "SEALEDKB_DATABASE_SSLROOTCERT" in transport["fix"]
    assert checks["database.connection"]["status"] == "SKIP"


def test_certificate_expiring_in_10_days_warns(
    doctor: Doctor, init: Callable[..., None], tls_endpoints: TlsEndpoints, database_url: str
) -> None:
    url = tls_url(tls_endpoints, dbname(database_url), "expiring")
    init(url)
    code, checks, _ = doctor(url)
    cert = checks["database.certificate"]
    assert cert["status"] == "WARN"
    assert "expires in 10 days" in cert["message"] or "expires in 9 days" in cert["message"]
    assert "renew" in cert["fix"]
    assert code == 0  # a warning is not a failure
    others = {n: s for n, s in statuses(checks).items() if n != "database.certificate"}
    assert set(others.values()) == {"OK"}


def test_opt_out_warns(
    doctor: Doctor, init: Callable[..., None], tls_endpoints: TlsEndpoints, database_url: str
) -> None:
    env = {"SEALEDKB_DATABASE_ALLOW_INSECURE": "true"}
    url = tls_url(tls_endpoints, dbname(database_url), sslmode="require")
    init(url, env)
    code, checks, _ = doctor(url, env)
    assert checks["database.transport"]["status"] == "WARN"
    assert "OFF" in checks["database.transport"]["message"]
    assert checks["database.certificate"]["status"] == "WARN"
    assert checks["database.tls"]["status"] == "OK"  # encrypted, though not verified
    assert code == 0


# --- keys, folders, clock ------------------------------------------------------------------


def test_development_root_key_and_open_permissions(home: Path, database_url: str) -> None:
    assert invoke(home, database_url, "init").exit_code == 0  # generated keys/root.key
    result = invoke(home, database_url, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["keys.custody"]["status"] == "WARN"
    assert "beside the data" in checks["keys.custody"]["message"]
    assert "SEALEDKB_ROOT_KEY_FILE" in checks["keys.custody"]["fix"]
    assert checks["keys.permissions"]["status"] == "OK"
    assert result.exit_code == 0

    loose = next(p for p in (home / "keys").iterdir() if p.suffix == ".json")
    loose.chmod(0o644)
    result = invoke(home, database_url, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["keys.permissions"]["status"] == "FAIL"
    assert str(loose) in checks["keys.permissions"]["message"]
    assert checks["keys.permissions"]["fix"].startswith("chmod 600")
    assert result.exit_code == 1


def test_wrong_root_key_fails_the_provider(
    doctor: Doctor, init: Callable[..., None], database_url: str, tmp_path: Path
) -> None:
    init(database_url)
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    code, checks, _ = doctor(database_url, {"SEALEDKB_ROOT_KEY_FILE": str(other)})
    assert checks["keys.provider"]["status"] == "FAIL"
    assert "root key" in checks["keys.provider"]["message"]
    assert code == 1


def test_snapshot_folder_that_is_not_a_folder(
    doctor: Doctor, init: Callable[..., None], home: Path, database_url: str
) -> None:
    init(database_url)
    (home / "snapshots").write_text("not a folder")
    code, checks, _ = doctor(database_url)
    assert checks["snapshots.folder"]["status"] == "FAIL"
    assert code == 1


def test_clock_skew_warns(
    doctor: Doctor,
    init: Callable[..., None],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The local clock is moved (not the database's): 2 minutes ahead of the server."""
    init(database_url)
    real = time.time  # the module doctor reads the local clock from

    class Clock:
        @staticmethod
        def time() -> float:
            return real() + 120.0

    monkeypatch.setattr(doctor_module, "time", Clock)
    code, checks, _ = doctor(database_url)
    assert checks["clock"]["status"] == "WARN"
    assert "-120 s" in checks["clock"]["message"] or "-119 s" in checks["clock"]["message"]
    assert code == 0


def test_uninitialised_database_fails(doctor: Doctor, database_url: str) -> None:
    code, checks, _ = doctor(database_url)
    assert checks["keys.provider"]["status"] == "FAIL"
    assert "sealedkb init" in checks["keys.provider"]["fix"]
    assert code == 1
