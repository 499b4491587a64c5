"""Key lifecycle end to end: rotation, disable/enable, scheduled deletion,
crypto-shredding, key policies — through the CLI and the service, on a real
PostgreSQL, with the audit trail checked along the way."""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.cli_helpers import Cli, make_cli
from tests.cli_helpers import initialised_cli as initialised_cli  # the module's cli ran init
from tests.integration.test_tamper_cli import add, expect, sql

from sealedkb.config import Settings
from sealedkb.errors import AccessDeniedError, KeyUnavailableError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.keys.local import LocalKeyProvider

SECRET = "s3cr3t-body-text"


def describe(cli: Cli, *args: str) -> dict[str, Any]:
    return json.loads(expect(cli("key", "describe", "--json", *args), 0).stdout)


def key_file(home: Path, uri: str) -> Path:
    return home / "keys" / f"{uri.removeprefix('local:key/')}.json"


def audit_events(url: str, after: int = 0) -> list[dict[str, Any]]:
    rows = sql(
        url,
        "SELECT seq, principal, action, outcome, error_code, namespace, details"
        " FROM kb_audit WHERE seq > %s ORDER BY seq",
        (after,),
    )
    keys = ("seq", "principal", "action", "outcome", "error_code", "namespace", "details")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def head(url: str) -> int:
    (r,) = sql(url, "SELECT coalesce(max(seq), 0) FROM kb_audit")
    return int(r[0])


def wrapped_versions(url: str) -> list[int]:
    rows = sql(url, "SELECT wrapped FROM kb_data_keys ORDER BY id")
    return [struct.unpack(">I", bytes(r[0])[1:5])[0] for r in rows]


# --- describe / list ------------------------------------------------------------


def test_describe_and_list(cli: Cli) -> None:
    meta = describe(cli)
    for field in (
        "key_id",
        "state",
        "created_at",
        "rotation_enabled",
        "rotation_period_days",
        "next_rotation_date",
        "versions",
        "deletion_date",
    ):
        assert field in meta
    assert meta["state"] == "Enabled" and meta["versions"] == 1
    assert meta["rotation_enabled"] is True and meta["rotation_period_days"] == 365
    assert meta["deletion_date"] is None and meta["in_use"] is True
    created = datetime.fromisoformat(meta["created_at"])
    assert datetime.fromisoformat(meta["next_rotation_date"]) == created + timedelta(days=365)
    # the same key by URI and by bare uuid; human form too
    assert describe(cli, meta["key_id"])["key_id"] == meta["key_id"]
    assert describe(cli, meta["key_id"].removeprefix("local:key/"))["key_id"] == meta["key_id"]
    assert "Enabled" in expect(cli("key", "describe"), 0).stdout
    expect(cli("key", "describe", "not-a-key"), 2)
    other = expect(cli("key", "create", "--description", "spare"), 0).stdout.strip()
    listed = json.loads(expect(cli("key", "list", "--json"), 0).stdout)
    assert {k["key_id"] for k in listed} == {meta["key_id"], other}
    assert [k["in_use"] for k in listed if k["key_id"] == other] == [False]
    assert other in expect(cli("key", "list"), 0).stdout


def test_rotation_settings(cli: Cli, home: Path) -> None:
    uri = describe(cli)["key_id"]
    for days in ("89", "2561"):
        before = key_file(home, uri).read_bytes()
        result = expect(cli("key", "rotation", "enable", "--period-days", days), 2)
        assert "90-2560" in result.output
        assert key_file(home, uri).read_bytes() == before
    meta = json.loads(
        expect(cli("key", "rotation", "enable", "--period-days", "90", "--json"), 0).stdout
    )
    assert meta["rotation_period_days"] == 90
    human = expect(cli("key", "rotation", "enable", "--period-days", "90"), 0).stdout
    assert "every 90 days" in human
    meta = json.loads(expect(cli("key", "rotation", "disable", "--json"), 0).stdout)
    assert meta["rotation_enabled"] is False and meta["next_rotation_date"] is None
    assert describe(cli)["rotation_enabled"] is False


