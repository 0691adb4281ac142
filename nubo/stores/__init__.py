"""The three stores and their connections. Domain code reaches them only through `nubo.stores` modules."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from nubo.logs import get_logger
from nubo.settings import Settings
from nubo.stores import mongo, postgres, redis
from nubo.stores.mongo import MongoDoc
from nubo.stores.postgres import PgPool
from nubo.stores.ratelimit import RateLimits
from nubo.stores.redis import Keys

if TYPE_CHECKING:
    from nubo.stores.derived import DerivedCache
    from nubo.stores.near import NearCache
    from nubo.stores.redis_cache import RedisCache
    from nubo.stores.tiered import TieredStore

log = get_logger(__name__)

BACKGROUND_PG_SLOTS = 4  # pooled PostgreSQL connections that background work may hold at once (of 20)


@dataclass
class Stores:
    """Open handles on PostgreSQL, MongoDB and Redis for one process."""

    settings: Settings
    pg: PgPool
    mongo_client: AsyncMongoClient[MongoDoc]
    redis: Redis
    keys: Keys
    rate_limits: RateLimits
    failures: dict[str, int] = field(default_factory=dict)
    _scripts: dict[str, AsyncScript] = field(default_factory=dict)

    @property
    def mongo(self) -> AsyncDatabase[MongoDoc]:
        return self.mongo_client[self.settings.mongo_db]

    @cached_property
    def background_pg(self) -> asyncio.Semaphore:
        """Held around PostgreSQL work nobody waits for (session mirror refreshes, presence peers): it takes at
        most :data:`BACKGROUND_PG_SLOTS` pooled connections at once. A burst of sockets connecting started one
        such query per socket, took every connection, and a message send waited 350 ms for one."""
        return asyncio.Semaphore(BACKGROUND_PG_SLOTS)

    @cached_property
    def cache(self) -> RedisCache:
        """The Redis cache collections (hot copies of rows)."""
        from nubo.stores.redis_cache import RedisCache

        return RedisCache(self.redis, self.keys)

    @cached_property
    def tiered(self) -> TieredStore:
        """The tiered read/write path every domain module uses for mirrored rows."""
        from nubo.stores.tiered import TieredStore

        return TieredStore(self)

    @cached_property
    def derived(self) -> DerivedCache:
        """Values computed from PostgreSQL, cached in Redis until a write changes one of their tags."""
        from nubo.stores.derived import DerivedCache

        return DerivedCache(self.redis, self.keys, self.count_failure, self.near)

    @cached_property
    def near(self) -> NearCache:
        """In-process copies of the hottest Redis values (session mirrors, hot rows, derived values and their
        tags), invalidated by Redis; live once the app lifespan runs :meth:`NearCache.run`."""
        from nubo.stores.near import NearCache
        from nubo.stores.tiered import ENTITIES

        families = ["session", "derived", "tag"]
        families += [f"cache:{entity.cache_collection}" for entity in ENTITIES.values() if entity.near]
        return NearCache(
            self.settings.redis_url,
            self.redis,
            self.keys,
            families,
            max_entries=self.settings.near_cache_entries if self.settings.near_cache else 0,
        )

    def script(self, source: str) -> AsyncScript:
        """The Lua script `source` registered on this Redis client (hashed once per process, not per call)."""
        found = self._scripts.get(source)
        if found is None:
            found = self._scripts[source] = self.redis.register_script(source)
        return found

    def count_failure(self, store: str) -> None:
        """Count a projection write that failed after the PostgreSQL commit (repaired later)."""
        self.failures[store] = self.failures.get(store, 0) + 1

    async def check(self, timeout: float = 2.0) -> dict[str, dict[str, Any]]:  # noqa: ASYNC109 - a per-store timeout, not the whole call
        """Ping each store concurrently; each entry has `status` ("up"/"down") and details or the error."""
        probes: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
            "postgres": lambda: postgres.ping(self.pg),
            "mongo": lambda: mongo.ping(self.mongo),
            "redis": lambda: redis.ping(self.redis),
        }

        async def run(name: str, probe: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
            try:
                return {"status": "up", **await asyncio.wait_for(probe(), timeout)}
            except Exception as exc:  # any failure means "down"; the reason is reported, not raised
                return {"status": "down", "error": f"{type(exc).__name__}: {exc}"[:300]}

        results = await asyncio.gather(*(run(name, probe) for name, probe in probes.items()))
        return dict(zip(probes, results, strict=True))

    async def close(self) -> None:
        await self.pg.close()
        await self.mongo_client.close()
        await self.redis.aclose()


async def open_stores(settings: Settings, *, wait_for_postgres: bool = False, pg_max_size: int = 20) -> Stores:
    """Open all three connections. Only PostgreSQL may be awaited: Mongo and Redis connect lazily."""
    pg = await postgres.open_pool(settings.postgres_url, wait=wait_for_postgres, max_size=pg_max_size)
    redis_client = redis.open_redis(settings.redis_url, autopipeline=settings.redis_autopipeline)
    keys = Keys(settings.redis_prefix)
    failures: dict[str, int] = {}
    return Stores(
        settings=settings,
        pg=pg,
        mongo_client=mongo.open_client(settings.mongo_url),
        redis=redis_client,
        keys=keys,
        rate_limits=RateLimits(redis_client, keys, failures=failures, leased=settings.rate_leases),
        failures=failures,
    )
