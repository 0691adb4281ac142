"""The memory governor: keeps Redis's own memory use under a budget by purging least recently used elements.

Every instance may run :func:`run_governor`; the usage order lives in Redis (the ``lru`` sorted set written by
:mod:`nubo.stores.cache.collection`), not in any process, so all instances agree on what is coldest. When
``used_memory`` (INFO memory — Redis's figure, not this process's heap) rises above ``budget - margin``, the
governor deletes the coldest elements in batches, each batch one Lua script that removes every element with
its index entries, id and usage entry (the cache's own delete path), until memory is back under the threshold.
Whole collections are never dropped. A short lock in Redis makes concurrent governors take turns instead of
purging twice as much.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from nubo.logs import get_logger
from nubo.metrics import Metrics
from nubo.stores.cache.admin import resolve_budget, used_memory
from nubo.stores.cache.scripts import ScriptRunner
from nubo.stores.redis import Keys

log = get_logger(__name__)

DEFAULT_BATCH = 200
MAX_BATCHES = 500  # per enforcement run: bounded work per tick, the next tick continues
LOCK_MS = 30_000
_UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"

Margin = int | Callable[[int], int]  # bytes, or a function of the budget (Settings.memory_margin_bytes)


@dataclass
class PurgeReport:
    """What one enforcement run saw and did.

    `status`: ``disabled`` (no budget: setting 0 and no Redis maxmemory), ``under`` (nothing to do),
    ``locked`` (another instance is purging), ``purged`` (back under the threshold) or ``exhausted``
    (nothing left to purge, or the batch limit was hit, while still above).
    """

    status: str
    budget: int
    threshold: int
    used_before: int
    used_after: int
    purged: int = 0
    batches: int = 0
    by_collection: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def margin_bytes(margin: Margin, budget: int) -> int:
    return margin(budget) if callable(margin) else margin


async def enforce_budget(
    redis: Redis,
    keys: Keys,
    budget: int,
    margin: Margin,
    *,
    batch: int = DEFAULT_BATCH,
    max_batches: int = MAX_BATCHES,
    scripts: ScriptRunner | None = None,
) -> PurgeReport:
    """One check: above ``budget - margin``, purge least recently used elements until back under it."""
    budget = await resolve_budget(redis, budget)
    threshold = max(budget - margin_bytes(margin, budget), 0)
    used = await used_memory(redis)
    report = PurgeReport("disabled" if budget <= 0 else "under", budget, threshold, used, used)
    if budget <= 0 or used <= threshold:
        return report
    lock_key, token = keys("lock", "governor"), secrets.token_hex(8)
    if not await redis.set(lock_key, token, nx=True, px=LOCK_MS):
        report.status = "locked"
        return report
    try:
        await _purge_until(redis, keys, scripts or ScriptRunner(redis), report, batch, max_batches)
    finally:
        await redis.eval(_UNLOCK, 1, lock_key, token)
    log.warning("cache_purged", extra={k: v for k, v in report.as_dict().items()})
    return report


async def _purge_until(
    redis: Redis, keys: Keys, scripts: ScriptRunner, report: PurgeReport, batch: int, max_batches: int
) -> None:
    report.status = "exhausted"
    while report.batches < max_batches:
        victims: list[str] = await scripts.call("purge", [keys("lru")], [keys.prefix, batch])
        if not victims:
            break
        report.batches += 1
        report.purged += len(victims)
        for member in victims:
            collection = member.split(":", 1)[0]
            report.by_collection[collection] = report.by_collection.get(collection, 0) + 1
        log.info("cache_purge_batch", extra={"count": len(victims), "oldest": victims[:5]})
        report.used_after = await used_memory(redis)
        if report.used_after <= report.threshold:
            report.status = "purged"
            break


async def run_governor(
    redis: Redis,
    keys: Keys,
    budget: int,
    margin: Margin,
    interval: float = 2.0,
    *,
    batch: int = DEFAULT_BATCH,
    metrics: Metrics | None = None,
) -> None:
    """Enforce the budget every `interval` seconds until cancelled; Redis errors are logged, not raised.
    Evictions are counted in `metrics` (`nubo_cache_evictions_total`)."""
    scripts = ScriptRunner(redis)
    disabled_logged = False
    while True:
        try:
            report = await enforce_budget(redis, keys, budget, margin, batch=batch, scripts=scripts)
            if metrics is not None and report.purged:
                metrics.cache_evictions.inc(report.purged)
            if report.status == "disabled" and not disabled_logged:
                log.info("cache_governor_disabled", extra={"reason": "no budget and no Redis maxmemory"})
                disabled_logged = True
        except (RedisError, OSError) as exc:
            log.warning("cache_governor_error", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})
        await asyncio.sleep(interval)
