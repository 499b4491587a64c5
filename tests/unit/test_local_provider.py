"""The built-in file-backed key provider (docs/DESIGN.md §4, local provider)."""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sealedkb.crypto.kdf import Argon2Params
from sealedkb.errors import (
    ConfigError,
    IntegrityError,
    KeyUnavailableError,
    NotFoundError,
    SealedKBError,
    ValidationError,
)
from sealedkb.keys.local import LocalKeyProvider, RootKeySource
from sealedkb.keys.provider import KeyProvider, KeyState

FAST = Argon2Params(time_cost=1, memory_kib=8192, parallelism=1)
CTX = {"sealedkb:namespace": "default", "sealedkb:purpose": "content"}
DK = bytes(range(32))
ROOT = bytes(range(0x40, 0x60))
PASSPHRASE = "tr0ub4dor&3 correct horse"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_key_file(path: Path, data: bytes, file_mode: int = 0o600) -> Path:
    path.write_bytes(data)
    os.chmod(path, file_mode)
    return path


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "home" / "keys"


@pytest.fixture
def provider(keys_dir: Path) -> LocalKeyProvider:
    p = LocalKeyProvider(keys_dir, RootKeySource())
    p.initialize()
    return p


def set_state(p: LocalKeyProvider, uri: str, state: KeyState) -> None:
    """Change a record's state the way the provider itself would (re-MACed)."""
    rec = p._load(uri)
    rec["state"] = state.value
    p._store(rec)


def record_path(keys_dir: Path, uri: str) -> Path:
    return keys_dir / f"{uri.removeprefix('local:key/')}.json"


# --- keystore set-up ------------------------------------------------------------


def test_initialize_generated(keys_dir: Path) -> None:
    p = LocalKeyProvider(keys_dir, RootKeySource())
    assert not p.exists()
    assert p.warnings() == []
    p.initialize()
    assert p.exists()
    assert isinstance(p, KeyProvider)
    assert mode(keys_dir) == 0o700
    root_key = keys_dir / "root.key"
    assert root_key.read_bytes() and len(root_key.read_bytes()) == 32
    assert mode(root_key) == 0o600
    assert mode(keys_dir / "root.json") == 0o600
    rec = json.loads((keys_dir / "root.json").read_text())
    assert rec["source"] == "generated"
    assert rec["kdf"] is None
    assert root_key.read_bytes().hex() not in (keys_dir / "root.json").read_text()
    assert p.root_key_source() == "generated"


def test_initialize_idempotent(keys_dir: Path) -> None:
    p = LocalKeyProvider(keys_dir, RootKeySource())
    p.initialize()
    root = (keys_dir / "root.key").read_bytes()
    root_json = (keys_dir / "root.json").read_bytes()
    uri = p.create_key("k").key_id
    p.initialize()
    LocalKeyProvider(keys_dir, RootKeySource()).initialize()
    assert (keys_dir / "root.key").read_bytes() == root
    assert (keys_dir / "root.json").read_bytes() == root_json
    assert LocalKeyProvider(keys_dir).describe_key(uri).state is KeyState.ENABLED


def test_initialize_tightens_existing_dir(keys_dir: Path) -> None:
    keys_dir.mkdir(parents=True, mode=0o755)
    os.chmod(keys_dir, 0o755)
    LocalKeyProvider(keys_dir).initialize()
    assert mode(keys_dir) == 0o700


def test_warnings_only_for_generated_root_key(tmp_path: Path) -> None:
    gen = LocalKeyProvider(tmp_path / "g", RootKeySource())
    gen.initialize()
    warnings = gen.warnings()
    assert len(warnings) == 1
    assert "development root key" in warnings[0]

    key_file = write_key_file(tmp_path / "root.bin", ROOT)
    filed = LocalKeyProvider(tmp_path / "f", RootKeySource(key_file=key_file))
    filed.initialize()
    assert filed.warnings() == []

    pw = LocalKeyProvider(tmp_path / "p", RootKeySource(passphrase=PASSPHRASE))
    pw.initialize(FAST)
    assert pw.warnings() == []


# --- key records ----------------------------------------------------------------


