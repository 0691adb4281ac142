"""The memory governor on the real (shared) Redis: LRU order, touched survive, no orphans, under budget.

The Redis server is shared with other test runs, so the budget is computed from the server's current
`used_memory` plus a fraction of what this test itself inserted, under a dedicated key prefix.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from nubo.stores import Stores
from nubo.stores.cache.admin import audit_cache, used_memory
from nubo.stores.cache.collection import RedisCache
from nubo.stores.cache.governor import enforce_budget, run_governor
from nubo.stores.redis import Keys, delete_prefix

COUNT = 1500


def post(index: int) -> dict[str, object]:
    # Ids increase with `index`, so even a tie in usage time orders members by insertion.
    return {
        "id": uuid.UUID(int=10**6 + index),
        "user_id": uuid.UUID(int=index % 7 + 1),
        "content": "x" * 1024,
        "media_ids": [],
        "meta": {},
        "visibility": index % 2,
        "location": None,
        "created_at": datetime(2024, 1, 1, tzinfo=UTC),
        "updated_at": datetime(2024, 1, 1, tzinfo=UTC),
    }


@pytest.fixture
async def filled(stores: Stores) -> AsyncIterator[tuple[RedisCache, int, int]]:
    """A cache under its own prefix with COUNT posts inserted in order; yields (cache, baseline, growth)."""
    keys = Keys(stores.keys.prefix + f"gov{uuid.uuid4().hex[:6]}:")
    cache = RedisCache(stores.redis, keys)
    baseline = await used_memory(stores.redis)
    posts = cache.collection("posts")
    for start in range(0, COUNT, 100):
        await posts.set_many([post(i) for i in range(start, start + 100)])
    growth = await used_memory(stores.redis) - baseline
    assert growth > 1_000_000, growth
    yield cache, baseline, growth
    await delete_prefix(stores.redis, keys)


async def surviving_indexes(cache: RedisCache) -> set[int]:
    return {int(uuid.UUID(i)) - 10**6 for i in await cache.redis.smembers(cache.collection("posts").ids_key)}


async def test_purges_least_recently_used_first(
    filled: tuple[RedisCache, int, int], caplog: pytest.LogCaptureFixture
) -> None:
    cache, baseline, growth = filled
    posts = cache.collection("posts")
    assert await posts.get_by_id(post(0)["id"]) is not None  # touch the oldest by id...
    assert len(await posts.get({"id": post(1)["id"]})) == 1  # ...and another through a filter
    budget = baseline + growth // 2
    with caplog.at_level(logging.INFO, logger="nubo.stores.cache.governor"):
        report = await enforce_budget(cache.redis, cache.keys, budget, growth // 10, batch=50)

    assert report.status == "purged", report
    assert 0 < report.purged < COUNT
    assert report.used_after <= report.threshold < budget
    assert await used_memory(cache.redis) < budget
    alive = await surviving_indexes(cache)
    gone = set(range(COUNT)) - alive
    assert {0, 1} <= alive, "touched elements must survive"
    assert len(gone) == report.purged
    assert max(gone) < min(alive - {0, 1}), "purged elements must be the least recently used ones"
    assert report.by_collection == {"posts": report.purged}
    assert await audit_cache(cache) == []  # no orphan index entry, no empty set
    purged_logs = [r for r in caplog.records if r.getMessage() == "cache_purged"]
    assert purged_logs and purged_logs[0].purged == report.purged  # type: ignore[attr-defined]


async def test_under_budget_does_nothing_and_lock_makes_instances_take_turns(
    filled: tuple[RedisCache, int, int],
) -> None:
    cache, baseline, growth = filled
    report = await enforce_budget(cache.redis, cache.keys, baseline + growth * 100, 0)
    assert report.status == "under" and report.purged == 0

    await cache.redis.set(cache.keys("lock", "governor"), "another-instance", px=5000)
    report = await enforce_budget(cache.redis, cache.keys, baseline, 0)
    assert report.status == "locked" and report.purged == 0
    assert await cache.collection("posts").count() == COUNT
    await cache.redis.delete(cache.keys("lock", "governor"))


async def test_watcher_loop_brings_memory_back_under_budget(filled: tuple[RedisCache, int, int]) -> None:
    cache, baseline, growth = filled
    budget = baseline + growth // 3
    task = asyncio.create_task(run_governor(cache.redis, cache.keys, budget, lambda b: 0, interval=0.05))
    try:
        for _ in range(100):
            if await used_memory(cache.redis) < budget:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert await used_memory(cache.redis) < budget
    assert 0 < await cache.collection("posts").count() < COUNT
    assert await audit_cache(cache) == []
