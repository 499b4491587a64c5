"""A knowledge base sealed under an AWS KMS key (moto) or a Vault Transit key
(OpenBao): ``init --kms-key-id`` then add, search and get through the CLI; an
outage of the key service (the server stopped mid-run) is KEY_UNAVAILABLE once
the data-key cache has expired and recovers by itself when the service returns;
a Vault token allowed to encrypt but not decrypt writes nothing."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from tests.cli_helpers import Cli
from tests.providers.services import MotoKms, OpenBao

from sealedkb.config import Settings
from sealedkb.errors import KeyUnavailableError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.keys.registry import provider_for
from sealedkb.model import EncryptionMode


def _ok(result: Result, code: int = 0) -> Result:
    detail = f"exit {result.exit_code}, output:\n{result.output}\nexception: {result.exception!r}"
    assert result.exit_code == code, detail
    assert result.exception is None or isinstance(result.exception, SystemExit), detail
    return result


@pytest.fixture(params=["aws-kms", "vault"])
def service(request: pytest.FixtureRequest) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(key URI to init with, CLI environment, Settings overrides) of a fresh key."""
    if request.param == "aws-kms":
        kms: MotoKms = request.getfixturevalue("moto_kms")
        mac = kms.mac_key()
        arn = kms.client().create_key(Description="kb")["KeyMetadata"]["Arn"]
        alias = f"alias/sealedkb-{uuid.uuid4().hex[:8]}"
        kms.client().create_alias(AliasName=alias, TargetKeyId=arn)
        env = {**kms.env(), "SEALEDKB_AWS_MAC_KEY_ID": mac}
        return f"aws-kms:{alias}", env, kms.settings(aws_mac_key_id=mac)
    bao: OpenBao = request.getfixturevalue("openbao")
    name = f"kb-{uuid.uuid4().hex[:8]}"
    bao.client().adapter.post(
        f"/v1/transit/keys/{name}", json={"type": "aes256-gcm96", "derived": True}
    )
    return f"vault:transit/transit/{name}", bao.env(), bao.settings()


def test_init_with_kms_key_id_then_add_search_get(
    cli: Cli, service: tuple[str, dict[str, str], dict[str, Any]]
) -> None:
    uri, env, _ = service
    env = {**env, "SEALEDKB_EMBEDDER": "hash"}
    init = json.loads(_ok(cli("init", "--kms-key-id", uri, "--json", env=env)).output)
    assert init["created"] and init["storage_encrypted"]
    if uri.startswith("aws-kms:alias/"):  # kept as the key's ARN, not the movable alias
        assert init["kms_key_id"].startswith("aws-kms:arn:aws:kms:")
    else:
        assert init["kms_key_id"] == uri
    text = "Rotate the signing key every quarter."
    added = json.loads(_ok(cli("add", text, "--title", "Key runbook", "--json", env=env)).output)
    hits = json.loads(_ok(cli("search", "signing key rotation", "--json", env=env)).output)
    assert added["id"] in {h["id"] for h in hits["hits"]}
    got = json.loads(_ok(cli("get", added["id"], "--json", env=env)).output)
    assert got["content"] == text
    status = json.loads(_ok(cli("status", "--json", env=env)).output)
    assert status["kms_key_id"] == init["kms_key_id"]
    # the audit trail's checkpoints are signed by the key service's MAC key
    verified = json.loads(_ok(cli("audit", "verify", "--json", env=env)).output)
    assert verified["ok"] and verified["checkpoints"] >= 1
    again = json.loads(_ok(cli("init", "--json", env=env)).output)  # idempotent
    assert not again["created"] and again["kms_key_id"] == init["kms_key_id"]


def test_unknown_key_id_creates_nothing(
    cli: Cli, service: tuple[str, dict[str, str], dict[str, Any]]
) -> None:
    uri, env, _ = service
    missing = (
        "aws-kms:alias/sealedkb-missing"
        if uri.startswith("aws-kms:")
        else "vault:transit/transit/sealedkb-missing"
    )
    result = cli("init", "--kms-key-id", missing, env=env)
    assert result.exit_code in (3, 5), result.output
    assert "KEY_UNAVAILABLE" in result.output or "NOT_FOUND" in result.output
    result = cli("status", "--json", env=env)
    assert result.exit_code != 0  # no knowledge base was created


