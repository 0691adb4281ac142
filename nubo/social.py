"""Relations between users: follows and blocks, and the visibility rules every read path applies.

Follows and blocks live in PostgreSQL (`auth.follows`, `auth.blocks`); checks are primary-key/unique-index
lookups there, so every tier answers the same way (a cached post is still checked against current relations).
Follow rows are a tiered entity (copied to Mongo `relations_recent` and the Redis `relations` collection by
the tiered write path); blocks are PostgreSQL only.

Follow and block writes on one pair of users take the same transaction-scoped advisory lock, so a follow
racing a block can never leave a follow behind between two users who block each other.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import msgspec

from nubo.errors import Forbidden, NotFound, ValidationFailed
from nubo.ids import new_id
from nubo.model import FollowState, UserState, Visibility, active_user, blocked_either_way
from nubo.pagination import Page, make_page
from nubo.stores import Stores
from nubo.stores.derived import user_tag
from nubo.stores.entities import Row, normalize_row
from nubo.stores.postgres import pg_read, sql_text
from nubo.stores.transaction import AfterCommit, Transaction

MAX_RELATIONSHIP_IDS = 50


class Relationship(msgspec.Struct, frozen=True, gc=False):
    """How the viewer and one other user relate, from the viewer's side (what the relation routes answer).

    There is no "blocked by": a user who blocks the viewer is absent to the viewer, as on every other route.
    """

    id: uuid.UUID
    following: bool
    followed_by: bool
    blocking: bool


# ---- checks used by every read path ------------------------------------------------------------------------


async def is_following(stores: Stores, follower_id: uuid.UUID, followed_id: uuid.UUID) -> bool:
    async with pg_read(stores) as conn:
        row = await (
            await conn.execute(
                "SELECT 1 FROM auth.follows WHERE follower_id = %s AND followed_id = %s "
                f"AND state = {FollowState.ACTIVE:d}",
                (follower_id, followed_id),
            )
        ).fetchone()
    return row is not None


async def blocked_between(stores: Stores, a: uuid.UUID, b: uuid.UUID) -> bool:
    """True when either user blocks the other (both then see each other as absent)."""
    if a == b:
        return False
    async with pg_read(stores) as conn:
        row = await (
            await conn.execute(f"SELECT {blocked_either_way('%(a)s', '%(b)s')} AS blocked", {"a": a, "b": b})
        ).fetchone()
    return row is not None and bool(row["blocked"])


async def hidden_authors(stores: Stores, viewer_id: uuid.UUID, author_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of `author_ids` the viewer may not see: blocked either way, or deactivated/banned."""
    if not author_ids:
        return set()
    async with pg_read(stores) as conn:
        rows = await (
            await conn.execute(
                "SELECT u.id FROM auth.users u WHERE u.id = ANY(%(ids)s) AND u.id <> %(viewer)s "
                f"AND (NOT {active_user('u')} OR {blocked_either_way('u.id', '%(viewer)s')})",
                {"ids": list(set(author_ids)), "viewer": viewer_id},
            )
        ).fetchall()
    return {row["id"] for row in rows}


