"""Relations between users: follows and blocks, and the visibility rules every read path applies.

Follows and blocks live in PostgreSQL (`auth.follows`, `auth.blocks`); checks are primary-key/unique-index
lookups there, so every tier answers the same way (a cached post is still checked against current relations).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from nubo.stores import Stores

VISIBILITY_PUBLIC = 0
VISIBILITY_FOLLOWERS = 1


async def is_following(stores: Stores, follower_id: uuid.UUID, followed_id: uuid.UUID) -> bool:
    async with stores.pg.connection() as conn:
        row = await (await conn.execute(
            "SELECT 1 FROM auth.follows WHERE follower_id = %s AND followed_id = %s AND state = 1",
            (follower_id, followed_id))).fetchone()
    return row is not None


async def blocked_between(stores: Stores, a: uuid.UUID, b: uuid.UUID) -> bool:
    """True when either user blocks the other (both then see each other as absent)."""
    if a == b:
        return False
    async with stores.pg.connection() as conn:
        row = await (await conn.execute(
            "SELECT 1 FROM auth.blocks WHERE (blocker_id = %s AND blocked_id = %s) "
            "OR (blocker_id = %s AND blocked_id = %s) LIMIT 1", (a, b, b, a))).fetchone()
    return row is not None


async def hidden_authors(stores: Stores, viewer_id: uuid.UUID, author_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of `author_ids` the viewer may not see: blocked either way, or deactivated/banned."""
    if not author_ids:
        return set()
    async with stores.pg.connection() as conn:
        rows = await (await conn.execute(
            "SELECT u.id FROM auth.users u WHERE u.id = ANY(%(ids)s) AND u.id <> %(viewer)s AND (u.state <> 1 "
            "OR EXISTS (SELECT 1 FROM auth.blocks b WHERE (b.blocker_id = u.id AND b.blocked_id = %(viewer)s) "
            "OR (b.blocker_id = %(viewer)s AND b.blocked_id = u.id)))",
            {"ids": list(set(author_ids)), "viewer": viewer_id})).fetchall()
    return {row["id"] for row in rows}


async def followed_among(stores: Stores, viewer_id: uuid.UUID, author_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of `author_ids` the viewer follows (for followers-only visibility on lists)."""
    if not author_ids:
        return set()
    async with stores.pg.connection() as conn:
        rows = await (await conn.execute(
            "SELECT followed_id FROM auth.follows WHERE follower_id = %s AND followed_id = ANY(%s) AND state = 1",
            (viewer_id, list(set(author_ids))))).fetchall()
    return {row["followed_id"] for row in rows}


async def can_see_post(stores: Stores, viewer_id: uuid.UUID, post: dict[str, object]) -> bool:
    """The visibility rule for one post, whichever tier it came from."""
    author = post["user_id"]
    assert isinstance(author, uuid.UUID)
    if author == viewer_id:
        return True
    if await hidden_authors(stores, viewer_id, [author]):
        return False
    if post.get("visibility") == VISIBILITY_FOLLOWERS:
        return await is_following(stores, viewer_id, author)
    return True
