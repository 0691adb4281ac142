"""Derived values (nubo.stores.derived) without Redis: every read computes, and each failure is counted."""

from __future__ import annotations

from typing import Any

from nubo.ids import new_id
from nubo.stores.derived import DerivedCache, user_tag
from nubo.stores.redis import Keys, open_redis
from tests.helpers.harness import free_port


async def test_without_redis_every_read_computes_and_the_failure_is_counted() -> None:
    failures: list[str] = []
    unreachable = open_redis(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    cache = DerivedCache(unreachable, Keys("nubo_test_derived:"), failures.append)
    calls = 0

    async def compute() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"n": calls}

    try:
        assert await cache.get("x", [user_tag(new_id())], compute) == {"n": 1}
        assert await cache.get("x", [user_tag(new_id())], compute) == {"n": 2}
        await cache.invalidate([user_tag(new_id())])  # logged and counted, never raised
    finally:
        await unreachable.aclose()
    assert failures == ["redis_derived"] * 3
