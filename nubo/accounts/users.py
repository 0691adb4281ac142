"""User rows and their views: lookups, public profiles, follow lists and search.

A user is hidden from a viewer when deactivated or banned (not :attr:`UserState.ACTIVE`) or when either blocks
the other; hidden users answer 404 (`user_not_found`) and are left out of search results, never revealed as
"blocked". The views themselves are defined once in :mod:`nubo.accounts.views`.
"""

from __future__ import annotations

import uuid
from typing import TypeVar

from nubo import social
from nubo.accounts.views import MeView, Profile, PublicUser
from nubo.errors import ValidationFailed
from nubo.ids import parse_id
from nubo.media import media_views
from nubo.model import FollowState, UserState, active_user, blocked_either_way
from nubo.pagination import Page, make_page
from nubo.stores import Stores
from nubo.stores.entities import Row, normalize_row

MAX_QUERY_LENGTH = 64
_ACTIVE_FOLLOW = f"f.state = {int(FollowState.ACTIVE)} AND {active_user('u')}"  # an approved follow, active user


async def get_active_user(stores: Stores, user_id: uuid.UUID) -> Row | None:
    """The user row (through the tiers) when the account is active, else None."""
    row = await stores.tiered.get("users", user_id)
    return row if row is not None and row.get("state") == UserState.ACTIVE else None


async def find_user(stores: Stores, ref: str) -> Row | None:
    """A user by id (UUID) or by username (case-insensitive), whatever its state."""
    try:
        user_id: uuid.UUID | None = parse_id(ref.strip(), "sub")
    except ValidationFailed:
        user_id = None
    async with stores.pg.connection() as conn:
        if user_id is not None:
            row = await (await conn.execute("SELECT * FROM auth.users WHERE id = %s", (user_id,))).fetchone()
        else:
            row = await (
                await conn.execute("SELECT * FROM auth.users WHERE lower(username) = lower(%s)", (ref.strip(),))
            ).fetchone()
    return normalize_row(row) if row else None


ViewWithPicture = TypeVar("ViewWithPicture", MeView, Profile)


async def with_picture(stores: Stores, view: ViewWithPicture) -> ViewWithPicture:
    """Fill `profile_picture` (the ready media of `profile_picture_id`, with its URLs)."""
    if view.profile_picture_id is not None:
        found = await media_views(stores, [view.profile_picture_id])
        view.profile_picture = found.get(view.profile_picture_id)
    return view


async def get_profile(stores: Stores, viewer_id: uuid.UUID, user_id: uuid.UUID) -> Profile:
    """A visible user's public fields plus follower/following counts; 404 when hidden."""
    row = await social.visible_user(stores, viewer_id, user_id)
    async with stores.pg.connection() as conn:
        counts = await (
            await conn.execute(
                "SELECT (SELECT count(*) FROM auth.follows f JOIN auth.users u ON u.id = f.follower_id "
                f"        WHERE f.followed_id = %(id)s AND {_ACTIVE_FOLLOW}) AS followers_count, "
                "       (SELECT count(*) FROM auth.follows f JOIN auth.users u ON u.id = f.followed_id "
                f"        WHERE f.follower_id = %(id)s AND {_ACTIVE_FOLLOW}) AS following_count",
                {"id": user_id},
            )
        ).fetchone()
    assert counts is not None
    return await with_picture(stores, Profile.from_row({**row, **counts}))


async def follow_list(
    stores: Stores, viewer_id: uuid.UUID, user_id: uuid.UUID, *, direction: str, limit: int, before: uuid.UUID | None
) -> Page[PublicUser]:
    """Followers (`direction="followers"`) or followed users (`"following"`) of a visible user, newest follow
    first (cursor: the follow id); see :func:`nubo.social.follow_page`."""
    page = await social.follow_page(stores, viewer_id, user_id, direction=direction, limit=limit, before=before)
    return Page(items=[PublicUser.from_row(user) for _, user in page.items], next=page.next)


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
) -> Page[PublicUser]:
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
    return Page(items=[PublicUser.from_row(row) for row in page.items], next=page.next)
