"""The media ids a post may carry: up to MAX_MEDIA_PER_POST of its author's own ready media, in order.

The files and their processing live in :mod:`nubo.media`; a post keeps only the ids (`media_ids`), and its
view carries the media with their URLs.
"""

from __future__ import annotations

import uuid

from nubo.errors import ValidationFailed
from nubo.media import check_attachable
from nubo.stores.transaction import Transaction

MAX_MEDIA_PER_POST = 10


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
    """Every id must be a ready media owned by `owner` (read in the write's transaction, from PostgreSQL)."""
    await check_attachable(tx.conn, owner, media_ids, field="media_ids")
