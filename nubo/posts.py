"""Posts, comments, likes and media: the content of nubo, read and written through the tiered store.

Every row goes through `stores.tiered` (PostgreSQL, then Mongo `*_recent`, then Redis). Visibility is decided
after the tier read, from PostgreSQL's current relations (blocks, follows, user state), never from a cached
decision: a post copied to Redis while public and later made followers-only is checked against the row's
current `visibility` and the viewer's current follows every time.

Rules:
- a post is visible to its author, and to anyone else when the author is active, neither blocks the other,
  and the post is public or the viewer follows the author; invisible posts are 404, never 403;
- only the author edits or deletes a post (403 for others who can see it);
- a comment is deleted by its author or by the post's author;
- likes are idempotent (one row per target and user, `UNIQUE` in PostgreSQL); counts are count queries on
  PostgreSQL, so they are exact under concurrency (no counter to drift);
- a post's `media_ids` must all be media owned by its author (422 otherwise);
- `meta` holds the mentions (`@username`, resolved to existing users) and hashtags (`#tag`) of the content.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from nubo import social
from nubo.errors import Forbidden, NotFound, ValidationFailed
from nubo.ids import new_id
from nubo.logs import get_logger
from nubo.model import FollowState, LikeTarget, MessageState, UserState, Visibility, active_user, blocked_either_way
from nubo.pagination import Page, make_page
from nubo.stores import Stores
from nubo.stores.derived import post_tag, user_tag
from nubo.stores.postgres import sql_text
from nubo.stores.tiered import Row, Transaction, normalize_row, pg_read

log = get_logger(__name__)

MAX_CONTENT_CHARS = 5000
MAX_COMMENT_CHARS = 2000
MAX_LOCATION_CHARS = 200
MAX_MEDIA_PER_POST = 10
MAX_MENTIONS = 50
MAX_HASHTAGS = 50
MAX_STORAGE_PATH_CHARS = 1024
MAX_MEDIA_BYTES = 10 * 1024**3
MAX_MEDIA_PIXELS_SIDE = 100_000

# The like targets under the names the routes and nubo.messaging use.
TARGET_POST, TARGET_MESSAGE, TARGET_COMMENT = LikeTarget.POST, LikeTarget.MESSAGE, LikeTarget.COMMENT
VISIBILITIES = {"public": Visibility.PUBLIC, "followers": Visibility.FOLLOWERS}

# `@name` where name follows the username rule of auth.users; not preceded by a word char (e-mail addresses).
MENTION_RE = re.compile(r"(?<![\w@.])@([A-Za-z0-9_.]{3,30})")
# `#tag`: letters, digits, underscore (any script); not preceded by a word char or `&` (HTML entities).
HASHTAG_RE = re.compile(r"(?<![\w#&])#(\w{1,100})")
MIME_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")

# SQL: `%(viewer)s` may see user `u` (self, or active and not blocked either way).
USER_VISIBLE_SQL = f"(u.id = %(viewer)s OR ({active_user('u')} AND NOT {blocked_either_way('u.id', '%(viewer)s')}))"


# ---- parsing and validation --------------------------------------------------------------------------------


def parse_meta(content: str | None) -> dict[str, list[str]]:
    """Mentioned usernames (lower-cased) and hashtags (lower-cased), each distinct, in order of appearance."""
    text = content or ""
    mentions = [m.rstrip(".").lower() for m in MENTION_RE.findall(text)]
    hashtags = [h.lower() for h in HASHTAG_RE.findall(text)]
    return {
        "mentions": list(dict.fromkeys(m for m in mentions if len(m) >= 3))[:MAX_MENTIONS],
        "hashtags": list(dict.fromkeys(hashtags))[:MAX_HASHTAGS],
    }


async def build_meta(tx: Transaction, content: str | None) -> dict[str, Any]:
    """`meta` of a post: hashtags, and the mentions that name existing active users (with their ids)."""
    parsed = parse_meta(content)
    mentions: list[dict[str, str]] = []
    if parsed["mentions"]:
        rows = await (
            await tx.conn.execute(
                "SELECT id, lower(username) AS name FROM auth.users u "
                f"WHERE lower(username) = ANY(%s) AND {active_user('u')}",
                (parsed["mentions"],),
            )
        ).fetchall()
        ids = {row["name"]: row["id"] for row in rows}
        mentions = [{"username": name, "user_id": str(ids[name])} for name in parsed["mentions"] if name in ids]
    return {"mentions": mentions, "hashtags": parsed["hashtags"]}


def _text(value: object, field: str, maximum: int, *, required: bool) -> str | None:
    if value is None:
        if required:
            raise ValidationFailed(f"{field} is required", fields={field: "required"})
        return None
    if not isinstance(value, str):
        raise ValidationFailed(f"{field} must be a string", fields={field: "not a string"})
    if "\x00" in value:
        raise ValidationFailed(f"{field} must not contain NUL characters", fields={field: "contains NUL"})
    if len(value) > maximum:
        raise ValidationFailed(
            f"{field} must be at most {maximum} characters",
            code="too_long",
            fields={field: f"max {maximum} characters"},
        )
    if required and not value.strip():
        raise ValidationFailed(f"{field} must not be empty", fields={field: "empty"})
    return value


def parse_visibility(value: object) -> Visibility:
    """`public`/`followers` (or the stored 0/1) into the stored small int."""
    if isinstance(value, str) and value in VISIBILITIES:
        return VISIBILITIES[value]
    if isinstance(value, int) and not isinstance(value, bool) and value in VISIBILITIES.values():
        return Visibility(value)
    raise ValidationFailed("visibility must be 'public' or 'followers'", fields={"visibility": "public|followers"})


def _media_list(value: object) -> list[uuid.UUID]:
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


async def _check_media_owner(tx: Transaction, owner: uuid.UUID, media_ids: list[uuid.UUID]) -> None:
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


# ---- visibility --------------------------------------------------------------------------------------------


async def _post_context(stores: Stores, viewer: uuid.UUID, post: Row) -> dict[str, Any]:
    """One PostgreSQL round trip: the viewer's relation to the author, and the post's counts."""
    async with pg_read(stores) as conn:
        row = await (
            await conn.execute(
                "SELECT (SELECT state FROM auth.users WHERE id = %(a)s) AS author_state, "
                f"{blocked_either_way('%(a)s', '%(v)s')} AS blocked, "
                "EXISTS (SELECT 1 FROM auth.follows WHERE follower_id = %(v)s AND followed_id = %(a)s "
                f"        AND state = {FollowState.ACTIVE:d}) AS following, "
                f"(SELECT count(*) FROM content.likes WHERE target_type = {LikeTarget.POST:d} AND target_id = %(p)s) "
                "AS like_count, "
                f"EXISTS (SELECT 1 FROM content.likes WHERE target_type = {LikeTarget.POST:d} AND target_id = %(p)s "
                "        AND user_id = %(v)s) AS liked, "
                "(SELECT count(*) FROM content.comments WHERE post_id = %(p)s) AS comment_count",
                {"a": post["user_id"], "v": viewer, "p": post["id"]},
            )
        ).fetchone()
    assert row is not None
    return dict(row)


def may_see(viewer: uuid.UUID, post: Row, ctx: Mapping[str, Any]) -> bool:
    """The visibility rule, applied to a post from any tier and relations fresh from PostgreSQL."""
    if post["user_id"] == viewer:
        return True
    if ctx["author_state"] != UserState.ACTIVE or ctx["blocked"]:
        return False
    return post.get("visibility") == Visibility.PUBLIC or bool(ctx["following"])


async def visible_post(stores: Stores, viewer: uuid.UUID, post_id: uuid.UUID) -> tuple[Row, dict[str, Any]]:
    """The post (through the tiers) and its context when the viewer may see it, else NotFound.

    The context (relations and counts) comes from Redis while no write changed what it was computed from
    (:mod:`nubo.stores.derived`): a block, an unfollow, a like or a comment shows on the next read."""
    post = await stores.tiered.get("posts", post_id)
    if post is None:
        raise NotFound("No such post", code="post_not_found")
    name, tags = _context_name_and_tags(viewer, post["user_id"], post_id)
    ctx = dict(await stores.derived.get(name, tags, lambda: _post_context(stores, viewer, post)))
    if not may_see(viewer, post, ctx):
        raise NotFound("No such post", code="post_not_found")
    return post, ctx


@lru_cache(maxsize=8192)
def _context_name_and_tags(viewer: uuid.UUID, author: uuid.UUID, post_id: uuid.UUID) -> tuple[str, tuple[str, ...]]:
    """The derived-cache name of a post's context for a viewer, and what it depends on (built once per hot
    pair: the strings cost more than the lookup)."""
    return f"post-context:{viewer}:{post_id}", (user_tag(viewer), user_tag(author), post_tag(post_id))


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


# ---- posts -------------------------------------------------------------------------------------------------


async def create_post(
    stores: Stores,
    author: uuid.UUID,
    *,
    content: object = None,
    media_ids: object = (),
    visibility: object = "public",
    location: object = None,
) -> dict[str, Any]:
    """Create a post (content and/or media); returns its API view. Fans it out to followers' feeds."""
    text = _text(content, "content", MAX_CONTENT_CHARS, required=False)
    media = _media_list(media_ids)
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
        "location": _text(location, "location", MAX_LOCATION_CHARS, required=False),
    }
    async with stores.tiered.transaction() as tx:
        await _check_media_owner(tx, author, media)
        values["meta"] = await build_meta(tx, text)
        row = await tx.insert("posts", values)
    from nubo import feed  # feed imports this module; the fan-out hook is looked up at call time

    feed.schedule_fan_out(stores, row)
    return post_view(row)


