"""Feeds kept ready ahead of reads (the design notes' X.1: continuously for connected users, for the others
when the servers have CPU to spare).

- **Connected users** (:class:`ConnectedFeeds`): every second the instance looks at the users with a socket on
  it. A user who just connected gets their feed document built or caught up at once, then again every
  `NUBO_FEED_CATCHUP` seconds while connected, so their reads never wait for a rebuild or a catch-up. Since
  fan-out writes only to documents that exist (:mod:`nubo.feed`), this is also what extends fan-out to every
  connected user. A user who leaves is queued for the precompute below.
- **Other recently active users** (:class:`FeedPrecompute`): a backlog in Redis shared by the instances
  (:mod:`nubo.stores.feed_backlog`), filled with users who left `/ws` and, once per sweep period by one
  instance, with the users whose session was used within `NUBO_PRECOMPUTE_ACTIVE`. Each instance rebuilds
  from it one user at a time, only while :class:`LoadMonitor` says it is lightly loaded (event-loop lag under
  `NUBO_PRECOMPUTE_MAX_LAG_MS` and process CPU under `NUBO_PRECOMPUTE_MAX_CPU` percent of one core); under
  load it pauses and resumes by itself. `nubo cache inspect` shows the backlog.

All three are background tasks of the composition root. Rebuilding a document that is fresh costs one follow
query and one Redis read (:func:`nubo.feed.refresh` skips it).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from nubo import feed
from nubo.logs import get_logger
from nubo.stores import Stores
from nubo.stores.feed_backlog import FeedBacklog
from nubo.stores.postgres import PgError, pg_read
from nubo.stores.redis import REDIS_FAILURES

log = get_logger(__name__)

SAMPLE_SECONDS = 0.1  # how often the load monitor samples
SMOOTHING = 0.3  # weight of a new sample (lag rises at once, decays by this)
PAUSED_CHECK_SECONDS = 0.25  # how often a paused precompute looks again
IDLE_SECONDS = 2.0  # how long an empty backlog waits before looking again
STEP_PAUSE_SECONDS = 0.005  # between two rebuilds: the loop serves requests in between
SWEEP_SECONDS = 300  # one sweep of recently active users per period, by one instance
SWEEP_LIMIT = 20_000  # users queued per sweep
CONNECTED_TICK_SECONDS = 1.0
CONNECTED_PER_TICK = 200  # connected users refreshed per tick at most (the rest wait for the next)
FAILURES: tuple[type[Exception], ...] = (PgError, *REDIS_FAILURES)


@dataclass
class LoadMonitor:
    """This process's load: event-loop lag (how late a timer fires) and CPU (percent of one core), sampled
    every :data:`SAMPLE_SECONDS` and smoothed. A lag spike counts at once; it takes a few samples to decay."""

    max_lag_ms: float
    max_cpu_percent: float
    lag_ms: float = 0.0
    cpu_percent: float = 0.0

    @property
    def busy(self) -> bool:
        return self.lag_ms > self.max_lag_ms or self.cpu_percent > self.max_cpu_percent

    def sample(self, lag_ms: float, cpu_percent: float) -> None:
        self.lag_ms = lag_ms if lag_ms > self.lag_ms else self.lag_ms + SMOOTHING * (lag_ms - self.lag_ms)
        self.cpu_percent += SMOOTHING * (cpu_percent - self.cpu_percent)

    async def run(self) -> None:
        wall, cpu = time.monotonic(), time.process_time()
        while True:
            await asyncio.sleep(SAMPLE_SECONDS)
            now_wall, now_cpu = time.monotonic(), time.process_time()
            elapsed = now_wall - wall
            self.sample(max(0.0, (elapsed - SAMPLE_SECONDS) * 1000), (now_cpu - cpu) / elapsed * 100)
            wall, cpu = now_wall, now_cpu


@dataclass
class FeedPrecompute:
    """Rebuilds the feeds of the backlog's users while the instance is lightly loaded (see the module)."""

    stores: Stores
    monitor: LoadMonitor
    connected: Callable[[], set[uuid.UUID]]  # users kept by ConnectedFeeds (skipped here)
    state: str = "idle"  # idle | working | paused
    rebuilt: int = 0
    pauses: int = 0
    backlog: FeedBacklog = field(init=False)

    def __post_init__(self) -> None:
        self.backlog = FeedBacklog(self.stores.redis, self.stores.keys)

    def _set(self, state: str) -> None:
        if state == "paused" and self.state != "paused":
            self.pauses += 1
            log.info("feed_precompute_paused", extra={"lag_ms": self.monitor.lag_ms, "cpu": self.monitor.cpu_percent})
        self.state = state

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except FAILURES as exc:  # a store is down: try again later
                log.warning("feed_precompute_failed", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})
                await asyncio.sleep(IDLE_SECONDS)

    async def step(self) -> None:
        """One turn: wait while loaded, else rebuild one user's feed (or refill an empty backlog)."""
        if self.monitor.busy:
            self._set("paused")
            await asyncio.sleep(PAUSED_CHECK_SECONDS)
            return
        user = await self.backlog.pop()
        if user is None:
            if not await self.sweep():
                self._set("idle")
                await asyncio.sleep(IDLE_SECONDS)
            return
        self._set("working")
        if user not in self.connected() and await feed.refresh(self.stores, user):
            self.rebuilt += 1
        await asyncio.sleep(STEP_PAUSE_SECONDS)

    async def sweep(self) -> int:
        """Queue the recently active users (one instance per :data:`SWEEP_SECONDS`); returns how many."""
        if not await self.backlog.claim_sweep(SWEEP_SECONDS):
            return 0
        since = datetime.now(UTC) - timedelta(seconds=self.stores.settings.precompute_active_seconds)
        async with pg_read(self.stores) as conn:
            rows = await (
                await conn.execute(
                    "SELECT user_id FROM auth.sessions WHERE last_used_at >= %s AND NOT revoked "
                    "GROUP BY user_id ORDER BY max(last_used_at) DESC LIMIT %s",
                    (since, SWEEP_LIMIT),
                )
            ).fetchall()
        return await self.backlog.add(row["user_id"] for row in rows)


@dataclass
class ConnectedFeeds:
    """Keeps the feeds of this instance's connected users current (see the module)."""

    stores: Stores
    local_users: Callable[[], list[uuid.UUID]]
    refreshed_at: dict[uuid.UUID, float] = field(default_factory=dict)
    refreshed: int = 0

    def users(self) -> set[uuid.UUID]:
        return set(self.refreshed_at)

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except FAILURES as exc:
                log.warning("connected_feeds_failed", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})
            await asyncio.sleep(CONNECTED_TICK_SECONDS)

    async def tick(self) -> None:
        """Refresh the newly connected users and those due; queue those who left for the precompute."""
        now = time.monotonic()
        connected = set(self.local_users())
        gone = [u for u in self.refreshed_at if u not in connected]
        for user in gone:
            del self.refreshed_at[user]
        if gone:
            await FeedBacklog(self.stores.redis, self.stores.keys).add(gone)
        period = self.stores.settings.feed_catchup_seconds * 0.8  # ahead of the read's own catch-up
        due = [u for u in connected if now - self.refreshed_at.get(u, -period) >= period]
        due.sort(key=lambda u: self.refreshed_at.get(u, -1.0))  # newcomers first
        for user in due[:CONNECTED_PER_TICK]:
            async with self.stores.background_pg:  # never more than a few pooled connections
                if await feed.refresh(self.stores, user):
                    self.refreshed += 1
            self.refreshed_at[user] = time.monotonic()
