"""Presence: who is online, shared by every instance through Redis.

``{p}rt:presence:{user}`` is a hash: one field per instance that holds a socket of that user, valued with the
time (ms) until which that instance vouches for it. Each instance refreshes its fields every
:data:`HEARTBEAT_SECONDS`; a field older than :data:`EXPIRY_SECONDS` is ignored, so a crashed instance's users
go offline by themselves. A user is online while any field is live. Transitions (first socket anywhere, last
socket gone) are detected atomically in Lua so exactly one instance announces them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

from nubo.stores.redis import Keys

if TYPE_CHECKING:
    from nubo.stores import Stores

HEARTBEAT_SECONDS = 10.0
EXPIRY_SECONDS = 30.0

# KEYS: presence hash. ARGV: instance, now_ms, expires_ms, key_ttl_ms. Returns 1 when the user was offline.
_CONNECT_LUA = """
local live = 0
local values = redis.call('HGETALL', KEYS[1])
for i = 2, #values, 2 do
  if values[i - 1] ~= ARGV[1] and tonumber(values[i]) > tonumber(ARGV[2]) then live = live + 1 end
end
local mine = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if live == 0 and mine <= tonumber(ARGV[2]) then return 1 end
return 0
"""

# KEYS: presence hash. ARGV: instance, now_ms. Returns 1 when the user is now offline everywhere.
_DISCONNECT_LUA = """
redis.call('HDEL', KEYS[1], ARGV[1])
local values = redis.call('HGETALL', KEYS[1])
for i = 2, #values, 2 do
  if tonumber(values[i]) > tonumber(ARGV[2]) then return 0 end
end
redis.call('DEL', KEYS[1])
return 1
"""


class Presence:
    """Presence operations of one instance (`instance_id` names its hash fields)."""

    def __init__(self, stores: Stores, instance_id: str) -> None:
        self.redis = stores.redis
        self.keys = stores.keys
        self.instance_id = instance_id
        self._connect = stores.script(_CONNECT_LUA)
        self._disconnect = stores.script(_DISCONNECT_LUA)

    def key(self, user_id: uuid.UUID | str) -> str:
        return _key(self.keys, user_id)

    async def connected(self, user_id: uuid.UUID) -> bool:
        """Record this instance's socket of `user_id`; True when the user just came online."""
        now = _now_ms()
        result = await self._connect(
            keys=[self.key(user_id)],
            args=[self.instance_id, now, now + int(EXPIRY_SECONDS * 1000), int(EXPIRY_SECONDS * 2000)],
        )
        return bool(result)

    async def disconnected(self, user_id: uuid.UUID) -> bool:
        """This instance holds no socket of `user_id` any more; True when the user is now offline."""
        result = await self._disconnect(keys=[self.key(user_id)], args=[self.instance_id, _now_ms()])
        return bool(result)

    async def heartbeat(self, user_ids: Iterable[uuid.UUID]) -> None:
        """Refresh this instance's fields for all its connected users (one pipeline)."""
        expires = _now_ms() + int(EXPIRY_SECONDS * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for uid in user_ids:
                pipe.hset(self.key(uid), self.instance_id, expires)
                pipe.pexpire(self.key(uid), int(EXPIRY_SECONDS * 2000))
            await pipe.execute()


async def online_among(stores: Stores, user_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """Which of `user_ids` have a live socket on some instance."""
    ids = list(dict.fromkeys(user_ids))
    if not ids:
        return set()
    async with stores.redis.pipeline(transaction=False) as pipe:
        for uid in ids:
            pipe.hvals(_key(stores.keys, uid))
        results = await pipe.execute()
    now = _now_ms()
    return {uid for uid, values in zip(ids, results, strict=True) if any(int(v) > now for v in values)}


def _key(keys: Keys, user_id: uuid.UUID | str) -> str:
    return keys("rt", "presence", user_id)


def _now_ms() -> int:
    return int(time.time() * 1000)
