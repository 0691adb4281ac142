"""What a metrics scrape reads from the stores themselves, and the sampler of this process's PostgreSQL pool.

Read at scrape time (one answer for the whole deployment, whichever instance is scraped): each store's state
(``nubo_store_up``), the depth and the oldest entry's age of every outbox table of :data:`OUTBOXES`, Redis's
used memory and the cache's budget. A store that does not answer leaves its families out (and shows 0 in
``nubo_store_up``): a scrape never fails for it.

The pool's connections are per process: :func:`sample_pool` copies them into gauges every few seconds, summed
over the live workers by prometheus-client's multiprocess mode.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from psycopg import sql

from nubo.logs import get_logger
from nubo.metrics import Metrics
from nubo.stores.cache.admin import resolve_budget, used_memory

if TYPE_CHECKING:
    from nubo.stores import Stores

log = get_logger(__name__)

# Outbox name -> its table (schema, name; with a `created_at` column). The event outbox adds its line here.
OUTBOXES: dict[str, tuple[str, str]] = {"projection": ("logic", "outbox"), "events": ("logic", "event_outbox")}
PROBE_TIMEOUT_SECONDS = 1.0
POOL_SAMPLE_SECONDS = 2.0


async def scrape_families(stores: Stores) -> list[Metric]:
    """The families read from the stores for one scrape (see the module)."""
    states = await stores.check(timeout=PROBE_TIMEOUT_SECONDS)
    up = GaugeMetricFamily("nubo_store_up", "1 when the store answered this scrape's probe, else 0.", labels=["store"])
    for store, state in states.items():
        up.add_metric([store], 1.0 if state["status"] == "up" else 0.0)
    families: list[Metric] = [up]
    if states["postgres"]["status"] == "up":
        families += await _outbox_families(stores)
    if states["redis"]["status"] == "up":
        families += await _redis_memory_families(stores)
    return families


async def _outbox_families(stores: Stores) -> list[Metric]:
    depth = GaugeMetricFamily("nubo_outbox_depth_rows", "Rows waiting in an outbox table.", labels=["outbox"])
    age = GaugeMetricFamily(
        "nubo_outbox_oldest_age_seconds", "Age of an outbox's oldest row (0 when empty).", labels=["outbox"]
    )
    try:
        async with stores.pg.connection(timeout=PROBE_TIMEOUT_SECONDS) as conn:
            for name, table in OUTBOXES.items():
                query = sql.SQL(
                    "SELECT count(*) AS depth, coalesce(extract(epoch FROM now() - min(created_at)), 0) AS age FROM {}"
                ).format(sql.Identifier(*table))
                row = await (await conn.execute(query)).fetchone()
                assert row is not None
                depth.add_metric([name], float(row["depth"]))
                age.add_metric([name], max(float(row["age"]), 0.0))
    except Exception as exc:  # a scrape never fails for a store: the families are left out
        log.warning("metrics_outbox_unreadable", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})
        return []
    return [depth, age]


async def _redis_memory_families(stores: Stores) -> list[Metric]:
    try:
        used, budget = await asyncio.gather(
            used_memory(stores.redis), resolve_budget(stores.redis, stores.settings.redis_memory_budget)
        )
    except Exception as exc:
        log.warning("metrics_redis_unreadable", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})
        return []
    return [
        GaugeMetricFamily("nubo_redis_memory_used_bytes", "Redis's used memory (INFO used_memory).", value=used),
        GaugeMetricFamily(
            "nubo_redis_memory_budget_bytes",
            "The cache governor's budget (NUBO_REDIS_MEMORY_BUDGET, else maxmemory; 0: none).",
            value=budget,
        ),
    ]


async def sample_pool(stores: Stores, metrics: Metrics, interval: float = POOL_SAMPLE_SECONDS) -> None:
    """Copy this process's PostgreSQL pool state into the metrics every `interval` seconds, until cancelled."""
    while True:
        stats = stores.pg.get_stats()
        size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
        metrics.pg_pool_connections.labels("in_use").set(max(size - idle, 0))
        metrics.pg_pool_connections.labels("idle").set(idle)
        metrics.pg_pool_waiting.set(stats.get("requests_waiting", 0))
        await asyncio.sleep(interval)
