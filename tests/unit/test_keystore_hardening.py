"""Attacks on the local keystore's root record and a weak passphrase.

- A passphrase below the strength floor is refused unless the operator opts out
  (SEALEDKB_ALLOW_WEAK_PASSPHRASE), and the opt-out shows as a warning.
- root.json's Argon2id cost is bounded before Argon2 runs (a forged huge cost must
  not exhaust memory, a tiny one must not weaken the keystore) and, with the
  source and the rest of the record, authenticated by a MAC under the root key
  (format 2). A format 1 record, written before that MAC existed, still opens and
  is upgraded in place.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from sealedkb.config import Settings
from sealedkb.crypto.kdf import Argon2Params, argon2id, hkdf, hmac_sha256
from sealedkb.errors import (
    ConfigError,
    IntegrityError,
    KeyUnavailableError,
    SealedKBError,
    ValidationError,
)
from sealedkb.keys import local
from sealedkb.keys.local import LocalKeyProvider, RootKeySource, canonical_json
from sealedkb.keys.provider import keystore_of
from sealedkb.keys.registry import provider_for

FAST = Argon2Params(time_cost=1, memory_kib=8192, parallelism=1)
PASSPHRASE = "correct horse battery staple"
ROOT = bytes(range(0x40, 0x60))
CTX = {"sealedkb:namespace": "default", "sealedkb:purpose": "content"}


def read_root(keys_dir: Path) -> dict[str, Any]:
    rec: dict[str, Any] = json.loads((keys_dir / "root.json").read_bytes())
    return rec


def write_root(keys_dir: Path, rec: dict[str, Any]) -> None:
    (keys_dir / "root.json").write_text(json.dumps(rec))


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def pw_keystore(keys_dir: Path) -> str:
    """A passphrase keystore with one key; returns its key URI."""
    p = LocalKeyProvider(keys_dir, RootKeySource(passphrase=PASSPHRASE))
    p.initialize(FAST)
    return p.create_key("k").key_id


@pytest.fixture
def no_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2 must not even start on a forged cost."""

    def refuse(*_args: object) -> bytes:
        raise AssertionError("Argon2id ran with unchecked parameters")

    monkeypatch.setattr(local, "argon2id", refuse)


# --- passphrase strength floor ------------------------------------------------------


@pytest.mark.parametrize("weak", ["x", "hunter2", "a" * 11])
def test_weak_passphrase_refused_at_init(keys_dir: Path, weak: str) -> None:
    p = LocalKeyProvider(keys_dir, RootKeySource(passphrase=weak))
    with pytest.raises(ConfigError) as exc:
        p.initialize(FAST)
    assert exc.value.field == "passphrase"
    assert exc.value.exit_code == 2
    assert "SEALEDKB_ALLOW_WEAK_PASSPHRASE" in exc.value.message
    assert weak not in exc.value.message
    assert not (keys_dir / "root.json").exists()  # nothing was created


def test_one_character_passphrase_refused_through_settings(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, passphrase="x", embedder="none")  # type: ignore[arg-type]
    keystore = keystore_of(provider_for(settings))
    assert keystore is not None
    with pytest.raises(ConfigError, match="too weak"):
        keystore.initialize()


def test_floor_is_twelve_characters(keys_dir: Path) -> None:
    p = LocalKeyProvider(keys_dir, RootKeySource(passphrase="a1b2c3d4e5f6"))
    p.initialize(FAST)
    assert p.root_key_source() == "passphrase"
    assert p.warnings() == []


