"""The shared limiter (`limits`' sliding-window-counter layout on redis-py 8): atomic under concurrency, keys
under the prefix, `RateLimited` with headers, fail-open when Redis is unreachable, leases (and their switch);
client addresses behind proxies."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import pytest

from nubo import accounts
from nubo.errors import RateLimited
from nubo.root import open_root
from nubo.settings import RateLimit, Settings
from nubo.stores import Stores
from nubo.stores.ratelimit import LEASE_MIN_LIMIT, RateLimits, raise_if_limited
from nubo.stores.redis import scan_prefix
from tests.helpers.harness import free_port, user_with_session, wait_until


async def test_concurrent_hits_never_exceed_the_limit(stores: Stores) -> None:
    key, rate = uuid.uuid4().hex, RateLimit(10, 60)
    results = await asyncio.gather(*(stores.rate_limits.hit("t_concurrent", key, rate) for _ in range(50)))
    assert all(r is not None for r in results)
    assert sum(1 for r in results if r is not None and r.allowed) == 10


async def test_two_processes_worth_of_clients_share_one_window(stores: Stores, settings: Settings) -> None:
    """Two independent connection pools (as two servers have) still share one atomic window."""
    other = (await open_root(settings)).stores
    try:
        key, rate = uuid.uuid4().hex, RateLimit(7, 60)
        results = await asyncio.gather(*(s.rate_limits.hit("t_shared", key, rate) for s in [stores, other] * 10))
        assert sum(1 for r in results if r is not None and r.allowed) == 7
    finally:
        await other.close()


async def test_rate_limit_raises_with_headers_and_keys_stay_under_prefix(stores: Stores, settings: Settings) -> None:
    key, rate = uuid.uuid4().hex, RateLimit(2, 30)
    first = await stores.rate_limits.limit("t_raise", key, rate)
    assert first is not None and first.headers() == {
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "1",
        "X-RateLimit-Reset": first.headers()["X-RateLimit-Reset"],
    }
    await stores.rate_limits.limit("t_raise", key, rate)
    with pytest.raises(RateLimited) as caught:
        await stores.rate_limits.limit("t_raise", key, rate)
    assert caught.value.status == 429 and 1 <= caught.value.retry_after <= 30
    assert caught.value.headers["Retry-After"] == str(caught.value.retry_after)
    assert caught.value.headers["X-RateLimit-Remaining"] == "0"
    found = [k async for k in scan_prefix(stores.redis, stores.keys, f"ratelimit:*{key}*")]
    assert found and all(k.startswith(settings.redis_prefix + "ratelimit:") for k in found)
    await stores.rate_limits.clear("t_raise", key, rate)
    assert (await stores.rate_limits.hit("t_raise", key, rate)) is not None


async def test_fails_open_when_redis_is_unreachable(settings: Settings) -> None:
    down = (await open_root(dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0"))).stores
    try:
        for _ in range(5):
            assert await down.rate_limits.limit("t_down", "k", RateLimit(1, 60)) is None
        assert down.failures.get("redis_ratelimit", 0) == 5
    finally:
        await down.close()


async def test_window_is_the_limits_package_layout(stores: Stores) -> None:
    """Our one-round-trip script and `limits`' own sliding window counter read and write the same window."""
    from limits import RateLimitItemPerSecond
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import SlidingWindowCounterRateLimiter

    key, rate = uuid.uuid4().hex, RateLimit(5, 60)
    item = RateLimitItemPerSecond(rate.amount, rate.seconds)
    storage = RedisStorage(
        f"async+{stores.settings.redis_url}",
        implementation="redispy",
        key_prefix=stores.keys("ratelimit"),
        connection_pool=stores.redis.connection_pool,  # type: ignore[arg-type]  # passed to redis-py
    )
    limiter = SlidingWindowCounterRateLimiter(storage)
    for _ in range(2):
        await stores.rate_limits.hit("t_compat", key, rate)
    assert await limiter.hit(item, "t_compat", key)  # limits' own hit lands in the same window
    stats = await limiter.get_window_stats(item, "t_compat", key)
    assert stats.remaining == 2
    status = await stores.rate_limits.hit("t_compat", key, rate)
    assert status is not None and status.remaining == 1 and status.allowed
    previous, current = stores.rate_limits.window_keys("t_compat", key, rate)
    assert await stores.redis.get(current) == "4" and await stores.redis.type(current) == "string"
    await stores.rate_limits.clear("t_compat", key, rate)
    assert await stores.redis.exists(previous, current) == 0
    assert (await limiter.get_window_stats(item, "t_compat", key)).remaining == 5


