"""Comments on posts: a comment is seen by those who see its post and its author, and deleted by its author or
by the post's author.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Collection

from nubo import social
from nubo.errors import Forbidden, NotFound
from nubo.ids import new_id
from nubo.model import LikeTarget
from nubo.pagination import Page, make_page
from nubo.posts.parsing import MAX_COMMENT_CHARS, build_meta, checked_text
from nubo.posts.views import CommentView, comment_view, like_counts
from nubo.posts.visibility import USER_VISIBLE_SQL, visible_post
from nubo.stores import Stores
from nubo.stores.entities import Row, normalize_row
from nubo.stores.postgres import pg_read, sql_text


async def add_comment(
    stores: Stores,
    viewer: uuid.UUID,
    post_id: uuid.UUID,
    content: object,
    *,
    on_created: Callable[[Row], Awaitable[object]] | None = None,
) -> CommentView:
    """Comment on a visible post. `on_created` (the notifications) runs after the commit with the comment row
    and its parsed `meta` (the @mentions of existing users)."""
    text = checked_text(content, "content", MAX_COMMENT_CHARS, required=True)
    await visible_post(stores, viewer, post_id)
    async with stores.transaction() as tx:
        row = await tx.insert("comments", {"id": new_id(), "post_id": post_id, "user_id": viewer, "content": text})
        if on_created is not None:
            created = {**row, "meta": await build_meta(tx, text)}
            tx.on_commit(lambda: on_created(created))
    return comment_view(row)


async def earlier_commenters(
    stores: Stores, post_id: uuid.UUID, before: uuid.UUID, *, exclude: Collection[uuid.UUID], limit: int = 50
) -> list[uuid.UUID]:
    """The users who commented on a post before comment `before`, most recent first, `exclude` left out."""
    async with pg_read(stores) as conn:
        rows = await (
            await conn.execute(
                "SELECT user_id FROM (SELECT DISTINCT ON (user_id) user_id, id FROM content.comments "
                "WHERE post_id = %s AND id < %s AND user_id <> ALL(%s) ORDER BY user_id, id DESC) latest "
                "ORDER BY id DESC LIMIT %s",
                (post_id, before, list(exclude), limit),
            )
        ).fetchall()
    return [row["user_id"] for row in rows]


async def list_comments(
    stores: Stores, viewer: uuid.UUID, post_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
) -> Page[CommentView]:
    """Comments of a visible post, newest first; comments by users hidden from the viewer are left out."""
    await visible_post(stores, viewer, post_id)
    async with pg_read(stores) as conn:
        rows = await (
            await conn.execute(
                "SELECT c.* FROM content.comments c JOIN auth.users u ON u.id = c.user_id "
                "WHERE c.post_id = %(post)s AND (%(before)s::uuid IS NULL OR c.id < %(before)s) "
                f"AND {USER_VISIBLE_SQL} ORDER BY c.id DESC LIMIT %(n)s",
                {"post": post_id, "before": before, "viewer": viewer, "n": limit + 1},
            )
        ).fetchall()
    page = make_page([normalize_row(r) for r in rows], limit)
    likes = await like_counts(stores, viewer, LikeTarget.COMMENT, [c["id"] for c in page.items])
    items = []
    for comment in page.items:
        count, liked = likes.get(comment["id"], (0, False))
        items.append(comment_view(comment, like_count=count, liked=liked))
    return Page(items=items, next=page.next)


async def visible_comment(stores: Stores, viewer: uuid.UUID, comment_id: uuid.UUID) -> tuple[Row, Row]:
    """(comment, post) when the viewer may see both the post and the comment's author, else NotFound."""
    comment = await stores.tiered.get("comments", comment_id)
    if comment is None:
        raise NotFound("No such comment", code="comment_not_found")
    try:
        post, _ = await visible_post(stores, viewer, comment["post_id"])
    except NotFound:
        raise NotFound("No such comment", code="comment_not_found") from None
    if comment["user_id"] != viewer and await social.hidden_authors(stores, viewer, [comment["user_id"]]):
        raise NotFound("No such comment", code="comment_not_found")
    return comment, post


async def delete_comment(stores: Stores, viewer: uuid.UUID, comment_id: uuid.UUID) -> None:
    """Delete a comment: its author or the post's author may; others get 403 (404 if they cannot see it)."""
    comment = await stores.tiered.get("comments", comment_id)
    if comment is None:
        raise NotFound("No such comment", code="comment_not_found")
    post = await stores.tiered.get("posts", comment["post_id"])
    if viewer not in (comment["user_id"], post["user_id"] if post else None):
        await visible_comment(stores, viewer, comment_id)
        raise Forbidden("Only the comment's author or the post's author can delete it", code="not_author")
    async with stores.transaction() as tx:
        await tx.delete_where(
            "likes", sql_text(f"target_type = {LikeTarget.COMMENT:d} AND target_id = %s"), (comment_id,)
        )
        await tx.delete("comments", comment_id)
