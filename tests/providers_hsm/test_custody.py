"""Changing custody (``sealedkb key migrate --to``): local keystore -> SoftHSM2 and
back, killed with SIGKILL halfway, resumed by a rerun; every entry readable during
and after; the old provider removable afterwards. Attacks: a data key row or the
audit trail rewritten before the switch stops it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from tests.cli_helpers import Cli
from tests.providers_hsm.services import SoftHsm

from sealedkb.config import Settings
from sealedkb.errors import IntegrityError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode

NAMESPACES = [f"team-{i:02d}" for i in range(6)]

# Runs in a child process: the custody change to a new SoftHSM2 key, killed with
# SIGKILL while it wraps data key number N + 1 (after N have committed).
KILLED_RUN = """
import os, signal, sys
from sealedkb.config import load_settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.keys import external

limit, calls = int(sys.argv[1]), 0
wrap = external.ExternalKeyProvider.encrypt

def encrypt(self, *args, **kwargs):
    global calls
    calls += 1
    if calls > limit:
        os.kill(os.getpid(), signal.SIGKILL)
    return wrap(self, *args, **kwargs)

external.ExternalKeyProvider.encrypt = encrypt
kb = KnowledgeBase.open(load_settings(sys.argv[2]))
kb.custody().run("pkcs11")
"""


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


def test_local_to_hsm_and_back_killed_halfway(
    make_settings: Callable[..., Settings],
    database_url: str,
    cli: Cli,
    cli_env: dict[str, str],
    softhsm: SoftHsm,
    home: Path,
) -> None:
    # No embedder: no vector data keys (their DCPE set-up costs seconds per namespace).
    settings = make_settings(embedder="none", **softhsm.settings())
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
    env = {**cli_env, **softhsm.env(), "SEALEDKB_HOME": str(home)}
    child = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, "5", str(home)], env=env, capture_output=True
    )
    assert child.returncode == -9, child.stderr.decode()[-2000:]
    halfway = _by_key(database_url)
    (hsm_uri,) = [u for u in halfway if u.startswith("pkcs11:")]
    assert halfway[hsm_uri] == 5 and halfway[local_uri] == total - 5
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
    dry = cli("key", "migrate", "--to", hsm_uri, "--dry-run", "--json", env=softhsm.env())
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["to_rewrap"] == total - 5
    assert _by_key(database_url) == halfway

    # 3. the rerun finishes and switches
    run = cli("key", "migrate", "--to", hsm_uri, "--json", env=softhsm.env())
    assert run.exit_code == 0, run.output
    report = json.loads(run.stdout)
    assert report["switched"] and report["rewrapped"] == total - 5
    assert _by_key(database_url) == {hsm_uri: total}
    assert _meta_key(database_url) == hsm_uri

    # 4. the local keystore goes; the knowledge base opens under the HSM alone
    _remove_local_keystore(settings)
    _read_all(settings, contents, spaces)
    verify = cli("audit", "verify", "--json", env=softhsm.env())
    assert verify.exit_code == 0, verify.output
    assert json.loads(verify.stdout)["ok"]

    # 5. and back to a new local keystore; then the HSM goes
    back = cli("key", "migrate", "--to", "local", "--json", env=softhsm.env())
    assert back.exit_code == 0, back.output
    new_local = json.loads(back.stdout)["to_key"]
    assert new_local.startswith("local:key/") and json.loads(back.stdout)["switched"]
    assert _by_key(database_url) == {new_local: total}
    shutil.rmtree(settings.keys_dir / "pkcs11")
    plain = make_settings(embedder="none")  # no PKCS#11 settings at all
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
