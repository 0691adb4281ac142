"""Media: photos and videos on S3-compatible object storage, uploaded straight to the store by the client.

Rules (docs/media.md):
- an upload is granted (`POST /media`: kind, type, size within the limits and the daily quota) as a presigned
  PUT, then completed (`POST /media/{id}/complete`): the object's size and magic bytes are checked, an image
  is decoded under a pixel limit, oriented, stripped of its metadata and re-encoded as WebP variants off the
  event loop; a video is kept as uploaded. Anything refused leaves no object behind;
- media is attached only by its owner, and only once ready: to posts, as a profile picture, to messages;
- a media is shown to others only where they may see it; reads carry a URL per variant;
- media that nothing uses any more is deleted with its objects (:mod:`nubo.media.lifecycle`).

The modules: :mod:`~nubo.media.imaging` (magic bytes, Pillow), :mod:`~nubo.media.views` (the API shapes),
:mod:`~nubo.media.uploads` (the flow, reads) and :mod:`~nubo.media.lifecycle` (attach, release, purge).
"""

from __future__ import annotations

from nubo.media.imaging import IMAGE_TYPES, VIDEO_TYPES
from nubo.media.lifecycle import ORPHAN_AGE, check_attachable, delete_objects, purge_media, release_media
from nubo.media.uploads import complete_upload, get_media, media_views, start_upload
from nubo.media.views import MediaVariant, MediaView, UploadGrant, UploadTarget, media_view

__all__ = [
    "IMAGE_TYPES",
    "ORPHAN_AGE",
    "VIDEO_TYPES",
    "MediaVariant",
    "MediaView",
    "UploadGrant",
    "UploadTarget",
    "check_attachable",
    "complete_upload",
    "delete_objects",
    "get_media",
    "media_view",
    "media_views",
    "purge_media",
    "release_media",
    "start_upload",
]
