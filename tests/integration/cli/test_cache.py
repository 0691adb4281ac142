"""`nubo cache inspect|flush` as real subprocesses: flush deletes only the prefix, inspect reports."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from redis import Redis as SyncRedis

from nubo.cli.cache import flush_prefix
from nubo.settings import Settings
from nubo.stores import Stores
from nubo.stores.cache.collection import RedisCache
from nubo.stores.redis import Keys
from tests.helpers.harness import run_nubo


async def _fill(stores: Stores, prefix: str) -> None:
    posts = RedisCache(stores.redis, Keys(prefix)).collection("posts")
    user = uuid.uuid4()
    await posts.set_many(
        [
            {
                "id": uuid.uuid4(),
                "user_id": user,
                "content": "hi",
                "media_ids": [],
                "meta": {},
                "visibility": 0,
                "location": None,
                "created_at": datetime.now(UTC),
                "updated_at": datetime.now(UTC),
            }
            for _ in range(3)
        ]
    )


async def test_flush_deletes_only_the_prefix(stores: Stores, process_env: dict[str, str]) -> None:
    prefix = stores.keys.prefix + "cli:"
    outside = stores.keys.prefix + "clx:outside"  # shares a leading part of the prefix, but is not under it
    await stores.redis.set(outside, "keep me")
    await _fill(stores, prefix)
    env = {**process_env, "NUBO_REDIS_PREFIX": prefix}

    refused = run_nubo(["cache", "flush"], env, input_text="n\n")
    assert refused.returncode != 0 and "nothing deleted" in refused.stdout
    assert await stores.redis.exists(f"{prefix}ids:posts") == 1

    done = run_nubo(["cache", "flush", "--yes"], env)
    assert done.returncode == 0, done.stderr
    assert "deleted 7 Redis keys" in done.stdout  # 3 hashes, the id set, lru, 2 index sets
    assert [k async for k in stores.redis.scan_iter(match=f"{prefix}*")] == []
    assert await stores.redis.get(outside) == "keep me"
    await stores.redis.delete(outside)


async def test_inspect_reports_collections_and_memory(stores: Stores, process_env: dict[str, str]) -> None:
    prefix = stores.keys.prefix + "clinspect:"
    await _fill(stores, prefix)
    env = {**process_env, "NUBO_REDIS_PREFIX": prefix, "NUBO_REDIS_MEMORY_BUDGET": "512mb"}
    result = run_nubo(["cache", "inspect", "--collection", "posts", "--json"], env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    posts = report["collections"]["posts"]
    assert posts["elements"] == 3 and posts["indexes"] == 2  # user_id (one value) and visibility (one value)
    assert {"index": "visibility:0", "ids": 3} in posts["largest_indexes"]
    assert posts["memory_bytes"] > 0
    assert report["memory"]["budget_bytes"] == 512 * 1024 * 1024 and report["memory"]["used_bytes"] > 0

    assert "key_families" not in report  # one collection asked: no scan of the whole prefix
    await stores.redis.set(prefix + "session:x", "1")
    await stores.redis.set(prefix + "rl:login:x", "1")
    everything = json.loads(run_nubo(["cache", "inspect", "--json"], env).stdout)
    families = everything["key_families"]
    assert families["session"] == 1 and families["rl"] == 1 and families["cache"] >= 3 and families["idx"] >= 2

    table = run_nubo(["cache", "inspect"], env)
    assert table.returncode == 0 and "posts" in table.stdout and "users" in table.stdout
    assert "family" in table.stdout and "session" in table.stdout
    unknown = run_nubo(["cache", "inspect", "-c", "nope"], env)
    assert unknown.returncode == 2 and "unknown collection" in unknown.stderr


def test_serve_flush_cache_helper_deletes_only_the_prefix(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """`nubo serve --flush-cache` calls `flush_prefix`: keys under the prefix go, others stay."""
    prefix = settings.redis_prefix + "serveflush:"
    with SyncRedis.from_url(settings.redis_url, decode_responses=True) as redis:
        redis.set(prefix + "a", "1")
        redis.sadd(prefix + "b", "x")
        redis.set(settings.redis_prefix + "kept", "1")
        assert flush_prefix(replace(settings, redis_prefix=prefix)) == 2
        assert redis.exists(prefix + "a", prefix + "b") == 0
        assert redis.get(settings.redis_prefix + "kept") == "1"
        redis.delete(settings.redis_prefix + "kept")
    assert "deleted 2 Redis keys" in capsys.readouterr().out


async def test_flush_json_prints_only_the_result(stores: Stores, process_env: dict[str, str]) -> None:
    prefix = stores.keys.prefix + "clijson:"
    await _fill(stores, prefix)
    env = {**process_env, "NUBO_REDIS_PREFIX": prefix}
    asked = run_nubo(["cache", "flush", "--json"], env)
    assert asked.returncode == 2 and "--json needs --yes" in asked.stderr
    assert await stores.redis.exists(f"{prefix}ids:posts") == 1
    done = run_nubo(["cache", "flush", "--yes", "--json"], env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"prefix": prefix, "deleted": 7}  # stdout is the JSON, nothing else
