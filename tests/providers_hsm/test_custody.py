"""Changing custody (``sealedkb key migrate --to``): local keystore -> SoftHSM2 or
OpenBao (Vault Transit) and back, killed with SIGKILL halfway, resumed by a rerun;
every entry readable during and after; the old provider removable afterwards (the
local keystore deleted; the HSM records deleted, or the Transit key deleted and the
token revoked). Attacks: a data key row or the audit trail rewritten before the
switch stops it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.cli_helpers import Cli
from tests.providers.services import OpenBao
from tests.providers_hsm.services import SoftHsm

from sealedkb.config import Settings
from sealedkb.errors import IntegrityError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode

NAMESPACES = [f"team-{i:02d}" for i in range(6)]

# Runs in a child process: the custody change to a new key of the target provider
# (argv[3], a bare scheme), killed with SIGKILL while it wraps data key number N + 1
# (after N have committed); argv[4] names the target provider's class.
KILLED_RUN = """
import importlib, os, signal, sys
from sealedkb.config import load_settings
from sealedkb.kb.knowledge_base import KnowledgeBase

limit, calls = int(sys.argv[1]), 0
module, _, name = sys.argv[4].partition(":")
cls = getattr(importlib.import_module(module), name)
wrap = cls.encrypt

def encrypt(self, *args, **kwargs):
    global calls
    calls += 1
    if calls > limit:
        os.kill(os.getpid(), signal.SIGKILL)
    return wrap(self, *args, **kwargs)

