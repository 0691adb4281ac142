"""The composition root: the one place that builds every per-process service of nubo, and the one lifespan
that starts and stops them in a known order.

`nubo serve` (each worker), the CLI commands and the tests build a process the same way, with
:func:`open_root`. The store layer's services are fields of :class:`~nubo.stores.Stores`; the realtime hub
is a field of :class:`Root`. Nothing is created later or hung on a shared object at run time.

Order in :meth:`Root.running`:

- start: the near cache's invalidation listener, the outbox worker, the event relay, the stores' circuit
  breakers, the cache governor, the pool sampler of the metrics, the write pipeline's tasks (view flusher,
  load monitor, connected users' feeds, feed precompute), then the realtime hub (subscribed before the server
  takes connections) and the typing listener;
- stop, in reverse: the typing listener and the hub (sockets closed), then the queues are drained (feed
  fan-out, session-mirror refresh, messaging's and the tiered store's projections: what is left is repaired
  by the outbox worker of another process or of the next start; the events published are cleared from the
  event outbox, what was not is published by another process's relay; then the view counts are flushed),
  the background tasks cancelled, and the connections closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from nubo import accounts, feed, messaging
from nubo.logs import get_logger
from nubo.metrics import Metrics, process_exited
from nubo.posts import ViewFlusher
from nubo.precompute import ConnectedFeeds, FeedPrecompute, LoadMonitor
from nubo.realtime import typing_events
from nubo.realtime.frames import PresenceFrame
from nubo.realtime.hub import Hub
from nubo.settings import Settings
from nubo.stores import Stores, open_stores
from nubo.stores.breaker import PostgresProbe
from nubo.stores.cache.governor import run_governor
from nubo.stores.observed import sample_pool
from nubo.stores.outbox import run_outbox_worker

log = get_logger(__name__)

DRAIN_SECONDS = 10.0  # how long shutdown waits for each queue


@dataclass
class Root:
    """Every per-process service of one nubo process."""

    settings: Settings
    stores: Stores
    hub: Hub
    # The write pipeline's background work (docs/write-pipeline.md).
    view_flusher: ViewFlusher
    load: LoadMonitor
    connected_feeds: ConnectedFeeds
    feed_precompute: FeedPrecompute

    @property
    def metrics(self) -> Metrics:
        """This process's instruments (:mod:`nubo.metrics`), built with the stores."""
        return self.stores.metrics

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Root]:
        """Start the background services, yield, then stop them and close the stores (see the module)."""
        stores = self.stores
        pg_probe = PostgresProbe(self.settings.postgres_url)
        workers = [
            asyncio.create_task(stores.near.run(), name="near-cache"),
            asyncio.create_task(run_outbox_worker(stores.tiered), name="outbox"),
            asyncio.create_task(stores.relay.run(), name="event-relay"),
            asyncio.create_task(
                stores.failures.breakers.run(
                    {"postgres": pg_probe, "redis": stores.redis.ping, "mongo": lambda: stores.mongo.command("ping")},
                    on_recovery={"postgres": stores.pg.check},
                ),
                name="store-breakers",
            ),
            asyncio.create_task(
                run_governor(
                    stores.redis,
                    stores.keys,
                    self.settings.redis_memory_budget,
                    self.settings.memory_margin_bytes,
                    metrics=stores.metrics,
                ),
                name="cache-governor",
            ),
            *self._write_pipeline_tasks(),
            asyncio.create_task(sample_pool(stores, stores.metrics), name="pool-sampler"),
        ]
        stop_typing: Callable[[], Awaitable[None]] | None = None
        try:
            await self.hub.start()
            stop_typing = await typing_events.start_listener(self.hub)
            log.info("process_started", extra={"instance": self.hub.instance_id})
            yield self
        finally:
            if stop_typing is not None:
                await stop_typing()
            await self.hub.stop()
            await self._drain_queues()
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await pg_probe.close()
            await stores.close()
            process_exited(os.getpid())  # this worker's live gauges (sockets, pool) leave the sums
            log.info("stores_closed")

    async def _drain_queues(self) -> None:
        stores = self.stores
        with contextlib.suppress(Exception):  # what is left is published by the relay of another process
            await stores.relay.drain(DRAIN_SECONDS)
        for queue in (stores.feed_fan_out, stores.mirror_refresh, stores.messaging_projector, stores.projector):
            with contextlib.suppress(Exception):  # what is left is repaired by the outbox worker
                await queue.drain(DRAIN_SECONDS)
        with contextlib.suppress(Exception):  # what is left stays in Redis for another instance's flusher
            await asyncio.wait_for(self.view_flusher.drain(), DRAIN_SECONDS)

    def _write_pipeline_tasks(self) -> list[asyncio.Task[None]]:
        """The view flusher, the load monitor and the feeds kept ready (connected users, then the others)."""
        tasks = [
            asyncio.create_task(self.view_flusher.run(), name="view-flusher"),
            asyncio.create_task(self.load.run(), name="load-monitor"),
            asyncio.create_task(self.connected_feeds.run(), name="connected-feeds"),
        ]
        if self.settings.precompute:
            tasks.append(asyncio.create_task(self.feed_precompute.run(), name="feed-precompute"))
        return tasks

    async def close(self) -> None:
        """Close a root that was never run (CLI commands, tests): drain the queues, close the connections."""
        await self._drain_queues()
        await self.stores.close()


async def open_root(settings: Settings, *, wait_for_postgres: bool = False, pg_max_size: int = 20) -> Root:
    """Build one process: open the stores, bind the domain handlers of their queues, build the hub."""
    stores = await open_stores(settings, Metrics(), wait_for_postgres=wait_for_postgres, pg_max_size=pg_max_size)
    stores.feed_fan_out.bind(lambda posts: feed.fan_out(stores, list(posts.items())))
    stores.mirror_refresh.bind(lambda sessions: accounts.refresh_mirrors(stores, sessions))

    async def announce(user_id: uuid.UUID, online: bool) -> None:
        peers = await messaging.conversation_peers(stores, user_id)
        await stores.events.publish_ephemeral(peers, PresenceFrame(user_id=user_id, online=online), ttl_ms=10_000)

    async def revoked_among(session_keys: list[str]) -> set[str]:
        return await accounts.revoked_among(stores, session_keys)

    hub = Hub(stores, on_presence=announce, revoked_among=revoked_among)
    load = LoadMonitor(settings.precompute_max_lag_ms, settings.precompute_max_cpu_percent)
    connected_feeds = ConnectedFeeds(stores, hub.local_users)
    return Root(
        settings=settings,
        stores=stores,
        hub=hub,
        view_flusher=ViewFlusher(stores, settings.view_flush_seconds),
        load=load,
        connected_feeds=connected_feeds,
        feed_precompute=FeedPrecompute(stores, load, connected_feeds.users),
    )
