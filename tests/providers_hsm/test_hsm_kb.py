"""A knowledge base sealed under a PKCS#11 HSM key (SoftHSM2) or a KMIP server key
(PyKMIP): init with the key URI, then add, search and get; the provider's own
bookkeeping under attack; a KMIP outage and the recovery without a restart."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.cli_helpers import Cli
from tests.providers_hsm.services import KmipServer, SoftHsm

from sealedkb.config import Settings
from sealedkb.errors import IntegrityError, KeyUnavailableError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.keys.provider import KeyProvider, KeyState
from sealedkb.keys.registry import provider_for
from sealedkb.model import EncryptionMode

ANY_KEY = {"pkcs11": "pkcs11:token=t;object=o", "kmip": "kmip:0"}


def _provider(settings: Settings, scheme: str) -> KeyProvider:
    return provider_for(settings, ANY_KEY[scheme])


@pytest.fixture(params=["pkcs11", "kmip"])
def service_settings(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    if request.param == "pkcs11":
        hsm: SoftHsm = request.getfixturevalue("softhsm")
        return "pkcs11", hsm.settings()
    server: KmipServer = request.getfixturevalue("kmip_server")
    return "kmip", server.settings()


def test_init_add_search_get(
    make_settings: Callable[..., Settings], service_settings: tuple[str, dict[str, Any]]
) -> None:
    scheme, extra = service_settings
    base = make_settings(**extra)
    key_uri = _provider(base, scheme).create_key("knowledge base").key_id
    settings = make_settings(kms_key_uri=key_uri, **extra)
    kb, created = KnowledgeBase.init(settings, EncryptionMode.ON)
    try:
        assert created and kb.kms_key_uri == key_uri
        entry = kb.add("Rotate the token PIN every quarter.", title="HSM runbook")
        hits = kb.search("token PIN rotation", limit=5)
        assert entry.id in {h.id for h in hits.hits}
        assert kb.status()["kms_key_id"] == key_uri
    finally:
        kb.close()
    again = KnowledgeBase.open(settings)
    try:
        assert again.get(entry.id).content == "Rotate the token PIN every quarter."
    finally:
        again.close()


def _records(settings: Settings, scheme: str) -> list[Path]:
    return sorted((settings.keys_dir / scheme).glob("*.json"))


def test_record_edited_without_the_service_is_refused(
    make_settings: Callable[..., Settings], service_settings: tuple[str, dict[str, Any]]
) -> None:
    """The attacker holds the home folder but not the HSM: re-enabling a disabled key
    or widening its policy by editing the record fails its MAC."""
    scheme, extra = service_settings
    settings = make_settings(**extra)
    p = _provider(settings, scheme)
    key_uri = p.create_key("attacked").key_id
    _, wrapped = p.generate_data_key(key_uri, {"sealedkb:namespace": "default"})
    p.disable_key(key_uri)
    (path,) = _records(settings, scheme)
    rec = json.loads(path.read_bytes())
    rec["state"] = KeyState.ENABLED.value
    path.write_text(json.dumps(rec))
    with pytest.raises(IntegrityError):
        p.decrypt(key_uri, wrapped, {"sealedkb:namespace": "default"})
    rec["state"] = KeyState.DISABLED.value
    rec["policy"]["Statement"].append(
        {"Effect": "Allow", "Principal": ["mallory"], "Action": ["*"]}
    )
    path.write_text(json.dumps(rec))
    with pytest.raises(IntegrityError):
        p.for_principal("mallory").describe_key(key_uri)


def test_deleted_record_is_not_adopted_again(
    make_settings: Callable[..., Settings], service_settings: tuple[str, dict[str, Any]]
) -> None:
    """Deleting a disabled key's record must not bring the key back Enabled."""
    scheme, extra = service_settings
    settings = make_settings(**extra)
    p = _provider(settings, scheme)
    key_uri = p.create_key("attacked").key_id
    _, wrapped = p.generate_data_key(key_uri, {"a": "b"})
    p.disable_key(key_uri)
    for path in _records(settings, scheme):
        path.unlink()
    with pytest.raises(KeyUnavailableError):
        p.decrypt(key_uri, wrapped, {"a": "b"})


