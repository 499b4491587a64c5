"""Audit checkpoints archived in S3 with Object Lock (audit/s3.py), against moto in
server mode: each new signed checkpoint is stored once under COMPLIANCE retention;
the attacker (holding the bucket credentials) can neither delete the locked version
nor replace it through sealedkb, and a plain overwrite only adds a version beside
the original, which stays as it was."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3  # the dev extra installs boto3 and moto[server] (scripts/test)
import pytest
from botocore import exceptions as botocore_exceptions
from moto import server as moto_server

from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.replicas import attach_checkpoint_archive
from sealedkb.model import EncryptionMode

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
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


def open_kb(make_settings: Callable[..., Settings], **s: Any) -> KnowledgeBase:
    kb, _ = KnowledgeBase.init(make_settings(**s), EncryptionMode.ON)
    return kb


def test_checkpoints_are_locked_and_cannot_be_overwritten(
    make_settings: Callable[..., Settings], s3_endpoint: str, s3: Any
) -> None:
    bucket = f"audit-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    kb = open_kb(
        make_settings,
        audit_checkpoint_bucket=bucket,
        s3_endpoint_url=s3_endpoint,
        audit_checkpoint_retention_days=2,
    )
    try:
        archive = attach_checkpoint_archive(kb)
        assert archive is not None and archive.object_lock
        kb.add("checkpointed note", title="a note")
        path = kb.audit.checkpoint()
        assert path is not None
        key = f"audit/{path.name}"
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        original = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert original == path.read_bytes()
        version = head["VersionId"]

        # sealedkb itself never writes over an archived checkpoint
        assert archive.store(path.name, b'{"forged": true}') is False
        # the attacker: delete the locked version -> refused
        with pytest.raises(botocore_exceptions.ClientError) as denied:
            s3.delete_object(Bucket=bucket, Key=key, VersionId=version)
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
        # the attacker: a plain overwrite adds a version; the original is intact
        s3.put_object(Bucket=bucket, Key=key, Body=b'{"forged": true}')
        kept = s3.get_object(Bucket=bucket, Key=key, VersionId=version)["Body"].read()
        assert kept == original
    finally:
        kb.close()


def test_a_bucket_without_object_lock_still_gets_write_once_copies(
    make_settings: Callable[..., Settings], s3_endpoint: str, s3: Any
) -> None:
    bucket = f"audit-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    kb = open_kb(make_settings, audit_checkpoint_bucket=bucket, s3_endpoint_url=s3_endpoint)
    try:
        archive = attach_checkpoint_archive(kb)
        assert archive is not None and not archive.object_lock
        kb.add("checkpointed note", title="a note")
        path = kb.audit.checkpoint()
        assert path is not None
        body = s3.get_object(Bucket=bucket, Key=f"audit/{path.name}")["Body"].read()
        assert body == path.read_bytes()
        assert archive.store(path.name, b"other") is False
    finally:
        kb.close()
