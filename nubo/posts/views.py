"""The API shapes of posts and comments, with their like and comment counts.

Counts are count queries on PostgreSQL, so they are exact under concurrency (no counter to drift).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from nubo.model import LikeTarget, Visibility
from nubo.stores import Stores
from nubo.stores.entities import Row
from nubo.stores.postgres import pg_read


def post_view(post: Row, *, like_count: int = 0, liked: bool = False, comment_count: int = 0) -> dict[str, Any]:
    """The API shape of a post."""
    return {
        "id": post["id"],
        "user_id": post["user_id"],
        "content": post.get("content"),
        "media_ids": list(post.get("media_ids") or []),
        "meta": post.get("meta") or {},
        "visibility": post.get("visibility", Visibility.PUBLIC),
        "location": post.get("location"),
        "created_at": post["created_at"],
        "updated_at": post.get("updated_at", post["created_at"]),
        "like_count": like_count,
        "liked": liked,
        "comment_count": comment_count,
    }


def comment_view(comment: Row, *, like_count: int = 0, liked: bool = False) -> dict[str, Any]:
    """The API shape of a comment."""
    return {
        "id": comment["id"],
        "post_id": comment["post_id"],
        "user_id": comment["user_id"],
        "content": comment["content"],
        "created_at": comment["created_at"],
        "updated_at": comment.get("updated_at", comment["created_at"]),
        "like_count": like_count,
        "liked": liked,
    }


async def like_counts(
    stores: Stores, viewer: uuid.UUID, target_type: int, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, tuple[int, bool]]:
    """`{id: (like count, liked by viewer)}` for targets of one type (exact: counted in PostgreSQL)."""
    if not ids:
        return {}
    async with pg_read(stores) as conn:
        rows = await (
            await conn.execute(
                "SELECT target_id, count(*) AS n, bool_or(user_id = %s) AS mine FROM content.likes "
                "WHERE target_type = %s AND target_id = ANY(%s) GROUP BY target_id",
                (viewer, target_type, list(set(ids))),
            )
        ).fetchall()
    return {row["target_id"]: (row["n"], bool(row["mine"])) for row in rows}


async def decorate_posts(stores: Stores, viewer: uuid.UUID, posts: Sequence[Row]) -> list[dict[str, Any]]:
    """API views of `posts` with their like and comment counts: one query (one round trip) for the whole
    list, counted in PostgreSQL so the figures are exact."""
    ids = [p["id"] for p in posts]
    if not ids:
        return []
    async with pg_read(stores) as conn:
        rows = await (
            await conn.execute(
                "SELECT t.id, "
                "(SELECT count(*) FROM content.likes l "
                f"WHERE l.target_type = {LikeTarget.POST:d} AND l.target_id = t.id) AS like_count, "
                "EXISTS (SELECT 1 FROM content.likes l "
                f"WHERE l.target_type = {LikeTarget.POST:d} AND l.target_id = t.id AND l.user_id = %(v)s) AS liked, "
                "(SELECT count(*) FROM content.comments c WHERE c.post_id = t.id) AS comment_count "
                "FROM unnest(%(ids)s::uuid[]) AS t(id)",
                {"v": viewer, "ids": list(dict.fromkeys(ids))},
            )
        ).fetchall()
    counts = {row["id"]: row for row in rows}
    return [
        post_view(
            p,
            like_count=counts[p["id"]]["like_count"],
            liked=counts[p["id"]]["liked"],
            comment_count=counts[p["id"]]["comment_count"],
        )
        for p in posts
    ]
