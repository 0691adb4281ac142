"""Posts: create, read, change, delete and list, through the tiered store.

Every row goes through `stores.tiered` (PostgreSQL, then Mongo `posts_recent`, then Redis). Only the author
edits or deletes a post (403 for others who can see it, 404 for those who cannot); deleting a post deletes
its comments, the likes on both, and its media (unless used elsewhere, e.g. as a profile picture).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from nubo import social
from nubo.errors import Conflict, Forbidden, NotFound, ValidationFailed
from nubo.ids import new_id
from nubo.media import release_media
from nubo.model import FollowState, LikeTarget, Visibility
from nubo.pagination import Page, make_page
from nubo.posts.media import check_media_owner, media_id_list
from nubo.posts.parsing import MAX_CONTENT_CHARS, MAX_LOCATION_CHARS, build_meta, checked_text, parse_visibility
from nubo.posts.views import PostView, decorate_posts, post_view, with_media
from nubo.posts.visibility import USER_VISIBLE_SQL, visible_post
from nubo.stores import Stores
from nubo.stores.entities import Row, normalize_row
from nubo.stores.postgres import pg_read, sql_text
from nubo.stores.transaction import Transaction


async def create_post(
    stores: Stores,
    author: uuid.UUID,
    *,
    content: object = None,
    media_ids: object = (),
    visibility: object = "public",
    location: object = None,
    on_created: Callable[[Row], Awaitable[object]] | None = None,
) -> PostView:
    """Create a post (content and/or media); returns its API view. Fans it out to followers' feeds;
    `on_created` (the notifications of its @mentions) runs after the commit with the post row."""
    text = checked_text(content, "content", MAX_CONTENT_CHARS, required=False)
    media = media_id_list(media_ids)
    if not (text and text.strip()) and not media:
        raise ValidationFailed(
            "a post needs content or media",
            code="empty_post",
            fields={"content": "empty", "media_ids": "empty"},
        )
    values: dict[str, Any] = {
        "id": new_id(),
        "user_id": author,
        "content": text,
        "media_ids": media,
        "visibility": parse_visibility(visibility),
        "location": checked_text(location, "location", MAX_LOCATION_CHARS, required=False),
    }
    async with stores.transaction() as tx:
        await check_media_owner(tx, author, media)
        values["meta"] = await build_meta(tx, text)
        row = await tx.insert("posts", values)
        tx.on_commit(lambda: stores.feed_fan_out.add(row["id"], row["user_id"]))  # to followers' feeds
        if on_created is not None:
            tx.on_commit(lambda: on_created(row))
    return (await with_media(stores, [post_view(row)]))[0]


async def get_post(stores: Stores, viewer: uuid.UUID, post_id: uuid.UUID) -> PostView:
    post, ctx = await visible_post(stores, viewer, post_id)
    view = post_view(
        post,
        like_count=ctx.like_count,
        liked=ctx.liked,
        comment_count=ctx.comment_count,
        view_count=ctx.view_count,
    )
    return (await with_media(stores, [view]))[0]


async def _lock_own_post(tx: Transaction, viewer: uuid.UUID, post_id: uuid.UUID) -> Row:
    """The post row locked for update in `tx`; 404 when gone, 403 when the viewer is not its author."""
    row = await (await tx.conn.execute("SELECT * FROM content.posts WHERE id = %s FOR UPDATE", (post_id,))).fetchone()
    if row is None:
        raise NotFound("No such post", code="post_not_found")
    if row["user_id"] != viewer:
        raise Forbidden("Only the author can change this post", code="not_author")
    return normalize_row(row)


async def update_post(stores: Stores, viewer: uuid.UUID, post_id: uuid.UUID, changes: Mapping[str, object]) -> PostView:
    """Change content / visibility / location / media_ids of one's own post (404 if invisible, 403 if not
    the author). Unknown fields are rejected by the caller's schema; absent fields are left as they are."""
    if not changes:
        raise ValidationFailed(
            "Nothing to change", fields={"body": "at least one of content, media_ids, visibility, location"}
        )
    await visible_post(stores, viewer, post_id)
    values: dict[str, Any] = {}
    if "visibility" in changes:
        values["visibility"] = parse_visibility(changes["visibility"])
    if "location" in changes:
        values["location"] = checked_text(changes["location"], "location", MAX_LOCATION_CHARS, required=False)
    if "content" in changes:
        values["content"] = checked_text(changes["content"], "content", MAX_CONTENT_CHARS, required=False)
    if "media_ids" in changes:
        values["media_ids"] = media_id_list(changes["media_ids"])
    async with stores.transaction() as tx:
        current = await _lock_own_post(tx, viewer, post_id)
        merged = {**current, **values}
        if not ((merged.get("content") or "").strip() or merged.get("media_ids")):
            # 409: whether the change empties the post depends on the stored post, not on the request alone
            raise Conflict("a post needs content or media", code="empty_post", fields={"content": "empty"})
        if "media_ids" in values:
            await check_media_owner(tx, viewer, values["media_ids"])
        if "content" in values:
            values["meta"] = await build_meta(tx, values["content"])
        row = await tx.update("posts", post_id, values)
        if "media_ids" in values:  # media taken off the post and used nowhere else is deleted
            dropped = set(current.get("media_ids") or []) - set(values["media_ids"])
            await release_media(tx, stores, viewer, list(dropped))
    assert row is not None
    return await get_post(stores, viewer, post_id)