async def get_post(stores: Stores, viewer: uuid.UUID, post_id: uuid.UUID) -> dict[str, Any]:
    post, ctx = await visible_post(stores, viewer, post_id)
    return post_view(post, like_count=ctx["like_count"], liked=ctx["liked"], comment_count=ctx["comment_count"])


async def _lock_own_post(tx: Transaction, viewer: uuid.UUID, post_id: uuid.UUID) -> Row:
    """The post row locked for update in `tx`; 404 when gone, 403 when the viewer is not its author."""
    row = await (await tx.conn.execute("SELECT * FROM content.posts WHERE id = %s FOR UPDATE", (post_id,))).fetchone()
    if row is None:
        raise NotFound("No such post", code="post_not_found")
    if row["user_id"] != viewer:
        raise Forbidden("Only the author can change this post", code="not_author")
    return normalize_row(row)


async def update_post(
    stores: Stores, viewer: uuid.UUID, post_id: uuid.UUID, changes: Mapping[str, object]
) -> dict[str, Any]:
    """Change content / visibility / location / media_ids of one's own post (404 if invisible, 403 if not
    the author). Unknown fields are rejected by the caller's schema; absent fields are left as they are."""
    await visible_post(stores, viewer, post_id)
    values: dict[str, Any] = {}
    if "visibility" in changes:
        values["visibility"] = parse_visibility(changes["visibility"])
    if "location" in changes:
        values["location"] = _text(changes["location"], "location", MAX_LOCATION_CHARS, required=False)
    if "content" in changes:
        values["content"] = _text(changes["content"], "content", MAX_CONTENT_CHARS, required=False)
    if "media_ids" in changes:
        values["media_ids"] = _media_list(changes["media_ids"])
    async with stores.tiered.transaction() as tx:
        current = await _lock_own_post(tx, viewer, post_id)
        merged = {**current, **values}
        if not ((merged.get("content") or "").strip() or merged.get("media_ids")):
            raise ValidationFailed("a post needs content or media", code="empty_post", fields={"content": "empty"})
        if "media_ids" in values:
            await _check_media_owner(tx, viewer, values["media_ids"])
        if "content" in values:
            values["meta"] = await build_meta(tx, values["content"])
        # Always write (even with no change) so updated_at moves and the copies are refreshed.
        row = await tx.update("posts", post_id, values or {"visibility": current["visibility"]})
    assert row is not None
    return await get_post(stores, viewer, post_id)


