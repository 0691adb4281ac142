"""Object storage through the S3 API (AWS S3, SeaweedFS, MinIO, Ceph): the files of media.

boto3 is synchronous: every call that touches the network runs in a thread (`asyncio.to_thread`), so the event
loop never waits on S3. Presigning is local HMAC work and stays on the loop. The client is made on first use
(creating one costs tens of milliseconds) and is thread-safe.

Keys are `media/<owner id>/<media id>/<variant>` (:func:`media_key`); a media's objects share the prefix
:func:`media_prefix`, so deleting a media deletes one prefix. A store that cannot be reached raises
:class:`~nubo.errors.StoreUnavailable` ("s3"), which the server answers with 503.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

from nubo.errors import StoreUnavailable
from nubo.logs import get_logger
from nubo.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from mypy_boto3_s3 import S3Client

log = get_logger(__name__)

T = TypeVar("T")
_UNREACHABLE = (ConnectionError, HTTPClientError)
_MISSING = ("404", "NoSuchKey", "NotFound")


def media_prefix(owner_id: uuid.UUID, media_id: uuid.UUID) -> str:
    """The prefix every object of one media shares."""
    return f"media/{owner_id}/{media_id}/"


def media_key(owner_id: uuid.UUID, media_id: uuid.UUID, variant: str) -> str:
    """The key of one variant (`upload`, `320`, `1080`, ...) of a media."""
    return media_prefix(owner_id, media_id) + variant


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD of an object says."""

    size: int
    content_type: str | None


class ObjectStore:
    """One bucket of an S3-compatible store (settings `NUBO_S3_*`). A plain class, not a dataclass: the
    server's dependency injection inspects dataclass fields, and a lock is not a type it converts."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Any = None
        self._lock = threading.Lock()
        self._bucket_checked = False
        self._down = False

    @property
    def bucket(self) -> str:
        return self.settings.s3_bucket

    @property
    def client(self) -> S3Client:
        with self._lock:
            if self._client is None:
                s = self.settings
                self._client = boto3.client(
                    "s3",
                    endpoint_url=s.s3_endpoint or None,
                    region_name=s.s3_region,
                    aws_access_key_id=s.s3_access_key,
                    aws_secret_access_key=s.s3_secret_key,
                    config=Config(
                        signature_version="s3v4",
                        s3={"addressing_style": "path"},
                        connect_timeout=3,
                        read_timeout=30,
                        retries={"max_attempts": 2, "mode": "standard"},
                    ),
                )
            client: S3Client = self._client
            return client

    async def _run(self, call: Callable[[], T]) -> T:
        """Run one blocking boto3 call in a thread; an unreachable store becomes a 503 ("s3")."""
        try:
            result = await asyncio.to_thread(call)
        except _UNREACHABLE as exc:
            self._mark_down(str(exc))
            raise StoreUnavailable("s3") from exc
        except ClientError as exc:
            if _status(exc) >= 500:
                self._mark_down(str(exc))
                raise StoreUnavailable("s3") from exc
            raise
        if self._down:
            self._down = False
            log.info("s3_reachable", extra={"bucket": self.bucket})
        return result

    def _mark_down(self, error: str) -> None:
        """One log line when the store goes down, not one per request."""
        if not self._down:
            self._down = True
            log.warning("s3_unreachable", extra={"bucket": self.bucket, "error": error[:200]})

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (once per process)."""
        if self._bucket_checked:
            return

        def ensure() -> None:
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if _code(exc) not in _MISSING and _status(exc) != 404:
                    raise
                region = self.settings.s3_region
                if region and region != "us-east-1":  # AWS wants the region of a bucket made elsewhere
                    self.client.create_bucket(
                        Bucket=self.bucket,
                        CreateBucketConfiguration={"LocationConstraint": region},  # type: ignore[typeddict-item]
                    )
                else:
                    self.client.create_bucket(Bucket=self.bucket)

        await self._run(ensure)
        self._bucket_checked = True

    def presign_put(self, key: str, content_type: str, size: int, expires: int) -> tuple[str, dict[str, str]]:
        """A URL the client PUTs the object to, with the headers it must send (type and length are signed)."""
        url = self.client.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": key, "ContentType": content_type, "ContentLength": size},
            ExpiresIn=expires,
        )
        return url, {"Content-Type": content_type, "Content-Length": str(size)}

    def read_url(self, key: str) -> str:
        """Where a client downloads an object: `<public base>/<key>`, else a presigned GET."""
        base = self.settings.s3_public_base_url
        if base:
            return f"{base.rstrip('/')}/{key}"
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.settings.s3_url_expiry
        )

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size and type; None when it does not exist."""

        def head() -> ObjectInfo | None:
            try:
                found = self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _code(exc) in _MISSING or _status(exc) == 404:
                    return None
                raise
            return ObjectInfo(size=int(found["ContentLength"]), content_type=found.get("ContentType"))

        return await self._run(head)

    async def read(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes (only the first `max_bytes` when given)."""

        def read() -> bytes:
            extra: dict[str, Any] = {"Range": f"bytes=0-{max_bytes - 1}"} if max_bytes else {}
            body = self.client.get_object(Bucket=self.bucket, Key=key, **extra)["Body"]
            try:
                return body.read()
            finally:
                body.close()

        return await self._run(read)

    async def write(self, key: str, data: bytes, content_type: str) -> None:
        await self._run(
            lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        )

    async def delete(self, keys: list[str]) -> None:
        """Delete these keys (absent ones are fine)."""
        if keys:
            await self._run(lambda: self._delete_keys(keys))

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; how many there were."""

        def delete() -> int:
            keys = self._list(prefix)
            self._delete_keys(keys)
            return len(keys)

        return await self._run(delete)

    async def list_keys(self, prefix: str) -> list[str]:
        return await self._run(lambda: self._list(prefix))

    def _list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}
            )

    def close(self) -> None:
        """Close the client's connections (a new client is made if the store is used again)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    async def ping(self) -> dict[str, Any]:
        await self._run(lambda: self.client.head_bucket(Bucket=self.bucket))
        return {"bucket": self.bucket}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
