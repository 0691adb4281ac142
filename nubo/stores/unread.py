"""Unread counters in Redis: one hash per user (``{p}unread:{user}``, field = conversation id, value = count),
a copy of PostgreSQL's `messaging.conversation_members.unread_count` for cheap badge reads.

Why the copy converges: writers send the *difference* PostgreSQL returned under its row lock, and differences
commute, so a hash reaches PostgreSQL's values whatever order the post-commit updates arrive in. Differences
are only applied to a hash that exists; a missing hash is rebuilt from PostgreSQL on read (the field ``_``
marks a rebuilt hash, so an empty one still exists) and expires daily, which bounds the damage of the one
remaining race (a rebuild overlapping a send). A hash that may have missed a difference is dropped, so the
next read rebuilds it. Redis failures are logged and counted here, never raised: the hashes are only a copy.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from nubo.logs import get_logger
from nubo.stores.redis import Keys

if TYPE_CHECKING:
    pass

log = get_logger(__name__)

UNREAD_TTL_SECONDS = 86400
SCRIPT_CHUNK = 1000  # hashes changed by one script call

Delta = tuple[uuid.UUID, uuid.UUID, int]  # (user, conversation, difference to add)

# KEYS: unread hashes; ARGV: field1, delta1, field2, delta2, ... (one pair per key).
# Only existing hashes move.
_APPLY_UNREAD_LUA = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HINCRBY', KEYS[i], ARGV[2 * i - 1], ARGV[2 * i])
  end
end
return #KEYS
"""

# KEYS: unread hash; ARGV: ttl, field1, value1, ... Fills the hash only if it is still absent.
_REBUILD_UNREAD_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], '_', '1')
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


class UnreadCounters:
    """The users' unread hashes: apply differences after a commit, read a user's counts, rebuild a hash."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        script: Callable[[str], AsyncScript],
        count_failure: Callable[[str], None],
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._script = script
        self._count_failure = count_failure

    def key(self, user_id: uuid.UUID) -> str:
        return self._keys("unread", user_id)

    def applier(self, deltas: Sequence[Delta]) -> Callable[[], Awaitable[Any]] | None:
        """One script call applying up to :data:`SCRIPT_CHUNK` differences, for a caller that issues it itself
        (ahead of an event publish, so both leave in one round trip); None when nothing changes. Its errors
        are the caller's to handle (then :meth:`forget` the users)."""
        changes = [(uid, cid, delta) for uid, cid, delta in deltas if delta]
        if not changes:
            return None
        if len(changes) > SCRIPT_CHUNK:
            raise ValueError(f"at most {SCRIPT_CHUNK} differences in one call")
        script = self._script(_APPLY_UNREAD_LUA)
        keys = [self.key(uid) for uid, _, _ in changes]
        args = [item for _, cid, delta in changes for item in (str(cid), delta)]
        return lambda: script(keys=keys, args=args)

    async def apply(self, deltas: Iterable[Delta]) -> None:
        """Apply post-commit differences (failures are repaired by the daily rebuild)."""
        changes = [(uid, cid, delta) for uid, cid, delta in deltas if delta]
        if not changes:
            return
        try:
            for start in range(0, len(changes), SCRIPT_CHUNK):
                call = self.applier(changes[start : start + SCRIPT_CHUNK])
                assert call is not None
                await call()
        except (RedisError, OSError) as exc:
            self._count_failure("redis_unread")
            log.warning("unread_update_failed", extra={"error": str(exc)[:200]})
            # A hash that missed an update would stay wrong until it expires: drop them so reads rebuild.
            await self.forget(uid for uid, _, _ in changes)

    async def forget(self, user_ids: Iterable[uuid.UUID]) -> None:
        """Drop these users' hashes (their next read rebuilds them from PostgreSQL); errors are ignored."""
        keys = {self.key(uid) for uid in user_ids}
        if keys:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.delete(*keys)

    async def read(self, user_id: uuid.UUID) -> dict[uuid.UUID, int] | None:
        """The user's non-zero counts per conversation; None when the hash is absent or Redis fails."""
        try:
            raw = await self._redis.hgetall(self.key(user_id))
        except (RedisError, OSError):
            return None
        if not raw:
            return None
        return {uuid.UUID(str(field)): int(value) for field, value in raw.items() if field != "_" and int(value) != 0}

    async def rebuild(self, user_id: uuid.UUID, counts: Mapping[uuid.UUID, int]) -> None:
        """Fill the user's hash from PostgreSQL's counts, unless it came back meanwhile; expires daily."""
        script = self._script(_REBUILD_UNREAD_LUA)
        try:
            await script(
                keys=[self.key(user_id)],
                args=[UNREAD_TTL_SECONDS, *(item for cid, n in counts.items() for item in (str(cid), n))],
            )
        except (RedisError, OSError) as exc:
            log.warning("unread_rebuild_failed", extra={"error": str(exc)[:200]})
