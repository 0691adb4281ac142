"""Circuit breakers, one per store: a store that is down is noticed within about a second and requests that
need it are refused at once (503 ``store_unavailable``) instead of each waiting for a timeout.

A probe task per process (:meth:`Breakers.run`) pings each store every :data:`PROBE_SECONDS` with a short
timeout, PostgreSQL on a connection of its own (a pool starved by the outage must not make the probe fail).
:data:`FAILURES_TO_OPEN` failed probes in a row (:data:`TIMEOUTS_TO_OPEN` when they only timed out: slow
is not down) open the store's breaker; one good probe closes it (for
PostgreSQL, after the pool has dropped its broken idle connections). Each change is one log line
(``store_down`` / ``store_up``), never one per request. Requests check :meth:`Breakers.require` before using a
store, and map a store's connection error to :class:`StoreUnavailable` (:func:`store_of`) without a
traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import psycopg
from psycopg_pool import PoolTimeout
from pymongo.errors import AutoReconnect, ConnectionFailure, ServerSelectionTimeoutError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from nubo.errors import StoreName, StoreUnavailable
from nubo.logs import get_logger

log = get_logger(__name__)

PROBE_SECONDS = 0.25
PROBE_TIMEOUT_SECONDS = 0.4
FAILURES_TO_OPEN = 2
TIMEOUTS_TO_OPEN = 6  # ~4 s of probes timing out in a row (a stall); requests notice a stall sooner (stalled)
LOOP_LAG_SECONDS = 0.2  # a probe round this much later than planned: the process is saturated
STORES = ("postgres", "redis", "mongo")


def store_of(exc: BaseException) -> StoreName | None:
    """Which store a connection-level error comes from, looking through a few causes (None: not an outage)."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            break
        if (store := _direct_store_of(seen)) is not None:
            return store
        seen = seen.__cause__ or seen.__context__
    return None


def _direct_store_of(exc: BaseException) -> StoreName | None:
    if isinstance(exc, StoreUnavailable):
        return exc.store
    if isinstance(exc, PoolTimeout | psycopg.OperationalError):
        return "postgres"
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return "redis"
    if isinstance(exc, ServerSelectionTimeoutError | AutoReconnect | ConnectionFailure):
        return "mongo"
    return None


@dataclass
class Breaker:
    """One store's state: closed (up) or open (down since `opened_at`)."""

    store: str
    failures_in_row: int = 0
    timeouts_only: bool = False  # every failure of the current streak was a timeout
    opened_at: float | None = None
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    slow_since: float | None = None  # a request's bounded wait for the store ran out (until a probe succeeds)

    @property
    def is_open(self) -> bool:
        """Down (the probes failed) or stalled (a request's bounded wait ran out): do not wait for it."""
        return self.opened_at is not None or self.slow_since is not None

    def stalled(self) -> None:
        if self.slow_since is None:
            self.slow_since = time.monotonic()
            log.warning("store_stalled", extra={"store": self.store})

    def failed(self, error: str, *, timeout: bool = False) -> None:
        """A failed probe. Refusals and resets open the breaker after :data:`FAILURES_TO_OPEN` in a row; a
        store that only answers slowly (timeouts) is given :data:`TIMEOUTS_TO_OPEN` rounds: a loaded store is
        not down, and refusing requests it could serve would make the load worse."""
        self.failures_in_row += 1
        self.timeouts_only = self.timeouts_only and timeout if self.failures_in_row > 1 else timeout
        needed = TIMEOUTS_TO_OPEN if self.timeouts_only else FAILURES_TO_OPEN
        if self.opened_at is None and self.failures_in_row >= needed:
            self.opened_at = time.monotonic()
            self.opened.set()
            log.warning("store_down", extra={"store": self.store, "error": error[:200]})

    def succeeded(self) -> None:
        self.failures_in_row = 0
        if self.slow_since is not None and self.opened_at is None:
            log.info(
                "store_up", extra={"store": self.store, "down_seconds": round(time.monotonic() - self.slow_since, 2)}
            )
        self.slow_since = None
        if self.opened_at is not None:
            log.info(
                "store_up", extra={"store": self.store, "down_seconds": round(time.monotonic() - self.opened_at, 2)}
            )
            self.opened_at = None
            self.opened.clear()


Probe = Callable[[], Awaitable[object]]


@dataclass
class Breakers:
    """The breakers of one process, by store name."""

    by_store: dict[str, Breaker] = field(default_factory=lambda: {name: Breaker(name) for name in STORES})

    def is_open(self, store: str) -> bool:
        return self.by_store[store].is_open

    def stalled(self, store: str) -> None:
        """A request's bounded wait for `store` ran out: treat it as down until the next good probe."""
        self.by_store[store].stalled()

    def require(self, *stores: StoreName) -> None:
        """Raise :class:`StoreUnavailable` if one of these stores is down."""
        for store in stores:
            if self.by_store[store].is_open:
                raise StoreUnavailable(store)

    async def run(self, probes: dict[str, Probe], on_recovery: dict[str, Probe] | None = None) -> None:
        """Probe every store forever (one task per process)."""
        recover = on_recovery or {}

        loop = asyncio.get_running_loop()
        lagging = False  # this process's event loop runs late: a probe's timeout says nothing of the store

        async def probe(store: str) -> None:
            breaker = self.by_store[store]
            try:
                await asyncio.wait_for(probes[store](), PROBE_TIMEOUT_SECONDS)
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                if not lagging:
                    breaker.failed(f"no answer within {PROBE_TIMEOUT_SECONDS} s", timeout=True)
                return
            except Exception as exc:
                breaker.failed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                return
            if breaker.opened_at is not None and store in recover:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(recover[store](), 2.0)
            breaker.succeeded()

        while True:
            started = loop.time()
            await asyncio.gather(*(probe(store) for store in probes))
            await asyncio.sleep(PROBE_SECONDS)
            # A saturated process wakes up late; its probes would time out with every store healthy, and an
            # open breaker would refuse requests the stores could serve. Such rounds count no timeout.
            lagging = loop.time() - started > PROBE_SECONDS + PROBE_TIMEOUT_SECONDS + LOOP_LAG_SECONDS


class PostgresProbe:
    """`SELECT 1` on a connection of its own, reopened after a failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: psycopg.AsyncConnection[object] | None = None

    async def __call__(self) -> None:
        try:
            if self.conn is None or self.conn.closed:
                self.conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=2)
            await self.conn.execute("SELECT 1")
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