def _outage(
    make_settings: Callable[..., Settings],
    uri: str,
    extra: dict[str, Any],
    stop: Callable[[], None],
    start: Callable[[], None],
) -> None:
    settings = make_settings(kms_key_uri=uri, data_key_max_age=1.0, **extra)
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
    try:
        entry = kb.add("the key service went away", title="outage")
        assert kb.get(entry.id).content == "the key service went away"
        stop()
        try:
            time.sleep(1.2)  # past the data-key cache bound
            started = time.monotonic()
            with pytest.raises(KeyUnavailableError) as exc:
                kb.get(entry.id)
            assert exc.value.code == "KEY_UNAVAILABLE" and exc.value.exit_code == 5
            assert time.monotonic() - started < 15  # bounded retries and timeouts
        finally:
            start()
        assert kb.get(entry.id).content == "the key service went away"  # no restart
        assert kb.add("and came back", title="recovered").id
    finally:
        kb.close()


def test_aws_kms_outage_is_key_unavailable_and_recovers(
    make_settings: Callable[..., Settings], moto_kms: MotoKms
) -> None:
    extra = moto_kms.settings(aws_mac_key_id=moto_kms.mac_key())
    uri = provider_for(make_settings(**extra), "aws-kms:alias/x").create_key("outage").key_id
    _outage(make_settings, uri, extra, moto_kms.stop, moto_kms.start)


def test_vault_outage_is_key_unavailable_and_recovers(
    make_settings: Callable[..., Settings], openbao: OpenBao
) -> None:
    """A dev server keeps nothing, so it comes back with its keys restored from
    Transit backups, as a server restored after losing its host would."""
    name = openbao.backed_up_key(f"outage-{uuid.uuid4().hex[:8]}")
    mac = openbao.backed_up_key(f"outage-mac-{uuid.uuid4().hex[:8]}", key_type="hmac")
    extra = openbao.settings(vault_mac_key=mac)
    backups: dict[str, str] = {}

    def stop() -> None:
        backups.update({k: openbao.backup(k) for k in (name, mac)})
        openbao.stop()

    def start() -> None:
        openbao.start()
        for key, data in backups.items():
            openbao.restore(key, data)

    _outage(make_settings, f"vault:transit/transit/{name}", extra, stop, start)


def test_vault_token_without_decrypt_writes_nothing(cli: Cli, openbao: OpenBao) -> None:
    name = f"kb-{uuid.uuid4().hex[:8]}"
    openbao.client().adapter.post(
        f"/v1/transit/keys/{name}", json={"type": "aes256-gcm96", "derived": True}
    )
    env = {**openbao.env(), "SEALEDKB_EMBEDDER": "hash"}
    _ok(cli("init", "--kms-key-id", f"vault:transit/transit/{name}", env=env))
    mac = env["SEALEDKB_VAULT_MAC_KEY"]
    client = openbao.client()
    policy = f"encrypt-no-decrypt-{name}"
    client.sys.create_or_update_policy(
        policy,
        f'path "transit/encrypt/{name}" {{ capabilities = ["update"] }}\n'
        f'path "transit/datakey/plaintext/{name}" {{ capabilities = ["update"] }}\n'
        f'path "transit/keys/{name}" {{ capabilities = ["read"] }}\n'
        f'path "transit/hmac/{mac}/*" {{ capabilities = ["update"] }}\n',
    )
    token = client.auth.token.create(policies=[policy], ttl="10m")["auth"]["client_token"]
    limited = {**env, **openbao.env(token)}
    result = _ok(cli("add", "never half-written", "--title", "denied", env=limited), 4)
    assert f'"update" on path "transit/decrypt/{name}"' in result.output
    assert "never half-written" not in result.output
    listed = json.loads(_ok(cli("list", "--json", env=env)).output)
    assert listed == []  # nothing was written