async def delete_post(stores: Stores, viewer: uuid.UUID, post_id: uuid.UUID) -> None:
    """Delete one's own post with its comments and the likes on both, from every tier."""
    await visible_post(stores, viewer, post_id)
    async with stores.tiered.transaction() as tx:
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
        await tx.delete("posts", post_id)


async def list_posts(
    stores: Stores, viewer: uuid.UUID, *, user: uuid.UUID | None, limit: int, before: uuid.UUID | None
) -> Page[dict[str, Any]]:
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


# ---- comments ----------------------------------------------------------------------------------------------


async def add_comment(stores: Stores, viewer: uuid.UUID, post_id: uuid.UUID, content: object) -> dict[str, Any]:
    text = _text(content, "content", MAX_COMMENT_CHARS, required=True)
    await visible_post(stores, viewer, post_id)
    async with stores.tiered.transaction() as tx:
        row = await tx.insert("comments", {"id": new_id(), "post_id": post_id, "user_id": viewer, "content": text})
    return comment_view(row)


async def list_comments(
    stores: Stores, viewer: uuid.UUID, post_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
) -> Page[dict[str, Any]]:
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
    items = [
        comment_view(c, like_count=likes.get(c["id"], (0, False))[0], liked=likes.get(c["id"], (0, False))[1])
        for c in page.items
    ]
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
    async with stores.tiered.transaction() as tx:
        await tx.delete_where(
            "likes", sql_text(f"target_type = {LikeTarget.COMMENT:d} AND target_id = %s"), (comment_id,)
        )
        await tx.delete("comments", comment_id)