# --- rotation -----------------------------------------------------------------------


def test_rotate_rewraps_every_data_key_with_zero_unavailability(
    cli: Cli, make_settings: Callable[..., Settings], database_url: str
) -> None:
    ids = [add(cli, f"{SECRET} {i}", "-n", f"ns{i % 3}") for i in range(9)]
    assert set(wrapped_versions(database_url)) == {1}
    n_keys = len(wrapped_versions(database_url))
    reader = KnowledgeBase.open(make_settings(data_key_max_age=1))
    stop = threading.Event()
    stats = {"reads": 0, "failures": 0}
    errors: list[str] = []

    def loop() -> None:
        while not stop.is_set():
            reader.keyring.clear()  # type: ignore[union-attr]  # unwrap on every read
            for entry_id in ids:
                try:
                    assert reader.get(entry_id).content.startswith(SECRET)
                    stats["reads"] += 1
                except Exception as exc:  # any failure is unavailability
                    stats["failures"] += 1
                    errors.append(repr(exc))

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        time.sleep(0.2)
        for version in (2, 3):
            result = json.loads(
                expect(cli("key", "rotate", "--batch-size", "1", "--json"), 0).stdout
            )
            assert result["versions"] == version
            # every data key: 4 namespaces x content, index (+ vector where entries were embedded)
            assert result["data_keys_rewrapped"] == n_keys
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
        reader.close()
    assert stats["failures"] == 0, errors[:3]
    assert stats["reads"] > len(ids)
    assert describe(cli)["versions"] == 3
    assert wrapped_versions(database_url) == [3] * n_keys  # every data key under the newest
    for entry_id in ids:
        assert SECRET in expect(cli("get", entry_id), 0).stdout
    status = json.loads(expect(cli("status", "--json"), 0).stdout)
    assert status["key_rotation"]["versions"] == 3
    assert status["data_keys_on_newest_key_version"] == n_keys
    assert "rotated" in expect(cli("key", "rotate"), 0).stdout
    # an interrupted re-wrap: one data key left on an old version, finished without
    # a new version
    old = sql(database_url, "SELECT id, wrapped FROM kb_data_keys ORDER BY id LIMIT 1")[0]
    expect(cli("key", "rotate"), 0)
    sql(database_url, "UPDATE kb_data_keys SET wrapped = %s WHERE id = %s", (old[1], old[0]))
    assert sorted(wrapped_versions(database_url))[0] == 4
    done = json.loads(expect(cli("key", "rotate", "--rewrap-only", "--json"), 0).stdout)
    assert (done["versions"], done["data_keys_rewrapped"]) == (5, 1)
    assert wrapped_versions(database_url) == [5] * n_keys
    # rotation needs an Enabled key
    expect(cli("key", "disable"), 0)
    assert "CONFLICT" in expect(cli("key", "rotate"), 1).output


def test_automatic_rotation_when_due(
    make_settings: Callable[..., Settings], kb: KnowledgeBase, database_url: str
) -> None:
    kb.add(f"{SECRET} old", namespace="a")
    start = head(database_url)
    later = datetime.now(UTC) + timedelta(days=366)
    with KnowledgeBase.open(make_settings(), now=lambda: later) as opened:
        assert opened.keys is not None
        meta = opened.keys.describe()
        assert meta["versions"] == 2
        assert datetime.fromisoformat(meta["next_rotation_date"]) == later + timedelta(days=365)
    assert set(wrapped_versions(database_url)) == {2}
    events = audit_events(database_url, start)
    assert [(e["action"], e["principal"]) for e in events] == [
        ("RotateKey", "sealedkb:system"),
        ("ReEncrypt", "sealedkb:system"),
    ]
    assert events[0]["details"] == {"version": 2, "automatic": True}
    assert events[1]["details"] == {
        "data_keys": len(wrapped_versions(database_url)),
        "to_version": 2,
    }
    # a second open at the same time does nothing
    with KnowledgeBase.open(make_settings(), now=lambda: later):
        pass
    assert head(database_url) == start + 2


# --- disable / enable ------------------------------------------------------------


