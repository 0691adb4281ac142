"""The upload flow: grant a presigned upload, then complete it (check the object, process it, mark it ready).

1. `POST /media` (:func:`start_upload`): kind, content type and byte size are checked against the limits and
   the owner's daily quota; a pending media row is written and a presigned PUT to
   `media/<owner>/<media>/upload` is returned, with the type and length signed, valid
   `NUBO_S3_UPLOAD_EXPIRY` seconds. The client sends the file straight to the object store.
2. `POST /media/{id}/complete` (:func:`complete_upload`): the object must exist (409 otherwise) with the
   declared size, and its magic bytes must match the declared type. An image is processed in a thread
   (:mod:`nubo.media.imaging`): its variants are written and the upload itself (with its EXIF) is deleted. A
   video is kept as uploaded. The row becomes ready. Anything refused deletes the upload and the row, so
   nothing is left behind; the client starts again.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from nubo import social
from nubo.errors import Conflict, NotFound, PayloadTooLarge, RateLimited, ValidationFailed
from nubo.ids import new_id
from nubo.logs import get_logger
from nubo.media.imaging import (
    IMAGE_TYPES,
    MAGIC_BYTES,
    VIDEO_TYPES,
    ImageRejected,
    ProcessedImage,
    process_image,
    same_family,
    sniff,
)
from nubo.media.views import KINDS, MediaView, UploadGrant, UploadTarget, media_view
from nubo.stores import Stores
from nubo.stores.entities import Row
from nubo.stores.objects import media_key
from nubo.stores.postgres import pg_read

log = get_logger(__name__)

PENDING, READY = 0, 1
UPLOAD_VARIANT = "upload"
QUOTA_WINDOW = timedelta(days=1)


def _checked_request(stores: Stores, kind: str, content_type: str, size: int) -> int:
    """The kind's number; 422 for an unknown kind or type, 413 over the kind's size limit."""
    if kind not in KINDS:
        raise ValidationFailed("kind must be image or video", fields={"kind": "image or video"})
    allowed = tuple(IMAGE_TYPES) if kind == "image" else VIDEO_TYPES
    content_type = content_type.lower()
    if content_type not in allowed:
        raise ValidationFailed(
            f"an {kind} must be one of {', '.join(allowed)}",
            code="unsupported_media_type",
            fields={"content_type": ", ".join(allowed)},
        )
    limit = stores.settings.media_max_image_bytes if kind == "image" else stores.settings.media_max_video_bytes
    if size < 1:
        raise ValidationFailed("size must be at least 1 byte", fields={"size": ">= 1"})
    if size > limit:
        raise PayloadTooLarge(f"an {kind} may have at most {limit} bytes", code="media_too_large")
    return KINDS.index(kind)


async def _check_quota(stores: Stores, owner: uuid.UUID, size: int) -> None:
    """429 when the owner's uploads of the last day plus this one exceed `NUBO_MEDIA_DAILY_QUOTA` bytes."""
    quota = stores.settings.media_daily_quota
    async with pg_read(stores) as conn:
        row = await (
            await conn.execute(
                "SELECT coalesce(sum(size), 0) AS used, min(created_at) AS oldest FROM content.media "
                "WHERE owner_id = %s AND created_at > now() - %s",
                (owner, QUOTA_WINDOW),
            )
        ).fetchone()
    assert row is not None
    if row["used"] + size > quota:
        oldest = row["oldest"] or datetime.now(UTC)
        retry = int((oldest + QUOTA_WINDOW - datetime.now(UTC)).total_seconds()) + 1
        exceeded = RateLimited(f"the daily upload quota ({quota} bytes) would be exceeded", retry_after=retry)
        exceeded.code = "media_quota_exceeded"
        raise exceeded


