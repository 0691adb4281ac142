"""nubo's Redis client (automatic pipelining, round-trip timeouts) against real redis-server processes, and
the plain redis-py client that `NUBO_REDIS_AUTOPIPELINE=off` gives instead."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from nubo.settings import RateLimit, Settings
from nubo.stores import Stores, open_stores
from nubo.stores.redis import BatchingRedis, open_redis
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


async def test_with_autopipelining_off_each_command_goes_alone_and_keeps_its_reply(
    db: Stores, settings: Settings
) -> None:
    """`NUBO_REDIS_AUTOPIPELINE=off`: the stores get redis-py's own client (one pooled connection per waiting
    command, no batching); replies, per-command errors and scripts behave the same."""
    plain = await open_stores(dataclasses.replace(settings, redis_autopipeline=False))
    text_key, count_key = db.keys("client-off", "text"), db.keys("client-off", "n")
    try:
        assert isinstance(plain.redis, Redis) and not isinstance(plain.redis, BatchingRedis)
        await plain.redis.set(text_key, "not a number")
        before = await _connections_received(db.redis)
        replies = await asyncio.gather(
            *(plain.redis.incr(count_key) for _ in range(200)),
            plain.redis.incr(text_key),
            plain.redis.set(db.keys("client-off", "bad"), True),
            return_exceptions=True,
        )
        assert await _connections_received(db.redis) - before > 50  # nothing was batched
        assert sorted(replies[:200]) == list(range(1, 201))  # type: ignore[type-var]
        assert isinstance(replies[200], ResponseError) and isinstance(replies[201], DataError)
        status = await plain.rate_limits.hit("t_plain", count_key, RateLimit(5, 60))  # a Lua script
        assert status is not None and status.allowed and status.remaining == 4
    finally:
        await plain.redis.delete(
            text_key, count_key, *plain.rate_limits.window_keys("t_plain", count_key, RateLimit(5, 60))
        )
        await plain.close()


async def test_a_script_the_server_forgot_is_loaded_again(db: Stores) -> None:
    script = db.redis.register_script("return ARGV[1] .. '!'")
    assert await script(args=["hi"]) == "hi!"
    await db.redis.script_flush()
    results = await asyncio.gather(*(script(args=[str(i)]) for i in range(20)))  # NOSCRIPT, then retried
    assert results == [f"{i}!" for i in range(20)]


@pytest.mark.parametrize("autopipeline", [True, False], ids=["autopipeline", "plain"])
async def test_a_stalled_server_times_out_every_kind_of_call_then_the_client_recovers(
    own_redis: DedicatedRedis, autopipeline: bool
) -> None:
    redis = open_redis(own_redis.url, timeout=0.5, autopipeline=autopipeline)
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


@pytest.mark.parametrize("autopipeline", [True, False], ids=["autopipeline", "plain"])
async def test_a_restarted_server_is_reconnected_to_and_a_stopped_one_fails_fast(
    own_redis: DedicatedRedis, autopipeline: bool
) -> None:
    redis = open_redis(own_redis.url, timeout=2.0, autopipeline=autopipeline)
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