def test_disable_takes_effect_within_the_cache_bound_and_recovers(
    cli: Cli, make_settings: Callable[..., Settings]
) -> None:
    entry_id = add(cli, f"{SECRET} guarded")
    served = KnowledgeBase.open(make_settings(data_key_max_age=1))  # a long-running process
    try:
        assert served.get(entry_id).content == f"{SECRET} guarded"
        expect(cli("key", "disable"), 0)
        disabled_at = time.monotonic()
        # within the bound the cached key may still serve; after it, never
        time.sleep(1.1)
        with pytest.raises(KeyUnavailableError) as exc:
            served.get(entry_id)
        assert time.monotonic() - disabled_at < 3
        assert (exc.value.code, exc.value.exit_code) == ("KEY_UNAVAILABLE", 5)
        with pytest.raises(KeyUnavailableError):
            served.list()
        with pytest.raises(KeyUnavailableError):
            served.add("new text while disabled")
        result = expect(cli("get", entry_id), 5)
        assert "KEY_UNAVAILABLE" in result.output and "Disabled" in result.output
        expect(cli("list"), 5)
        status = json.loads(expect(cli("status", "--json"), 0).stdout)
        assert status["availability"] == "inaccessible-encryption-credentials"
        assert status["key_state"] == "Disabled"
        assert served.availability()[0] == "inaccessible-encryption-credentials"
        expect(cli("key", "enable"), 0)
        # no restart: the same process recovers on its next call
        assert served.get(entry_id).content == f"{SECRET} guarded"
        assert served.availability() == ("available", None)
        assert json.loads(expect(cli("status", "--json"), 0).stdout)["availability"] == (
            "available"
        )
    finally:
        served.close()


# --- scheduled deletion ------------------------------------------------------------


def test_schedule_deletion_window_cancel_enable(cli: Cli, home: Path, database_url: str) -> None:
    entry_id = add(cli, f"{SECRET} keep me")
    uri = describe(cli)["key_id"]
    for days in ("6", "31"):
        before_file = key_file(home, uri).read_bytes()
        before_db = sql(database_url, "SELECT count(*) FROM kb_data_keys")
        result = expect(cli("key", "schedule-deletion", "--pending-window-days", days), 2)
        assert "7-30" in result.output
        assert key_file(home, uri).read_bytes() == before_file
        assert sql(database_url, "SELECT count(*) FROM kb_data_keys") == before_db
        assert describe(cli)["state"] == "Enabled"
        assert SECRET in expect(cli("get", entry_id), 0).stdout
    asked = datetime.now(UTC)
    meta = json.loads(
        expect(cli("key", "schedule-deletion", "--pending-window-days", "7", "--json"), 0).stdout
    )
    assert meta["state"] == "PendingDeletion"
    when = datetime.fromisoformat(meta["deletion_date"])
    assert abs(when - (asked + timedelta(days=7))) < timedelta(minutes=1)
    assert describe(cli)["deletion_date"] == meta["deletion_date"]
    for args in (["get", entry_id], ["list"], ["add", "more"], ["key", "rotate"]):
        code = 1 if args[0] == "key" else 5
        expect(cli(*args), code)
    assert "PendingDeletion" in expect(cli("get", entry_id), 5).output
    assert "cancel" in expect(cli("key", "enable"), 1).output
    status = json.loads(expect(cli("status", "--json"), 0).stdout)
    assert status["availability"] == "inaccessible-encryption-credentials"
    assert status["key_rotation"]["deletion_date"] == meta["deletion_date"]
    meta = json.loads(expect(cli("key", "cancel-deletion", "--json"), 0).stdout)
    assert (meta["state"], meta["deletion_date"]) == ("Disabled", None)
    expect(cli("get", entry_id), 5)
    expect(cli("key", "enable"), 0)
    assert f"{SECRET} keep me" in expect(cli("get", entry_id), 0).stdout
    # the default window is 30 days
    meta = json.loads(expect(cli("key", "schedule-deletion", "--json"), 0).stdout)
    assert abs(
        datetime.fromisoformat(meta["deletion_date"]) - (asked + timedelta(days=30))
    ) < timedelta(minutes=1)