def test_weak_passphrase_with_opt_out_is_visible(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        passphrase="x",  # type: ignore[arg-type]
        allow_weak_passphrase=True,
        embedder="none",
    )
    provider = provider_for(settings)
    keystore = keystore_of(provider)
    assert keystore is not None
    keystore.initialize()
    uri = provider.create_key().key_id
    (warning,) = keystore.warnings()
    assert "SEALEDKB_ALLOW_WEAK_PASSPHRASE" in warning
    # the floor also guards opening: without the opt-out the weak passphrase is refused
    strict = provider_for(Settings(home=tmp_path, passphrase="x", embedder="none"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="too weak"):
        strict.describe_key(uri)
    assert provider_for(settings).describe_key(uri).key_id == uri


def test_opt_out_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEALEDKB_ALLOW_WEAK_PASSPHRASE", "1")
    monkeypatch.setenv("SEALEDKB_PASSPHRASE", "short")
    settings = Settings(home=tmp_path, embedder="none")
    assert settings.allow_weak_passphrase
    keystore = keystore_of(provider_for(settings))
    assert keystore is not None
    keystore.initialize()
    assert any("SEALEDKB_ALLOW_WEAK_PASSPHRASE" in w for w in keystore.warnings())


# --- Argon2id cost: bounded before use ----------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("m", 2**40),  # huge memory: would exhaust the machine
        ("m", 4 * 1024 * 1024),  # 4 GiB: just over the bound
        ("m", 8),  # tiny memory: a cheap guess per passphrase
        ("m", 0),
        ("m", -1),
        ("t", 10**6),  # huge time
        ("t", 0),
        ("p", 0),
        ("p", 2**24),
        ("m", "65536"),
        ("m", True),
        ("m", 8192.5),
        ("m", None),
        ("name", "argon2i"),
        ("salt", base64.b64encode(b"short").decode()),
        ("salt", "not base64!"),
    ],
)
def test_forged_argon2_cost_refused_cleanly(
    keys_dir: Path, pw_keystore: str, no_argon2: None, field: str, value: object
) -> None:
    rec = read_root(keys_dir)
    rec["kdf"][field] = value
    write_root(keys_dir, rec)
    with pytest.raises(IntegrityError, match="Argon2id parameters") as exc:
        LocalKeyProvider(keys_dir, RootKeySource(passphrase=PASSPHRASE)).describe_key(pw_keystore)
    assert PASSPHRASE not in str(exc.value)


def test_forged_cost_refused_whatever_opens_the_keystore(
    keys_dir: Path, pw_keystore: str, no_argon2: None
) -> None:
    rec = read_root(keys_dir)
    rec["kdf"]["m"] = 2**40
    write_root(keys_dir, rec)
    with pytest.raises(IntegrityError):
        LocalKeyProvider(keys_dir).describe_key(pw_keystore)  # no passphrase given


def test_kdf_missing_fields(keys_dir: Path, pw_keystore: str, no_argon2: None) -> None:
    rec = read_root(keys_dir)
    del rec["kdf"]["m"]
    write_root(keys_dir, rec)
    with pytest.raises(IntegrityError):
        LocalKeyProvider(keys_dir, RootKeySource(passphrase=PASSPHRASE)).describe_key(pw_keystore)
    rec["kdf"] = "argon2id"
    write_root(keys_dir, rec)
    with pytest.raises(IntegrityError):
        LocalKeyProvider(keys_dir, RootKeySource(passphrase=PASSPHRASE)).describe_key(pw_keystore)


def test_in_bounds_forged_cost_does_not_open(keys_dir: Path, pw_keystore: str) -> None:
    """A cost edited within the bounds derives another root key: refused as a wrong
    root key (Argon2 cannot tell an edited cost from a wrong passphrase)."""
    rec = read_root(keys_dir)
    rec["kdf"]["m"] = 8200
    write_root(keys_dir, rec)
    with pytest.raises(KeyUnavailableError, match="wrong root key"):
        LocalKeyProvider(keys_dir, RootKeySource(passphrase=PASSPHRASE)).describe_key(pw_keystore)


@pytest.mark.parametrize(
    "params",
    [
        Argon2Params(time_cost=1, memory_kib=8, parallelism=1),
        Argon2Params(time_cost=0, memory_kib=8192, parallelism=1),
        Argon2Params(time_cost=1, memory_kib=8 * 1024 * 1024, parallelism=1),
        Argon2Params(time_cost=1, memory_kib=8192, parallelism=64),
    ],
)
def test_initialize_refuses_out_of_bounds_cost(keys_dir: Path, params: Argon2Params) -> None:
    p = LocalKeyProvider(keys_dir, RootKeySource(passphrase=PASSPHRASE))
    with pytest.raises(ValidationError, match="Argon2id"):
        p.initialize(params)
    assert not (keys_dir / "root.json").exists()


# --- root.json authenticated (format 2) -------------------------------------------------


