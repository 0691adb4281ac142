"""Where media may be attached, and when it goes away.

- Attaching (a post's media, a profile picture, a message's attachments): only the owner's own *ready*
  media (:func:`check_attachable`, in the write's transaction where there is one).
- Releasing: when a post or a message is deleted (or a post's media list or a profile picture changes), the
  media it let go that nothing else uses are deleted in the same transaction (:func:`release_media`); their
  objects are deleted right after the commit.
- Every deleted media row (also by the cascade of a deleted account) is listed in `content.media_deleted` by
  a trigger; :func:`delete_objects` deletes the listed objects and clears the list, so an object delete that
  failed is retried by the next purge.
- :func:`purge_media` (`nubo db purge`): uploads never completed and ready media never attached to anything
  after a day are deleted, then the objects of every deleted media.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta

from nubo.errors import ValidationFailed
from nubo.logs import get_logger
from nubo.media.uploads import PENDING, READY, in_use_sql
from nubo.stores import Stores
from nubo.stores.postgres import PgConnection, pg_read
from nubo.stores.transaction import Transaction

log = get_logger(__name__)

ORPHAN_AGE = timedelta(days=1)
PURGE_BATCH = 500


async def check_attachable(
    conn: PgConnection,
    owner: uuid.UUID,
    media_ids: Sequence[uuid.UUID],
    *,
    field: str,
    kinds: tuple[int, ...] = (0, 1),
) -> None:
    """Every id must be a ready media of `owner` of one of `kinds` (422 `media_not_owned` otherwise: unknown,
    another user's, still pending, or of another kind)."""
    if not media_ids:
        return
    row = await (
        await conn.execute(
            "SELECT count(*) AS n FROM content.media WHERE id = ANY(%s) AND owner_id = %s "
            f"AND processing_state = {READY:d} AND kind = ANY(%s)",
            (list(media_ids), owner, list(kinds)),
        )
    ).fetchone()
    if row is None or row["n"] != len(set(media_ids)):
        what = "ready images you uploaded" if kinds == (0,) else "ready media you uploaded"
        raise ValidationFailed(
            f"{field} must be {what}", code="media_not_owned", fields={field: "unknown, not yours or not ready"}
        )


async def release_media(tx: Transaction, stores: Stores, owner: uuid.UUID, media_ids: Sequence[uuid.UUID]) -> None:
    """Delete those of `media_ids` (the owner's) that nothing uses any more; their objects go after the commit.

    Call it after the write that let them go, in the same transaction."""
    if not media_ids:
        return
    rows = await (
        await tx.conn.execute(
            f"DELETE FROM content.media m WHERE m.id = ANY(%(ids)s) AND m.owner_id = %(owner)s AND NOT {in_use_sql()} "
            "RETURNING m.*",
            {"ids": list(media_ids), "owner": owner},
        )
    ).fetchall()
    tx.mark_deleted("media", rows)  # the Mongo and Redis copies go too
    prefixes = [_prefix(row["owner_id"], row["id"]) for row in rows]
    if prefixes:
        tx.on_commit(lambda: delete_objects(stores, prefixes))


def _prefix(owner: uuid.UUID, media_id: uuid.UUID) -> str:
    return f"media/{owner}/{media_id}/"


async def delete_objects(stores: Stores, prefixes: Sequence[str] | None = None) -> int:
    """Delete the objects of deleted media (these prefixes, or every listed one) and clear them from the list;
    how many objects were deleted."""
    total = 0
    while True:
        handled, deleted = await _delete_listed(stores, prefixes)
        total += deleted
        if handled < PURGE_BATCH:
            return total


async def _delete_listed(stores: Stores, prefixes: Sequence[str] | None) -> tuple[int, int]:
    async with pg_read(stores) as conn:
        rows = await (
            await conn.execute(
                "SELECT prefix FROM content.media_deleted WHERE %(all)s OR prefix = ANY(%(prefixes)s) "
                "ORDER BY deleted_at LIMIT %(limit)s",
                {"all": prefixes is None, "prefixes": list(prefixes or []), "limit": PURGE_BATCH},
            )
        ).fetchall()
    deleted = 0
    for row in rows:
        deleted += await stores.objects.delete_prefix(row["prefix"])
    if rows:
        async with pg_read(stores) as conn:
            await conn.execute(
                "DELETE FROM content.media_deleted WHERE prefix = ANY(%s)", ([row["prefix"] for row in rows],)
            )
    return len(rows), deleted


async def purge_media(stores: Stores, older_than: timedelta = ORPHAN_AGE, *, dry_run: bool = False) -> dict[str, int]:
    """`nubo db purge`'s media part: counts of `pending` uploads and `unattached` media deleted (older than
    `older_than`), and of `objects` deleted from the bucket (see the module)."""
    where = (
        f"m.created_at < now() - %(age)s AND (m.processing_state = {PENDING:d} "
        f"OR (m.processing_state = {READY:d} AND NOT {in_use_sql()}))"
    )
    query = (
        f"SELECT count(*) FILTER (WHERE m.processing_state = {PENDING:d}) AS pending, "
        f"count(*) FILTER (WHERE m.processing_state = {READY:d}) AS unattached FROM content.media m WHERE {where}"
    )
    async with stores.transaction() as tx:
        counts = await (await tx.conn.execute(query, {"age": older_than})).fetchone()
        assert counts is not None
        if not dry_run:
            rows = await (
                await tx.conn.execute(f"DELETE FROM content.media m WHERE {where} RETURNING m.*", {"age": older_than})
            ).fetchall()
            tx.mark_deleted("media", rows)  # the Mongo and Redis copies go too
    result = {"pending": int(counts["pending"]), "unattached": int(counts["unattached"]), "objects": 0}
    if not dry_run:
        result["objects"] = await delete_objects(stores)
    log.info("media_purged", extra={"dry_run": dry_run, **result})
    return result
