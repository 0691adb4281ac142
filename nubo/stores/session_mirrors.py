"""Session mirrors: each live session is mirrored in Redis at ``{prefix}session:{sid}``, so the per-request
session check costs one GET (or none, through the near cache); PostgreSQL stays the truth.

The one rule every writer here keeps: a revoked session is marked with a plain SET of :data:`REVOKED_MARKER`,
while live mirrors are only ever written with NX or by a script that leaves a marker in place, so a late
"live" write can never overwrite a revocation. Redis failures propagate (as one of
:data:`nubo.stores.redis.REDIS_FAILURES`): the caller decides what a missing answer means.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from nubo.stores import Stores

REVOKED_MARKER = '{"revoked":true}'  # the session mirror of a revoked session
_DECODER = msgspec.json.Decoder(dict[str, Any])  # the mirror is read on every request: msgspec is quicker

# KEYS[1]: a session mirror; ARGV: the new mirror, its TTL. A revocation marker is never overwritten.
_EXTEND_UNLESS_REVOKED = """
local current = redis.call('get', KEYS[1])
if current and string.find(current, '"revoked"', 1, true) then return 0 end
redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class LiveMirror:
    """What the mirror of a live session holds: whose session it is, and what a request needs of them."""

    user_id: str
    username: str
    grade: int

    def encode(self) -> str:
        return json.dumps({"uid": self.user_id, "username": self.username, "grade": self.grade})


@dataclass(frozen=True, slots=True)
class Refreshed:
    """A live session whose mirror gets a new lifetime (see :func:`extend_unless_revoked`)."""

    session_id: uuid.UUID
    mirror: LiveMirror
    ttl: int


def key(stores: Stores, session_id: uuid.UUID | str) -> str:
    """The Redis key of a session's mirror (also its near-cache key)."""
    return stores.keys("session", session_id)


def decode(raw: str | bytes) -> LiveMirror | None:
    """The live mirror held in `raw`, or None for a revocation marker."""
    data = _DECODER.decode(raw)
    if data.get("revoked"):
        return None
    return LiveMirror(user_id=str(data.get("uid")), username=data["username"], grade=int(data["grade"]))


async def read(stores: Stores, session_id: uuid.UUID) -> str | bytes | None:
    """The raw mirror of a session straight from Redis (None: no mirror)."""
    raw: str | bytes | None = await stores.redis.get(key(stores, session_id))
    return raw


async def read_near(stores: Stores, mirror_key: str) -> Any:
    """The raw mirror at `mirror_key` through the near cache (a shared copy when this process holds one)."""
    return await stores.near.get(mirror_key, lambda: stores.redis.get(mirror_key))


async def write_live(stores: Stores, session_id: uuid.UUID, mirror: LiveMirror, ttl: int) -> None:
    """Mirror a live session for `ttl` seconds, unless any mirror (a revocation marker above all) is there."""
    await stores.redis.set(key(stores, session_id), mirror.encode(), nx=True, ex=ttl)


async def extend_unless_revoked(stores: Stores, sessions: Sequence[Refreshed]) -> None:
    """Give live sessions' mirrors a new lifetime, leaving a revocation marker written meanwhile in place."""
    script = stores.script(_EXTEND_UNLESS_REVOKED)
    await asyncio.gather(
        *(script(keys=[key(stores, one.session_id)], args=[one.mirror.encode(), one.ttl]) for one in sessions)
    )


async def mark_revoked(stores: Stores, session_ids: Sequence[uuid.UUID], *, ttl: int, channel: str) -> None:
    """Mark sessions revoked (plain SET, beats any live mirror) for `ttl` seconds and publish their ids, as a
    JSON list, on `channel`, in one pipeline. This process's near copies are dropped whatever happens."""
    keys = [key(stores, session_id) for session_id in session_ids]
    try:
        async with stores.redis.pipeline(transaction=False) as pipe:
            for mirror_key in keys:
                pipe.set(mirror_key, REVOKED_MARKER, ex=ttl)
            pipe.publish(channel, json.dumps([str(sid) for sid in session_ids]))
            await pipe.execute()
    finally:
        stores.near.drop(keys)


async def revoked_among(stores: Stores, session_ids: Sequence[str]) -> set[str]:
    """Which of these sessions carry the revocation marker (one MGET)."""
    if not session_ids:
        return set()
    values = await stores.redis.mget([key(stores, sid) for sid in session_ids])
    return {sid for sid, raw in zip(session_ids, values, strict=True) if raw == REVOKED_MARKER}