cls.encrypt = encrypt
kb = KnowledgeBase.open(load_settings(sys.argv[2]))
kb.custody().run(sys.argv[3])
"""


@dataclass
class Target:
    """A provider custody moves to and back from: what a knowledge base and a CLI
    run need to use it, and how an operator removes it afterwards."""

    scheme: str
    provider_class: str  # module:Class whose encrypt wraps the data keys
    settings: dict[str, Any]
    env: Callable[[], dict[str, str]]
    remove: Callable[[Settings, str], None]  # (settings, the target key URI it held)


def _remove_hsm_records(settings: Settings, _uri: str) -> None:
    shutil.rmtree(settings.keys_dir / "pkcs11")


@pytest.fixture(params=["pkcs11", "vault"])
def target(request: pytest.FixtureRequest) -> Target:
    if request.param == "pkcs11":
        hsm: SoftHsm = request.getfixturevalue("softhsm")
        return Target(
            "pkcs11",
            "sealedkb.keys.external:ExternalKeyProvider",
            hsm.settings(),
            hsm.env,
            _remove_hsm_records,
        )
    bao: OpenBao = request.getfixturevalue("openbao")
    token = bao.client().auth.token.create(policies=["root"], ttl="1h")["auth"]["client_token"]

    def remove(_settings: Settings, uri: str) -> None:
        # the Transit key deleted and the token that used it revoked
        name = uri.rsplit("/", 1)[1]
        root = bao.client()
        root.adapter.post(f"/v1/transit/keys/{name}/config", json={"deletion_allowed": True})
        root.adapter.delete(f"/v1/transit/keys/{name}")
        root.auth.token.revoke(token)

    return Target(
        "vault",
        "sealedkb.keys.vault:VaultTransitProvider",
        bao.settings(token),
        lambda: bao.env(token),
        remove,
    )


def _by_key(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT kms_key_uri, count(*) FROM kb_data_keys GROUP BY kms_key_uri"
        ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def _meta_key(url: str) -> str:
    with psycopg.connect(url) as conn:
        r = conn.execute("SELECT value FROM kb_meta WHERE key = 'kms_key_uri'").fetchone()
    assert r is not None
    return str(r[0])


def _fill(kb: KnowledgeBase) -> tuple[dict[str, str], dict[str, str]]:
    """One entry per namespace: (content by id, namespace by id)."""
    contents: dict[str, str] = {}
    spaces: dict[str, str] = {}
    for ns in NAMESPACES:
        e = kb.add(f"Failover drill notes for {ns}.", title=f"drill {ns}", namespace=ns)
        contents[str(e.id)] = e.content
        spaces[str(e.id)] = ns
    return contents, spaces


def _read_all(settings: Settings, ids: dict[str, str], spaces: dict[str, str]) -> None:
    kb = KnowledgeBase.open(settings)
    try:
        for entry_id, content in ids.items():
            entry = kb.get(entry_id)
            assert (entry.namespace, entry.content) == (spaces[entry_id], content)
    finally:
        kb.close()


def _remove_local_keystore(settings: Settings) -> None:
    for path in settings.keys_dir.iterdir():
        if path.is_file():
            path.unlink()


def test_local_to_provider_and_back_killed_halfway(
    make_settings: Callable[..., Settings],
    database_url: str,
    cli: Cli,
    cli_env: dict[str, str],
    target: Target,
    home: Path,
) -> None:
    # No embedder: no vector data keys (their DCPE set-up costs seconds per namespace).
    settings = make_settings(embedder="none", **target.settings)
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
    try:
        local_uri = kb.kms_key_uri
        assert local_uri is not None and local_uri.startswith("local:")
        contents, spaces = _fill(kb)
    finally:
        kb.close()
    total = sum(_by_key(database_url).values())
    assert total >= 2 * len(NAMESPACES)

    # 1. killed with SIGKILL after 5 data keys
    env = {**cli_env, **target.env(), "SEALEDKB_HOME": str(home)}
    child = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, "5", str(home), target.scheme, target.provider_class],
        env=env,
        capture_output=True,
    )
    assert child.returncode == -9, child.stderr.decode()[-2000:]
    halfway = _by_key(database_url)
    (new_uri,) = [u for u in halfway if u.startswith(target.scheme + ":")]
    assert halfway[new_uri] == 5 and halfway[local_uri] == total - 5
    assert _meta_key(database_url) == local_uri  # not switched
    _read_all(settings, contents, spaces)  # every entry readable halfway
    kb = KnowledgeBase.open(settings)  # and writable: a new namespace's data keys
    try:
        late = kb.add("Written while custody was changing.", title="late", namespace="late")
        contents[str(late.id)], spaces[str(late.id)] = late.content, "late"
    finally:
        kb.close()
    halfway = _by_key(database_url)
    total = sum(halfway.values())
    assert halfway[local_uri] == total - 5  # the new ones under the old key, for now

    # 2. a dry run counts what is left and changes nothing
    dry = cli("key", "migrate", "--to", new_uri, "--dry-run", "--json", env=target.env())
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["to_rewrap"] == total - 5
    assert _by_key(database_url) == halfway

    # 3. the rerun finishes and switches
    run = cli("key", "migrate", "--to", new_uri, "--json", env=target.env())
    assert run.exit_code == 0, run.output
    report = json.loads(run.stdout)
    assert report["switched"] and report["rewrapped"] == total - 5
    assert _by_key(database_url) == {new_uri: total}
    assert _meta_key(database_url) == new_uri

    # 4. the local keystore goes; the knowledge base opens under the new provider alone
    _remove_local_keystore(settings)
    _read_all(settings, contents, spaces)
    verify = cli("audit", "verify", "--json", env=target.env())
    assert verify.exit_code == 0, verify.output
    assert json.loads(verify.stdout)["ok"]

    # 5. and back to a new local keystore; then the provider goes
    back = cli("key", "migrate", "--to", "local", "--json", env=target.env())
    assert back.exit_code == 0, back.output
    new_local = json.loads(back.stdout)["to_key"]
    assert new_local.startswith("local:key/") and json.loads(back.stdout)["switched"]
    assert _by_key(database_url) == {new_local: total}
    target.remove(settings, new_uri)
    plain = make_settings(embedder="none")  # no settings of the removed provider at all
    _read_all(plain, contents, spaces)
    verify = cli("audit", "verify", "--json")
    assert verify.exit_code == 0 and json.loads(verify.stdout)["ok"], verify.output


def test_forged_data_key_row_stops_the_switch(
    make_settings: Callable[..., Settings], database_url: str, softhsm: SoftHsm
) -> None:
    """An attacker with SQL access swaps one data key's wrap for another's: the
    custody change refuses it (the provider's context check), nothing switches."""
    settings = make_settings(embedder="none", **softhsm.settings())
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
    try:
        kb.add("one", title="a", namespace="alpha")
        kb.add("two", title="b", namespace="beta")
        local_uri = kb.kms_key_uri
        with psycopg.connect(database_url) as conn:
            conn.execute(
                "UPDATE kb_data_keys SET wrapped = (SELECT wrapped FROM kb_data_keys"
                " WHERE namespace = 'alpha' AND purpose = 'content')"
                " WHERE namespace = 'beta' AND purpose = 'content'"
            )
        with pytest.raises(IntegrityError):
            kb.custody().run("pkcs11")
    finally:
        kb.close()
    assert _meta_key(database_url) == local_uri


def test_rewritten_audit_trail_stops_the_switch(
    make_settings: Callable[..., Settings], database_url: str, softhsm: SoftHsm
) -> None:
    """Custody never launders a rewritten audit trail: the chain is verified under the
    old MAC key before the switch."""
    settings = make_settings(embedder="none", **softhsm.settings())
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
    try:
        kb.add("one", title="a")
        kb.audit.checkpoint()
        local_uri = kb.kms_key_uri
        with psycopg.connect(database_url) as conn:
            conn.execute(
                "UPDATE kb_audit SET principal = 'someone-else' WHERE seq = (SELECT min(seq)"
                " FROM kb_audit)"
            )
        with pytest.raises(IntegrityError):
            kb.custody().run("pkcs11")
    finally:
        kb.close()
    assert _meta_key(database_url) == local_uri
    assert os.path.isdir(settings.audit_dir)