def test_crypto_shredding_after_the_window(
    make_settings: Callable[..., Settings], kb: KnowledgeBase, home: Path, database_url: str
) -> None:
    entry = kb.add(f"{SECRET} to be shredded")
    assert kb.keys is not None
    uri = kb.kms_key_uri
    assert uri is not None
    kb.keys.rotate()  # two material versions, both must go
    kb.keys.schedule_deletion(None, 7)
    record = json.loads(key_file(home, uri).read_bytes())
    materials = [v["material"] for v in record["versions"]]
    assert len(materials) == 2

    # one day early nothing happens
    early = datetime.now(UTC) + timedelta(days=6)
    with KnowledgeBase.open(make_settings(), now=lambda: early) as opened:
        assert opened.keys is not None
        assert opened.keys.describe()["state"] == "PendingDeletion"

    later = datetime.now(UTC) + timedelta(days=7, minutes=1)
    with KnowledgeBase.open(make_settings(), now=lambda: later) as opened:
        assert opened.keys is not None
        meta = opened.keys.describe()
        assert meta["state"] == "Destroyed" and meta["deletion_date"] is None
        with pytest.raises(KeyUnavailableError):
            opened.get(entry.id)
    events = audit_events(database_url)
    destroy = [e for e in events if e["action"] == "DestroyKey"]
    assert len(destroy) == 1 and destroy[0]["principal"] == "sealedkb:system"

    # Holding the keystore files and the root key is not enough any more: no
    # material is left in any file, and forcing the state back does not help.
    for path in (home / "keys").iterdir():
        data = path.read_bytes()
        assert not any(m.encode() in data for m in materials)
    holder = LocalKeyProvider(home / "keys")  # the generated root key is in keys/
    rec = holder._load(uri)
    assert all("material" not in v for v in rec["versions"])
    rec["state"] = "Enabled"
    holder._store(rec)
    (wrapped, dk_id, ns, purpose) = sql(
        database_url,
        "SELECT wrapped, id::text, namespace, purpose FROM kb_data_keys WHERE purpose='content'",
    )[0]
    ctx = {"sealedkb:namespace": ns, "sealedkb:purpose": purpose, "sealedkb:data_key_id": dk_id}
    with pytest.raises(KeyUnavailableError, match="destroyed"):
        holder.decrypt(uri, bytes(wrapped), ctx)
    with KnowledgeBase.open(make_settings()) as reopened, pytest.raises(KeyUnavailableError):
        reopened.get(entry.id)


# --- policy -------------------------------------------------------------------------


def write_policy(tmp_path: Path, *statements: dict[str, Any]) -> Path:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"Version": "1", "Statement": list(statements)}))
    return path


ADMIN_ALL = {"Sid": "Admin", "Effect": "Allow", "Principal": "admin", "Action": "*"}


