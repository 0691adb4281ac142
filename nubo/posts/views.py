"""The API shapes of content (posts, comments, likes), with their like and comment counts and media.

Each shape is a msgspec Struct defined once, here: the domain returns it, the HTTP routes return it as is
(Litestar encodes and documents Structs natively), and an event that carries content carries the same Struct.
Field order is the order of the JSON keys clients receive; fields are never omitted, except in
:class:`PostSummary`, which keeps only what the post it was made from holds.

Counts are count queries on PostgreSQL, so they are exact under concurrency (no counter to drift); view
counts are PostgreSQL's too, written in bulk from Redis (:mod:`nubo.posts.view_counts`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from nubo.media import MediaView, media_views
from nubo.model import LikeTarget, Visibility
from nubo.stores import Stores
from nubo.stores.entities import Row
from nubo.stores.postgres import pg_read


class Mention(msgspec.Struct, gc=False):
    """A user named in a post's content (`@username`) who existed and was active when it was written."""

    user_id: str
    username: str


class PostMeta(msgspec.Struct, gc=False):
    """Parsed from the content: mentioned users (existing ones, with ids) and hashtags, lower-cased."""

    mentions: list[Mention]
    hashtags: list[str]


class PostView(msgspec.Struct, gc=False):
    """A post with its like and comment counts; `visibility` as in requests, `public` or `followers`."""

    id: uuid.UUID
    user_id: uuid.UUID
    content: str | None
    media_ids: list[uuid.UUID]
    meta: PostMeta
    visibility: VisibilityName
    location: str | None
    created_at: datetime
    updated_at: datetime
    like_count: int
    liked: bool
    comment_count: int
    view_count: int  # distinct viewers per day, summed (written in bulk: lags by up to NUBO_VIEW_FLUSH)
    media: list[MediaView] = msgspec.field(default_factory=list)  # the ready media of media_ids, in order


class CommentView(msgspec.Struct, gc=False):
    """A comment with its like count."""

    id: uuid.UUID
    post_id: uuid.UUID
    user_id: uuid.UUID
    content: str
    created_at: datetime
    updated_at: datetime
    like_count: int
    liked: bool


class LikeState(msgspec.Struct, gc=False):
    """The caller's like on a target after the call, and the target's like count."""

    target_id: uuid.UUID
    liked: bool
    like_count: int


class PostSummary(msgspec.Struct, kw_only=True, gc=False):
    """What a `post.new` push carries: a post's own fields, without counts. Fields the post it is made from
    does not hold are left out of the JSON (UNSET), as the push has always left out absent keys."""

    id: uuid.UUID | UnsetType = UNSET
    user_id: uuid.UUID
    content: str | UnsetType | None = UNSET
    visibility: VisibilityName | UnsetType = UNSET
    media_ids: list[uuid.UUID] | UnsetType = UNSET
    created_at: datetime | UnsetType = UNSET


def post_summary(post: Mapping[str, Any]) -> PostSummary:
    """The summary of a post row (or view); `user_id` is required, the other fields are kept when present."""
    fields = {name: post[name] for name in PostSummary.__struct_fields__ if name in post}
    if "visibility" in fields:
        fields["visibility"] = visibility_name(fields["visibility"])
    return PostSummary(**fields)


VisibilityName = Literal["public", "followers"]
"""How the API writes a post's visibility, in requests and responses alike (stored as a small int)."""


def visibility_name(value: object) -> VisibilityName:
    """The API name of a stored visibility (a name is kept as is)."""
    if value in ("public", "followers"):
        return value
    return "followers" if value == Visibility.FOLLOWERS else "public"


def post_meta(meta: Mapping[str, Any] | None) -> PostMeta:
    """The typed `meta` of a stored post (a JSON object; absent or partial on old rows)."""
    meta = meta or {}
    mentions = [Mention(user_id=m["user_id"], username=m["username"]) for m in meta.get("mentions", [])]
    return PostMeta(mentions=mentions, hashtags=list(meta.get("hashtags", [])))


def _updated_at(row: Row) -> datetime:
    """`updated_at`, or `created_at` when the row has none."""
    updated: datetime = row["updated_at"] if "updated_at" in row else row["created_at"]
    return updated


def post_view(
    post: Row, *, like_count: int = 0, liked: bool = False, comment_count: int = 0, view_count: int = 0
) -> PostView:
    """The API shape of a post."""
    return PostView(
        id=post["id"],
        user_id=post["user_id"],
        content=post.get("content"),
        media_ids=list(post.get("media_ids") or []),
        meta=post_meta(post.get("meta")),
        visibility=visibility_name(post.get("visibility", Visibility.PUBLIC)),
        location=post.get("location"),
        created_at=post["created_at"],
        updated_at=_updated_at(post),
        like_count=like_count,
        liked=liked,
        comment_count=comment_count,
        view_count=view_count,
    )


def comment_view(comment: Row, *, like_count: int = 0, liked: bool = False) -> CommentView:
    """The API shape of a comment."""
    return CommentView(
        id=comment["id"],
        post_id=comment["post_id"],
        user_id=comment["user_id"],
        content=comment["content"],
        created_at=comment["created_at"],
        updated_at=_updated_at(comment),
        like_count=like_count,
        liked=liked,
    )


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


async def decorate_posts(stores: Stores, viewer: uuid.UUID, posts: Sequence[Row]) -> list[PostView]:
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
                "(SELECT count(*) FROM content.comments c WHERE c.post_id = t.id) AS comment_count, "
                "(SELECT coalesce(sum(v.views), 0)::bigint FROM content.post_view_days v WHERE v.post_id = t.id) "
                "AS view_count "
                "FROM unnest(%(ids)s::uuid[]) AS t(id)",
                {"v": viewer, "ids": list(dict.fromkeys(ids))},
            )
        ).fetchall()
    counts = {row["id"]: row for row in rows}
    views = [
        post_view(
            p,
            like_count=counts[p["id"]]["like_count"],
            liked=counts[p["id"]]["liked"],
            comment_count=counts[p["id"]]["comment_count"],
            view_count=counts[p["id"]]["view_count"],
        )
        for p in posts
    ]
    return await with_media(stores, views)


async def with_media(stores: Stores, views: list[PostView]) -> list[PostView]:
    """Fill each view's `media` (the ready media of its `media_ids`, in order, with their URLs)."""
    found = await media_views(stores, [mid for view in views for mid in view.media_ids])
    for view in views:
        view.media = [found[mid] for mid in view.media_ids if mid in found]
    return views