def test_new_root_record_is_format_2_with_mac(keys_dir: Path, pw_keystore: str) -> None:
    rec = read_root(keys_dir)
    assert rec["format"] == 2
    assert set(rec) == {"format", "source", "kdf", "check", "created_at", "mac"}
    assert rec["kdf"] == {"name": "argon2id", "salt": rec["kdf"]["salt"], "t": 1, "m": 8192, "p": 1}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source", "passphrase"),
        ("source", "generated"),
        ("created_at", "2020-01-01T00:00:00+00:00"),
        (
            "kdf",
            {
                "name": "argon2id",
                "salt": base64.b64encode(b"s" * 16).decode(),
                "t": 1,
                "m": 8192,
                "p": 1,
            },
        ),
        ("extra", "field"),
    ],
)
def test_edited_root_record_fails_integrity_check(
    tmp_path: Path, field: str, value: object
) -> None:
    """With a key file the root key opens whatever root.json says, so every other
    field is the MAC's to protect (e.g. 'source' decides the custody warning)."""
    key_file = tmp_path / "root.bin"
    key_file.write_bytes(ROOT)
    os.chmod(key_file, 0o600)
    keys_dir = tmp_path / "keys"
    p = LocalKeyProvider(keys_dir, RootKeySource(key_file=key_file))
    p.initialize()
    uri = p.create_key().key_id
    rec = read_root(keys_dir)
    rec[field] = value
    write_root(keys_dir, rec)
    with pytest.raises(IntegrityError, match=r"root\.json failed its integrity check"):
        LocalKeyProvider(keys_dir, RootKeySource(key_file=key_file)).describe_key(uri)


@pytest.mark.parametrize("mac", [None, "", "not base64!", base64.b64encode(bytes(32)).decode()])
def test_root_record_mac_missing_or_forged(
    keys_dir: Path, pw_keystore: str, mac: str | None
) -> None:
    rec = read_root(keys_dir)
    if mac is None:
        del rec["mac"]
    else:
        rec["mac"] = mac
    write_root(keys_dir, rec)
    with pytest.raises(IntegrityError):
        LocalKeyProvider(keys_dir, RootKeySource(passphrase=PASSPHRASE)).describe_key(pw_keystore)


def test_downgrade_to_format_1_refused(keys_dir: Path, pw_keystore: str) -> None:
    """Turning a format 2 record back into format 1 (to drop its MAC) leaves a check
    value that format 1 does not accept."""
    rec = read_root(keys_dir)
    del rec["mac"]
    rec["format"] = 1
    write_root(keys_dir, rec)
    with pytest.raises(KeyUnavailableError):
        LocalKeyProvider(keys_dir, RootKeySource(passphrase=PASSPHRASE)).describe_key(pw_keystore)


@pytest.mark.parametrize("fmt", [0, 3, "2", None, True, 2.0])
def test_unknown_root_format(keys_dir: Path, pw_keystore: str, fmt: object) -> None:
    rec = read_root(keys_dir)
    rec["format"] = fmt
    write_root(keys_dir, rec)
    with pytest.raises(IntegrityError, match="format"):
        LocalKeyProvider(keys_dir, RootKeySource(passphrase=PASSPHRASE)).describe_key(pw_keystore)


def test_root_record_not_an_object(keys_dir: Path, pw_keystore: str) -> None:
    (keys_dir / "root.json").write_text("[1, 2]")
    with pytest.raises(KeyUnavailableError, match="damaged"):
        LocalKeyProvider(keys_dir, RootKeySource(passphrase=PASSPHRASE)).describe_key(pw_keystore)


# --- format 1 keystores keep opening, upgraded in place ---------------------------------


def _as_format_1(keys_dir: Path, root: bytes) -> None:
    """Rewrite root.json exactly as sealedkb wrote it before format 2 (FORMATS.md §8)."""
    rec = read_root(keys_dir)
    mac_key = hkdf(root, b"sealedkb/keystore/v1/mac")
    old = {
        "format": 1,
        "source": rec["source"],
        "kdf": rec["kdf"],
        "check": base64.b64encode(hmac_sha256(mac_key, b"sealedkb/keystore/v1/check")).decode(),
        "created_at": rec["created_at"],
    }
    (keys_dir / "root.json").write_bytes(canonical_json(old))


