"""A test run's own bucket on the S3 server of `scripts/services`: emptied and removed at the end of the run."""

from __future__ import annotations

import contextlib

from botocore.exceptions import BotoCoreError, ClientError

from nubo.settings import Settings
from nubo.stores.objects import ObjectStore


def remove_bucket(settings: Settings) -> None:
    """Delete every object of the run's bucket, then the bucket (nothing when it was never created)."""
    store = ObjectStore(settings)
    client = store.client
    with contextlib.suppress(ClientError, BotoCoreError):  # never created, or the server is gone (tests failed)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=store.bucket, Delete={"Objects": keys, "Quiet": True})
        client.delete_bucket(Bucket=store.bucket)
    store.close()