def test_create_and_describe(provider: LocalKeyProvider, keys_dir: Path) -> None:
    before = datetime.now(UTC)
    meta = provider.create_key("main key")
    after = datetime.now(UTC)
    assert meta.key_id.startswith("local:key/")
    uuid.UUID(meta.key_id.removeprefix("local:key/"))

    described = provider.describe_key(meta.key_id)
    assert described == meta
    assert described.state is KeyState.ENABLED
    assert described.description == "main key"
    assert described.rotation_enabled is True
    assert described.rotation_period_days == 365
    assert described.versions == 1
    assert described.deletion_date is None
    assert described.provider == "local"
    assert before - timedelta(seconds=1) <= described.created_at <= after + timedelta(seconds=1)
    assert described.next_rotation_date is not None
    assert abs(
        described.next_rotation_date - (described.created_at + timedelta(days=365))
    ) < timedelta(seconds=5)
    d = described.to_dict()
    assert d["state"] == "Enabled"
    assert d["deletion_date"] is None

    path = record_path(keys_dir, meta.key_id)
    assert path.exists()
    assert mode(path) == 0o600


def test_list_keys(provider: LocalKeyProvider) -> None:
    assert provider.list_keys() == []
    a, b = provider.create_key("a"), provider.create_key("b")
    listed = provider.list_keys()
    assert {m.key_id for m in listed} == {a.key_id, b.key_id}
    assert all(m.state is KeyState.ENABLED for m in listed)


def test_unknown_and_malformed_uris(provider: LocalKeyProvider) -> None:
    with pytest.raises(NotFoundError):
        provider.describe_key(f"local:key/{uuid.uuid4()}")
    for bad in ["aws-kms:arn:x", "local:key/not-a-uuid", "local:other/x", ""]:
        with pytest.raises(ValidationError):
            provider.describe_key(bad)


# --- encrypt / decrypt ------------------------------------------------------------


def test_encrypt_decrypt(provider: LocalKeyProvider) -> None:
    uri = provider.create_key().key_id
    blob = provider.encrypt(uri, DK, CTX)
    assert DK not in blob
    assert provider.encrypt(uri, DK, CTX) != blob
    assert provider.decrypt(uri, blob, CTX) == DK
    assert provider.decrypt(uri, blob, dict(reversed(list(CTX.items())))) == DK
    # A fresh instance (another process) opens it too.
    assert LocalKeyProvider(provider.keys_dir).decrypt(uri, blob, CTX) == DK


@pytest.mark.parametrize(
    "ctx",
    [
        {},
        {"sealedkb:namespace": "other", "sealedkb:purpose": "content"},
        {"sealedkb:namespace": "default", "sealedkb:purpose": "index"},
        {"sealedkb:namespace": "default"},
        {**CTX, "extra": "x"},
    ],
)
def test_decrypt_other_context(provider: LocalKeyProvider, ctx: dict[str, str]) -> None:
    uri = provider.create_key().key_id
    blob = provider.encrypt(uri, DK, CTX)
    with pytest.raises(IntegrityError) as exc:
        provider.decrypt(uri, blob, ctx)
    assert DK.hex() not in str(exc.value)


def test_decrypt_under_other_key(provider: LocalKeyProvider) -> None:
    a, b = provider.create_key().key_id, provider.create_key().key_id
    blob = provider.encrypt(a, DK, CTX)
    with pytest.raises(IntegrityError):
        provider.decrypt(b, blob, CTX)


def test_decrypt_flipped_byte(provider: LocalKeyProvider) -> None:
    uri = provider.create_key().key_id
    blob = provider.encrypt(uri, DK, CTX)
    positions = [0, *range(5, len(blob))]  # 1..4, the version field: tested below
    for pos in positions:
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises(IntegrityError):
            provider.decrypt(uri, bytes(bad), CTX)
    for bad_blob in [b"", blob[:4], blob[:-1], blob + b"\x00"]:
        with pytest.raises(IntegrityError):
            provider.decrypt(uri, bad_blob, CTX)


@pytest.mark.parametrize("pos", [1, 2, 3, 4])
def test_decrypt_flipped_version_field(provider: LocalKeyProvider, pos: int) -> None:
    uri = provider.create_key().key_id
    blob = bytearray(provider.encrypt(uri, DK, CTX))
    blob[pos] ^= 0x01
    with pytest.raises(IntegrityError):
        provider.decrypt(uri, bytes(blob), CTX)


