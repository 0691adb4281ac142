"""Routes for media uploads and reads. Thin: parse, call :mod:`nubo.media`, return its shapes.

`POST /media` grants a presigned upload; the client sends the file to the object store itself, then calls
`POST /media/{id}/complete`. A media another user owns, or one the caller may not see, is 404.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import get, post
from litestar.params import FromPath, JSONBody, Parameter

from nubo import media
from nubo.ids import parse_id
from nubo.media import MediaView, UploadGrant
from nubo.server.users import AnyRequest, StoresDep, caller_id

MediaIdPath = FromPath[Annotated[str, Parameter(description="A media id (UUID)", schema_extra={"format": "uuid"})]]


class NewUpload(msgspec.Struct, forbid_unknown_fields=True):
    """The file the caller is about to upload: its kind, media type and exact size in bytes."""

    kind: Literal["image", "video"]
    content_type: Annotated[str, msgspec.Meta(min_length=3, max_length=100)]
    size: Annotated[int, msgspec.Meta(ge=1)]


@post("/media", summary="Start an upload: a pending media and a presigned PUT", tags=["media"], status_code=201)
async def start_upload(request: AnyRequest, stores: StoresDep, data: JSONBody[NewUpload]) -> UploadGrant:
    return await media.start_upload(stores, caller_id(request), data.kind, data.content_type, data.size)


@post(
    "/media/{media_id:str}/complete",
    summary="Check and process the uploaded file; the media becomes ready",
    tags=["media"],
    status_code=200,
)
async def complete_upload(request: AnyRequest, stores: StoresDep, media_id: MediaIdPath) -> MediaView:
    return await media.complete_upload(stores, caller_id(request), parse_id(media_id, "media_id"))


@get("/media/{media_id:str}", summary="A media with a URL per variant", tags=["media"])
async def get_media(request: AnyRequest, stores: StoresDep, media_id: MediaIdPath) -> MediaView:
    return await media.get_media(stores, caller_id(request), parse_id(media_id, "media_id"))


ROUTES = [start_upload, complete_upload, get_media]
