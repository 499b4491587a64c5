"""End to end under every external key provider (AWS KMS on moto, Vault Transit on
OpenBao, PKCS#11 on SoftHSM2, KMIP on PyKMIP): ``init --kms-key-id <URI>`` then
add, search, get, ``snapshot create``, ``snapshot verify`` and ``snapshot
restore`` into a fresh database, whose entries then read back through the key
service; and the canary (tests/canary_helpers.py) under each provider: the marker
reaches neither the data directory, nor a dump, nor the home folder."""

from __future__ import annotations

import json
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