# --- root key sources -------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [ROOT, ROOT.hex().encode(), ROOT.hex().encode() + b"\n", ROOT.hex().upper().encode()],
    ids=["raw", "hex", "hex-newline", "hex-upper"],
)
def test_root_key_file(tmp_path: Path, content: bytes) -> None:
    key_file = write_key_file(tmp_path / "root.bin", content)
    keys_dir = tmp_path / "keys"
    p = LocalKeyProvider(keys_dir, RootKeySource(key_file=key_file))
    p.initialize()
    assert not (keys_dir / "root.key").exists()
    assert json.loads((keys_dir / "root.json").read_text())["source"] == "file"
    assert p.root_key_source() == "file"
    uri = p.create_key().key_id
    blob = p.encrypt(uri, DK, CTX)
    # The same root key in another encoding opens the same keystore.
    raw_file = write_key_file(tmp_path / "raw.bin", ROOT)
    other = LocalKeyProvider(keys_dir, RootKeySource(key_file=raw_file))
    assert other.decrypt(uri, blob, CTX) == DK
    # Without a source, the keystore says what it needs.
    with pytest.raises(KeyUnavailableError, match="SEALEDKB_ROOT_KEY_FILE"):
        LocalKeyProvider(keys_dir).describe_key(uri)


@pytest.mark.parametrize("file_mode", [0o644, 0o640, 0o604, 0o660])
def test_root_key_file_too_open(tmp_path: Path, file_mode: int) -> None:
    key_file = write_key_file(tmp_path / "root.bin", ROOT, file_mode)
    p = LocalKeyProvider(tmp_path / "keys", RootKeySource(key_file=key_file))
    with pytest.raises(ConfigError) as exc:
        p.initialize()
    assert ROOT.hex() not in str(exc.value)
    assert not (tmp_path / "keys" / "root.json").exists()


@pytest.mark.parametrize("content", [b"", b"short", ROOT[:31], ROOT + b"x", b"zz" * 32])
def test_root_key_file_bad_content(tmp_path: Path, content: bytes) -> None:
    key_file = write_key_file(tmp_path / "root.bin", content)
    with pytest.raises(ConfigError):
        LocalKeyProvider(tmp_path / "keys", RootKeySource(key_file=key_file)).initialize()


def test_root_key_file_missing(tmp_path: Path) -> None:
    p = LocalKeyProvider(tmp_path / "keys", RootKeySource(key_file=tmp_path / "nope"))
    # A configured root key that is not there is a key outage (exit 5), not a usage error.
    with pytest.raises(KeyUnavailableError, match="not found"):
        p.initialize()


def test_wrong_root_key_file(tmp_path: Path) -> None:
    right = write_key_file(tmp_path / "right.bin", ROOT)
    wrong_root = bytes(32)
    wrong = write_key_file(tmp_path / "wrong.bin", wrong_root)
    keys_dir = tmp_path / "keys"
    p = LocalKeyProvider(keys_dir, RootKeySource(key_file=right))
    p.initialize()
    uri = p.create_key().key_id
    blob = p.encrypt(uri, DK, CTX)

    for call in (
        lambda q: q.initialize(),
        lambda q: q.describe_key(uri),
        lambda q: q.decrypt(uri, blob, CTX),
        lambda q: q.create_key(),
    ):
        q = LocalKeyProvider(keys_dir, RootKeySource(key_file=wrong))
        with pytest.raises(KeyUnavailableError, match="wrong root key") as exc:
            call(q)
        for secret in (ROOT.hex(), wrong_root.hex()):
            assert secret not in str(exc.value)


