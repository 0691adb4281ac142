"""The API shapes of media: a media with a URL per variant, and the grant of an upload."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec

from nubo.stores.entities import Row
from nubo.stores.objects import ObjectStore

KINDS = ("image", "video")
STATES = ("pending", "ready")


class MediaVariant(msgspec.Struct, gc=False):
    """One stored file of a media: its URL (presigned with an expiry, or public), size and type."""

    url: str
    width: int | None
    height: int | None
    size: int
    mime: str


class MediaView(msgspec.Struct, gc=False):
    """A media: `state` pending (upload granted) or ready; `variants` (by name: `320`, `1080` for images,
    `original` for videos) only once ready. `placeholder` is a blurhash of an image."""

    id: uuid.UUID
    owner_id: uuid.UUID
    kind: str
    mime: str
    size: int
    width: int | None
    height: int | None
    state: str
    placeholder: str | None
    variants: dict[str, MediaVariant]
    created_at: datetime


class UploadTarget(msgspec.Struct, gc=False):
    """Where and how the client sends the file: `method` to `url` with exactly these `headers`, before
    `expires_at`. The type and length are part of the signature: another size or type is refused."""

    method: str
    url: str
    headers: dict[str, str]
    expires_at: datetime


class UploadGrant(msgspec.Struct, gc=False):
    """The answer to `POST /media`: the pending media and its upload target."""

    media: MediaView
    upload: UploadTarget


def media_view(row: Row, objects: ObjectStore) -> MediaView:
    """The API shape of a media row, with a read URL for each variant once it is ready."""
    ready = row.get("processing_state") == 1
    variants: dict[str, Any] = row.get("variants") or {}
    return MediaView(
        id=row["id"],
        owner_id=row["owner_id"],
        kind=KINDS[row.get("kind") or 0],
        mime=row["mime"],
        size=row["size"],
        width=row.get("width"),
        height=row.get("height"),
        state=STATES[1 if ready else 0],
        placeholder=row.get("placeholder"),
        variants={
            name: MediaVariant(
                url=objects.read_url(v["key"]),
                width=v.get("width"),
                height=v.get("height"),
                size=v["size"],
                mime=v["mime"],
            )
            for name, v in variants.items()
        }
        if ready
        else {},
        created_at=row["created_at"],
    )