@pytest.mark.parametrize("kind", ["generated", "file", "passphrase"])
def test_format_1_keystore_opens_and_is_upgraded(tmp_path: Path, kind: str) -> None:
    keys_dir = tmp_path / "keys"
    key_file = tmp_path / "root.bin"
    key_file.write_bytes(ROOT)
    os.chmod(key_file, 0o600)
    source = {
        "generated": RootKeySource(),
        "file": RootKeySource(key_file=key_file),
        "passphrase": RootKeySource(passphrase=PASSPHRASE),
    }[kind]
    p = LocalKeyProvider(keys_dir, source)
    p.initialize(FAST)
    uri = p.create_key().key_id
    dk, wrapped = p.generate_data_key(uri, CTX)
    if kind == "generated":
        root = (keys_dir / "root.key").read_bytes()
    elif kind == "file":
        root = ROOT
    else:
        kdf = read_root(keys_dir)["kdf"]
        root = argon2id(
            PASSPHRASE.encode(), base64.b64decode(kdf["salt"]), Argon2Params.from_dict(kdf)
        )
    _as_format_1(keys_dir, root)
    before = read_root(keys_dir)

    opened = LocalKeyProvider(keys_dir, source)
    assert opened.decrypt(uri, wrapped, CTX) == dk
    after = read_root(keys_dir)
    assert after["format"] == 2 and "mac" in after
    assert {k: after[k] for k in ("source", "kdf", "created_at")} == {
        k: before[k] for k in ("source", "kdf", "created_at")
    }
    upgraded = (keys_dir / "root.json").read_bytes()
    # the upgraded record opens, and opening it again changes nothing
    assert LocalKeyProvider(keys_dir, source).decrypt(uri, wrapped, CTX) == dk
    assert (keys_dir / "root.json").read_bytes() == upgraded
    assert (keys_dir / "root.json").stat().st_mode & 0o777 == 0o600
    # and it is now authenticated: an edit is caught
    after["created_at"] = "2020-01-01T00:00:00+00:00"
    write_root(keys_dir, after)
    with pytest.raises(SealedKBError):
        LocalKeyProvider(keys_dir, source).decrypt(uri, wrapped, CTX)


def test_format_1_with_wrong_root_key_is_not_upgraded(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    p = LocalKeyProvider(keys_dir)
    p.initialize()
    uri = p.create_key().key_id
    _as_format_1(keys_dir, (keys_dir / "root.key").read_bytes())
    before = (keys_dir / "root.json").read_bytes()
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(bytes(32))
    os.chmod(wrong, 0o600)
    with pytest.raises(KeyUnavailableError, match="wrong root key"):
        LocalKeyProvider(keys_dir, RootKeySource(key_file=wrong)).describe_key(uri)
    assert (keys_dir / "root.json").read_bytes() == before


def test_tampered_root_record_reported_on_first_use(keys_dir: Path, pw_keystore: str) -> None:
    """Switching principal never fails on a bad root.json; the first key call does."""
    rec = read_root(keys_dir)
    rec["kdf"]["m"] = 2**40
    write_root(keys_dir, rec)
    p = LocalKeyProvider(keys_dir, RootKeySource(passphrase=PASSPHRASE))
    system = p.for_principal("sealedkb:system")
    with pytest.raises(IntegrityError):
        system.describe_key(pw_keystore)


def test_custody_warning_follows_the_verified_source(keys_dir: Path) -> None:
    """Relabelling a development keystore as 'file' cannot hide its warning from a
    provider that has opened it (the source it reports is the MAC-verified one)."""
    p = LocalKeyProvider(keys_dir)
    p.initialize()
    uri = p.create_key().key_id
    fresh = LocalKeyProvider(keys_dir)
    fresh.describe_key(uri)
    rec = read_root(keys_dir)
    rec["source"] = "file"
    write_root(keys_dir, rec)
    assert any("development root key" in w for w in fresh.warnings())
    with pytest.raises(KeyUnavailableError, match="SEALEDKB_ROOT_KEY_FILE"):
        LocalKeyProvider(keys_dir).describe_key(uri)  # it now asks for a key file
    # and with the key file, the edit is caught by the record MAC
    key_file = keys_dir.parent / "root.bin"
    key_file.write_bytes((keys_dir / "root.key").read_bytes())
    os.chmod(key_file, 0o600)
    with pytest.raises(IntegrityError):
        LocalKeyProvider(keys_dir, RootKeySource(key_file=key_file)).describe_key(uri)
