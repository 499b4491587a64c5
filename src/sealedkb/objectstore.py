"""S3-compatible object storage (boto3), for snapshots (snapshots/s3.py) and, later,
audit checkpoints: streaming multipart writes that are aborted on failure (nothing
half-visible), streaming ranged reads, listing and deletion, and clear errors with
stable reasons for a missing bucket or denied access.

Any S3-compatible endpoint works (``SEALEDKB_S3_ENDPOINT_URL``); credentials come
from boto3's standard chain (environment, shared files, instance role). boto3 is the
optional extra ``s3``; it is imported only when a bucket is configured.

Nothing here logs object contents, keys or credentials.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from sealedkb.errors import ConfigError, SealedKBError

__all__ = [
    "MIN_PART_SIZE",
    "Bucket",
    "BucketConfig",
    "ObjectInfo",
    "ObjectStoreError",
    "ObjectUpload",
]

log = logging.getLogger("sealedkb.objectstore")

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's smallest part (but the last)
DEFAULT_PART_SIZE = 8 * 1024 * 1024
READ_BLOCK = 1024 * 1024


class ObjectStoreError(SealedKBError):
    """The object store refused or failed a request. ``reason``: ``missing_bucket``,
    ``access_denied``, ``not_found``, ``exists`` (a write-once object, or one that
    changed while read), ``unavailable`` or ``error``."""

    code = "OBJECT_STORE_ERROR"
    exit_code = 1

    def __init__(self, message: str, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class BucketConfig:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    part_size: int = DEFAULT_PART_SIZE

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ConfigError("the S3 bucket name is empty", field="s3_bucket")
        if self.part_size < MIN_PART_SIZE:
            raise ConfigError("the S3 part size must be at least 5 MiB", field="s3_part_size")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


_clients: dict[tuple[str | None, str | None], Any] = {}
_clients_lock = threading.Lock()


def _client(config: BucketConfig) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:  # pragma: no cover - the optional extra is missing
        raise ConfigError(
            "S3 storage needs boto3: pip install 'sealedkb[s3]'", field="s3_bucket"
        ) from None
    key = (config.endpoint_url, config.region)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = boto3.client(
                "s3",
                endpoint_url=config.endpoint_url,
                region_name=config.region or "us-east-1",
                config=Config(retries={"max_attempts": 3, "mode": "standard"}),
            )
            _clients[key] = client
        return client


def _mapped(exc: Exception, bucket: str, what: str) -> ObjectStoreError:
    """A boto3 failure as an ObjectStoreError naming the bucket, never a body or key."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return ObjectStoreError(f"the S3 bucket {bucket} does not exist", "missing_bucket")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch") or (
            status == 403
        ):
            return ObjectStoreError(
                f"access to the S3 bucket {bucket} was denied ({what}); check the "
                "credentials and the bucket policy",
                "access_denied",
            )
        if code == "PreconditionFailed":
            return ObjectStoreError(
                f"S3 {what} in bucket {bucket} refused: the object already exists or changed",
                "exists",
            )
        if code in ("NoSuchKey", "404", "NotFound"):
            return ObjectStoreError(f"no such object in the S3 bucket {bucket}", "not_found")
        return ObjectStoreError(f"S3 {what} in bucket {bucket} failed ({code})")
    if isinstance(exc, BotoCoreError):
        return ObjectStoreError(
            f"the S3 endpoint is unreachable during {what} ({type(exc).__name__})", "unavailable"
        )
    return ObjectStoreError(f"S3 {what} in bucket {bucket} failed ({type(exc).__name__})")


class Bucket:
    """One bucket (and key prefix) of an S3-compatible store."""

    def __init__(self, config: BucketConfig) -> None:
        self.config = config
        self.name = config.bucket
        self.prefix = config.prefix
        self.client = _client(config)

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def url(self, name: str = "") -> str:
        return f"s3://{self.name}/{self.key(name)}"

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(Bucket=self.name, **kwargs)
        except Exception as exc:  # boto3 raises ClientError / BotoCoreError
            raise _mapped(exc, self.name, what) from None

    def check(self) -> None:
        """ObjectStoreError (missing_bucket, access_denied) unless the bucket is usable."""
        try:
            self._call("check", self.client.head_bucket)
        except ObjectStoreError as exc:
            if exc.reason == "not_found":  # HEAD has no body: a bare 404
                raise ObjectStoreError(
                    f"the S3 bucket {self.name} does not exist", "missing_bucket"
                ) from None
            raise

    def object_lock_enabled(self) -> bool:
        try:
            conf = self.client.get_object_lock_configuration(Bucket=self.name)
        except Exception as exc:
            err = _mapped(exc, self.name, "object lock check")
            if err.reason in ("missing_bucket", "access_denied", "unavailable"):
                raise err from None
            return False  # ObjectLockConfigurationNotFoundError: no object lock
        return bool(conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled")

    def list(self, start: str = "") -> Iterator[ObjectInfo]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": self.key(start)}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list", self.client.list_objects_v2, **kwargs)
            for item in page.get("Contents", []):
                key = str(item["Key"])
                yield ObjectInfo(key[len(self.prefix) :], int(item["Size"]), str(item["ETag"]))
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def head(self, name: str) -> ObjectInfo:
        r = self._call("read", self.client.head_object, Key=self.key(name))
        return ObjectInfo(name, int(r["ContentLength"]), str(r["ETag"]))

    def exists(self, name: str) -> bool:
        try:
            self.head(name)
        except ObjectStoreError as exc:
            if exc.reason == "not_found":
                return False
            raise
        return True

    def delete(self, name: str) -> None:
        self._call("delete", self.client.delete_object, Key=self.key(name))

    def open_read(self, name: str) -> IO[bytes]:
        """A seekable, buffered stream of one object (ranged GETs pinned to its ETag)."""
        info = self.head(name)
        return io.BufferedReader(_ObjectReader(self, name, info), buffer_size=READ_BLOCK)

    def read_bytes(self, name: str) -> bytes:
        r = self._call("read", self.client.get_object, Key=self.key(name))
        return bytes(r["Body"].read())

    def put(
        self, name: str, body: bytes, *, retain_until: Any = None, if_none_match: bool = False
    ) -> None:
        """One small object; ``retain_until`` (a datetime) puts it under COMPLIANCE
        object lock until then (the bucket must have object lock enabled)."""
        kwargs: dict[str, Any] = {"Key": self.key(name), "Body": body}
        if retain_until is not None:
            kwargs.update(ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=retain_until)
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        self._call("write", self.client.put_object, **kwargs)

    def upload(self, name: str) -> ObjectUpload:
        return ObjectUpload(self, name)