async def delete_post(stores: Stores, viewer: uuid.UUID, post_id: uuid.UUID) -> None:
    """Delete one's own post with its comments and the likes on both, from every tier."""
    await visible_post(stores, viewer, post_id)
    async with stores.transaction() as tx:
        await _lock_own_post(tx, viewer, post_id)
        comments = await tx.delete_where("comments", sql_text("post_id = %s"), (post_id,))
        await tx.delete_where(
            "likes",
            sql_text(
                f"(target_type = {LikeTarget.POST:d} AND target_id = %s) "
                f"OR (target_type = {LikeTarget.COMMENT:d} AND target_id = ANY(%s))"
            ),
            (post_id, [c["id"] for c in comments]),
        )
        post = await tx.delete("posts", post_id)
        await release_media(tx, stores, viewer, list((post or {}).get("media_ids") or []))


async def list_posts(
    stores: Stores, viewer: uuid.UUID, *, user: uuid.UUID | None, limit: int, before: uuid.UUID | None
) -> Page[PostView]:
    """Posts the viewer may see, newest first (all users, or one user's); the cursor is the post id.

    The visibility rule runs in the query itself (on PostgreSQL, the truth), so pages are always full.
    """
    if user is not None:
        await social.visible_user(stores, viewer, user)
    async with pg_read(stores) as conn:
        rows = await (
            await conn.execute(
                "SELECT p.* FROM content.posts p JOIN auth.users u ON u.id = p.user_id "
                "WHERE (%(user)s::uuid IS NULL OR p.user_id = %(user)s) "
                "AND (%(before)s::uuid IS NULL OR p.id < %(before)s) "
                f"AND {USER_VISIBLE_SQL} "
                f"AND (p.visibility = {Visibility.PUBLIC:d} OR p.user_id = %(viewer)s OR EXISTS (SELECT 1 "
                "     FROM auth.follows f WHERE f.follower_id = %(viewer)s AND f.followed_id = p.user_id "
                f"     AND f.state = {FollowState.ACTIVE:d})) "
                "ORDER BY p.id DESC LIMIT %(n)s",
                {"user": user, "before": before, "viewer": viewer, "n": limit + 1},
            )
        ).fetchall()
    page = make_page([normalize_row(r) for r in rows], limit)
    return Page(items=await decorate_posts(stores, viewer, page.items), next=page.next)