async def followed_among(stores: Stores, viewer_id: uuid.UUID, author_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of `author_ids` the viewer follows (for followers-only visibility on lists)."""
    if not author_ids:
        return set()
    async with pg_read(stores) as conn:
        rows = await (
            await conn.execute(
                "SELECT followed_id FROM auth.follows WHERE follower_id = %s AND followed_id = ANY(%s) "
                f"AND state = {FollowState.ACTIVE:d}",
                (viewer_id, list(set(author_ids))),
            )
        ).fetchall()
    return {row["followed_id"] for row in rows}


async def can_see_post(stores: Stores, viewer_id: uuid.UUID, post: dict[str, object]) -> bool:
    """The visibility rule for one post, whichever tier it came from."""
    author = post["user_id"]
    assert isinstance(author, uuid.UUID)
    if author == viewer_id:
        return True
    if await hidden_authors(stores, viewer_id, [author]):
        return False
    if post.get("visibility") == Visibility.FOLLOWERS:
        return await is_following(stores, viewer_id, author)
    return True


async def visible_user(stores: Stores, viewer_id: uuid.UUID, user_id: uuid.UUID) -> Row:
    """The user row (through the tiers) when the viewer may see it, else :class:`NotFound`.

    Hidden: absent, deactivated or banned (not `UserState.ACTIVE`), or blocked either way.
    One's own row is always visible.
    """
    row = await stores.tiered.get("users", user_id)
    if row is None:
        raise NotFound("No such user", code="user_not_found")
    if user_id == viewer_id:
        return row
    if row.get("state") != UserState.ACTIVE or await blocked_between(stores, viewer_id, user_id):
        raise NotFound("No such user", code="user_not_found")
    return row


# ---- follows ---------------------------------------------------------------------------------------------


def _not_self(viewer_id: uuid.UUID, target_id: uuid.UUID, action: str) -> None:
    """403: a well-formed request that no schema can refuse (the target is the caller)."""
    if viewer_id == target_id:
        raise Forbidden(f"You cannot {action} yourself", code=f"cannot_{action}_self", fields={"id": "is the caller"})


async def _lock_pair(tx: Transaction, a: uuid.UUID, b: uuid.UUID) -> None:
    """Serialize follow/block writes on one pair (either order) until the transaction ends."""
    low, high = sorted((a, b))
    await tx.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"pair:{low}:{high}",))


async def follow(
    stores: Stores, follower_id: uuid.UUID, followed_id: uuid.UUID, *, on_created: AfterCommit | None = None
) -> tuple[Row, bool]:
    """Follow a visible user; idempotent. Returns the follow row and whether it was created now.

    `on_created` (e.g. the "new follower" notification) runs after the commit of a follow created now; a
    repeated (idempotent) follow does not run it.
    """
    _not_self(follower_id, followed_id, "follow")
    await visible_user(stores, follower_id, followed_id)
    async with stores.transaction() as tx:
        await _lock_pair(tx, follower_id, followed_id)
        # Re-checked under the pair lock: a block committed since the check above wins.
        row = await (
            await tx.conn.execute(
                "INSERT INTO auth.follows (id, follower_id, followed_id, state) "
                f"SELECT %(id)s, %(a)s, %(b)s, {FollowState.ACTIVE:d} "
                f"WHERE EXISTS (SELECT 1 FROM auth.users u WHERE u.id = %(b)s AND {active_user('u')}) "
                f"AND NOT {blocked_either_way('%(a)s', '%(b)s')} "
                "ON CONFLICT (follower_id, followed_id) DO NOTHING RETURNING *",
                {"id": new_id(), "a": follower_id, "b": followed_id},
            )
        ).fetchone()
        if row is not None:
            created = normalize_row(row)
            tx.touch("follows", created["id"], created)
            if on_created is not None:
                tx.on_commit(on_created)
            return created, True
        existing = await (
            await tx.conn.execute(
                "SELECT * FROM auth.follows WHERE follower_id = %s AND followed_id = %s", (follower_id, followed_id)
            )
        ).fetchone()
    if existing is None:
        raise NotFound("No such user", code="user_not_found")
    return normalize_row(existing), False


async def unfollow(stores: Stores, follower_id: uuid.UUID, followed_id: uuid.UUID) -> Row | None:
    """Stop following; idempotent. Returns the removed follow row, or None when there was none."""
    _not_self(follower_id, followed_id, "unfollow")
    await visible_user(stores, follower_id, followed_id)
    async with stores.transaction() as tx:
        rows = await tx.delete_where(
            "follows", sql_text("follower_id = %s AND followed_id = %s"), (follower_id, followed_id)
        )
    return rows[0] if rows else None


def _follow_page_sql(mine: str, other: str) -> str:
    """The follow page query where `mine` is the column of the user whose list it is and `other` the column of
    the users listed."""
    return (
        f"SELECT f.* FROM auth.follows f JOIN auth.users u ON u.id = f.{other} "
        f"WHERE f.{mine} = %(user)s AND f.state = {FollowState.ACTIVE:d} AND {active_user('u')} "
        "AND (%(before)s::uuid IS NULL OR f.id < %(before)s) "
        f"AND NOT {blocked_either_way('u.id', '%(viewer)s')} "
        "ORDER BY f.id DESC LIMIT %(n)s"
    )


# (the listed user's column, the listed users' column) of each direction; fixed names, so the two queries are
# plain text built once.
_FOLLOW_COLUMNS = {"followers": ("followed_id", "follower_id"), "following": ("follower_id", "followed_id")}
_FOLLOW_PAGE_SQL = {listed: _follow_page_sql(*columns) for listed, columns in _FOLLOW_COLUMNS.items()}


async def follow_page(
    stores: Stores, viewer_id: uuid.UUID, user_id: uuid.UUID, *, direction: str, limit: int, before: uuid.UUID | None
) -> Page[tuple[Row, Row]]:
    """Followers (`direction="followers"`) or followed users (`"following"`) of a visible user.

    Newest follow first; the cursor is the follow row id. Users hidden from the viewer are left out.
    Items are `(follow_row, user_row)` pairs, user rows read through the tiers.
    """
    await visible_user(stores, viewer_id, user_id)
    listed = "following" if direction == "following" else "followers"
    other = _FOLLOW_COLUMNS[listed][1]
    query = _FOLLOW_PAGE_SQL[listed]
    async with pg_read(stores) as conn:
        follows = await (
            await conn.execute(query, {"user": user_id, "before": before, "viewer": viewer_id, "n": limit + 1})
        ).fetchall()
    page = make_page([dict(f) for f in follows], limit)
    users = {u["id"]: u for u in await stores.tiered.get_many("users", [f[other] for f in page.items])}
    # A user deactivated between the two reads is dropped; the cursor still moves past it.
    items = [
        (f, users[f[other]])
        for f in page.items
        if f[other] in users and users[f[other]].get("state") == UserState.ACTIVE
    ]
    return Page(items=items, next=page.next)


# ---- blocks ----------------------------------------------------------------------------------------------


async def _user_exists_active(stores: Stores, user_id: uuid.UUID) -> None:
    row = await stores.tiered.get("users", user_id)
    if row is None or row.get("state") != UserState.ACTIVE:
        raise NotFound("No such user", code="user_not_found")


async def block(stores: Stores, blocker_id: uuid.UUID, blocked_id: uuid.UUID) -> tuple[Row, list[Row]]:
    """Block a user; idempotent. Removes follows both ways in the same transaction.

    Returns the block row and the follow rows removed. A user who already blocks the caller is hidden from
    them, so blocking back answers 404 like any invisible user.
    """
    _not_self(blocker_id, blocked_id, "block")
    await _user_exists_active(stores, blocked_id)
    async with stores.transaction() as tx:
        await _lock_pair(tx, blocker_id, blocked_id)
        blocked_by = await (
            await tx.conn.execute(
                "SELECT 1 FROM auth.blocks WHERE blocker_id = %s AND blocked_id = %s", (blocked_id, blocker_id)
            )
        ).fetchone()
        if blocked_by is not None:
            raise NotFound("No such user", code="user_not_found")
        await tx.conn.execute(
            "INSERT INTO auth.blocks (id, blocker_id, blocked_id) VALUES (%s, %s, %s) "
            "ON CONFLICT (blocker_id, blocked_id) DO NOTHING",
            (new_id(), blocker_id, blocked_id),
        )
        tx.tag(user_tag(blocker_id), user_tag(blocked_id))
        row = await (
            await tx.conn.execute(
                "SELECT * FROM auth.blocks WHERE blocker_id = %s AND blocked_id = %s", (blocker_id, blocked_id)
            )
        ).fetchone()
        removed = await tx.delete_where(
            "follows",
            sql_text("(follower_id = %s AND followed_id = %s) OR (follower_id = %s AND followed_id = %s)"),
            (blocker_id, blocked_id, blocked_id, blocker_id),
        )
    assert row is not None
    return normalize_row(row), removed


async def unblock(stores: Stores, blocker_id: uuid.UUID, blocked_id: uuid.UUID) -> bool:
    """Remove the caller's block; idempotent. True when a block was removed. Follows are not restored."""
    _not_self(blocker_id, blocked_id, "unblock")
    await _user_exists_active(stores, blocked_id)
    async with stores.transaction() as tx:
        cur = await tx.conn.execute(
            "DELETE FROM auth.blocks WHERE blocker_id = %s AND blocked_id = %s", (blocker_id, blocked_id)
        )
        if cur.rowcount:
            tx.tag(user_tag(blocker_id), user_tag(blocked_id))
    return cur.rowcount > 0


# ---- relationships ---------------------------------------------------------------------------------------


def parse_id_list(raw: str | None, *, field: str = "ids", maximum: int = MAX_RELATIONSHIP_IDS) -> list[uuid.UUID]:
    """`a,b,c` into distinct UUIDs (order kept); empty, malformed or more than `maximum` is a 422."""
    parts = [p.strip() for p in (raw or "").split(",") if p.strip()]
    if not parts:
        raise ValidationFailed(f"{field} must list at least one id", fields={field: "empty"})
    ids: list[uuid.UUID] = []
    for part in parts:
        try:
            ids.append(uuid.UUID(part))
        except ValueError:
            message = f"{field} must be comma-separated UUIDs"
            raise ValidationFailed(message, fields={field: "not a UUID"}) from None
    ids = list(dict.fromkeys(ids))
    if len(ids) > maximum:
        raise ValidationFailed(f"at most {maximum} ids", code="too_many_ids", fields={field: f"max {maximum}"})
    return ids


async def relationships(stores: Stores, viewer_id: uuid.UUID, ids: Sequence[uuid.UUID]) -> list[Relationship]:
    """The viewer's relationship with each existing, active user of `ids` who does not block the viewer (others
    are left out, as absent), in order."""
    async with pg_read(stores) as conn:
        rows = await (
            await conn.execute(
                "SELECT u.id, "
                "EXISTS (SELECT 1 FROM auth.follows f WHERE f.follower_id = %(v)s AND f.followed_id = u.id "
                f"        AND f.state = {FollowState.ACTIVE:d}) AS following, "
                "EXISTS (SELECT 1 FROM auth.follows f WHERE f.follower_id = u.id AND f.followed_id = %(v)s "
                f"        AND f.state = {FollowState.ACTIVE:d}) AS followed_by, "
                "EXISTS (SELECT 1 FROM auth.blocks b WHERE b.blocker_id = %(v)s AND b.blocked_id = u.id) "
                "        AS blocking "
                f"FROM auth.users u WHERE u.id = ANY(%(ids)s) AND ({active_user('u')} OR u.id = %(v)s) "
                "AND NOT EXISTS (SELECT 1 FROM auth.blocks b WHERE b.blocker_id = u.id AND b.blocked_id = %(v)s)",
                {"v": viewer_id, "ids": list(ids)},
            )
        ).fetchall()
    found: dict[uuid.UUID, dict[str, Any]] = {row["id"]: row for row in rows}
    return [Relationship(**found[i]) for i in ids if i in found]


async def relationship(stores: Stores, viewer_id: uuid.UUID, user_id: uuid.UUID) -> Relationship:
    """The viewer's relationship with one user (all false when the user is absent)."""
    found = await relationships(stores, viewer_id, [user_id])
    return found[0] if found else Relationship(user_id, False, False, False)
