"""Snapshots in an S3 bucket (snapshots/s3.py, objectstore.py), against moto in server
mode on 127.0.0.1: created as a multipart upload, listed, verified and restored as a
stream straight from the bucket, deleted, expired by the retention; a flipped byte
in the stored object fails verify with exit 6; an interrupted upload leaves nothing
listed (and no upload pending); a missing bucket and denied access give clear errors."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3  # the dev extra installs boto3 and moto[server] (scripts/test)
import pytest
from moto import server as moto_server
from tests.cli_helpers import Cli
from tests.integration.test_tamper_cli import expect
from tests.snapshot_helpers import SMALL_CHUNKS, add_varied

from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.snapshotting import snapshots_for
from sealedkb.snapshots import SnapshotStorageError
from sealedkb.snapshots.fileformat import SnapshotIntegrityError, read_envelope
from sealedkb.store import snapshot_io

pytest_plugins = ["tests.snapshot_fixtures"]

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in AWS_ENV.items():
            mp.setenv(k, v)
        yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"snaps-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_settings(make_settings: Callable[..., Settings], s3_endpoint: str, bucket: str) -> Settings:
    return make_settings(snapshot_bucket=bucket, snapshot_prefix="kb/", s3_endpoint_url=s3_endpoint)


def keys_in(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_create_list_verify_restore_delete_in_the_bucket(
    kb: KnowledgeBase,
    s3_settings: Settings,
    s3: Any,
    bucket: str,
    scratch_names: Callable[[], str],
) -> None:
    add_varied(kb)
    snaps = snapshots_for(s3_settings, kb, chunk_size=SMALL_CHUNKS)
    info = snaps.create(name="nightly")
    assert keys_in(s3, bucket) == [f"kb/{info.id}.snap"]
    assert not s3_settings.snapshots_dir.exists()  # nothing written locally
    assert str(info.path) == f"s3://{bucket}/kb/{info.id}.snap"
    assert [i.id for i in snaps.list()] == [info.id]
    assert snaps.info("nightly").id == info.id
    report = snaps.verify(info.id)
    assert report["ok"] and report["chunks"] > 1
    restored = snaps.restore(info.id, scratch_names())
    assert restored["ok"]
    snaps.delete(info.id)
    assert keys_in(s3, bucket) == [] and snaps.list() == []


def test_a_flipped_byte_in_the_object_fails_verify_with_exit_6(
    kb: KnowledgeBase, s3_settings: Settings, s3: Any, bucket: str, cli: Cli
) -> None:
    """The attacker edits the stored object in the bucket (a byte inside a chunk)."""
    add_varied(kb)
    snaps = snapshots_for(s3_settings, kb, chunk_size=SMALL_CHUNKS)
    info = snaps.create()
    env = read_envelope(info.path)
    key = f"kb/{info.id}.snap"
    data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[env.stream_offset + env.chunk_size + 40] ^= 0x20
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    with pytest.raises(SnapshotIntegrityError) as caught:
        snaps.verify(info.id)
    assert caught.value.exit_code == 6
    env_vars = {
        "SEALEDKB_SNAPSHOT_BUCKET": bucket,
        "SEALEDKB_SNAPSHOT_PREFIX": "kb/",
        "SEALEDKB_S3_ENDPOINT_URL": str(s3_settings.s3_endpoint_url),
        **{k: os.environ[k] for k in AWS_ENV},
    }
    expect(cli("snapshot", "verify", info.id, env=env_vars), 6)


def test_an_interrupted_upload_leaves_nothing_listed(
    kb: KnowledgeBase,
    s3_settings: Settings,
    s3: Any,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_varied(kb)
    real = snapshot_io.copy_out
    calls = []

    def dies_midway(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise ConnectionResetError("connection lost mid-snapshot")
        return real(*args, **kwargs)

    monkeypatch.setattr(snapshot_io, "copy_out", dies_midway)
    snaps = snapshots_for(s3_settings, kb, chunk_size=SMALL_CHUNKS)
    with pytest.raises(SnapshotStorageError):
        snaps.create()
    assert keys_in(s3, bucket) == []
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # aborted
    assert snaps.list() == []


def test_a_missing_bucket_and_denied_access_are_clear_errors(
    kb: KnowledgeBase,
    make_settings: Callable[..., Settings],
    s3_endpoint: str,
    s3: Any,
    bucket: str,
) -> None:
    missing = make_settings(snapshot_bucket="no-such-bucket-here", s3_endpoint_url=s3_endpoint)
    snaps = snapshots_for(missing, kb)
    with pytest.raises(SnapshotStorageError, match="no-such-bucket-here does not exist"):
        snaps.create()
    with pytest.raises(SnapshotStorageError, match="does not exist"):
        snaps.list()

    s3.put_bucket_policy(
        Bucket=bucket,
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "s3:*",
                        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                    }
                ],
            }
        ),
    )
    denied = snapshots_for(make_settings(snapshot_bucket=bucket, s3_endpoint_url=s3_endpoint), kb)
    with pytest.raises(SnapshotStorageError, match=r"access to the S3 bucket .* was denied") as e:
        denied.create()
    assert e.value.code == "SNAPSHOT_STORAGE_ERROR" and e.value.exit_code == 1
    assert keys_in(s3, bucket) == []


def test_retention_expires_automated_snapshots_in_the_bucket(
    kb: KnowledgeBase, s3_settings: Settings, s3: Any, bucket: str
) -> None:
    add_varied(kb, 3)
    ten_days_ago = datetime.now(UTC) - timedelta(days=10)
    old = snapshots_for(s3_settings, kb, now=lambda: ten_days_ago).create(kind="automated")
    snaps = snapshots_for(s3_settings, kb)
    manual = snaps.create(kind="manual")
    fresh = snaps.create(kind="automated")
    assert snaps.expire(7) == [old.id]
    assert sorted(keys_in(s3, bucket)) == sorted(f"kb/{i.id}.snap" for i in (manual, fresh))
