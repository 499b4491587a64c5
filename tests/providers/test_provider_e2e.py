"""End to end under every external key provider (AWS KMS on moto, Vault Transit on
OpenBao, PKCS#11 on SoftHSM2, KMIP on PyKMIP): ``init --kms-key-id <URI>`` then
add, search, get, ``snapshot create``, ``snapshot verify`` and ``snapshot
restore`` into a fresh database, whose entries then read back through the key
service; the canary (tests/canary_helpers.py) under each provider: the marker
reaches neither the data directory, nor a dump, nor the home folder; and
``doctor``'s provider checks (access, rotation, deletion window, clock) on each,
with the failures an operator would meet (a Vault token without decrypt, rotation
off, a deletion scheduled)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from tests.canary_helpers import embedded_home as embedded_home  # the fixture
from tests.canary_helpers import run_canary
from tests.cli_helpers import Cli
from tests.providers.services import MotoKms, OpenBao
from tests.providers_hsm.services import KmipServer, SoftHsm

from sealedkb.config import Settings, load_settings
from sealedkb.kb.snapshotting import open_restored
from sealedkb.keys.registry import provider_for
from sealedkb.model import EncryptionMode
from sealedkb.store.embedded import EmbeddedPostgres

pytest_plugins = ["tests.snapshot_fixtures"]

SCHEMES = ["aws-kms", "vault", "pkcs11", "kmip"]
# Any well-formed URI of the scheme: provider_for picks the provider by scheme.
ANY_KEY = {
    "aws-kms": "aws-kms:alias/x",
    "vault": "vault:transit/transit/x",
    "pkcs11": "pkcs11:token=t;object=o",
    "kmip": "kmip:0",
}


@dataclass(frozen=True)
class External:
    """One external provider: its Settings overrides and CLI environment."""

    scheme: str
    settings: dict[str, Any]
    env: dict[str, str]

    def new_key(self, settings: Settings) -> str:
        """A new key in the service (its records, for PKCS#11 and KMIP, in the home
        ``settings`` names)."""
        return provider_for(settings, ANY_KEY[self.scheme]).create_key("e2e").key_id


@pytest.fixture(params=SCHEMES)
def external(request: pytest.FixtureRequest) -> External:
    scheme = str(request.param)
    if scheme == "aws-kms":
        kms: MotoKms = request.getfixturevalue("moto_kms")
        mac = kms.mac_key()
        return External(
            scheme, kms.settings(aws_mac_key_id=mac), {**kms.env(), "SEALEDKB_AWS_MAC_KEY_ID": mac}
        )
    if scheme == "vault":
        bao: OpenBao = request.getfixturevalue("openbao")
        return External(scheme, bao.settings(), bao.env())
    if scheme == "pkcs11":
        hsm: SoftHsm = request.getfixturevalue("softhsm")
        return External(scheme, hsm.settings(), hsm.env())
    server: KmipServer = request.getfixturevalue("kmip_server")
    return External(scheme, server.settings(), server.env())


def _ok(result: Result, code: int = 0) -> dict[str, Any]:
    detail = f"exit {result.exit_code}, output:\n{result.output}\nexception: {result.exception!r}"
    assert result.exit_code == code, detail
    return dict(json.loads(result.stdout)) if result.stdout.strip().startswith("{") else {}


def test_init_add_search_get_snapshot_verify_restore(
    cli: Cli,
    make_settings: Callable[..., Settings],
    external: External,
    scratch_names: Callable[[], str],
    pg_server: EmbeddedPostgres,
) -> None:
    settings = make_settings(**external.settings)
    uri = external.new_key(settings)
    env = {**external.env, "SEALEDKB_EMBEDDER": "hash"}
    init = _ok(cli("init", "--kms-key-id", uri, "--json", env=env))
    assert init["created"] and init["storage_encrypted"]
    texts = {
        ("default", "Rotate the signing key every quarter."),
        ("default", "The failover drill runs on the first Monday."),
        ("ops", "Page the on-call engineer for a key service outage."),
    }
    ids: dict[str, tuple[str, str]] = {}
    for ns, text in sorted(texts):
        added = _ok(cli("add", text, "--namespace", ns, "--json", env=env))
        ids[added["id"]] = (ns, text)
    hits = _ok(cli("search", "signing key rotation", "--json", env=env))["hits"]
    assert {h["id"] for h in hits} & set(ids)
    for entry_id, (_, text) in ids.items():
        assert _ok(cli("get", entry_id, "--json", env=env))["content"] == text

    created = _ok(cli("snapshot", "create", "--json", env=env))
    assert created["encrypted"] and created["kms_key_id"] == init["kms_key_id"]
    verified = _ok(cli("snapshot", "verify", created["id"], "--json", env=env))
    assert verified["id"] == created["id"] and verified["chunks"] >= 1
    target = scratch_names()
    restored = _ok(cli("snapshot", "restore", created["id"], "--target", target, "--json", env=env))
    assert restored["ok"] is True and restored["row_counts"] == created["row_counts"]
    assert restored["entries_opened"] >= 1 and restored["data_keys_unwrapped"] >= 2

    # the restored database opens under the same key service and reads every entry
    rkb = open_restored(settings, pg_server.uri(target))
    try:
        assert rkb.kms_key_uri == init["kms_key_id"]
        for entry_id, (ns, text) in ids.items():
            entry = rkb.get(entry_id)
            assert (entry.namespace, entry.content) == (ns, text)
    finally:
        rkb.close()


def test_canary_under_each_provider(embedded_home: Path, external: External) -> None:
    uri = external.new_key(load_settings(embedded_home, **external.settings))
    found = run_canary(
        embedded_home,
        EncryptionMode.ON,
        kms_key_uri=uri,
        **external.settings,
    )
    assert found.kms_key_uri == uri
    assert found.disk_hits == {}, f"marker found in the data directory: {found.disk_hits}"
    assert found.dump_hits == [], "marker found in pg_dump output"
    assert found.home_hits == {}, f"marker found in the home folder: {found.home_hits}"


def _doctor(cli: Cli, env: dict[str, str]) -> tuple[int, dict[str, dict[str, Any]]]:
    result = cli("doctor", "--json", env=env)
    data = json.loads(result.stdout)
    checks = {c["name"]: c for c in data["checks"]}
    for c in checks.values():
        if c["status"] in ("WARN", "FAIL"):
            assert c["fix"], c
    return result.exit_code, checks


def test_doctor_checks_the_provider(
    cli: Cli, make_settings: Callable[..., Settings], external: External
) -> None:
    settings = make_settings(**external.settings)
    uri = external.new_key(settings)
    env = {**external.env, "SEALEDKB_EMBEDDER": "hash"}
    _ok(cli("init", "--kms-key-id", uri, env=env))
    code, checks = _doctor(cli, env)
    for name in ("keys.provider", "keys.access", "keys.deletion", "clock"):
        assert checks[name]["status"] == "OK", checks[name]
    assert (
        "GenerateDataKey, Decrypt, GenerateMac and VerifyMac work"
        in (checks["keys.access"]["message"])
    )
    assert checks["keys.deletion"]["message"] == "no deletion scheduled"
    if external.scheme in ("aws-kms", "vault"):  # they tell their clock (HTTP Date)
        assert "with the key service" in checks["clock"]["message"]
    if external.scheme == "vault":  # capabilities-self was asked about every path
        assert "the service reports all 7 permissions granted" in checks["keys.access"]["message"]

    # rotation off: a warning naming the command that turns it on
    if external.scheme != "vault":
        _ok(cli("key", "rotation", "disable", env=env))
        _, checks = _doctor(cli, env)
        assert checks["keys.rotation"]["status"] == "WARN"
        assert "rotation enable" in checks["keys.rotation"]["fix"]
        _ok(cli("key", "rotation", "enable", env=env))
    _, checks = _doctor(cli, env)
    assert checks["keys.rotation"]["status"] == "OK"
    assert checks["keys.rotation"]["message"].startswith("rotates every ")

    # a scheduled deletion: FAIL with the date and how to cancel it
    if external.scheme != "vault":  # Transit has no pending deletion (refused)
        _ok(cli("key", "schedule-deletion", "--pending-window-days", "7", env=env))
        code, checks = _doctor(cli, env)
        assert code == 1
        assert checks["keys.deletion"]["status"] == "FAIL"
        assert "days left" in checks["keys.deletion"]["message"]
        assert "cancel-deletion" in checks["keys.deletion"]["fix"]
        _ok(cli("key", "cancel-deletion", env=env))
        _ok(cli("key", "enable", env=env))
        code, checks = _doctor(cli, env)
        assert checks["keys.deletion"]["status"] == "OK", checks["keys.deletion"]


def test_doctor_names_the_vault_permissions_missing(cli: Cli, openbao: OpenBao) -> None:
    """A real ACL: the token may wrap but not unwrap nor re-wrap. The doctor's use of
    the key fails on Decrypt, and capabilities-self names every path missing."""
    name = f"kb-{uuid.uuid4().hex[:8]}"
    openbao.client().adapter.post(
        f"/v1/transit/keys/{name}", json={"type": "aes256-gcm96", "derived": True}
    )
    env = {**openbao.env(), "SEALEDKB_EMBEDDER": "hash"}
    _ok(cli("init", "--kms-key-id", f"vault:transit/transit/{name}", env=env))
    mac = env["SEALEDKB_VAULT_MAC_KEY"]
    client = openbao.client()
    policy = f"doctor-{name}"
    client.sys.create_or_update_policy(
        policy,
        f'path "transit/encrypt/{name}" {{ capabilities = ["update"] }}\n'
        f'path "transit/datakey/plaintext/{name}" {{ capabilities = ["update"] }}\n'
        f'path "transit/keys/{name}" {{ capabilities = ["read"] }}\n'
        f'path "transit/hmac/{mac}" {{ capabilities = ["update"] }}\n'
        f'path "transit/verify/{mac}" {{ capabilities = ["update"] }}\n',
    )
    token = client.auth.token.create(policies=[policy], ttl="10m")["auth"]["client_token"]
    code, checks = _doctor(cli, {**env, **openbao.env(token)})
    assert code == 1
    access = checks["keys.access"]
    assert access["status"] == "FAIL"
    for path in (f"transit/decrypt/{name}", f"transit/rewrap/{name}"):
        assert f'"update" on path "{path}"' in access["message"], access["message"]
    assert f"transit/encrypt/{name}" not in access["message"]
