"""Media metadata (the files themselves live in object storage) and the media ids a post may carry.

A media row belongs to its uploader: a post's `media_ids` must all be media owned by its author (422
otherwise), and a media is hidden from viewers who may not see its owner (404).
"""

from __future__ import annotations

import re
import uuid

from nubo import social
from nubo.errors import NotFound, ValidationFailed
from nubo.ids import new_id
from nubo.posts.parsing import checked_text
from nubo.posts.views import MediaView, media_view
from nubo.stores import Stores
from nubo.stores.transaction import Transaction

MAX_MEDIA_PER_POST = 10
MAX_STORAGE_PATH_CHARS = 1024
MAX_MEDIA_BYTES = 10 * 1024**3
MAX_MEDIA_PIXELS_SIDE = 100_000

MIME_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


def media_id_list(value: object) -> list[uuid.UUID]:
    """The distinct media ids of a post (order kept); a 422 when not UUIDs or more than MAX_MEDIA_PER_POST."""
    if not isinstance(value, list | tuple):
        raise ValidationFailed("media_ids must be a list of ids", fields={"media_ids": "not a list"})
    ids: list[uuid.UUID] = []
    for item in value:
        try:
            ids.append(item if isinstance(item, uuid.UUID) else uuid.UUID(str(item)))
        except ValueError:
            raise ValidationFailed("media_ids must hold UUIDs", fields={"media_ids": "not a UUID"}) from None
    ids = list(dict.fromkeys(ids))
    if len(ids) > MAX_MEDIA_PER_POST:
        raise ValidationFailed(
            f"at most {MAX_MEDIA_PER_POST} media per post",
            code="too_many_media",
            fields={"media_ids": f"max {MAX_MEDIA_PER_POST}"},
        )
    return ids


async def check_media_owner(tx: Transaction, owner: uuid.UUID, media_ids: list[uuid.UUID]) -> None:
    """Every id must be media owned by `owner` (read in the write's transaction, from PostgreSQL)."""
    if not media_ids:
        return
    row = await (
        await tx.conn.execute(
            "SELECT count(*) AS n FROM content.media WHERE id = ANY(%s) AND owner_id = %s", (media_ids, owner)
        )
    ).fetchone()
    if row is None or row["n"] != len(media_ids):
        raise ValidationFailed(
            "media_ids must be media you uploaded",
            code="media_not_owned",
            fields={"media_ids": "unknown or not yours"},
        )


def _optional_side(value: object, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MEDIA_PIXELS_SIDE:
        raise ValidationFailed(
            f"{field} must be an integer between 1 and {MAX_MEDIA_PIXELS_SIDE}",
            fields={field: f"1..{MAX_MEDIA_PIXELS_SIDE}"},
        )
    return value


def validate_media(
    storage_path: object, mime: object, size: object, width: object, height: object
) -> dict[str, object]:
    """The columns of a media row from client input (owner and id are added by the caller)."""
    path = checked_text(storage_path, "storage_path", MAX_STORAGE_PATH_CHARS, required=True)
    assert path is not None
    if ".." in path.split("/") or any(ord(ch) < 32 for ch in path):
        raise ValidationFailed(
            "storage_path must not contain '..' segments or control characters",
            fields={"storage_path": "invalid"},
        )
    if not isinstance(mime, str) or not MIME_RE.fullmatch(mime.lower()):
        raise ValidationFailed("mime must be a media type such as image/jpeg", fields={"mime": "type/subtype"})
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_MEDIA_BYTES:
        raise ValidationFailed(
            f"size must be an integer between 0 and {MAX_MEDIA_BYTES}",
            fields={"size": f"0..{MAX_MEDIA_BYTES}"},
        )
    return {
        "storage_path": path,
        "mime": mime.lower(),
        "size": size,
        "width": _optional_side(width, "width"),
        "height": _optional_side(height, "height"),
    }


async def create_media(stores: Stores, owner: uuid.UUID, **fields: object) -> MediaView:
    """Record a media's metadata; the caller owns it."""
    values = validate_media(
        fields.get("storage_path"),
        fields.get("mime"),
        fields.get("size"),
        fields.get("width"),
        fields.get("height"),
    )
    async with stores.transaction() as tx:
        row = await tx.insert("media", {"id": new_id(), "owner_id": owner, **values})
    return media_view(row)


async def get_media(stores: Stores, viewer: uuid.UUID, media_id: uuid.UUID) -> MediaView:
    """A media's metadata; 404 when absent or when its owner is hidden from the viewer."""
    row = await stores.tiered.get("media", media_id)
    if row is None or (row["owner_id"] != viewer and await social.hidden_authors(stores, viewer, [row["owner_id"]])):
        raise NotFound("No such media", code="media_not_found")
    return media_view(row)