def test_passphrase(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    p = LocalKeyProvider(keys_dir, RootKeySource(passphrase=PASSPHRASE))
    p.initialize(FAST)
    rec = json.loads((keys_dir / "root.json").read_text())
    assert rec["source"] == "passphrase"
    assert rec["kdf"]["name"] == "argon2id"
    assert (rec["kdf"]["t"], rec["kdf"]["m"], rec["kdf"]["p"]) == (1, 8192, 1)
    assert PASSPHRASE not in (keys_dir / "root.json").read_text()
    assert not (keys_dir / "root.key").exists()
    uri = p.create_key().key_id
    blob = p.encrypt(uri, DK, CTX)

    again = LocalKeyProvider(keys_dir, RootKeySource(passphrase=PASSPHRASE))
    assert again.decrypt(uri, blob, CTX) == DK
    assert again.root_key_source() == "passphrase"

    wrong = LocalKeyProvider(keys_dir, RootKeySource(passphrase=PASSPHRASE + "!"))
    with pytest.raises(KeyUnavailableError, match="wrong root key") as exc:
        wrong.decrypt(uri, blob, CTX)
    assert PASSPHRASE not in str(exc.value)

    with pytest.raises(KeyUnavailableError, match="SEALEDKB_PASSPHRASE") as exc:
        LocalKeyProvider(keys_dir).describe_key(uri)


def test_passphrase_on_non_passphrase_keystore(provider: LocalKeyProvider) -> None:
    uri = provider.create_key().key_id
    p = LocalKeyProvider(provider.keys_dir, RootKeySource(passphrase=PASSPHRASE))
    with pytest.raises(KeyUnavailableError) as exc:
        p.describe_key(uri)
    assert PASSPHRASE not in str(exc.value)


def test_generated_root_key_deleted(provider: LocalKeyProvider) -> None:
    uri = provider.create_key().key_id
    blob = provider.encrypt(uri, DK, CTX)
    (provider.keys_dir / "root.key").unlink()
    fresh = LocalKeyProvider(provider.keys_dir)
    with pytest.raises(KeyUnavailableError, match=r"root\.key"):
        fresh.decrypt(uri, blob, CTX)
    with pytest.raises(KeyUnavailableError):
        fresh.initialize()  # never silently replaces a lost root key
    assert not (provider.keys_dir / "root.key").exists()


def test_generated_root_key_replaced(provider: LocalKeyProvider) -> None:
    uri = provider.create_key().key_id
    write_key_file(provider.keys_dir / "root.key", bytes(32))
    with pytest.raises(KeyUnavailableError, match="wrong root key"):
        LocalKeyProvider(provider.keys_dir).describe_key(uri)


def test_no_keystore(tmp_path: Path) -> None:
    with pytest.raises(KeyUnavailableError):
        LocalKeyProvider(tmp_path / "keys").create_key()


# --- record integrity and key state -------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("state", "Disabled"),
        ("state", "PendingDeletion"),
        ("rotation_period_days", 90),
        ("rotation_enabled", False),
        ("description", "edited"),
        ("deletion_date", "2030-01-01T00:00:00+00:00"),
    ],
)
def test_tampered_record(provider: LocalKeyProvider, field: str, value: object) -> None:
    uri = provider.create_key().key_id
    blob = provider.encrypt(uri, DK, CTX)
    path = record_path(provider.keys_dir, uri)
    rec = json.loads(path.read_text())
    rec[field] = value
    path.write_text(json.dumps(rec))  # mac left as it was
    for call in (
        lambda: provider.describe_key(uri),
        lambda: provider.encrypt(uri, DK, CTX),
        lambda: provider.decrypt(uri, blob, CTX),
        lambda: provider.list_keys(),
    ):
        with pytest.raises(IntegrityError):
            call()


def test_record_reformatted_still_valid(provider: LocalKeyProvider) -> None:
    """The MAC covers the content, not the file's formatting."""
    uri = provider.create_key().key_id
    path = record_path(provider.keys_dir, uri)
    path.write_text(json.dumps(json.loads(path.read_text()), indent=4))
    assert provider.describe_key(uri).state is KeyState.ENABLED


def test_record_mac_removed(provider: LocalKeyProvider) -> None:
    uri = provider.create_key().key_id
    path = record_path(provider.keys_dir, uri)
    rec = json.loads(path.read_text())
    del rec["mac"]
    path.write_text(json.dumps(rec))
    with pytest.raises(IntegrityError):
        provider.describe_key(uri)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda rec: {**rec, "mac": "not base64!"},
        lambda rec: {**rec, "mac": None},
        lambda rec: {**rec, "mac": 5},
        lambda rec: [rec],
    ],
    ids=["mac-not-base64", "mac-null", "mac-number", "record-is-array"],
)
def test_record_malformed(provider: LocalKeyProvider, mutate: Callable[[Any], Any]) -> None:
    uri = provider.create_key().key_id
    path = record_path(provider.keys_dir, uri)
    path.write_text(json.dumps(mutate(json.loads(path.read_text()))))
    with pytest.raises(IntegrityError):
        provider.describe_key(uri)


@pytest.mark.parametrize("check", [None, "not base64!"], ids=["missing", "not-base64"])
def test_root_json_damaged_check(provider: LocalKeyProvider, check: str | None) -> None:
    uri = provider.create_key().key_id
    path = provider.keys_dir / "root.json"
    rec = json.loads(path.read_text())
    if check is None:
        del rec["check"]
    else:
        rec["check"] = check
    path.write_text(json.dumps(rec))
    with pytest.raises(KeyUnavailableError):
        LocalKeyProvider(provider.keys_dir).describe_key(uri)


def test_root_json_not_json(provider: LocalKeyProvider) -> None:
    uri = provider.create_key().key_id
    (provider.keys_dir / "root.json").write_text("{oops")
    with pytest.raises(KeyUnavailableError, match="damaged"):
        LocalKeyProvider(provider.keys_dir).describe_key(uri)


def test_record_damaged_json(provider: LocalKeyProvider) -> None:
    uri = provider.create_key().key_id
    record_path(provider.keys_dir, uri).write_text("{not json")
    with pytest.raises(IntegrityError):
        provider.describe_key(uri)


