"""The Vault Transit provider beyond the conformance suite, against a real OpenBao:
ACL policies (a token allowed to encrypt but not decrypt), rotation settings,
min_decryption_version, the HMAC key pinned to version 1, the token file, and
attacks on the wrapped blob."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
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


def test_address_and_token_from_the_vault_environment(
    openbao: OpenBao, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_ADDR", openbao.url)
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    settings = Settings(home=tmp_path / "home", embedder="none")
    provider = provider_for(settings, "vault:transit/transit/any")
    uri = provider.create_key("env").key_id
    assert provider.describe_key(uri).versions == 1


def test_a_replaced_token_file_is_read_again(openbao: OpenBao, tmp_path: Path) -> None:
    """Vault Agent's auto-auth sink replaces the token file: the next call uses the
    new token, without a restart."""
    client = openbao.client()
    first = client.auth.token.create(policies=["root"], ttl="10m")["auth"]["client_token"]
    second = client.auth.token.create(policies=["root"], ttl="10m")["auth"]["client_token"]
    token_file = tmp_path / "token"
    token_file.write_text(first)
    token_file.chmod(0o600)
    settings = Settings(
        home=tmp_path / "home",
        embedder="none",
        vault_addr=openbao.url,
        vault_token_file=token_file,
    )
    provider = provider_for(settings, "vault:transit/transit/any")
    uri = provider.create_key("agent").key_id
    client.auth.token.revoke(first)
    with pytest.raises(AccessDeniedError):
        provider.describe_key(uri)
    fresh = tmp_path / "token.new"
    fresh.write_text(second)
    fresh.chmod(0o600)
    fresh.replace(token_file)
    assert provider.describe_key(uri).versions == 1


@pytest.fixture(scope="module")
def tls_openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A second OpenBao with a TLS listener and a CA of its own (``-dev-tls``)."""
    from tests.providers.services import bao_binary, free_port

    binary = bao_binary()
    if binary is None:
        pytest.skip("no bao binary")
    folder = tmp_path_factory.mktemp("bao-tls")
    port = free_port()
    process = subprocess.Popen(
        [
            str(binary),
            "server",
            "-dev-tls",
            f"-dev-tls-cert-dir={folder}",
            "-dev-root-token-id=root",
            f"-dev-listen-address=127.0.0.1:{port}",
            "-dev-no-store-token",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(folder)},
    )
    try:
        deadline = time.monotonic() + 15
        while not (folder / "vault-ca.pem").exists() or not _listening(port):
            assert process.poll() is None and time.monotonic() < deadline, "no TLS OpenBao"
            time.sleep(0.05)
        import hvac

        ca = str(folder / "vault-ca.pem")
        admin = hvac.Client(url=f"https://127.0.0.1:{port}", token="root", verify=ca)
        while True:
            with contextlib.suppress(Exception):
                admin.sys.enable_secrets_engine("transit", path="transit")
                break
            assert time.monotonic() < deadline, "TLS OpenBao does not serve"
            time.sleep(0.05)
        yield f"https://127.0.0.1:{port}", folder / "vault-ca.pem"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def test_tls_server_is_verified(
    tls_openbao: tuple[str, Path], openbao: OpenBao, tmp_path: Path
) -> None:
    """With the server's CA the provider works; a server whose certificate no trusted
    CA signed (what a man in the middle presents) is refused before the token is sent."""
    url, ca = tls_openbao
    token_file = openbao.token_file(name="tls-token")

    def provider(**extra: object) -> VaultTransitProvider:
        settings = Settings(
            home=tmp_path / "home",
            embedder="none",
            vault_addr=url,
            vault_token_file=token_file,
            **extra,
        )
        p = provider_for(settings, "vault:transit/transit/any")
        assert isinstance(p, VaultTransitProvider)
        return p

    trusted = provider(vault_ca_file=ca)
    assert trusted.describe_key(trusted.create_key("tls").key_id).versions == 1
    with pytest.raises(KeyUnavailableError, match="unreachable"):
        provider().list_keys()  # system CAs only: the certificate is not trusted