def test_key_commands_on_remote_keys(
    cli: Cli, service: tuple[str, dict[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    """key rotate re-wraps the data keys in the key service; AWS key policies are
    AWS documents; Vault refuses the state changes it does not have (exit 2, how to
    do it in Vault) and the knowledge base keeps working."""
    uri, env, _ = service
    env = {**env, "SEALEDKB_EMBEDDER": "hash"}
    _ok(cli("init", "--kms-key-id", uri, env=env))
    entry = json.loads(_ok(cli("add", "rotate me", "--json", env=env)).output)
    rotated = json.loads(_ok(cli("key", "rotate", "--json", env=env)).output)
    assert rotated["versions"] == 2 and rotated["data_keys_rewrapped"] >= 2
    status = json.loads(_ok(cli("status", "--json", env=env)).output)
    assert status["key_rotation"]["versions"] == 2
    if uri.startswith("aws-kms:"):
        doc = json.loads(_ok(cli("key", "get-policy", "--json", env=env)).output)
        assert doc["Version"] == "2012-10-17"
        doc["Statement"][0]["Sid"] = "EditedBySealedkbTest"
        path = tmp_path / "policy.json"
        path.write_text(json.dumps(doc))
        _ok(cli("key", "put-policy", str(path), env=env))
        again = json.loads(_ok(cli("key", "get-policy", "--json", env=env)).output)
        assert again["Statement"][0]["Sid"] == "EditedBySealedkbTest"
        path.write_text("[1, 2]")
        _ok(cli("key", "put-policy", str(path), env=env), 2)
    else:
        for args in (
            ("key", "disable"),
            ("key", "schedule-deletion", "--pending-window-days", "7"),
        ):
            result = _ok(cli(*args, env=env), 2)
            assert "Vault" in result.output
    got = json.loads(_ok(cli("get", entry["id"], "--json", env=env)).output)
    assert got["content"] == "rotate me"


def test_audit_events_carry_the_key_service_request_id(
    make_settings: Callable[..., Settings], service: tuple[str, dict[str, str], dict[str, Any]]
) -> None:
    uri, _, extra = service
    settings = make_settings(kms_key_uri=uri, **extra)
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
    try:
        kb.add("who asked the key service", namespace="fresh")  # a new data key
    finally:
        kb.close()
    again = KnowledgeBase.open(settings)  # a new process: its cache is empty
    try:
        assert again.search("key service", namespace="fresh", limit=3).hits
        events = again.audit.events(limit=1000)
    finally:
        again.close()
    for action in ("GenerateDataKey", "Decrypt"):
        ids = [e["details"].get("kms_request_id") for e in events if e["action"] == action]
        assert ids and all(ids), (action, ids)


def test_attacker_swaps_wrapped_data_keys_between_namespaces(
    make_settings: Callable[..., Settings],
    database_url: str,
    service: tuple[str, dict[str, str], dict[str, Any]],
) -> None:
    """A database writer swaps the wrapped content keys of two namespaces (each a
    replay of the other's key): the key service refuses to unwrap them under the
    wrong encryption context, so nothing opens and nothing leaks."""
    import psycopg

    from sealedkb.errors import IntegrityError

    uri, _, extra = service
    settings = make_settings(kms_key_uri=uri, **extra)
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
    try:
        red = kb.add("red team notes", namespace="red")
        blue = kb.add("blue team notes", namespace="blue")
    finally:
        kb.close()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE kb_data_keys d SET wrapped = o.wrapped FROM kb_data_keys o"
            " WHERE d.purpose = 'content' AND o.purpose = 'content'"
            " AND d.namespace IN ('red', 'blue') AND o.namespace IN ('red', 'blue')"
            " AND d.namespace <> o.namespace"
        )
    again = KnowledgeBase.open(settings)  # a fresh process: nothing cached
    try:
        for entry in (red, blue):
            with pytest.raises(IntegrityError) as exc:
                again.get(entry.id)
            assert "team notes" not in exc.value.message
    finally:
        again.close()


def test_init_again_with_another_key_is_refused(
    cli: Cli, service: tuple[str, dict[str, str], dict[str, Any]]
) -> None:
    uri, env, extra = service
    env = {**env, "SEALEDKB_EMBEDDER": "hash"}
    first = json.loads(_ok(cli("init", "--kms-key-id", uri, "--json", env=env)).output)
    _ok(cli("init", "--kms-key-id", uri, env=env))  # the same key (an alias too): fine
    settings = Settings(home=Path("/nonexistent"), embedder="none", **extra)
    other = provider_for(settings, uri).create_key("another").key_id
    result = _ok(cli("init", "--kms-key-id", other, env=env), 2)
    assert "key migrate" in result.output
    status = json.loads(_ok(cli("status", "--json", env=env)).output)
    assert status["kms_key_id"] == first["kms_key_id"]  # nothing changed