def test_pkcs11_key_made_by_the_hsm_officer_is_adopted_once(
    make_settings: Callable[..., Settings], softhsm: SoftHsm
) -> None:
    import uuid

    import pkcs11

    from sealedkb.keys.pkcs11 import Pkcs11Service

    settings = make_settings(**softhsm.settings())
    p = _provider(settings, "pkcs11")
    label = f"officer-{uuid.uuid4().hex[:8]}"
    service = p.service  # type: ignore[attr-defined]
    assert isinstance(service, Pkcs11Service)
    with service._session(softhsm.token) as (session, _):  # the officer's own tool
        a = pkcs11.Attribute
        session.generate_key(
            pkcs11.KeyType.AES,
            256,
            label=label,
            store=True,
            template={a.EXTRACTABLE: False, a.SENSITIVE: True, a.PRIVATE: True},
        )
    key_uri = f"pkcs11:token={softhsm.token};object={label}"
    kb, _ = KnowledgeBase.init(
        make_settings(kms_key_uri=key_uri, embedder="none", **softhsm.settings())
    )
    try:
        entry = kb.add("sealed under the officer's key", title="adopted")
        assert kb.get(entry.id).title == "adopted"
    finally:
        kb.close()
    meta = p.describe_key(key_uri)
    assert meta.state is KeyState.ENABLED and meta.versions == 1
    for path in _records(settings, "pkcs11"):
        path.unlink()
    with pytest.raises(KeyUnavailableError):  # adopted once: a lost record stays lost
        p.describe_key(key_uri)


def test_kmip_outage_is_key_unavailable_and_recovers(
    make_settings: Callable[..., Settings], kmip_server: KmipServer
) -> None:
    extra = kmip_server.settings()
    key_uri = _provider(make_settings(**extra), "kmip").create_key("outage").key_id
    settings = make_settings(kms_key_uri=key_uri, data_key_max_age=1.0, embedder="none", **extra)
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON)
    try:
        entry = kb.add("the key server went away", title="outage")
        kmip_server.stop()
        try:
            time.sleep(1.1)  # past the data-key cache
            with pytest.raises(KeyUnavailableError) as exc:
                kb.get(entry.id)
            assert "KMIP server" in str(exc.value)
            # A process started during the outage opens (status works) but cannot
            # read or write: the knowledge base is inaccessible-encryption-credentials.
            with KnowledgeBase.open(settings) as other:
                assert other.availability()[0] == "inaccessible-encryption-credentials"
                with pytest.raises(KeyUnavailableError):
                    other.get(entry.id)
        finally:
            kmip_server.start()
        assert kb.get(entry.id).content == "the key server went away"  # same process, no restart
    finally:
        kb.close()


def test_kmip_other_identity_cannot_use_our_key(
    make_settings: Callable[..., Settings], kmip_server: KmipServer
) -> None:
    """Another client certificate of the same CA (another CN) reaches the server but
    not our objects: the server owns objects by the certificate's identity."""
    from sealedkb.keys.kmip import KmipService

    settings = make_settings(**kmip_server.settings())
    p = _provider(settings, "kmip")
    key_uri = p.create_key("ours").key_id
    _, wrapped = p.generate_data_key(key_uri, {"a": "b"})
    uid = key_uri.removeprefix("kmip:")
    mallory = KmipService(
        "127.0.0.1",
        kmip_server.port,
        cert=kmip_server.other_cert,
        key=kmip_server.other_key,
        ca=kmip_server.ca,
        timeout=5,
    )
    try:
        with pytest.raises((KeyUnavailableError, IntegrityError)):
            mallory.unwrap(uid, wrapped[5:], b"anything")
    finally:
        mallory.close()


def test_destroy_after_the_window_shreds_the_key_objects(
    make_settings: Callable[..., Settings], service_settings: tuple[str, dict[str, Any]]
) -> None:
    """After the pending window every key object is destroyed in the service: an
    attacker who puts the old record back (replay) still cannot unwrap anything."""
    from datetime import UTC, datetime, timedelta

    scheme, extra = service_settings
    clock = [datetime.now(UTC)]
    settings = make_settings(**extra)
    p = provider_for(settings, ANY_KEY[scheme], now=lambda: clock[0])
    key_uri = p.create_key("shred me").key_id
    p.rotate_key(key_uri)  # two versions, two key objects
    ctx = {"sealedkb:namespace": "default"}
    _, wrapped = p.generate_data_key(key_uri, ctx)
    (record,) = _records(settings, scheme)
    before = record.read_bytes()
    p.schedule_key_deletion(key_uri, 7)
    clock[0] += timedelta(days=7, seconds=1)
    meta = p.destroy_key_if_due(key_uri)
    assert meta is not None and meta.state is KeyState.DESTROYED
    with pytest.raises(KeyUnavailableError) as exc:
        p.decrypt(key_uri, wrapped, ctx)
    assert exc.value.key_state == KeyState.DESTROYED.value
    record.write_bytes(before)  # the attacker's replay of the Enabled record
    with pytest.raises(KeyUnavailableError):
        p.decrypt(key_uri, wrapped, ctx)