async def test_the_previous_window_counts_for_the_part_of_it_still_in_the_window(stores: Stores) -> None:
    """Two counters, whatever the limit: the previous window's hits weigh by how much of it is still inside
    the sliding window, and a current window older than one window becomes the previous one."""
    key, rate = uuid.uuid4().hex, RateLimit(10, 60)
    previous, current = stores.rate_limits.window_keys("t_slide", key, rate)
    await stores.redis.set(previous, 10, px=29_500)  # about half of it still in the window: 10 * 0.49 -> 4
    await stores.redis.set(current, 3, px=90_000)  # the current window ends in 30 s
    status = await stores.rate_limits.hit("t_slide", key, rate)
    assert status is not None and status.allowed and status.remaining == 10 - (4 + 3 + 1)
    assert 5 <= status.reset_after <= 6  # the previous window's weight drops by one hit every 6 s
    await stores.redis.set(current, 10, px=20_000)  # ended 40 s ago: becomes the previous window
    status = await stores.rate_limits.hit("t_slide", key, rate)
    assert status is not None and status.remaining == 10 - (3 + 1)  # 10 * 20/60 -> 3, plus this hit
    assert await stores.redis.get(previous) == "10" and await stores.redis.get(current) == "1"
    await stores.rate_limits.clear("t_slide", key, rate)


async def test_guarded_hit_counts_only_behind_a_live_guard(stores: Stores) -> None:
    """The session check + per-user limit script: no hit for a missing or revoked mirror, atomic otherwise."""
    key, rate = uuid.uuid4().hex, RateLimit(5, 60)
    guard = stores.keys("t_guard", key)
    window = stores.rate_limits.window_keys("t_guarded", key, rate)
    assert await stores.rate_limits.guarded_hit(guard, "t_guarded", key, rate) == (None, None, None)
    await stores.redis.set(guard, '{"revoked":true}', ex=60)
    raw, status, _ = await stores.rate_limits.guarded_hit(guard, "t_guarded", key, rate)
    assert status is None and b"revoked" in (raw if isinstance(raw, bytes) else raw.encode())
    assert await stores.redis.exists(*window) == 0
    await stores.redis.set(guard, '{"uid":"u","username":"x","grade":1}', ex=60)
    results = await asyncio.gather(*(stores.rate_limits.guarded_hit(guard, "t_guarded", key, rate) for _ in range(20)))
    statuses = [s for _, s, _ in results]
    assert all(s is not None for s in statuses)
    assert sum(1 for s in statuses if s is not None and s.allowed) == 5
    assert await stores.redis.get(window[1]) == "5"
    with pytest.raises(RateLimited):
        raise_if_limited(statuses[-1])
    await stores.redis.delete(guard, *window)


async def test_a_lease_takes_several_hits_but_never_more_than_an_eighth_of_what_is_left(stores: Stores) -> None:
    key, rate = uuid.uuid4().hex, RateLimit(100, 60)
    guard = stores.keys("t_guard", key)
    window = stores.rate_limits.window_keys("t_lease", key, rate)
    await stores.redis.set(guard, '{"uid":"u","username":"x","grade":1}', ex=60)
    _, status, _ = await stores.rate_limits.guarded_hit(guard, "t_lease", key, rate, want=32)
    assert status is not None and status.taken == 12 and status.remaining == 88  # floor(100 / 8)
    await stores.redis.set(window[1], 97, px=120_000)
    taken = []
    for _ in range(4):
        _, status, _ = await stores.rate_limits.guarded_hit(guard, "t_lease", key, rate, want=32)
        assert status is not None
        taken.append(status.taken)
    assert taken == [1, 1, 1, 0]  # near the end of the window: single hits, then refused
    assert await stores.redis.get(window[1]) == "100"
    await stores.redis.delete(guard, *window)


