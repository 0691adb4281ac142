"""A test run's own bucket on the S3 server of `scripts/services`: emptied and removed at the end of the run."""

from __future__ import annotations

import contextlib

from botocore.exceptions import BotoCoreError, ClientError

from nubo.settings import Settings
from nubo.stores.objects import ObjectStore


def remove_bucket(settings: Settings) -> None:
    """Delete every object of the run's bucket, then the bucket (nothing when it was never created)."""
    store = ObjectStore(settings)
    with contextlib.suppress(ClientError, BotoCoreError):  # never created, or the server is gone (tests failed)
        keys = store._list("")
        store._delete_keys(keys)
        store.client.delete_bucket(Bucket=store.bucket)
