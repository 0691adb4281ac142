"""Post views: clients report the posts they showed (`POST /views/batch`); each counts once per user, post and
UTC day; the totals appear on posts as `view_count`.

- **Recording** (:func:`record_views`): one PostgreSQL query keeps the posts the caller may see (the rule of
  :mod:`nubo.posts.visibility`) and that are not the caller's own; one Redis script counts them
  (:mod:`nubo.stores.view_counts`: a HyperLogLog per post and day). Ids that are unknown, not visible to the
  caller, or the caller's own posts are ignored and listed as such: a feed may show a post deleted a moment
  later, and rejecting the whole batch for it would lose the other views.
- **Writing** (:class:`ViewFlusher`): a background task of the composition root takes the changed counts
  from Redis every `NUBO_VIEW_FLUSH` seconds and writes them to `content.post_view_days` with one statement
  per chunk, as absolute values (a flush repeated by another instance is harmless: the larger value wins).
  Posts deleted meanwhile are skipped. What a failed write took is given back to Redis for the next flush.
  The root drains it at shutdown.
- **Reading**: `view_count` is the sum of a post's days, read with its other counts.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec

from nubo.logs import get_logger
from nubo.model import FollowState, Visibility
from nubo.posts.visibility import USER_VISIBLE_SQL
from nubo.stores import Stores
from nubo.stores.derived import post_tag
from nubo.stores.postgres import PgError, pg_read
from nubo.stores.redis import REDIS_FAILURES
from nubo.stores.view_counts import DayCount

log = get_logger(__name__)

MAX_VIEW_BATCH = 100  # post ids per report
FLUSH_CHUNK = 1000  # counts per PostgreSQL statement
FLUSH_FAILURES: tuple[type[Exception], ...] = (PgError, *REDIS_FAILURES)


class ViewsRecorded(msgspec.Struct, gc=False):
    """The answer to a view report: how many posts were counted (`new`: first view by the caller today) and
    the ids ignored (unknown, not visible to the caller, or the caller's own)."""

    counted: int
    new: int
    ignored: list[uuid.UUID]


async def _countable(stores: Stores, viewer: uuid.UUID, post_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which posts the viewer may see and did not write (one query on PostgreSQL, the truth)."""
    async with pg_read(stores) as conn:
        rows = await (
            await conn.execute(
                "SELECT p.id FROM content.posts p JOIN auth.users u ON u.id = p.user_id "
                "WHERE p.id = ANY(%(ids)s) AND p.user_id <> %(viewer)s "
                f"AND {USER_VISIBLE_SQL} "
                f"AND (p.visibility = {Visibility.PUBLIC:d} OR EXISTS (SELECT 1 FROM auth.follows f "
                "     WHERE f.follower_id = %(viewer)s AND f.followed_id = p.user_id "
                f"     AND f.state = {FollowState.ACTIVE:d}))",
                {"ids": list(post_ids), "viewer": viewer},
            )
        ).fetchall()
    return {row["id"] for row in rows}


async def record_views(stores: Stores, viewer: uuid.UUID, post_ids: Sequence[uuid.UUID]) -> ViewsRecorded:
    """Count the viewer's views of `post_ids` for today (UTC); see the module for what is ignored."""
    wanted = list(dict.fromkeys(post_ids))
    countable = await _countable(stores, viewer, wanted) if wanted else set()
    counted = [p for p in wanted if p in countable]
    new = await stores.view_counts.record(viewer, counted, datetime.now(UTC).date())
    return ViewsRecorded(counted=len(counted), new=new, ignored=[p for p in wanted if p not in countable])


async def view_totals(stores: Stores, post_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    """`{post id: views}` as written to PostgreSQL so far (posts without views are left out)."""
    if not post_ids:
        return {}
    async with pg_read(stores) as conn:
        rows = await (
            await conn.execute(
                "SELECT post_id, sum(views)::bigint AS n FROM content.post_view_days "
                "WHERE post_id = ANY(%s) GROUP BY post_id",
                (list(set(post_ids)),),
            )
        ).fetchall()
    return {row["post_id"]: int(row["n"]) for row in rows}


async def _write(stores: Stores, counts: Sequence[DayCount]) -> None:
    async with pg_read(stores) as conn:
        await conn.execute(
            "INSERT INTO content.post_view_days (post_id, day, views) "
            "SELECT t.p, t.d, t.v FROM unnest(%s::uuid[], %s::date[], %s::bigint[]) AS t(p, d, v) "
            "JOIN content.posts p ON p.id = t.p "  # a post deleted since is skipped
            "ON CONFLICT (post_id, day) DO UPDATE SET views = GREATEST(content.post_view_days.views, EXCLUDED.views)",
            ([c.post_id for c in counts], [c.day for c in counts], [c.views for c in counts]),
        )


async def flush_views(stores: Stores) -> int:
    """Write every changed count to PostgreSQL; returns how many were written. Raises when a store fails
    (what was taken is given back first)."""
    written = 0
    while counts := await stores.view_counts.take(FLUSH_CHUNK):
        try:
            await _write(stores, counts)
        except PgError:
            await stores.view_counts.give_back(counts)
            raise
        written += len(counts)
        # Cached post contexts hold the old count (nubo.stores.derived).
        await stores.derived.invalidate({post_tag(c.post_id) for c in counts})
    return written


class ViewFlusher:
    """The background task that writes view counts to PostgreSQL every `interval` seconds (owned by the
    composition root, which drains it at shutdown)."""

    def __init__(self, stores: Stores, interval: float) -> None:
        self.stores = stores
        self.interval = interval
        self.flushed = 0
        self.running = False

    async def run(self) -> None:
        self.running = True
        while True:
            await asyncio.sleep(self.interval)
            await self.flush_safely()

    async def flush_safely(self) -> None:
        try:
            self.flushed += await flush_views(self.stores)
        except FLUSH_FAILURES as exc:  # the counts stay in Redis: the next flush writes them
            log.warning("view_flush_failed", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})

    async def drain(self) -> None:
        """Write what is pending now (shutdown of a process that ran the flusher; a CLI command, which records
        no views, does not touch Redis or PostgreSQL for it)."""
        if self.running:
            await self.flush_safely()