def test_record_moved_to_other_key(provider: LocalKeyProvider) -> None:
    a, b = provider.create_key().key_id, provider.create_key().key_id
    blob = provider.encrypt(b, DK, CTX)
    pa, pb = record_path(provider.keys_dir, a), record_path(provider.keys_dir, b)
    pb.write_bytes(pa.read_bytes())  # key a's record under key b's name
    with pytest.raises(IntegrityError):
        provider.describe_key(b)
    with pytest.raises(IntegrityError):
        provider.decrypt(b, blob, CTX)


def test_material_sealed_under_root_key(provider: LocalKeyProvider) -> None:
    """A record MACed correctly but with another key's material does not open."""
    a, b = provider.create_key().key_id, provider.create_key().key_id
    rec_a, rec_b = provider._load(a), provider._load(b)
    rec_b["versions"] = rec_a["versions"]  # material bound to key a's id
    provider._store(rec_b)
    fresh = LocalKeyProvider(provider.keys_dir)
    with pytest.raises(KeyUnavailableError):
        fresh.encrypt(b, DK, CTX)


@pytest.mark.parametrize("state", [KeyState.DISABLED, KeyState.PENDING_DELETION])
def test_unusable_states(provider: LocalKeyProvider, state: KeyState) -> None:
    uri = provider.create_key().key_id
    blob = provider.encrypt(uri, DK, CTX)
    assert provider.decrypt(uri, blob, CTX) == DK  # material now cached in memory
    set_state(LocalKeyProvider(provider.keys_dir), uri, state)  # "another process"
    meta = provider.describe_key(uri)
    assert meta.state is state
    assert meta.next_rotation_date is None
    with pytest.raises(KeyUnavailableError, match=state.value):
        provider.encrypt(uri, DK, CTX)
    with pytest.raises(KeyUnavailableError, match=state.value):
        provider.decrypt(uri, blob, CTX)
    set_state(provider, uri, KeyState.ENABLED)
    assert provider.decrypt(uri, blob, CTX) == DK


# --- no secrets in messages ---------------------------------------------------------


def test_no_secrets_in_error_messages(tmp_path: Path) -> None:
    root_file = write_key_file(tmp_path / "root.bin", ROOT.hex().encode())
    keys_dir = tmp_path / "keys"
    p = LocalKeyProvider(keys_dir, RootKeySource(key_file=root_file))
    p.initialize()
    uri = p.create_key().key_id
    blob = p.encrypt(uri, DK, CTX)

    pw_dir = tmp_path / "pw"
    LocalKeyProvider(pw_dir, RootKeySource(passphrase=PASSPHRASE)).initialize(FAST)
    pw_uri = LocalKeyProvider(pw_dir, RootKeySource(passphrase=PASSPHRASE)).create_key().key_id

    wrong_file = write_key_file(tmp_path / "wrong.bin", bytes(range(32)).hex().encode())
    open_file = write_key_file(tmp_path / "open.bin", ROOT.hex().encode(), 0o644)
    messages: list[str] = []

    def collect(call: object) -> None:
        with pytest.raises(SealedKBError) as exc:
            call()  # type: ignore[operator]
        messages.append(str(exc.value))
        messages.append(json.dumps(exc.value.to_dict()))

    collect(
        lambda: LocalKeyProvider(keys_dir, RootKeySource(key_file=wrong_file)).decrypt(
            uri, blob, CTX
        )
    )
    collect(
        lambda: LocalKeyProvider(keys_dir, RootKeySource(key_file=open_file)).decrypt(
            uri, blob, CTX
        )
    )
    collect(lambda: LocalKeyProvider(keys_dir).decrypt(uri, blob, CTX))
    collect(lambda: p.decrypt(uri, blob, {"other": "ctx"}))
    collect(lambda: p.decrypt(uri, blob[:-1], CTX))
    collect(
        lambda: LocalKeyProvider(pw_dir, RootKeySource(passphrase=PASSPHRASE[::-1])).describe_key(
            pw_uri
        )
    )
    collect(lambda: LocalKeyProvider(pw_dir).describe_key(pw_uri))
    collect(
        lambda: LocalKeyProvider(keys_dir, RootKeySource(passphrase=PASSPHRASE)).describe_key(uri)
    )
    set_state(p, uri, KeyState.DISABLED)
    collect(lambda: p.decrypt(uri, blob, CTX))

    assert len(messages) == 18
    for msg in messages:
        for secret in (ROOT.hex(), ROOT.hex().upper(), PASSPHRASE, DK.hex(), "tr0ub4dor"):
            assert secret not in msg, msg
