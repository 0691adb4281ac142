"""nubo's Redis client (automatic pipelining, round-trip timeouts) against real redis-server processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from nubo.stores import Stores
from nubo.stores.redis import open_redis
from tests.helpers.harness import DedicatedRedis


async def test_concurrent_commands_share_round_trips_and_keep_their_own_replies(db: Stores) -> None:
    text_key, count_key = db.keys("client-test", "text"), db.keys("client-test", "n")
    await db.redis.set(text_key, "not a number")

    async def connections_opened_by(client: Redis) -> tuple[list[object], int]:
        before = await _connections_received(db.redis)
        replies = await asyncio.gather(
            *(client.incr(count_key) for _ in range(200)),
            client.incr(text_key),  # an error for this command only
            client.set(db.keys("client-test", "bad"), True),  # refused before sending: this command only
            return_exceptions=True,
        )
        return replies, await _connections_received(db.redis) - before

    plain = Redis.from_url(db.settings.redis_url, decode_responses=True)
    batching = open_redis(db.settings.redis_url)
    try:
        _, plain_connections = await connections_opened_by(plain)  # one connection per waiting command
        await db.redis.delete(count_key)
        replies, batching_connections = await connections_opened_by(batching)
    finally:
        await plain.aclose()
        await batching.aclose()
    assert plain_connections > 50 and batching_connections <= 3, (plain_connections, batching_connections)
    counts, failure, refused = replies[:200], replies[200], replies[201]
    assert sorted(counts) == list(range(1, 201))  # type: ignore[type-var]
    assert isinstance(failure, ResponseError)
    assert isinstance(refused, DataError), refused
    assert int(await db.redis.get(count_key) or 0) == 200


async def test_a_script_the_server_forgot_is_loaded_again(db: Stores) -> None:
    script = db.redis.register_script("return ARGV[1] .. '!'")
    assert await script(args=["hi"]) == "hi!"
    await db.redis.script_flush()
    results = await asyncio.gather(*(script(args=[str(i)]) for i in range(20)))  # NOSCRIPT, then retried
    assert results == [f"{i}!" for i in range(20)]


async def test_a_stalled_server_times_out_every_kind_of_call_then_the_client_recovers(
    own_redis: DedicatedRedis,
) -> None:
    redis = open_redis(own_redis.url, timeout=0.5)
    assert own_redis.process is not None
    try:
        await redis.set("k", "v")
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        batched = asyncio.gather(redis.get("k"), redis.get("k"), return_exceptions=True)
        with pytest.raises(RedisTimeoutError):
            await redis.get("k")
        assert all(isinstance(r, RedisTimeoutError) for r in await batched)
        with pytest.raises(RedisTimeoutError):
            async with redis.pipeline(transaction=True) as pipe:
                await pipe.set("k", "w").get("k").execute()
        assert time.monotonic() - started < 5  # bounded: ~0.5 s per call, nothing hangs
        os.kill(own_redis.process.pid, signal.SIGCONT)
        assert await redis.get("k") == "v"  # the timed-out connections were dropped, not reused
        assert await asyncio.gather(*(redis.get("k") for _ in range(10))) == ["v"] * 10
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
        await redis.aclose()


async def test_a_restarted_server_is_reconnected_to_and_a_stopped_one_fails_fast(
    own_redis: DedicatedRedis,
) -> None:
    redis = open_redis(own_redis.url, timeout=2.0)
    try:
        await asyncio.gather(*(redis.set(f"k{i}", i) for i in range(10)))  # several pooled connections
        own_redis.stop()
        with pytest.raises((RedisConnectionError, OSError)):
            await redis.get("k1")
        own_redis.start()
        assert await redis.get("k1") is None  # a new, empty server: no stale connection answered
        assert await redis.set("k1", "x") and await redis.get("k1") == "x"
    finally:
        own_redis.stop()
        await redis.aclose()


async def _connections_received(redis: Redis) -> int:
    return int((await redis.info("stats"))["total_connections_received"])
