"""The Vault Transit provider beyond the conformance suite, against a real OpenBao:
ACL policies (a token allowed to encrypt but not decrypt), rotation settings,
min_decryption_version, the HMAC key pinned to version 1, the token file, and
attacks on the wrapped blob."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from tests.providers.services import OpenBao

from sealedkb.config import Settings
from sealedkb.errors import (
    AccessDeniedError,
    ConfigError,
    IntegrityError,
    KeyUnavailableError,
    NotFoundError,
    ValidationError,
)
from sealedkb.keys.registry import provider_for
from sealedkb.keys.vault import VaultTransitProvider, parse_uri

CTX = {
    "sealedkb:namespace": "default",
    "sealedkb:purpose": "content",
    "sealedkb:data_key_id": "6f1c0000-0000-4000-8000-000000000001",
}


def _provider(openbao: OpenBao, tmp_path: Path, token: str | None = None) -> VaultTransitProvider:
    settings = Settings(home=tmp_path / "home", embedder="none", **openbao.settings(token))
    provider = provider_for(settings, "vault:transit/transit/any")
    assert isinstance(provider, VaultTransitProvider)
    return provider


@pytest.fixture
def vault(openbao: OpenBao, tmp_path: Path) -> VaultTransitProvider:
    return _provider(openbao, tmp_path)


def _limited_token(openbao: OpenBao, name: str, rules: str) -> str:
    client = openbao.client()
    client.sys.create_or_update_policy(name, rules)
    return str(client.auth.token.create(policies=[name], ttl="10m")["auth"]["client_token"])


def test_token_allowed_to_encrypt_but_not_decrypt(
    vault: VaultTransitProvider, openbao: OpenBao, tmp_path: Path
) -> None:
    uri = vault.create_key("acl").key_id
    _, key = parse_uri(uri)
    plaintext, wrapped = vault.generate_data_key(uri, CTX)
    token = _limited_token(
        openbao,
        f"encrypt-only-{key}",
        f'path "transit/encrypt/{key}" {{ capabilities = ["update"] }}\n'
        f'path "transit/keys/{key}" {{ capabilities = ["read"] }}\n',
    )
    limited = _provider(openbao, tmp_path / "limited", token)
    assert limited.describe_key(uri).versions == 1
    blob = limited.encrypt(uri, b"k" * 32, CTX)
    with pytest.raises(AccessDeniedError) as exc:
        limited.decrypt(uri, wrapped, CTX)
    assert f'"update" on path "transit/decrypt/{key}"' in exc.value.message
    assert exc.value.exit_code == 4
    with pytest.raises(AccessDeniedError, match="rewrap"):
        limited.re_encrypt(uri, wrapped, CTX)
    # the full token still opens both: nothing was changed by the refused calls
    assert vault.decrypt(uri, wrapped, CTX) == plaintext
    assert vault.decrypt(uri, blob, CTX) == b"k" * 32


def test_rotation_settings_are_transit_operations(
    vault: VaultTransitProvider, openbao: OpenBao
) -> None:
    uri = vault.create_key("rotation").key_id
    _, key = parse_uri(uri)
    meta = vault.describe_key(uri)
    assert meta.rotation_enabled and meta.rotation_period_days == 365
    assert meta.next_rotation_date is not None and meta.versions == 1
    meta = vault.enable_key_rotation(uri, 90)
    assert meta.rotation_period_days == 90
    read = openbao.client().secrets.transit.read_key(key)["data"]
    assert read["auto_rotate_period"] == 90 * 86400
    for days in (89, 2561):
        with pytest.raises(ValidationError):
            vault.enable_key_rotation(uri, days)
    assert vault.disable_key_rotation(uri).rotation_enabled is False
    assert openbao.client().secrets.transit.read_key(key)["data"]["auto_rotate_period"] == 0


def test_min_decryption_version_retires_old_versions(vault: VaultTransitProvider) -> None:
    uri = vault.create_key("retire").key_id
    plaintext, old = vault.generate_data_key(uri, CTX)
    vault.rotate_key(uri)
    moved = vault.re_encrypt(uri, old, CTX)
    assert (vault.wrapped_version(old), vault.wrapped_version(moved)) == (1, 2)
    with pytest.raises(ValidationError):
        vault.set_min_decryption_version(uri, 3)  # beyond the latest version
    vault.set_min_decryption_version(uri, 2)
    with pytest.raises(KeyUnavailableError, match="retired"):
        vault.decrypt(uri, old, CTX)
    assert vault.decrypt(uri, moved, CTX) == plaintext


def test_state_changes_and_policies_say_how_to_do_it_in_vault(vault: VaultTransitProvider) -> None:
    uri = vault.create_key("states").key_id
    with pytest.raises(ValidationError, match="bao policy write"):
        vault.disable_key(uri)
    with pytest.raises(ValidationError, match="deletion_allowed=true"):
        vault.schedule_key_deletion(uri, 7)
    with pytest.raises(ValidationError, match="bao policy write"):
        vault.put_key_policy(uri, {"Version": "1", "Statement": []})
    assert vault.get_key_policy(uri)["Version"] == "1"
    assert vault.rotate_key_if_due(uri) is None and vault.destroy_key_if_due(uri) is None


def test_hmac_is_pinned_to_version_one(vault: VaultTransitProvider, openbao: OpenBao) -> None:
    mac = vault.generate_mac(b"token lookup")
    assert len(mac) == 32
    openbao.client().adapter.post("/v1/transit/keys/sealedkb-audit/rotate")
    assert vault.generate_mac(b"token lookup") == mac  # look-ups still find their rows
    assert vault.verify_mac(b"token lookup", mac) and not vault.verify_mac(b"token lookuP", mac)


def test_token_file_must_be_private(openbao: OpenBao, tmp_path: Path) -> None:
    loose = tmp_path / "loose-token"
    loose.write_text(openbao.root_token)
    loose.chmod(0o644)
    settings = Settings(
        home=tmp_path / "home",
        embedder="none",
        vault_addr=openbao.url,
        vault_token_file=loose,
    )
    with pytest.raises(ConfigError, match="chmod 600"):
        provider_for(settings, "vault:transit/transit/any").list_keys()
    no_token = Settings(home=tmp_path / "home", embedder="none", vault_addr=openbao.url)
    with pytest.raises(ConfigError, match="VAULT_TOKEN"):
        provider_for(no_token, "vault:transit/transit/any").list_keys()


@pytest.mark.parametrize(
    "bad",
    ["vault:transit/", "vault:transit/key-only", "vault:kv/transit/k", "vault:transit/t/../k"],
)
def test_malformed_uris(vault: VaultTransitProvider, bad: str) -> None:
    with pytest.raises(ValidationError):
        vault.describe_key(bad)


def test_unknown_key(vault: VaultTransitProvider) -> None:
    with pytest.raises(NotFoundError):
        vault.describe_key("vault:transit/transit/sealedkb-no-such-key")


def test_attacker_swaps_the_version_or_the_body(vault: VaultTransitProvider) -> None:
    """The version prefix and the body are what Vault authenticates: a database
    writer who edits either gets an integrity failure, never another key's data."""
    uri = vault.create_key("swap").key_id
    _, wrapped = vault.generate_data_key(uri, CTX)
    vault.rotate_key(uri)
    forged = wrapped.replace(b"vault:v1:", b"vault:v2:")
    with pytest.raises(IntegrityError):
        vault.decrypt(uri, forged, CTX)
    body = bytearray(base64.b64decode(wrapped[len(b"vault:v1:") :]))
    body[0] ^= 1
    forged = b"vault:v1:" + base64.b64encode(bytes(body))
    with pytest.raises(IntegrityError):
        vault.decrypt(uri, forged, CTX)
    with pytest.raises(IntegrityError):
        vault.decrypt(uri, b"vault:v1:" + b"A" * 20 + b"\n", CTX)


def test_a_key_that_is_not_derived_is_refused(
    vault: VaultTransitProvider, openbao: OpenBao
) -> None:
    openbao.client().adapter.post("/v1/transit/keys/plain-key", json={"type": "aes256-gcm96"})
    with pytest.raises(ConfigError, match="derived=true"):
        vault.describe_key("vault:transit/transit/plain-key")


def test_vault_keeps_the_schedule_itself(vault: VaultTransitProvider) -> None:
    from sealedkb.keys.provider import schedules_itself

    assert schedules_itself(vault)