# ---- likes -------------------------------------------------------------------------------------------------


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


async def _like_state(stores: Stores, viewer: uuid.UUID, target_type: int, target_id: uuid.UUID) -> dict[str, Any]:
    count, liked = (await like_counts(stores, viewer, target_type, [target_id])).get(target_id, (0, False))
    return {"target_id": target_id, "liked": liked, "like_count": count}


async def like(stores: Stores, viewer: uuid.UUID, target_type: int, target_id: uuid.UUID) -> dict[str, Any]:
    """Like a visible target; liking twice is a no-op. Returns `{target_id, liked, like_count}`."""
    await check_target(stores, viewer, target_type, target_id)
    async with stores.tiered.transaction() as tx:
        with contextlib.suppress(LookupError):  # already liked: idempotent
            await tx.insert(
                "likes",
                {"id": new_id(), "target_type": target_type, "target_id": target_id, "user_id": viewer},
                on_conflict_do_nothing=True,
            )
    return await _like_state(stores, viewer, target_type, target_id)


async def unlike(stores: Stores, viewer: uuid.UUID, target_type: int, target_id: uuid.UUID) -> dict[str, Any]:
    """Remove the viewer's like (a no-op when there is none)."""
    await check_target(stores, viewer, target_type, target_id)
    async with stores.tiered.transaction() as tx:
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


# ---- media -------------------------------------------------------------------------------------------------


def _optional_side(value: object, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MEDIA_PIXELS_SIDE:
        raise ValidationFailed(
            f"{field} must be an integer between 1 and {MAX_MEDIA_PIXELS_SIDE}",
            fields={field: f"1..{MAX_MEDIA_PIXELS_SIDE}"},
        )
    return value


def validate_media(storage_path: object, mime: object, size: object, width: object, height: object) -> dict[str, Any]:
    """The columns of a media row from client input (owner and id are added by the caller)."""
    path = _text(storage_path, "storage_path", MAX_STORAGE_PATH_CHARS, required=True)
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


def media_view(row: Row) -> dict[str, Any]:
    return {
        key: row.get(key)
        for key in (
            "id",
            "owner_id",
            "storage_path",
            "mime",
            "size",
            "width",
            "height",
            "processing_state",
            "created_at",
        )
    }


async def create_media(stores: Stores, owner: uuid.UUID, **fields: object) -> dict[str, Any]:
    """Record a media's metadata; the caller owns it."""
    values = validate_media(
        fields.get("storage_path"),
        fields.get("mime"),
        fields.get("size"),
        fields.get("width"),
        fields.get("height"),
    )
    async with stores.tiered.transaction() as tx:
        row = await tx.insert("media", {"id": new_id(), "owner_id": owner, **values})
    return media_view(row)


async def get_media(stores: Stores, viewer: uuid.UUID, media_id: uuid.UUID) -> dict[str, Any]:
    """A media's metadata; 404 when absent or when its owner is hidden from the viewer."""
    row = await stores.tiered.get("media", media_id)
    if row is None or (row["owner_id"] != viewer and await social.hidden_authors(stores, viewer, [row["owner_id"]])):
        raise NotFound("No such media", code="media_not_found")
    return media_view(row)
