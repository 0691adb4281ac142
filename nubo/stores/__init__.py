"""The three stores (and the media bucket) and their connections. Domain code reaches them only through
`nubo.stores` modules."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from nubo.errors import StoreName
from nubo.logs import get_logger
from nubo.metrics import Metrics
from nubo.settings import Settings
from nubo.stores import mongo, postgres, redis
from nubo.stores.batching import BatchQueue
from nubo.stores.breaker import Breakers
from nubo.stores.cache.collection import RedisCache
from nubo.stores.derived import DerivedCache
from nubo.stores.entities import ENTITIES
from nubo.stores.event_outbox import EventRelay
from nubo.stores.events import EventBus
from nubo.stores.mongo import MongoDoc
from nubo.stores.near import NearCache
from nubo.stores.objects import ObjectStore
from nubo.stores.postgres import PgPool
from nubo.stores.projection import Projector
from nubo.stores.ratelimit import RateLimits
from nubo.stores.redis import Keys
from nubo.stores.tiered import TieredStore
from nubo.stores.transaction import Transaction, transaction
from nubo.stores.unread import UnreadCounters
from nubo.stores.view_counts import ViewCounts

log = get_logger(__name__)

BACKGROUND_PG_SLOTS = 4  # pooled PostgreSQL connections that background work may hold at once (of 20)
MIRROR_REFRESH_BATCH = 500  # session mirrors re-checked per query
IMAGE_SLOTS = 2  # images processed at once per process (see Stores.image_slots)


@dataclass
class Stores:
    """The store layer of one process: the three connections and every per-process service that works on them.

    Built in one place (:func:`open_stores`, called by the composition root :mod:`nubo.root`); every field is
    created there, none later. Background tasks that run for the life of the process (the near cache's
    invalidation listener, the outbox worker, the cache governor) are started and stopped by the root's
    lifespan; the queues (projectors, batch queues) run a task while they hold work and are drained by it.
    """

    settings: Settings
    pg: PgPool
    mongo_client: AsyncMongoClient[MongoDoc]
    redis: Redis
    keys: Keys
    near: NearCache
    cache: RedisCache
    derived: DerivedCache
    tiered: TieredStore
    projector: Projector  # the tiered writes' projections: the request waits for them
    messaging_projector: Projector  # messaging's: sends do not wait, rows are coalesced (nubo.stores.projection)
    events: EventBus
    rate_limits: RateLimits
    unread: UnreadCounters  # per-user unread counters (nubo.stores.unread)
    feed_fan_out: BatchQueue[uuid.UUID, uuid.UUID]  # post id -> author, fanned out to followers' feeds
    mirror_refresh: BatchQueue[uuid.UUID, uuid.UUID]  # session id -> user id, re-checked before its mirror lapses
    # Held around PostgreSQL work nobody waits for (session mirror refreshes, presence peers): it takes at most
    # BACKGROUND_PG_SLOTS pooled connections at once. A burst of sockets connecting started one such query per
    # socket, took every connection, and a message send waited 350 ms for one.
    background_pg: asyncio.Semaphore
    failures: StoreFailures
    scripts: LuaScripts
    objects: ObjectStore  # the media bucket on S3-compatible storage (nubo.stores.objects)
    # Held around the processing of one image (decoded, it holds tens of MB): at most IMAGE_SLOTS at once per
    # process, so a burst of completes queues instead of taking every thread and the memory they would need.
    image_slots: asyncio.Semaphore
    view_counts: ViewCounts  # who saw which post each day, and the counts not yet in PostgreSQL
    metrics: Metrics  # this process's instruments (nubo.metrics), counted by the tiered store, limiter, events
    relay: EventRelay  # publishes committed events (nubo.stores.event_outbox)

    @property
    def mongo(self) -> AsyncDatabase[MongoDoc]:
        return self.mongo_client[self.settings.mongo_db]

    def transaction(
        self,
        *,
        projector: Projector | None = None,
        wait: bool = True,
        reread: bool = False,
        one_statement: bool = False,
    ) -> AbstractAsyncContextManager[Transaction]:
        """A PostgreSQL transaction whose rows are projected, and whose registered side effects run, after its
        commit (:func:`nubo.stores.transaction.transaction`)."""
        return transaction(self, projector=projector, wait=wait, reread=reread, one_statement=one_statement)

    def script(self, source: str) -> AsyncScript:
        """The Lua script `source` registered on this Redis client (hashed once per process, not per call)."""
        return self.scripts(source)

    def require(self, *stores: StoreName) -> None:
        """Raise :class:`~nubo.stores.breaker.StoreUnavailable` (503) at once if one of these stores is down."""
        self.failures.breakers.require(*stores)

    def store_down(self, store: str) -> bool:
        return self.failures.breakers.is_open(store)

    def count_failure(self, store: str) -> None:
        """Count a store write that failed after the PostgreSQL commit (repaired later)."""
        self.failures.count(store)

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
            except TimeoutError:  # its message is empty: say what happened
                return {"status": "down", "error": f"{name} did not answer within {timeout:g} s"}
            except Exception as exc:  # any failure means "down"; the reason is reported, not raised
                return {"status": "down", "error": describe_failure(exc)}

        results = await asyncio.gather(*(run(name, probe) for name, probe in probes.items()))
        return dict(zip(probes, results, strict=True))

    async def close(self) -> None:
        await self.pg.close()
        await self.mongo_client.close()
        await self.redis.aclose()
        self.objects.close()


def describe_failure(exc: BaseException) -> str:
    """A store error as one short line: its type, and its message when it has one."""
    message = " ".join(str(exc).split())
    return (f"{type(exc).__name__}: {message}" if message else type(exc).__name__)[:300]


async def open_stores(
    settings: Settings,
    metrics: Metrics | None = None,
    *,
    wait_for_postgres: bool = False,
    pg_max_size: int = 20,
) -> Stores:
    """Open the three connections and build the store-level services on them, counting in `metrics` (the
    composition root's; a new one when not given). Only PostgreSQL may be awaited: Mongo and Redis connect
    lazily."""
    metrics = metrics if metrics is not None else Metrics()
    pg = await postgres.open_pool(settings.postgres_url, wait=wait_for_postgres, max_size=pg_max_size)
    mongo_client = mongo.open_client(settings.mongo_url)
    redis_client = redis.open_redis(settings.redis_url, autopipeline=settings.redis_autopipeline)
    keys = Keys(settings.redis_prefix)
    failures = StoreFailures()
    scripts = LuaScripts(redis_client)
    near = NearCache(settings.redis_url, redis_client, keys, _near_families(), max_entries=_near_entries(settings))
    cache = RedisCache(redis_client, keys)
    tiered = TieredStore(pg, mongo_client[settings.mongo_db], cache, near, failures.count, metrics)
    events = EventBus(redis_client, keys, failures.count, metrics)
    relay = EventRelay(
        pg,
        events,
        stall_seconds=settings.redis_stall_ms / 1000,
        redis_down=lambda: failures.breakers.is_open("redis"),
        on_stall=lambda: failures.breakers.stalled("redis"),
        test_fault=settings.test_fault,
    )
    return Stores(
        settings=settings,
        pg=pg,
        mongo_client=mongo_client,
        redis=redis_client,
        keys=keys,
        near=near,
        cache=cache,
        derived=DerivedCache(redis_client, keys, failures.count, near),
        tiered=tiered,
        projector=Projector("tiered", tiered),
        messaging_projector=Projector("messaging", tiered),
        events=events,
        rate_limits=RateLimits(
            redis_client, keys, failures=failures.by_store, leased=settings.rate_leases, metrics=metrics
        ),
        unread=UnreadCounters(redis_client, keys, scripts, failures.count),
        scripts=scripts,
        feed_fan_out=BatchQueue("feed-fan-out"),
        mirror_refresh=BatchQueue("session-mirror-refresh", max_batch=MIRROR_REFRESH_BATCH),
        background_pg=asyncio.Semaphore(BACKGROUND_PG_SLOTS),
        failures=failures,
        objects=ObjectStore(settings),
        image_slots=asyncio.Semaphore(IMAGE_SLOTS),
        view_counts=ViewCounts(redis_client, keys),
        metrics=metrics,
        relay=relay,
    )


def _near_entries(settings: Settings) -> int:
    """How many values the near cache keeps; 0 (off) when `NUBO_NEAR_CACHE` is off."""
    return settings.near_cache_entries if settings.near_cache else 0


def _near_families() -> list[str]:
    """The key families whose values are kept in-process: session mirrors, derived values and their tags, and
    the cache collections of the hot entities."""
    families = ["session", "derived", "tag"]
    return families + [f"cache:{entity.cache_collection}" for entity in ENTITIES.values() if entity.near]


@dataclass
class LuaScripts:
    """Each Lua script registered once per process on the Redis client (hashed once, not per call)."""

    redis: Redis
    registered: dict[str, AsyncScript] = field(default_factory=dict)

    def __call__(self, source: str) -> AsyncScript:
        found = self.registered.get(source)
        if found is None:
            found = self.registered[source] = self.redis.register_script(source)
        return found


@dataclass
class StoreFailures:
    """Writes to Mongo or Redis that failed after their PostgreSQL commit (each repaired later), by store;
    and each store's circuit breaker (:mod:`nubo.stores.breaker`): whether it is down right now."""

    by_store: dict[str, int] = field(default_factory=dict)
    breakers: Breakers = field(default_factory=Breakers)

    def count(self, store: str) -> None:
        self.by_store[store] = self.by_store.get(store, 0) + 1

    def get(self, store: str, default: int = 0) -> int:
        return self.by_store.get(store, default)