def test_policy_denies_decrypt_and_deletion(cli: Cli, tmp_path: Path, database_url: str) -> None:
    entry_id = add(cli, f"{SECRET} policy")
    policy = json.loads(expect(cli("key", "get-policy"), 0).stdout)
    assert {s["Sid"] for s in policy["Statement"]} == {"AdminManagesKey", "ServiceUsesKey"}
    # alice is not in the default policy at all
    expect(cli("--principal", "alice", "get", entry_id), 4)
    path = write_policy(
        tmp_path,
        ADMIN_ALL,
        {"Sid": "AliceAll", "Effect": "Allow", "Principal": ["alice"], "Action": "*"},
        {
            "Sid": "NoAliceRead",
            "Effect": "Deny",
            "Principal": "alice",
            "Action": ["Decrypt", "ScheduleKeyDeletion"],
        },
    )
    expect(cli("key", "put-policy", str(path)), 0)
    start = head(database_url)
    result = expect(cli("--principal", "alice", "get", entry_id), 4)
    assert "ACCESS_DENIED" in result.output and "NoAliceRead" in result.output
    events = audit_events(database_url, start)
    assert [(e["principal"], e["action"], e["outcome"], e["error_code"]) for e in events] == [
        ("alice", "Decrypt", "denied", "ACCESS_DENIED")
    ]
    expect(cli("--principal", "alice", "list"), 4)
    # what alice is allowed still works
    assert describe(cli, "--json")["state"] == "Enabled"
    expect(cli("--principal", "alice", "key", "rotation", "enable", "--period-days", "100"), 0)
    # a denied deletion changes nothing
    start = head(database_url)
    result = expect(
        cli("--principal", "alice", "key", "schedule-deletion", "--pending-window-days", "7"), 4
    )
    assert "ACCESS_DENIED" in result.output
    assert describe(cli)["state"] == "Enabled"
    assert [(e["action"], e["outcome"]) for e in audit_events(database_url, start)] == [
        ("ScheduleKeyDeletion", "denied")
    ]
    assert SECRET in expect(cli("get", entry_id), 0).stdout  # admin still reads
    # the service principal uses the key but cannot manage it
    env = {"SEALEDKB_PRINCIPAL": "sealedkb-service"}
    assert SECRET not in expect(cli("key", "disable", env=env), 4).output
    # bad input: invalid principal names, invalid policies
    expect(cli("--principal", "sealedkb:system", "get", entry_id), 2)
    expect(cli("--principal", "has space", "status"), 2)
    bad = tmp_path / "bad.json"
    bad.write_text('{"Version": "1", "Statement": [{"Effect": "Allow", "Principal": "x"}]}')
    before = json.loads(expect(cli("key", "get-policy"), 0).stdout)
    expect(cli("key", "put-policy", str(bad)), 2)
    expect(cli("key", "put-policy", str(tmp_path / "missing.json")), 2)
    # lockout check: admin may not lock itself out without saying so
    lockout = write_policy(tmp_path, {"Effect": "Allow", "Principal": "alice", "Action": "*"})
    assert "PutKeyPolicy" in expect(cli("key", "put-policy", str(lockout)), 2).output
    assert json.loads(expect(cli("key", "get-policy"), 0).stdout) == before


def test_service_principal_and_denied_service(
    make_settings: Callable[..., Settings], kb: KnowledgeBase
) -> None:
    entry = kb.add(f"{SECRET} svc")
    with KnowledgeBase.open(make_settings(), principal="sealedkb-service") as svc:
        assert svc.principal == "sealedkb-service"
        assert svc.get(entry.id).content == f"{SECRET} svc"
        assert svc.keys is not None
        with pytest.raises(AccessDeniedError):
            svc.keys.disable()
        with pytest.raises(AccessDeniedError):
            svc.keys.put_policy(None, json.dumps({"Version": "1", "Statement": []}))


def test_key_commands_need_encryption(home: Path, database_url: str) -> None:
    cli = make_cli(home, database_url)
    expect(cli("init", "--encryption", "off"), 0)
    for args in (["key", "list"], ["key", "rotate"], ["datakey", "rotate"], ["reencrypt"]):
        assert "encryption is off" in expect(cli(*args), 2).output
    expect(cli("audit", "verify"), 0)


def test_weak_passphrase_refused_unless_opted_out(home: Path, database_url: str) -> None:
    cli = make_cli(home, database_url)
    weak = {"SEALEDKB_PASSPHRASE": "x"}
    result = expect(cli("init", env=weak), 2)
    assert "too weak" in result.output and "SEALEDKB_ALLOW_WEAK_PASSPHRASE" in result.output
    assert not (home / "keys" / "root.json").exists()
    opted_out = {**weak, "SEALEDKB_ALLOW_WEAK_PASSPHRASE": "1"}
    expect(cli("init", env=opted_out), 0)
    status = json.loads(expect(cli("status", "--json", env=opted_out), 0).stdout)
    assert status["root_key_source"] == "passphrase"
    assert any("SEALEDKB_ALLOW_WEAK_PASSPHRASE" in w for w in status["warnings"])
    # without the opt-out the keystore made with it does not open
    assert "too weak" in expect(cli("add", "some text", env=weak), 2).output
