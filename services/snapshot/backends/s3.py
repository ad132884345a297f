"""S3-compatible object storage (AWS S3, SeaweedFS, ...): one key prefix per snapshot.

Settings come from the environment at start-up (`S3Settings`): HALOWEAVE_S3_ENDPOINT (omit for AWS itself),
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION. S3 has no rename, so a name is claimed with a conditional put
(`If-None-Match: *`) of the folder's claim marker: of two concurrent saves with one name, exactly one wins. Large
files go up as multipart uploads in parallel parts.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import Field

from services.common.config import EnvSettings, secret
from services.common.errors import Unavailable
from services.snapshot.backends import Backend, Data, check_location

_CLAIM = ".claim"
_MISSING = {"NoSuchKey", "404", "NotFound"}
_PART_BYTES = 16 * 1024 * 1024


class S3Settings(EnvSettings):
    endpoint: str | None = Field(
        default=None,
        validation_alias="HALOWEAVE_S3_ENDPOINT",
        description="URL of an S3-compatible server (SeaweedFS, MinIO, ...) for `s3://` stores; unset: AWS itself."
        " Refused credentials stop the service at start-up.",
    )
    access_key_id: str | None = secret(
        "AWS_ACCESS_KEY_ID", "S3 access key id; unset: boto3's own credential chain.", default=None
    )
    secret_access_key: str | None = secret(
        "AWS_SECRET_ACCESS_KEY", "S3 secret access key; unset: boto3's own credential chain.", default=None
    )
    region: str = Field(default="us-east-1", validation_alias="AWS_REGION", min_length=1, description="S3 region.")


class S3Backend(Backend):
    kind = "s3"

    def __init__(self, bucket: str, prefix: str = "", client: Any = None, create_bucket: bool = True) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        settings = S3Settings()
        self.endpoint = settings.endpoint
        # A session of our own: boto3's default session caches the first credentials it resolved for the process.
        session = boto3.session.Session(
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            region_name=settings.region,
        )
        self.client = client or session.client(
            "s3",
            endpoint_url=self.endpoint,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=16),
        )
        self.transfer = TransferConfig(
            multipart_threshold=_PART_BYTES, multipart_chunksize=_PART_BYTES, max_concurrency=4, use_threads=True
        )
        self._check_bucket(create_bucket)

    def _error(self, error: Exception, what: str) -> Unavailable:
        code = getattr(error, "response", {}).get("Error", {}).get("Code", error.__class__.__name__)
        return Unavailable(f"object store {self.describe()} refused {what}: {code}")

    def _check_bucket(self, create: bool) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in _MISSING and create:
                try:
                    self.client.create_bucket(Bucket=self.bucket)
                except ClientError as create_error:
                    raise self._error(create_error, "creating the bucket") from None
                return
            raise self._error(error, "access to the bucket (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)") from None
        except BotoCoreError as error:
            raise Unavailable(f"object store {self.describe()} unreachable: {error}") from None

    def _key(self, snapshot_id: str, path: str = "") -> str:
        check_location(snapshot_id, path)
        return f"{self.prefix}{snapshot_id}/{path}"

    def claim(self, snapshot_id: str, content: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(snapshot_id, _CLAIM), Body=content, IfNoneMatch="*"
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise self._error(error, f"claiming {snapshot_id}") from None
        return True

    def write(self, snapshot_id: str, path: str, parts: Sequence[Data]) -> None:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import ClientError

        key = self._key(snapshot_id, path)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        try:
            if len(data) < _PART_BYTES:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=bytes(data))
            else:
                self.client.upload_fileobj(_Reader(data), self.bucket, key, Config=self.transfer)
        except (ClientError, S3UploadFailedError) as error:
            raise self._error(error, f"writing {key}") from None

    def read(self, snapshot_id: str, path: str) -> bytes:
        from botocore.exceptions import ClientError

        key = self._key(snapshot_id, path)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
            if head["ContentLength"] < _PART_BYTES:
                return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
            sink = io.BytesIO()
            self.client.download_fileobj(self.bucket, key, sink, Config=self.transfer)
            return sink.getvalue()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in _MISSING:
                raise FileNotFoundError(key) from None
            raise self._error(error, f"reading {key}") from None

    def remove(self, snapshot_id: str, path: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(snapshot_id, path))
        except ClientError as error:
            raise self._error(error, f"deleting {path} of {snapshot_id}") from None

    def exists(self, snapshot_id: str, path: str) -> bool:
        return self._head(self._key(snapshot_id, path)) is not None

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=key))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in _MISSING:
                return None
            raise self._error(error, f"reading {key}") from None

    def _pages(self, **kwargs: Any) -> Any:
        from botocore.exceptions import ClientError

        try:
            yield from self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, **kwargs)
        except ClientError as error:
            raise self._error(error, "listing") from None

    def list_ids(self) -> list[str]:
        ids = []
        for page in self._pages(Prefix=self.prefix, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                ids.append(common["Prefix"][len(self.prefix) :].rstrip("/"))
        return ids

    def claimed_at(self, snapshot_id: str) -> float | None:
        head = self._head(self._key(snapshot_id, _CLAIM))
        if head is not None:
            return float(head["LastModified"].timestamp())
        times: list[datetime] = []
        for page in self._pages(Prefix=self._key(snapshot_id)):
            times += [item["LastModified"] for item in page.get("Contents", [])]
        return max(times).timestamp() if times else None

    def delete(self, snapshot_id: str) -> None:
        from botocore.exceptions import ClientError

        keys = []
        for page in self._pages(Prefix=self._key(snapshot_id)):
            keys += [{"Key": item["Key"]} for item in page.get("Contents", [])]
        # Stores with real directories (SeaweedFS) keep listing an emptied folder until its directory entries go
        # too, deepest first; on AWS these deletes of absent keys are no-ops.
        root = self._key(snapshot_id)
        folders = {root}
        for item in keys:
            inner = item["Key"][len(root) :].split("/")[:-1]  # e.g. ["past_key_values"]
            folders |= {root + "/".join(inner[: n + 1]) + "/" for n in range(len(inner))}
        try:
            for start in range(0, len(keys), 1000):
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[start : start + 1000]})
            for folder in sorted(folders, key=lambda f: f.count("/"), reverse=True):
                self.client.delete_object(Bucket=self.bucket, Key=folder)
        except ClientError as error:
            raise self._error(error, f"deleting {snapshot_id}") from None

    def describe(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"


class _Reader(io.RawIOBase):
    """A read-only file over a buffer we already hold, so a multipart upload does not copy it first."""

    def __init__(self, data: Data) -> None:
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        chunk = self._view[self._pos : self._pos + len(buffer)]
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)
