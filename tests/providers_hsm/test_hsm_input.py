"""Bad input to the PKCS#11 and KMIP providers and to ``key migrate``: a clear error
with a stable code, no secret in it, nothing changed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.cli_helpers import Cli
from tests.providers_hsm.services import SoftHsm

from sealedkb.config import Settings, load_settings
from sealedkb.errors import ConfigError, KeyUnavailableError, ValidationError
from sealedkb.keys import kmip, pkcs11
from sealedkb.keys.registry import provider_for


@pytest.mark.parametrize(
    "uri",
    [
        "pkcs11:",
        "pkcs11:token=;object=x",
        "pkcs11:object=x;token=y",
        "pkcs11:token=a;object=b;pin=1234",
        "pkcs11:token=a\nb;object=c",
    ],
)
def test_malformed_pkcs11_uri(uri: str) -> None:
    with pytest.raises(ValidationError) as exc:
        pkcs11.parse_uri(uri)
    assert exc.value.code == "VALIDATION_ERROR" and exc.value.field == "kms_key_id"
    assert "1234" not in exc.value.message


@pytest.mark.parametrize("uri", ["kmip:", "kmip:a b", "kmip:" + "x" * 200])
def test_malformed_kmip_uri(uri: str) -> None:
    with pytest.raises(ValidationError):
        kmip.parse_uri(uri)


def test_missing_settings_are_config_errors(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", embedder="none")
    with pytest.raises(ConfigError, match="SEALEDKB_PKCS11_MODULE"):
        provider_for(settings, "pkcs11:token=t;object=o")
    with pytest.raises(ConfigError, match="SEALEDKB_KMIP_CERT"):
        provider_for(settings, "kmip:1")
    no_pin = Settings(home=tmp_path / "home", pkcs11_module=tmp_path / "lib.so")
    with pytest.raises(ConfigError, match="PIN"):
        pkcs11.read_pin(no_pin)


def test_pin_file_must_be_private(tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("s3cret-pin\n")
    pin_file.chmod(0o644)
    settings = Settings(home=tmp_path / "home", pkcs11_pin_file=pin_file)
    with pytest.raises(ConfigError, match="chmod 600") as exc:
        pkcs11.read_pin(settings)
    assert "s3cret-pin" not in exc.value.message
    pin_file.chmod(0o600)
    assert pkcs11.read_pin(settings) == "s3cret-pin"


def test_pin_is_never_echoed() -> None:
    settings = Settings(pkcs11_pin="s3cret-pin")
    assert "s3cret-pin" not in repr(settings) and "s3cret-pin" not in str(settings.model_dump())


WRONG_PIN = """
import sys
from sealedkb.config import load_settings
from sealedkb.errors import KeyUnavailableError
from sealedkb.keys.registry import provider_for
p = provider_for(load_settings(sys.argv[1]), "pkcs11:token=t;object=o")
try:
    p.create_key("x")
except KeyUnavailableError as exc:
    print(exc.code, exc.message)
"""


def test_wrong_pin_is_key_unavailable_and_not_echoed(
    softhsm: SoftHsm, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """A fresh process (the PKCS#11 login is per process) with a wrong PIN."""
    env = {**cli_env, **softhsm.env(), "SEALEDKB_PKCS11_PIN": "0000-wrong-pin"}
    child = subprocess.run(
        [sys.executable, "-c", WRONG_PIN, str(tmp_path / "home")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith("KEY_UNAVAILABLE") and "PIN was refused" in child.stdout
    assert "0000-wrong-pin" not in child.stdout + child.stderr


def test_migrate_to_bad_targets(
    make_settings: Callable[..., Settings], cli: Cli, database_url: str, home: Path
) -> None:
    from sealedkb.kb.knowledge_base import KnowledgeBase
    from sealedkb.model import EncryptionMode

    kb, _ = KnowledgeBase.init(make_settings(embedder="none"), EncryptionMode.ON)
    kb.close()
    for target, code, exit_code in (
        ("nosuch:key/1", "CONFIG_ERROR", 2),  # no provider for the scheme
        ("pkcs11", "CONFIG_ERROR", 2),  # provider not configured
        ("local:key/not-a-uuid", "VALIDATION_ERROR", 2),
        (f"local:key/{'0' * 8}-0000-4000-8000-{'0' * 12}", "NOT_FOUND", 3),  # unknown
        ("", "VALIDATION_ERROR", 2),
    ):
        result = cli("key", "migrate", "--to", target, "--json")
        assert result.exit_code == exit_code, (target, result.output)
        assert code in result.stderr, (target, result.stderr)
    again = KnowledgeBase.open(load_settings(home, database_url=database_url, embedder="none"))
    try:
        assert again.kms_key_uri is not None
        assert again.custody().table.counts_by_kms_key() == {again.kms_key_uri: 2}
        with pytest.raises(ValidationError, match="already under"):
            again.custody().run(again.kms_key_uri)
    finally:
        again.close()


def test_kmip_outage_through_the_cli(
    make_settings: Callable[..., Settings],
    make_cli: Callable[..., Cli],
    database_url: str,
    home: Path,
) -> None:
    pytest.importorskip("kmip")
    from tests.providers_hsm.services import kmip_server

    server = kmip_server()
    extra = server.settings()
    key_uri = provider_for(make_settings(**extra), "kmip:0").create_key("cli").key_id
    env = {**server.env(), "SEALEDKB_KMS_KEY_URI": key_uri, "SEALEDKB_EMBEDDER": "none"}
    cli = make_cli(home, database_url, env)
    assert cli("init").exit_code == 0
    added = cli("add", "kept under KMIP", "--title", "t", "--json")
    assert added.exit_code == 0, added.output
    entry_id = json.loads(added.stdout)["id"]
    server.stop()
    try:
        down = cli("get", entry_id, "--json")
        assert down.exit_code == 5 and "KEY_UNAVAILABLE" in down.stderr, down.output
    finally:
        server.start()
    up = cli("get", entry_id, "--json")
    assert up.exit_code == 0 and json.loads(up.stdout)["content"] == "kept under KMIP"


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        ({0x210A}, 0x210A),  # SoftHSM2's number for RFC 5649
        ({0x210B}, 0x210B),  # PKCS#11 3.0's number
        ({0x210A, 0x210B}, 0x210B),
    ],
)
def test_key_wrap_accepts_both_mechanism_numbers(offered: set[int], chosen: int) -> None:
    pytest.importorskip("pkcs11")
    service = pkcs11.Pkcs11Service(Path("/nonexistent.so"), lambda: "", default_token=None)
    assert int(service.kwp_mechanism(frozenset(offered))) == chosen
    with pytest.raises(KeyUnavailableError, match="0x210B or 0x210A"):
        service.kwp_mechanism(frozenset({0x1087}))
