"""Routes for media uploads and reads. Thin: parse, call :mod:`nubo.media`, return its shapes.

`POST /media` grants a presigned upload; the client sends the file to the object store itself, then calls
`POST /media/{id}/complete`. A media another user owns, or one the caller may not see, is 404.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

import msgspec
from litestar import get, post
from litestar.params import FromPath, JSONBody, Parameter

from nubo import media
from nubo.ids import parse_id
from nubo.media import IMAGE_TYPES, VIDEO_TYPES, MediaView, UploadGrant
from nubo.server.contract import errors
from nubo.server.users import AnyRequest, StoresDep, caller_id

MediaIdPath = FromPath[Annotated[str, Parameter(description="A media id (UUID)", schema_extra={"format": "uuid"})]]


def _any_case(types: tuple[str, ...]) -> str:
    """A pattern matching exactly these media types in any letter case (the server compares in lower case;
    JSON Schema patterns have no case-insensitive flag)."""
    spelled = ("".join(f"[{c}{c.upper()}]" if c.isalpha() else re.escape(c) for c in t) for t in types)
    return f"^({'|'.join(spelled)})$"


class NewUpload(msgspec.Struct, forbid_unknown_fields=True):
    """The file the caller is about to upload: its kind, media type and exact size in bytes. The size limits
    per kind and the daily quota are settings (docs/media.md)."""

    json_schema_extra: ClassVar[dict[str, object]] = {
        "examples": [{"kind": "image", "content_type": "image/jpeg", "size": 245_000}],
        "anyOf": [
            {"properties": {"kind": {"const": kind}, "content_type": {"pattern": _any_case(types)}}}
            for kind, types in (("image", tuple(IMAGE_TYPES)), ("video", VIDEO_TYPES))
        ],
    }

    kind: Literal["image", "video"]
    content_type: Annotated[str, msgspec.Meta(min_length=3, max_length=100)]
    size: Annotated[int, msgspec.Meta(ge=1)]


@post(
    "/media",
    summary="Start an upload: a pending media and a presigned PUT",
    tags=["media"],
    status_code=201,
    responses=errors(413),
)
async def start_upload(request: AnyRequest, stores: StoresDep, data: JSONBody[NewUpload]) -> UploadGrant:
    return await media.start_upload(stores, caller_id(request), data.kind, data.content_type, data.size)


@post(
    "/media/{media_id:str}/complete",
    summary="Check and process the uploaded file; the media becomes ready",
    tags=["media"],
    status_code=200,
    responses=errors(409, 413, 422),
)
async def complete_upload(request: AnyRequest, stores: StoresDep, media_id: MediaIdPath) -> MediaView:
    return await media.complete_upload(stores, caller_id(request), parse_id(media_id, "media_id"))


@get("/media/{media_id:str}", summary="A media with a URL per variant", tags=["media"])
async def get_media(request: AnyRequest, stores: StoresDep, media_id: MediaIdPath) -> MediaView:
    return await media.get_media(stores, caller_id(request), parse_id(media_id, "media_id"))


ROUTES = [start_upload, complete_upload, get_media]
