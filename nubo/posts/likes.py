"""Likes of posts, comments and messages: one implementation for every kind of target.

A target is liked only by those who may see it (404 otherwise). Likes are idempotent: one row per target and
user (`UNIQUE` in PostgreSQL), so liking twice or unliking what was not liked changes nothing.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable

from nubo.errors import NotFound, ValidationFailed
from nubo.ids import new_id
from nubo.model import LikeTarget, MessageState
from nubo.pagination import Page, make_page
from nubo.posts.comments import visible_comment
from nubo.posts.views import LikeState, like_counts
from nubo.posts.visibility import USER_VISIBLE_SQL, visible_post
from nubo.stores import Stores
from nubo.stores.entities import Row, normalize_row
from nubo.stores.postgres import pg_read, sql_text

# The like targets under the names the routes and nubo.messaging use.
TARGET_POST, TARGET_MESSAGE, TARGET_COMMENT = LikeTarget.POST, LikeTarget.MESSAGE, LikeTarget.COMMENT


async def _check_message_member(stores: Stores, viewer: uuid.UUID, message_id: uuid.UUID) -> None:
    """A message can be liked by members of its conversation only (404 for anyone else)."""
    async with pg_read(stores) as conn:
        row = await (
            await conn.execute(
                "SELECT 1 FROM messaging.message_index m JOIN messaging.conversation_members cm "
                "ON cm.conversation_id = m.conversation_id AND cm.user_id = %s "
                "WHERE m.id = %s AND m.state <> %s",
                (viewer, message_id, MessageState.DELETED),
            )
        ).fetchone()
    if row is None:
        raise NotFound("No such message", code="message_not_found")


async def check_target(stores: Stores, viewer: uuid.UUID, target_type: int, target_id: uuid.UUID) -> None:
    """NotFound unless the viewer may see (hence like) the target."""
    if target_type == LikeTarget.POST:
        await visible_post(stores, viewer, target_id)
    elif target_type == LikeTarget.COMMENT:
        await visible_comment(stores, viewer, target_id)
    elif target_type == LikeTarget.MESSAGE:
        await _check_message_member(stores, viewer, target_id)
    else:
        raise ValidationFailed("unknown like target", fields={"target_type": "0, 1 or 2"})


async def _like_state(stores: Stores, viewer: uuid.UUID, target_type: int, target_id: uuid.UUID) -> LikeState:
    count, liked = (await like_counts(stores, viewer, target_type, [target_id])).get(target_id, (0, False))
    return LikeState(target_id=target_id, liked=liked, like_count=count)


async def like(
    stores: Stores,
    viewer: uuid.UUID,
    target_type: int,
    target_id: uuid.UUID,
    *,
    on_created: Callable[[Row], Awaitable[object]] | None = None,
) -> LikeState:
    """Like a visible target; liking twice is a no-op. Returns the like state after the call.

    `on_created` (the notification) runs after the commit of a like created now, with its row."""
    await check_target(stores, viewer, target_type, target_id)
    async with stores.transaction() as tx:
        with contextlib.suppress(LookupError):  # already liked: idempotent
            row = await tx.insert(
                "likes",
                {"id": new_id(), "target_type": target_type, "target_id": target_id, "user_id": viewer},
                on_conflict_do_nothing=True,
            )
            if on_created is not None:
                tx.on_commit(lambda: on_created(row))
    return await _like_state(stores, viewer, target_type, target_id)


async def unlike(stores: Stores, viewer: uuid.UUID, target_type: int, target_id: uuid.UUID) -> LikeState:
    """Remove the viewer's like (a no-op when there is none)."""
    await check_target(stores, viewer, target_type, target_id)
    async with stores.transaction() as tx:
        await tx.delete_where(
            "likes",
            sql_text("target_type = %s AND target_id = %s AND user_id = %s"),
            (target_type, target_id, viewer),
        )
    return await _like_state(stores, viewer, target_type, target_id)


async def list_likers(
    stores: Stores, viewer: uuid.UUID, post_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
) -> Page[Row]:
    """Users who liked a visible post, most recent like first; the cursor is the like id.

    Users hidden from the viewer are left out. Items are user rows (callers keep public fields only).
    """
    await visible_post(stores, viewer, post_id)
    async with pg_read(stores) as conn:
        rows = await (
            await conn.execute(
                "SELECT l.id AS like_id, u.* FROM content.likes l JOIN auth.users u ON u.id = l.user_id "
                f"WHERE l.target_type = {LikeTarget.POST:d} AND l.target_id = %(post)s "
                "AND (%(before)s::uuid IS NULL OR l.id < %(before)s) "
                f"AND {USER_VISIBLE_SQL} ORDER BY l.id DESC LIMIT %(n)s",
                {"post": post_id, "before": before, "viewer": viewer, "n": limit + 1},
            )
        ).fetchall()
    return make_page([normalize_row(r) for r in rows], limit, key=lambda r: r["like_id"])
