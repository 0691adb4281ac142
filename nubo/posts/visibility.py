"""Who may see a post: decided after the tier read, from PostgreSQL's current relations, never from a cached
decision.

A post is visible to its author, and to anyone else when the author is active, neither blocks the other, and
the post is public or the viewer follows the author; invisible posts are 404, never 403. A post copied to
Redis while public and later made followers-only is checked against the row's current `visibility` and the
viewer's current follows every time.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import msgspec

from nubo.errors import NotFound
from nubo.model import FollowState, LikeTarget, UserState, Visibility, active_user, blocked_either_way
from nubo.stores import Stores
from nubo.stores.derived import post_tag, user_tag
from nubo.stores.entities import Row
from nubo.stores.postgres import pg_read

# SQL: `%(viewer)s` may see user `u` (self, or active and not blocked either way).
USER_VISIBLE_SQL = f"(u.id = %(viewer)s OR ({active_user('u')} AND NOT {blocked_either_way('u.id', '%(viewer)s')}))"


class PostContext(msgspec.Struct, frozen=True, gc=False):
    """A viewer's relation to a post's author (`author_state` None when the author is gone) and the post's
    counts, fresh from PostgreSQL or from the derived cache."""

    author_state: int | None
    blocked: bool
    following: bool
    like_count: int
    liked: bool
    comment_count: int
    view_count: int = 0  # a default: contexts cached before the field existed still decode

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> PostContext:
        """The context from its stored form (a JSON object in the derived cache, or a PostgreSQL row)."""
        return cls(**{name: values[name] for name in cls.__struct_fields__ if name in values})


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
                "(SELECT count(*) FROM content.comments WHERE post_id = %(p)s) AS comment_count, "
                "(SELECT coalesce(sum(views), 0)::bigint FROM content.post_view_days WHERE post_id = %(p)s) "
                "AS view_count",
                {"a": post["user_id"], "v": viewer, "p": post["id"]},
            )
        ).fetchone()
    assert row is not None
    return dict(row)


def may_see(viewer: uuid.UUID, post: Row, ctx: PostContext) -> bool:
    """The visibility rule, applied to a post from any tier and relations fresh from PostgreSQL."""
    if post["user_id"] == viewer:
        return True
    if ctx.author_state != UserState.ACTIVE or ctx.blocked:
        return False
    return post.get("visibility") == Visibility.PUBLIC or ctx.following


async def visible_post(stores: Stores, viewer: uuid.UUID, post_id: uuid.UUID) -> tuple[Row, PostContext]:
    """The post (through the tiers) and its context when the viewer may see it, else NotFound.

    The context (relations and counts) comes from Redis while no write changed what it was computed from
    (:mod:`nubo.stores.derived`): a block, an unfollow, a like or a comment shows on the next read."""
    post = await stores.tiered.get("posts", post_id)
    if post is None:
        raise NotFound("No such post", code="post_not_found")
    name, tags = _context_name_and_tags(viewer, post["user_id"], post_id)
    ctx = PostContext.of(await stores.derived.get(name, tags, lambda: _post_context(stores, viewer, post)))
    if not may_see(viewer, post, ctx):
        raise NotFound("No such post", code="post_not_found")
    return post, ctx


@lru_cache(maxsize=8192)
def _context_name_and_tags(viewer: uuid.UUID, author: uuid.UUID, post_id: uuid.UUID) -> tuple[str, tuple[str, ...]]:
    """The derived-cache name of a post's context for a viewer, and what it depends on (built once per hot
    pair: the strings cost more than the lookup)."""
    return f"post-context:{viewer}:{post_id}", (user_tag(viewer), user_tag(author), post_tag(post_id))
