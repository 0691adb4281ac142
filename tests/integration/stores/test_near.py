"""The near cache (nubo.stores.near): in-process copies of Redis values that Redis itself invalidates.

Each coherence rule of the module docstring is exercised against a real Redis: a change by another client
drops the copy, a change racing a read is never kept, a lost tracking connection (killed, stopped server,
FLUSHALL) drops every copy until tracking is back, and a session revoked through one instance is refused by
another that held a copy of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from nubo import accounts
from nubo.errors import Unauthorized
from nubo.root import open_root
from nubo.settings import Settings
from nubo.stores import Stores
from nubo.stores.near import MISSING, NearCache
from nubo.stores.redis import Keys, open_redis
from tests.helpers.harness import DedicatedRedis, service_env, user_with_session, wait_until


class Near:
    """A running near cache on its own prefix, with a second client playing "another instance"."""

    def __init__(self, url: str) -> None:
        self.keys = Keys(f"nubo_near_{uuid.uuid4().hex[:8]}:")
        self.redis = open_redis(url)
        self.other: Redis = open_redis(url)
        self.cache = NearCache(url, self.redis, self.keys, ["t"])
        self.fetches = 0

    async def start(self) -> None:
        self.task = asyncio.create_task(self.cache.run())
        await wait_until(lambda: self.cache.live)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.redis.aclose()
        await self.other.aclose()

    async def get(self, key: str) -> object:
        async def fetch() -> object:
            self.fetches += 1
            return await self.redis.get(key)

        return await self.cache.get(key, fetch)


@pytest.fixture
async def near() -> AsyncIterator[Near]:
    running = Near(service_env()["NUBO_REDIS_URL"])
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def near_own(own_redis: DedicatedRedis) -> AsyncIterator[Near]:
    running = Near(own_redis.url)
    await running.start()
    yield running
    await running.stop()


async def test_a_copy_is_served_until_another_client_changes_the_key(near: Near) -> None:
    key = near.keys("t", "a")
    await near.other.set(key, "v1")
    assert await near.get(key) == "v1" and await near.get(key) == "v1"
    assert near.fetches == 1  # the second read was the copy
    for change in (near.other.set(key, "v2"), near.other.delete(key), near.other.set(key, "v3", px=50)):
        await change
        await wait_until(lambda: near.cache.get_cached(key) is MISSING)
        fresh = await near.other.get(key)
        assert await near.get(key) == fresh
    # Redis announces an expiry when it expires the key: on the next access by any client, or when its
    # background sweep reaches it (which lags on a large keyspace, such as the shared test database).
    await asyncio.sleep(0.06)
    assert await near.other.exists(key) == 0
    await wait_until(lambda: near.cache.get_cached(key) is MISSING)  # the last value expired
    assert await near.get(key) is None
    untracked = near.keys("u", "a")  # outside the tracked families: never copied
    assert await near.cache.get_many([untracked], near.redis.mget) == [None]
    assert near.cache.get_cached(untracked) is None  # absent keys are copied too (their creation invalidates)


async def test_a_change_racing_a_read_is_never_kept(near: Near) -> None:
    key = near.keys("t", "race")
    await near.other.set(key, "old")
    invalidated = near.cache.stats["invalidated"]

    async def racing_fetch() -> object:
        value = await near.redis.get(key)  # "old"...
        await near.other.set(key, "new")  # ...changed by another instance before this read's result is kept
        await wait_until(lambda: near.cache.stats["invalidated"] > invalidated)
        return value

    assert await near.cache.get(key, racing_fetch) == "old"
    assert near.cache.get_cached(key) is MISSING
    assert await near.get(key) == "new"


async def test_a_local_drop_beats_a_read_in_flight(near: Near) -> None:
    key = near.keys("t", "drop")
    await near.other.set(key, "v")

    async def fetch_then_local_write() -> object:
        value = await near.redis.get(key)
        near.cache.drop([key])  # this process wrote the key meanwhile
        return value

    await near.cache.get(key, fetch_then_local_write)
    assert near.cache.get_cached(key) is MISSING


async def test_a_killed_tracking_connection_drops_every_copy_until_tracking_is_back(near_own: Near) -> None:
    near = near_own
    key = near.keys("t", "k")
    await near.other.set(key, "before")
    assert await near.get(key) == "before"
    clients = await near.other.client_list()
    (tracking,) = [c for c in clients if c["name"] == near.cache.client_name]
    await near.other.client_kill_filter(_id=tracking["id"])
    await wait_until(lambda: not near.cache.live)
    assert near.cache.get_cached(key) is MISSING
    await near.other.set(key, "changed while not tracked")  # no invalidation reaches the process now
    assert await near.get(key) == "changed while not tracked"
    await wait_until(lambda: near.cache.live)
    assert near.cache.stats["resets"] == 1
    assert await near.get(key) == "changed while not tracked"


async def test_a_stopped_server_stops_the_copies(near_own: Near, own_redis: DedicatedRedis) -> None:
    near = near_own
    key = near.keys("t", "k")
    await near.other.set(key, "v")
    await near.get(key)
    assert own_redis.process is not None
    os.kill(own_redis.process.pid, signal.SIGSTOP)
    try:
        # The canary's SET cannot complete: tracking counts as lost within a check period plus a timeout.
        await wait_until(lambda: not near.cache.live, within=10)
        assert near.cache.get_cached(key) is MISSING
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
    await wait_until(lambda: near.cache.live, within=10)


async def test_flushall_drops_every_copy(near_own: Near) -> None:
    near = near_own
    keys = [near.keys("t", str(i)) for i in range(3)]
    await near.other.mset({key: "v" for key in keys})
    await near.cache.get_many(keys, near.redis.mget)
    assert all(near.cache.get_cached(key) == "v" for key in keys)
    await near.other.flushall()
    await wait_until(lambda: all(near.cache.get_cached(key) is MISSING for key in keys))
    assert near.cache.live


async def test_a_session_revoked_on_one_instance_is_refused_by_another_holding_a_copy(
    db: Stores, settings: Settings
) -> None:
    other = (await open_root(settings)).stores
    task = asyncio.create_task(other.near.run())
    try:
        await wait_until(lambda: other.near.live)
        user_id, session_id = await user_with_session(db)
        rate = settings.rate_default
        for _ in range(3):
            await accounts.authenticate_and_limit(other, user_id, session_id, rate)
        assert other.near.get_cached(db.keys("session", session_id)) not in (MISSING, None)
        await accounts.revoke_session(db, user_id, session_id, "logout")  # through the first instance
        seconds = await wait_until(lambda: other.near.get_cached(db.keys("session", session_id)) is MISSING)
        with pytest.raises(Unauthorized):
            await accounts.authenticate_and_limit(other, user_id, session_id, rate)
        print(f"revocation reached the other instance's copy in {seconds * 1000:.1f} ms")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await other.close()


async def test_with_the_near_cache_off_every_read_goes_to_redis(db: Stores, settings: Settings) -> None:
    """`NUBO_NEAR_CACHE=off`: no tracking connection and no copies; a read right after another instance's
    write sees the new value, and a session revoked through another instance is refused at once."""
    off = (await open_root(dataclasses.replace(settings, near_cache=False))).stores
    key = db.keys("session", uuid.uuid4())  # a family the near cache copies when it is on
    fetches = 0

    async def fetch() -> object:
        nonlocal fetches
        fetches += 1
        return await off.redis.get(key)

    try:
        await asyncio.wait_for(off.near.run(), timeout=1)  # returns at once: nothing to track
        assert not off.near.live
        assert off.near.client_name not in [client["name"] for client in await db.redis.client_list()]
        for value in ("v1", "v2", "v3"):
            await db.redis.set(key, value, ex=60)  # another instance writes
            assert await off.near.get(key, fetch) == value
        assert fetches == 3 and off.near.status()["entries"] == 0
        user_id, session_id = await user_with_session(db)
        for _ in range(3):
            await accounts.authenticate_and_limit(off, user_id, session_id, settings.rate_default)
        await accounts.revoke_session(db, user_id, session_id, "logout")  # through the other instance
        with pytest.raises(Unauthorized):
            await accounts.authenticate_and_limit(off, user_id, session_id, settings.rate_default)
    finally:
        await db.redis.delete(key)
        await off.close()


async def test_a_server_refusing_client_tracking_leaves_the_copies_off(own_redis: DedicatedRedis) -> None:
    """Here an ACL refuses CLIENT TRACKING (as a Redis-compatible server without it would): `run` logs one
    warning and returns, and every read goes to Redis."""
    admin = open_redis(own_redis.url)
    try:
        await admin.acl_setuser(
            "limited",
            enabled=True,
            passwords=["+pw"],
            keys=["*"],
            channels=["*"],
            commands=["+@all", "-client|tracking"],
        )
        url = own_redis.url.replace("redis://", "redis://limited:pw@", 1)
        running = Near(url)
        await asyncio.wait_for(running.cache.run(), timeout=5)  # returns instead of retrying forever
        key = running.keys("t", "a")
        await running.other.set(key, "v")
        assert [await running.get(key) for _ in range(2)] == ["v", "v"] and running.fetches == 2
        assert not running.cache.live
        await running.redis.aclose()
        await running.other.aclose()
    finally:
        await admin.aclose()
