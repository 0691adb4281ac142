"""Post views in Redis: who saw which post on which (UTC) day, and which counts changed since the last flush.

Keys (under the prefix):

- ``views:hll:<day>:<post id>``: a HyperLogLog of the users who saw the post that day (``PFADD``). Adding a
  user twice changes nothing, so a view counts once per user, post and day; the count is ``PFCOUNT``
  (exact for small counts, within ~0.8% for large ones) in 12 KB at most per post and day, where a set of
  viewer ids would grow by tens of bytes per view. Expires two days after its day.
- ``views:dirty``: a set of ``<post id hex>:<day>`` whose count changed (a ``PFADD`` that altered the
  HyperLogLog) and is not yet in PostgreSQL.

One script records a batch (one round trip). :meth:`ViewCounts.take` pops dirty entries with their current
counts for the flusher (:mod:`nubo.posts.view_counts`), which writes them to PostgreSQL as absolute values
and gives them back (:meth:`ViewCounts.give_back`) when that fails.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from redis.asyncio import Redis

from nubo.stores.redis import Keys

HLL_TTL_SECONDS = 3 * 86400  # a day's counter outlives its day by two (a late flush still reads it)

# KEYS: the dirty set, then one HyperLogLog per post. ARGV: the user, the TTL, then one dirty member per post.
# Returns how many of the posts counted this view (first view by this user today).
_RECORD_LUA = """
local counted = 0
for i = 2, #KEYS do
  if redis.call('PFADD', KEYS[i], ARGV[1]) == 1 then
    counted = counted + 1
    redis.call('SADD', KEYS[1], ARGV[i + 1])
  end
  redis.call('EXPIRE', KEYS[i], ARGV[2])
end
return counted
"""


@dataclass(frozen=True)
class DayCount:
    """The number of distinct viewers of a post on one day."""

    post_id: uuid.UUID
    day: date
    views: int


class ViewCounts:
    """The view counters of one process's Redis client."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self.dirty_key = keys("views", "dirty")
        self._record = redis.register_script(_RECORD_LUA)

    def _hll_key(self, post_hex: str, day: str) -> str:
        return self.keys("views", "hll", day, post_hex)

    async def record(self, viewer: uuid.UUID, post_ids: Sequence[uuid.UUID], day: date) -> int:
        """Count `viewer`'s view of each post on `day`; returns how many were not counted yet that day."""
        if not post_ids:
            return 0
        stamp = day.strftime("%Y%m%d")
        hexes = [p.hex for p in post_ids]
        keys = [self.dirty_key, *(self._hll_key(h, stamp) for h in hexes)]
        args: list[str | int] = [viewer.hex, HLL_TTL_SECONDS, *(f"{h}:{stamp}" for h in hexes)]
        return int(await self._record(keys=keys, args=args))

    async def take(self, limit: int) -> list[DayCount]:
        """Pop up to `limit` changed counts, each with its current value."""
        members = await self.redis.spop(self.dirty_key, limit)
        if not members:
            return []
        entries = [_parse(m.decode() if isinstance(m, bytes) else str(m)) for m in members]
        async with self.redis.pipeline(transaction=False) as pipe:
            for post_hex, stamp in entries:
                pipe.pfcount(self._hll_key(post_hex, stamp))
            counts = await pipe.execute()
        return [
            DayCount(uuid.UUID(post_hex), date(int(stamp[:4]), int(stamp[4:6]), int(stamp[6:])), int(count))
            for (post_hex, stamp), count in zip(entries, counts, strict=True)
            if count
        ]

    async def give_back(self, counts: Sequence[DayCount]) -> None:
        """Mark counts changed again (their write to PostgreSQL failed)."""
        if counts:
            await self.redis.sadd(self.dirty_key, *(f"{c.post_id.hex}:{c.day.strftime('%Y%m%d')}" for c in counts))

    async def pending(self) -> int:
        """How many changed counts wait for the flusher."""
        return int(await self.redis.scard(self.dirty_key))


def _parse(member: str) -> tuple[str, str]:
    post_hex, _, stamp = member.partition(":")
    return post_hex, stamp