class _ObjectReader(io.RawIOBase):
    """Raw reads of one object: a GET from the current offset, streamed; a seek drops
    it and the next read starts a new ranged GET. Pinned to the ETag seen at open, so
    an object replaced meanwhile is an error, not a mix of two objects."""

    def __init__(self, bucket: Bucket, name: str, info: ObjectInfo) -> None:
        self.bucket = bucket
        self.obj = name
        self.size = info.size
        self.etag = info.etag
        self.pos = 0
        self._body: Any = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        new = base + offset
        if new != self.pos:
            self._drop()
        self.pos = max(0, new)
        return self.pos

    def _drop(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except Exception:  # closing a half-read body may fail; it is dropped anyway
                log.debug("S3 body close failed")
            self._body = None

    def readinto(self, b: Any) -> int:
        if self.pos >= self.size or len(b) == 0:
            return 0
        if self._body is None:
            r = self.bucket._call(
                "read",
                self.bucket.client.get_object,
                Key=self.bucket.key(self.obj),
                Range=f"bytes={self.pos}-",
                IfMatch=self.etag,
            )
            self._body = r["Body"]
        try:
            data = self._body.read(len(b))
        except Exception as exc:
            self._drop()
            raise _mapped(exc, self.bucket.name, "read") from None
        n = len(data)
        b[:n] = data
        self.pos += n
        return n

    def close(self) -> None:
        self._drop()
        super().close()


@dataclass
class ObjectUpload:
    """A multipart upload written as a stream: parts go up as they fill; ``commit``
    completes it (the object appears whole, at once), ``discard`` aborts it (nothing
    appears; the parts are deleted)."""

    bucket: Bucket
    name: str
    upload_id: str = ""
    parts: list[dict[str, Any]] = field(default_factory=list)
    buf: bytearray = field(default_factory=bytearray)
    size: int = 0

    def __post_init__(self) -> None:
        r = self.bucket._call(
            "write", self.bucket.client.create_multipart_upload, Key=self.bucket.key(self.name)
        )
        self.upload_id = str(r["UploadId"])

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.buf += data
        self.size += len(data)
        while len(self.buf) >= self.bucket.config.part_size:
            part = bytes(self.buf[: self.bucket.config.part_size])
            del self.buf[: self.bucket.config.part_size]
            self._part(part)
        return len(data)

    def _part(self, data: bytes) -> None:
        number = len(self.parts) + 1
        r = self.bucket._call(
            "write",
            self.bucket.client.upload_part,
            Key=self.bucket.key(self.name),
            UploadId=self.upload_id,
            PartNumber=number,
            Body=data,
        )
        self.parts.append({"PartNumber": number, "ETag": r["ETag"]})

    def flush(self) -> None:
        """Parts are sent when full; nothing to do until commit."""

    def commit(self) -> None:
        if self.buf or not self.parts:
            self._part(bytes(self.buf))
            self.buf.clear()
        self.bucket._call(
            "write",
            self.bucket.client.complete_multipart_upload,
            Key=self.bucket.key(self.name),
            UploadId=self.upload_id,
            MultipartUpload={"Parts": self.parts},
        )

    def discard(self) -> None:
        try:
            self.bucket.client.abort_multipart_upload(
                Bucket=self.bucket.name, Key=self.bucket.key(self.name), UploadId=self.upload_id
            )
        except Exception:  # already gone, or the endpoint is down: log, never raise
            log.warning("S3 multipart upload not aborted; a lifecycle rule removes it")


@dataclass(frozen=True)
class ObjectPath:
    """One object, usable where a snapshot file's Path is: ``name`` and ``open``."""

    bucket: Bucket = field(repr=False, compare=False)
    key: str  # relative to the bucket's prefix

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    def open(self, mode: str = "rb") -> IO[bytes]:
        if mode != "rb":
            raise ValueError("objects are opened for reading only")
        return self.bucket.open_read(self.key)

    def __str__(self) -> str:
        return self.bucket.url(self.key)