def count_calls(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> dict[str, int]:
    """Count the calls to `module.name` (the real function still runs: a Redis round trip each)."""
    calls = {"redis": 0}
    real = getattr(module, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls["redis"] += 1
        return await real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


async def test_leased_hits_spare_redis_calls_and_two_instances_never_pass_the_limit(
    db: Stores, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy caller alternating between two instances: exactly `limit` requests pass, the rest get 429, and
    most allowed requests were served from leases (no Redis call)."""
    other = (await open_root(settings)).stores
    tracking = [asyncio.create_task(instance.near.run()) for instance in (db, other)]
    try:
        await wait_until(lambda: db.near.live and other.near.live)
        user_id, session_id = await user_with_session(db)
        rate = RateLimit(100, 60)
        calls = count_calls(monkeypatch, RateLimits, "guarded_hit")
        allowed, refused, calls_while_allowed = 0, 0, 0
        for index in range(160):
            instance = (db, other)[index % 2]
            try:
                _, status = await accounts.authenticate_and_limit(instance, user_id, session_id, rate, "t_lease")
            except RateLimited:
                refused += 1
                continue
            allowed += 1
            calls_while_allowed = calls["redis"]
            assert status is not None and 0 <= status.remaining < rate.amount
        assert (allowed, refused) == (100, 60)
        print(f"100 allowed requests took {calls_while_allowed} Redis calls")
        assert calls_while_allowed <= 40
    finally:
        for task in tracking:
            task.cancel()
        await asyncio.gather(*tracking, return_exceptions=True)
        await other.close()


async def test_small_limits_are_never_leased(db: Stores, settings: Settings) -> None:
    user_id, session_id = await user_with_session(db)
    rate = RateLimit(LEASE_MIN_LIMIT - 1, 60)
    for _ in range(3):
        await accounts.authenticate_and_limit(db, user_id, session_id, rate, "t_small")
    _, window = db.rate_limits.window_keys("t_small", str(user_id), rate)
    assert await db.redis.get(window) == "3"  # one hit per request, none taken ahead


async def test_concurrent_requests_of_one_caller_wait_for_one_lease_call(
    db: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 requests of one caller at once: they wait for the lease call in flight and share its hits, rather
    than each calling Redis; every one is counted in the window."""
    tracking = asyncio.create_task(db.near.run())
    try:
        await wait_until(lambda: db.near.live)
        user_id, session_id = await user_with_session(db)
        rate = RateLimit(100_000, 60)
        await accounts.authenticate_and_limit(db, user_id, session_id, rate, "t_flight")  # session copy held
        calls = count_calls(monkeypatch, RateLimits, "guarded_hit")
        results = await asyncio.gather(
            *(accounts.authenticate_and_limit(db, user_id, session_id, rate, "t_flight") for _ in range(50))
        )
        assert all(status is not None and status.allowed for _, status in results)
        print(f"50 concurrent requests took {calls['redis']} Redis calls")
        assert calls["redis"] <= 10
        _, window = db.rate_limits.window_keys("t_flight", str(user_id), rate)
        assert int(await db.redis.get(window) or 0) >= 51  # each request's hit counted (plus unused leased ones)
    finally:
        tracking.cancel()
        await asyncio.gather(tracking, return_exceptions=True)


async def test_rate_limit_pays_big_limits_from_leases_and_two_instances_never_pass_it(
    db: Stores, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rate_limit` (message sends, reports): a caller alternating between two instances gets exactly `limit`
    hits, then 429s; most allowed hits needed no Redis call. Small limits stay one Redis call per hit."""
    other = (await open_root(settings)).stores
    key, rate = uuid.uuid4().hex, RateLimit(100, 60)
    calls = count_calls(monkeypatch, RateLimits, "hit")
    allowed, refused, calls_while_allowed = 0, 0, 0
    try:
        for index in range(160):
            try:
                await (db, other)[index % 2].rate_limits.limit("t_leased_rl", key, rate)
            except RateLimited:
                refused += 1
                continue
            allowed += 1
            calls_while_allowed = calls["redis"]
        small = RateLimit(LEASE_MIN_LIMIT - 1, 60)
        before = calls["redis"]
        for _ in range(3):
            await db.rate_limits.limit("t_small_rl", key, small)
        small_calls = calls["redis"] - before
    finally:
        await other.close()
    assert (allowed, refused) == (100, 60)
    print(f"100 allowed hits took {calls_while_allowed} Redis calls")
    assert calls_while_allowed <= 40
    assert small_calls == 3
    assert await db.redis.get(db.rate_limits.window_keys("t_small_rl", key, small)[1]) == "3"


async def test_with_leases_off_every_hit_is_one_redis_call(
    db: Stores, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`NUBO_RATE_LEASES=off`: a big limit costs one Redis call per hit, through `limit` and through the
    per-user session script alike, and still lets exactly `limit` hits through."""
    unleased = (await open_root(dataclasses.replace(settings, rate_leases=False))).stores
    tracking = asyncio.create_task(unleased.near.run())  # live near copies: the state in which leases are used
    try:
        await wait_until(lambda: unleased.near.live)
        key, rate = uuid.uuid4().hex, RateLimit(100, 60)
        hits = count_calls(monkeypatch, RateLimits, "hit")
        allowed = 0
        for _ in range(110):
            try:
                await unleased.rate_limits.limit("t_unleased", key, rate)
                allowed += 1
            except RateLimited:
                pass
        assert (allowed, hits["redis"]) == (100, 110)
        user_id, session_id = await user_with_session(db)
        scripts = count_calls(monkeypatch, RateLimits, "guarded_hit")
        for _ in range(20):
            await accounts.authenticate_and_limit(unleased, user_id, session_id, rate, "t_unleased_user")
        assert scripts["redis"] == 20
        _, window = unleased.rate_limits.window_keys("t_unleased_user", str(user_id), rate)
        assert await unleased.redis.get(window) == "20"  # no hit taken ahead
    finally:
        tracking.cancel()
        await asyncio.gather(tracking, return_exceptions=True)
        await unleased.close()
