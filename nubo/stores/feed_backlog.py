"""The feed precompute's backlog in Redis, shared by every instance (:mod:`nubo.precompute`).

- ``feed:backlog``: a sorted set of user ids whose feed document should be rebuilt when an instance has CPU
  to spare, scored by when they were queued (oldest first). ``ZPOPMIN`` hands each to one instance.
- ``feed:backlog:sweep``: held (``SET NX EX``) by the instance that refills the backlog with recently active
  users, so one instance does it per period.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from redis.asyncio import Redis

from nubo.stores.redis import Keys

MAX_BACKLOG = 100_000  # users queued at most (beyond it the newest are dropped: a later sweep finds them)


@dataclass(frozen=True)
class BacklogStats:
    """What `nubo cache inspect` shows: users waiting, and how long the oldest has waited."""

    users: int
    oldest_seconds: float | None


class FeedBacklog:
    """The backlog operations on one Redis client."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.key = keys("feed", "backlog")
        self.sweep_key = keys("feed", "backlog", "sweep")

    async def add(self, users: Iterable[uuid.UUID]) -> int:
        """Queue users (one already queued keeps its place); returns how many were new."""
        now = time.time()
        mapping = {str(u): now for u in users}
        if not mapping:
            return 0
        added = int(await self.redis.zadd(self.key, mapping, nx=True))  # type: ignore[arg-type]
        await self.redis.zremrangebyrank(self.key, MAX_BACKLOG, -1)
        return added

    async def pop(self) -> uuid.UUID | None:
        """The user queued longest ago, taken off the backlog (None when it is empty)."""
        found = await self.redis.zpopmin(self.key, 1)
        if not found:
            return None
        member = found[0][0]
        return uuid.UUID(member.decode() if isinstance(member, bytes) else str(member))

    async def claim_sweep(self, seconds: int) -> bool:
        """True for the one instance that may refill the backlog in the next `seconds`."""
        return bool(await self.redis.set(self.sweep_key, "1", nx=True, ex=seconds))

    async def stats(self) -> BacklogStats:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.key)
            pipe.zrange(self.key, 0, 0, withscores=True)
            count, oldest = await pipe.execute()
        age = time.time() - float(oldest[0][1]) if oldest else None
        return BacklogStats(users=int(count), oldest_seconds=age)