async def start_upload(stores: Stores, owner: uuid.UUID, kind: str, content_type: str, size: int) -> UploadGrant:
    """A pending media and a presigned PUT for its file (see the module)."""
    kind_number = _checked_request(stores, kind, content_type, size)
    await _check_quota(stores, owner, size)
    objects = stores.objects
    await objects.ensure_bucket()
    media_id = new_id()
    key = media_key(owner, media_id, UPLOAD_VARIANT)
    expires = stores.settings.s3_upload_expiry
    url, headers = objects.presign_put(key, content_type.lower(), size, expires)
    async with stores.transaction() as tx:
        row = await tx.insert(
            "media",
            {
                "id": media_id,
                "owner_id": owner,
                "storage_path": key,
                "mime": content_type.lower(),
                "size": size,
                "kind": kind_number,
                "processing_state": PENDING,
            },
        )
    target = UploadTarget("PUT", url, headers, datetime.now(UTC) + timedelta(seconds=expires))
    return UploadGrant(media=media_view(row, objects), upload=target)


async def own_media(stores: Stores, owner: uuid.UUID, media_id: uuid.UUID) -> Row:
    """The caller's own media row from PostgreSQL; 404 for another user's or a missing one."""
    async with pg_read(stores) as conn:
        row = await (
            await conn.execute("SELECT * FROM content.media WHERE id = %s AND owner_id = %s", (media_id, owner))
        ).fetchone()
    if row is None:
        raise NotFound("No such media", code="media_not_found")
    return dict(row)


async def complete_upload(stores: Stores, owner: uuid.UUID, media_id: uuid.UUID) -> MediaView:
    """Check and process the uploaded file; the ready media (idempotent once ready)."""
    row = await own_media(stores, owner, media_id)
    if row["processing_state"] == READY:
        return media_view(row, stores.objects)
    data = await _checked_upload(stores, row)
    is_image = row["kind"] == 0
    changes = await _processed_image(stores, row, data) if is_image else _video(row)
    async with stores.transaction() as tx:
        updated = await tx.update("media", media_id, {"processing_state": READY, **changes})
    if updated is None:  # deleted meanwhile (a purge): its objects are listed for the next purge
        raise NotFound("No such media", code="media_not_found")
    if is_image:
        await stores.objects.delete([row["storage_path"]])  # the upload, with its EXIF: only clean variants stay
    log.info("media_ready", extra={"media_id": str(media_id), "kind": KINDS[row["kind"]], "size": row["size"]})
    return media_view(updated, stores.objects)


async def _checked_upload(stores: Stores, row: Row) -> bytes:
    """The upload's bytes (an image whole, within its size limit; a video's first bytes only), once its size
    and magic bytes match what was declared."""
    key, is_image = row["storage_path"], row["kind"] == 0
    info = await stores.objects.head(key)
    if info is None:
        raise Conflict("Nothing was uploaded for this media yet", code="upload_missing")
    if info.size != row["size"]:
        await _refuse(stores, row, "size_mismatch", f"the upload has {info.size} bytes, {row['size']} were declared")
    data = await stores.objects.read(key, None if is_image else MAGIC_BYTES)
    if not same_family(row["mime"], sniff(data[:MAGIC_BYTES])):
        code = "not_an_image" if is_image else "not_a_video"
        await _refuse(stores, row, code, f"the file is not a {row['mime']} file")
    return data


async def _processed_image(stores: Stores, row: Row, data: bytes) -> dict[str, Any]:
    """Process the image in a thread and store its variants; the row's new columns."""
    try:
        async with stores.image_slots:
            image = await asyncio.to_thread(process_image, data, stores.settings.media_max_pixels)
    except ImageRejected as exc:
        await _refuse(stores, row, exc.code, str(exc))
    variants = await _store_variants(stores, row, image)
    return {"width": image.width, "height": image.height, "placeholder": image.placeholder, "variants": variants}


def _video(row: Row) -> dict[str, Any]:
    """A video is kept as uploaded: its one variant is the upload."""
    return {"variants": {"original": {"key": row["storage_path"], "size": row["size"], "mime": row["mime"]}}}