def test_kmip_key_made_on_the_server_is_adopted_once(
    make_settings: Callable[..., Settings], kmip_server: KmipServer
) -> None:
    from kmip.core import enums
    from kmip.pie.client import ProxyKmipClient

    client = ProxyKmipClient(
        hostname="127.0.0.1",
        port=kmip_server.port,
        cert=str(kmip_server.cert),
        key=str(kmip_server.key),
        ca=str(kmip_server.ca),
        ssl_version="PROTOCOL_TLSv1_2",
        config_file=os.devnull,
    )
    with client:  # the KMIP administrator's own tool, same identity
        uid = client.create(
            enums.CryptographicAlgorithm.AES,
            256,
            cryptographic_usage_mask=[
                enums.CryptographicUsageMask.ENCRYPT,
                enums.CryptographicUsageMask.DECRYPT,
            ],
        )
        client.activate(uid)
    key_uri = f"kmip:{uid}"
    settings = make_settings(kms_key_uri=key_uri, embedder="none", **kmip_server.settings())
    kb, _ = KnowledgeBase.init(settings)
    try:
        entry = kb.add("sealed under the administrator's key", title="adopted")
        assert kb.get(entry.id).title == "adopted"
    finally:
        kb.close()
    for path in _records(settings, "kmip"):
        path.unlink()
    with pytest.raises(KeyUnavailableError):  # adopted once: a lost record stays lost
        _provider(settings, "kmip").describe_key(key_uri)


def test_key_lifecycle_through_the_cli(
    make_cli: Callable[..., Cli], database_url: str, home: Path, softhsm: SoftHsm
) -> None:
    """The key commands on a knowledge base sealed under the HSM."""
    settings = Settings(home=home, embedder="none", **softhsm.settings())
    key_uri = _provider(settings, "pkcs11").create_key("cli").key_id
    cli = make_cli(
        home,
        database_url,
        {**softhsm.env(), "SEALEDKB_EMBEDDER": "none", "SEALEDKB_KMS_KEY_URI": key_uri},
    )
    assert cli("init").exit_code == 0
    entry_id = json.loads(cli("add", "rotate me", "--title", "t", "--json").stdout)["id"]
    rotated = cli("key", "rotate", "--json")
    assert rotated.exit_code == 0, rotated.output
    assert json.loads(rotated.stdout)["versions"] == 2
    assert json.loads(rotated.stdout)["data_keys_rewrapped"] >= 2
    described = json.loads(cli("key", "describe", key_uri, "--json").stdout)
    assert described["provider"] == "pkcs11" and described["in_use"]
    assert cli("key", "disable", "--json").exit_code == 0
    refused = cli("get", entry_id)
    assert refused.exit_code == 5 and "KEY_UNAVAILABLE" in refused.stderr
    assert cli("key", "enable", "--json").exit_code == 0
    assert json.loads(cli("get", entry_id, "--json").stdout)["content"] == "rotate me"
    verify = cli("audit", "verify", "--json")
    assert verify.exit_code == 0 and json.loads(verify.stdout)["ok"], verify.output


def test_records_folder_is_private(
    make_settings: Callable[..., Settings], softhsm: SoftHsm
) -> None:
    """doctor's keys.permissions rule: keys/ and the records are the service's only."""
    import stat

    settings = make_settings(**softhsm.settings())
    _provider(settings, "pkcs11").create_key("private")
    for folder in (settings.keys_dir, settings.keys_dir / "pkcs11"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for path in _records(settings, "pkcs11"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_kmip_decrypt_failing_on_the_server_is_not_called_tampering(
    make_settings: Callable[..., Settings], kmip_server: KmipServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyKMIP's server answers a bad GCM tag and its own failures (a shutdown, its
    store) with the same "operation failed". A wrapped key the server cannot open
    while it still opens a fresh probe is tampered (IntegrityError); when it opens
    nothing, the server is failing: KEY_UNAVAILABLE, never a false integrity alarm."""
    from sealedkb.keys import kmip

    extra = kmip_server.settings()
    p = _provider(make_settings(**extra), "kmip")
    key_uri = p.create_key("refusing server").key_id
    ctx = {"sealedkb:namespace": "default"}
    _, wrapped = p.generate_data_key(key_uri, ctx)
    # the attacker's flipped byte: the server still round-trips, so it is the blob
    tampered = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    with pytest.raises(IntegrityError):
        p.decrypt(key_uri, tampered, ctx)

    def refuse(self: object, handle: str, body: bytes, aad: bytes) -> bytes:
        raise kmip._DecryptRefused

    monkeypatch.setattr(kmip.KmipService, "_decrypt", refuse)
    with pytest.raises(KeyUnavailableError) as exc:
        p.decrypt(key_uri, wrapped, ctx)
    assert "fresh probe" in exc.value.message
