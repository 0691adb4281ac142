"""User lookup and search as other users see them: public fields only, hidden users absent.

A user is hidden from a viewer when deactivated or banned (not active) or when either blocks the other; hidden
users answer 404 (`user_not_found`) and are left out of search results, never revealed as "blocked".
"""

from __future__ import annotations

import uuid
from typing import Any

from nubo import social
from nubo.errors import ValidationFailed
from nubo.model import FollowState, active_user, blocked_either_way
from nubo.pagination import Page, make_page
from nubo.stores import Stores
from nubo.stores.tiered import Row

# What anyone may see of a user; never email, phone, password hash, birthdate, grade or state.
PUBLIC_FIELDS = (
    "id",
    "username",
    "first_name",
    "last_name",
    "bio",
    "profile_picture_id",
    "location",
    "school",
    "works",
    "badges",
    "created_at",
)
MAX_QUERY_LENGTH = 64


def public_user(row: Row) -> dict[str, Any]:
    """The public projection of a user row (from any tier)."""
    return {name: row.get(name) for name in PUBLIC_FIELDS}


async def get_profile(stores: Stores, viewer_id: uuid.UUID, user_id: uuid.UUID) -> dict[str, Any]:
    """A visible user's public fields plus follower/following counts; 404 when hidden."""
    row = await social.visible_user(stores, viewer_id, user_id)
    async with stores.pg.connection() as conn:
        counts = await (
            await conn.execute(
                "SELECT (SELECT count(*) FROM auth.follows f JOIN auth.users u ON u.id = f.follower_id "
                f"        WHERE f.followed_id = %(id)s AND f.state = {FollowState.ACTIVE:d} AND {active_user('u')}) "
                "        AS followers_count, "
                "       (SELECT count(*) FROM auth.follows f JOIN auth.users u ON u.id = f.followed_id "
                f"        WHERE f.follower_id = %(id)s AND f.state = {FollowState.ACTIVE:d} AND {active_user('u')}) "
                "        AS following_count",
                {"id": user_id},
            )
        ).fetchone()
    assert counts is not None
    return {
        **public_user(row),
        "followers_count": counts["followers_count"],
        "following_count": counts["following_count"],
    }


def normalize_query(raw: str | None) -> str:
    """The search prefix: trimmed, lower-cased, 1..64 characters; LIKE wildcards escaped."""
    query = (raw or "").strip().lower()
    if not query or len(query) > MAX_QUERY_LENGTH:
        raise ValidationFailed(
            f"q must be 1 to {MAX_QUERY_LENGTH} characters", fields={"q": f"1..{MAX_QUERY_LENGTH} characters"}
        )
    if "\x00" in query:
        raise ValidationFailed("q must not contain NUL", fields={"q": "contains NUL"})
    return query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def search(
    stores: Stores, viewer_id: uuid.UUID, raw_query: str | None, *, limit: int, before: uuid.UUID | None
) -> Page[dict[str, Any]]:
    """Active users whose username, first or last name starts with `q` (case-insensitive), newest first.

    Users hidden from the viewer are left out; the viewer finds themself. The cursor is the user id.
    """
    prefix = normalize_query(raw_query) + "%"
    async with stores.pg.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT u.id, u.username, u.first_name, u.last_name, u.bio, u.profile_picture_id, u.location, "
                "u.school, u.works, u.badges, u.created_at FROM auth.users u "
                f"WHERE {active_user('u')} AND (%(before)s::uuid IS NULL OR u.id < %(before)s) "
                "AND (lower(u.username) LIKE %(p)s OR lower(u.first_name) LIKE %(p)s "
                "     OR lower(u.last_name) LIKE %(p)s) "
                f"AND NOT {blocked_either_way('u.id', '%(viewer)s')} ORDER BY u.id DESC LIMIT %(n)s",
                {"p": prefix, "before": before, "viewer": viewer_id, "n": limit + 1},
            )
        ).fetchall()
    page = make_page([dict(row) for row in rows], limit)
    return Page(items=[public_user(row) for row in page.items], next=page.next)
