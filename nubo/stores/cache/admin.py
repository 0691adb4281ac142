"""Looking into the cache (CLI, tests, bench, governor): Redis memory figures, per-collection figures, audit.

Nothing here changes the cache. Per-collection memory is approximate, because an exact figure would cost a
MEMORY USAGE of every key: it is sampled on a few elements and index sets and multiplied by their counts.
The audit walks every key of the prefix; it is meant for tests and for chasing a suspected inconsistency.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from nubo.stores.cache.collection import CHUNK, RedisCache
from nubo.stores.cache.schema import index_payload
from nubo.stores.redis import scan_prefix


async def used_memory(redis: Redis) -> int:
    """Redis's own memory use in bytes (INFO memory `used_memory`)."""
    return int((await redis.info("memory"))["used_memory"])


async def resolve_budget(redis: Redis, configured: int) -> int:
    """The budget in bytes: the configured one, else Redis `maxmemory` (0 when neither is set)."""
    if configured > 0:
        return configured
    return int((await redis.info("memory")).get("maxmemory", 0))


async def cache_stats(
    cache: RedisCache, collection: str | None = None, *, sample: int = 50, top: int = 5
) -> dict[str, Any]:
    """Per collection: element count, index count, largest indexes and approximate memory (sampled)."""
    redis = cache.redis
    names = [collection] if collection is not None else sorted(cache.schemas)
    index_sizes = await _index_sizes(cache, collection)
    collections: dict[str, Any] = {}
    for name in names:
        coll = cache.collection(name)
        sizes = index_sizes.get(name, {})
        elements = await coll.count()
        element_bytes = await _sampled_memory(
            redis, [coll.hash_key(str(i)) for i in await redis.srandmember(coll.ids_key, sample) or []]
        )
        index_keys = [coll.idx_prefix + suffix for suffix in list(sizes)[:sample]]
        index_bytes = await _sampled_memory(redis, index_keys)
        largest = sorted(sizes.items(), key=lambda item: (-item[1], item[0]))[:top]
        collections[name] = {
            "elements": elements,
            "indexes": len(sizes),
            "largest_indexes": [{"index": suffix, "ids": count} for suffix, count in largest],
            "memory_bytes": round(
                elements * element_bytes + len(sizes) * index_bytes + (await redis.memory_usage(coll.ids_key) or 0)
            ),
        }
    return {
        "prefix": cache.keys.prefix,
        "collections": collections,
        "lru_entries": int(await redis.zcard(cache.lru_key)),
    }


async def _index_sizes(cache: RedisCache, collection: str | None) -> dict[str, dict[str, int]]:
    """{collection: {"field:value": cardinality}} over every index set (one SCAN of the prefix)."""
    pattern = "idx:*" if collection is None else f"idx:{collection}:*"
    start = len(cache.keys("idx", ""))
    sizes: dict[str, dict[str, int]] = {}
    pending: list[str] = []

    async def flush() -> None:
        pipe = cache.redis.pipeline(transaction=False)
        for key in pending:
            pipe.scard(key)
        for key, count in zip(pending, await pipe.execute(), strict=True):
            name, _, suffix = key[start:].partition(":")
            sizes.setdefault(name, {})[suffix] = int(count)
        pending.clear()

    async for key in scan_prefix(cache.redis, cache.keys, pattern):
        pending.append(key)
        if len(pending) >= CHUNK:
            await flush()
    if pending:
        await flush()
    return sizes


async def _sampled_memory(redis: Redis, keys: list[str]) -> float:
    """Mean MEMORY USAGE of `keys` (0 when none)."""
    if not keys:
        return 0.0
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key)
    sizes = [int(size) for size in await pipe.execute() if size is not None]
    return sum(sizes) / len(sizes) if sizes else 0.0


async def audit_cache(cache: RedisCache) -> list[str]:
    """Walk every cache key of the prefix and list inconsistencies (empty list: all invariants hold).

    Every index set must hold exactly the ids whose element has that value, no index set may be empty, and the
    id sets and the usage order must name exactly the elements that exist.
    """
    redis, keys = cache.redis, cache.keys
    problems: list[str] = []
    expected: dict[str, set[str]] = {}
    elements: set[str] = set()  # "collection:id"
    async for key in scan_prefix(redis, keys, "cache:*"):
        name, _, element_id = key[len(keys("cache", "")) :].partition(":")
        if name not in cache.schemas:
            problems.append(f"{key}: element of unknown collection {name!r}")
            continue
        coll = cache.collection(name)
        raw: dict[str, str] = await redis.hgetall(key)  # type: ignore[assignment]  # decode_responses
        elements.add(coll.member(element_id))
        for field in coll.schema.indexed:
            payload = index_payload(field, raw.get(field.name))
            if payload is not None:
                expected.setdefault(coll.index_key(field.name, payload), set()).add(element_id)
    problems += await _audit_indexes(cache, expected)
    problems += await _audit_members(cache, elements)
    return problems


async def _audit_indexes(cache: RedisCache, expected: dict[str, set[str]]) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    async for key in scan_prefix(cache.redis, cache.keys, "idx:*"):
        seen.add(key)
        actual = {str(i) for i in await cache.redis.smembers(key)}
        if not actual:
            problems.append(f"{key}: empty index set")
        for orphan in sorted(actual - expected.get(key, set())):
            problems.append(f"{key}: holds {orphan}, whose element is gone or has another value")
        for missing in sorted(expected.get(key, set()) - actual):
            problems.append(f"{key}: lacks {missing}")
    problems += [f"{key}: index set missing for {sorted(ids)}" for key, ids in expected.items() if key not in seen]
    return problems


async def _audit_members(cache: RedisCache, elements: set[str]) -> list[str]:
    problems: list[str] = []
    listed: set[str] = set()
    for name in cache.schemas:
        coll = cache.collection(name)
        listed |= {coll.member(str(i)) for i in await cache.redis.smembers(coll.ids_key)}
    lru = {str(m) for m in await cache.redis.zrange(cache.lru_key, 0, -1)}
    problems += [f"id set lists {m}, which does not exist" for m in sorted(listed - elements)]
    problems += [f"id set lacks {m}" for m in sorted(elements - listed)]
    problems += [f"usage order lists {m}, which does not exist" for m in sorted(lru - elements)]
    problems += [f"usage order lacks {m}" for m in sorted(elements - lru)]
    return problems