async def _store_variants(stores: Stores, row: Row, image: ProcessedImage) -> dict[str, Any]:
    keys = {v.name: media_key(row["owner_id"], row["id"], v.name) for v in image.variants}
    await asyncio.gather(*(stores.objects.write(keys[v.name], v.data, v.mime) for v in image.variants))
    return {
        v.name: {"key": keys[v.name], "width": v.width, "height": v.height, "size": len(v.data), "mime": v.mime}
        for v in image.variants
    }


async def _refuse(stores: Stores, row: Row, code: str, message: str) -> NoReturn:
    """Delete the upload and the row (nothing left behind), then raise a 422 with `code`."""
    await stores.objects.delete_prefix(f"media/{row['owner_id']}/{row['id']}/")
    async with stores.transaction() as tx:
        await tx.delete("media", row["id"])
    await _forget_tombstone(stores, row)
    raise ValidationFailed(message, code=code, fields={"file": code})


async def _forget_tombstone(stores: Stores, row: Row) -> None:
    async with pg_read(stores) as conn:
        await conn.execute(
            "DELETE FROM content.media_deleted WHERE prefix = %s", (f"media/{row['owner_id']}/{row['id']}/",)
        )


# Where a media is in use, as a predicate on `m` (a content.media row) and `%(viewer)s` when `viewer` is set:
# a profile picture, a post's media, a message's attachment.
def in_use_sql(viewer: bool = False) -> str:
    """The SQL predicate "media m is in use" (or, with `viewer`, "in use where %(viewer)s may see it")."""
    post_rule = (
        " AND (p.visibility = 0 OR p.user_id = %(viewer)s OR EXISTS (SELECT 1 FROM auth.follows f "
        "WHERE f.follower_id = %(viewer)s AND f.followed_id = p.user_id AND f.state = 1))"
        if viewer
        else ""
    )
    member_rule = (
        " AND EXISTS (SELECT 1 FROM messaging.conversation_members cm "
        "WHERE cm.conversation_id = mi.conversation_id AND cm.user_id = %(viewer)s)"
        if viewer
        else ""
    )
    return (
        "(EXISTS (SELECT 1 FROM auth.users u WHERE u.id = m.owner_id AND u.profile_picture_id = m.id)"
        " OR EXISTS (SELECT 1 FROM content.posts p WHERE p.user_id = m.owner_id AND m.id = ANY(p.media_ids)"
        f"{post_rule})"
        " OR EXISTS (SELECT 1 FROM messaging.message_index mi WHERE mi.sender_id = m.owner_id"
        f" AND mi.attachments -> 'media_ids' ? m.id::text{member_rule}))"
    )


async def get_media(stores: Stores, viewer: uuid.UUID, media_id: uuid.UUID) -> MediaView:
    """A media for its owner (pending or ready); for others only once ready and where they may see it (a
    profile picture, a post they may see, a message of a conversation they are in), and when its owner is not
    hidden from them. Else 404."""
    async with pg_read(stores) as conn:
        row = await (
            await conn.execute(
                "SELECT m.* FROM content.media m WHERE m.id = %(id)s AND (m.owner_id = %(viewer)s "
                f"OR (m.processing_state = {READY:d} AND {in_use_sql(viewer=True)}))",
                {"id": media_id, "viewer": viewer},
            )
        ).fetchone()
    if row is None or (row["owner_id"] != viewer and await social.hidden_authors(stores, viewer, [row["owner_id"]])):
        raise NotFound("No such media", code="media_not_found")
    return media_view(dict(row), stores.objects)


async def media_views(stores: Stores, ids: list[uuid.UUID]) -> dict[uuid.UUID, MediaView]:
    """The views of the ready media among `ids`, by id (read through the tiers)."""
    if not ids:
        return {}
    rows = await stores.tiered.get_many("media", list(dict.fromkeys(ids)))
    return {row["id"]: media_view(row, stores.objects) for row in rows if row.get("processing_state") == READY}
