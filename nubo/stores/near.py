"""Process-local copies of hot Redis values, kept coherent by Redis itself (client-side caching).

Nearly every request reads the same few Redis values again: the caller's session mirror, their user row,
the post they open and its context. Each read is a round trip that costs this process about as much CPU as
the rest of a small request. Redis's server-assisted client-side caching (``CLIENT TRACKING ... BCAST``)
lets a process keep copies safely: Redis sends an invalidation for every change of a key under the tracked
prefixes (write, delete, expiry, eviction, flush) on one dedicated connection, before it answers the writer.

Coherence rules (the tests in ``tests/integration/stores/test_near.py`` exercise each):

- A copy is stored only while tracking is confirmed live, and only if no invalidation of its key arrived
  between the moment its read was *started* and its result: a change racing the read either invalidates
  before the result comes back (the result is not kept) or after it was kept (the copy is dropped).
- Tracking is checked end to end: every :data:`CHECK_SECONDS` the process writes a canary key under a
  tracked prefix and must hear its invalidation back before the next check. A connection error, a missing
  canary or a restart drops every copy and serves none until tracking is live again (reads then simply go
  to Redis). A FLUSHALL drops every copy too.
- Writers in this process drop the keys they wrote at once (:meth:`NearCache.drop`), so an instance always
  reads its own writes. Other instances drop a changed key when its invalidation arrives: Redis queues it
  before replying to the writer, so it lands within the network latency.
- A copy lives at most :data:`MAX_AGE_SECONDS`, and a process holds at most ``max_entries`` of them.
- An expiry is announced when Redis expires the key, on its next access or when the background sweep
  reaches it (seconds on a large keyspace): a copy may outlive its key's TTL by that much, never by more
  than :data:`MAX_AGE_SECONDS`. Tracked families must not rely on short TTLs for correctness.

Copies are shared objects: callers must not mutate what :meth:`NearCache.get` returns.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from nubo.logs import get_logger
from nubo.stores.redis import Keys

log = get_logger(__name__)

INVALIDATION_CHANNEL: Final = "__redis__:invalidate"
CHECK_SECONDS: Final = 1.0  # canary period: the longest a lost tracking connection can go unnoticed
MAX_AGE_SECONDS: Final = 30.0  # a copy's longest life, whatever happens
RETRY_SECONDS: Final = 1.0  # pause before re-establishing tracking after a failure
CANARY_FAMILY: Final = "near"  # key family of the canaries (tracked, so their invalidations come back)

MISSING: Final[Any] = object()  # get_cached(): no copy held


class TrackingLost(Exception):
    """The canary's invalidation did not come back in time."""


class TrackingUnsupported(Exception):
    """The server refused CLIENT TRACKING: the process runs without copies."""


class NearCache:
    """Copies of values under ``families`` (key families of `keys`, e.g. ``"session"``), invalidated by Redis.

    Run :meth:`run` as a background task for the process's lifetime; until tracking is live every read
    goes to Redis. ``max_entries=0`` disables the copies altogether.
    """

    def __init__(
        self, redis_url: str, redis: Redis, keys: Keys, families: Sequence[str], *, max_entries: int = 100_000
    ) -> None:
        self._url = redis_url
        self._redis = redis  # writes the canary (any connection but the tracking one)
        self._prefixes = sorted({keys(family) + ":" for family in (*families, CANARY_FAMILY)})
        token = secrets.token_hex(8)
        self._canary = keys(CANARY_FAMILY, token)
        self.client_name = f"nubo-near-{token}"  # the tracking connection's name (CLIENT LIST)
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, Any]] = {}
        self._reading: dict[str, int] = {}  # key -> reads in flight
        self._changed: set[str] = set()  # keys invalidated while a read of them was in flight
        self._epoch = 0  # bumped whenever tracking is lost: results of reads started before are not kept
        self.live = False
        self.stats = {"hits": 0, "misses": 0, "invalidated": 0, "resets": 0}

    def status(self) -> dict[str, Any]:
        """Whether copies are served, how many are held, and the hit/miss/invalidation/reset counts."""
        return {"live": self.live, "entries": len(self._entries), **self.stats}

    # ---- reads -------------------------------------------------------------------------------------------

    def get_cached(self, key: str) -> Any:
        """The copy of `key` (None when the key was absent), or :data:`MISSING`."""
        entry = self._entries.get(key)
        if entry is None or not self.live:
            return MISSING
        if time.monotonic() - entry[0] > MAX_AGE_SECONDS:
            del self._entries[key]
            return MISSING
        self.stats["hits"] += 1
        return entry[1]

    async def get(self, key: str, fetch: Callable[[], Awaitable[Any]]) -> Any:
        """The copy of `key`, else ``await fetch()`` (its result kept as the copy when still valid)."""
        value = self.get_cached(key)
        if value is not MISSING:
            return value
        return (await self.get_many([key], lambda _missing: _one(fetch)))[0]

    async def get_many(self, keys: Sequence[str], fetch: Callable[[list[str]], Awaitable[Sequence[Any]]]) -> list[Any]:
        """Values of `keys`, in order: copies where held, ``await fetch(missing keys)`` (one value per key,
        in order) for the others."""
        values = [self.get_cached(key) for key in keys]
        missing = [key for key, value in zip(keys, values, strict=True) if value is MISSING]
        if not missing:
            return values
        with self.reading(missing) as keep:
            fetched = list(await fetch(missing))
            keep(fetched)
        found = dict(zip(missing, fetched, strict=True))
        return [found[key] if value is MISSING else value for key, value in zip(keys, values, strict=True)]

    @contextmanager
    def reading(self, keys: Sequence[str]) -> Iterator[Callable[[Sequence[Any]], None]]:
        """Wrap a Redis read of `keys` (entered before it is sent); call the given ``keep(values)`` with
        what it read: they become copies unless one of `keys` changed meanwhile."""
        self.stats["misses"] += len(keys)
        epoch = self._start_reading(keys)
        try:
            yield lambda values: self._keep(keys, values, epoch)
        finally:
            self._stop_reading(keys)

    def _start_reading(self, keys: Sequence[str]) -> int:
        for key in keys:
            self._reading[key] = self._reading.get(key, 0) + 1
        return self._epoch

    def _stop_reading(self, keys: Sequence[str]) -> None:
        for key in keys:
            left = self._reading.get(key, 1) - 1
            if left > 0:
                self._reading[key] = left
            else:
                self._reading.pop(key, None)
                self._changed.discard(key)

    def _keep(self, keys: Sequence[str], values: Sequence[Any], epoch: int) -> None:
        if not self.live or epoch != self._epoch or self._max_entries <= 0:
            return
        now = time.monotonic()
        for key, value in zip(keys, values, strict=True):
            if key not in self._changed:
                self._entries[key] = (now, value)
        if len(self._entries) > self._max_entries:
            for key in list(itertools.islice(self._entries, len(self._entries) - self._max_entries * 9 // 10)):
                del self._entries[key]  # the oldest tenth goes (dicts keep insertion order)

    # ---- invalidation ------------------------------------------------------------------------------------

    def drop(self, keys: Sequence[str]) -> None:
        """Forget copies of `keys` (this process just wrote them), including results of reads in flight."""
        for key in keys:
            self._entries.pop(key, None)
            if key in self._reading:
                self._changed.add(key)

    def _invalidated(self, keys: Sequence[str] | None) -> bool:
        """Apply one invalidation message; True when it carried this process's canary."""
        if keys is None:  # FLUSHALL / FLUSHDB
            self._entries.clear()
            self._changed.update(self._reading)
            return False
        self.stats["invalidated"] += len(keys)
        self.drop(keys)
        return self._canary in keys

    def _reset(self) -> None:
        """Tracking is lost (or not yet confirmed): no copy can be trusted any more."""
        if self.live:
            self.stats["resets"] += 1
        self.live = False
        self._epoch += 1
        self._entries.clear()
        self._changed.clear()

    # ---- the tracking connection -------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep tracking live for the process's lifetime (a background task; cancel it to stop)."""
        if self._max_entries <= 0:
            return
        while True:
            try:
                await self._track()
            except TrackingUnsupported as exc:
                self._reset()
                log.warning(
                    "near_cache_unsupported",
                    extra={"error": f"{exc}"[:200], "effect": "no in-process copies: every hot read goes to Redis"},
                )
                return
            except (RedisError, OSError, TrackingLost) as exc:
                if self.live:
                    log.warning("near_cache_tracking_lost", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})
            finally:
                self._reset()
            await asyncio.sleep(RETRY_SECONDS)

    async def _track(self) -> None:
        # RESP2 on purpose: invalidations then arrive as ordinary pub/sub messages on this connection
        # (REDIRECT to itself). No retries: a silent reconnect would resubscribe without tracking.
        client: Redis = Redis.from_url(
            self._url, protocol=2, decode_responses=True, retry=Retry(NoBackoff(), 0), socket_connect_timeout=2.0
        )
        pubsub = client.pubsub()
        try:
            await pubsub.connect()  # type: ignore[no-untyped-call]
            connection = pubsub.connection
            assert connection is not None
            await connection.send_command("CLIENT", "SETNAME", self.client_name)  # visible in CLIENT LIST
            await connection.read_response()
            await connection.send_command("CLIENT", "ID")
            client_id = await connection.read_response()
            prefixes = itertools.chain.from_iterable(("PREFIX", p) for p in self._prefixes)
            await connection.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", *prefixes)
            try:
                await connection.read_response()
            except ResponseError as exc:  # e.g. a Redis-compatible server without CLIENT TRACKING (Redis < 6)
                raise TrackingUnsupported(str(exc)) from exc
            await pubsub.subscribe(INVALIDATION_CHANNEL)
            await self._listen(pubsub)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()

    async def _listen(self, pubsub: Any) -> None:
        confirmed = True  # nothing sent yet
        next_check = 0.0
        while True:
            message = await pubsub.get_message(timeout=max(0.01, next_check - time.monotonic()))
            confirmed = self._apply(message) or confirmed
            if time.monotonic() < next_check:
                continue
            while not confirmed and message is not None:  # a busy or paused loop: read what is queued first
                message = await pubsub.get_message(timeout=0)
                confirmed = self._apply(message)
            if not confirmed:
                raise TrackingLost(f"no invalidation for the canary within {CHECK_SECONDS:g} s")
            confirmed = False
            await self._redis.set(self._canary, "1", ex=60)
            next_check = time.monotonic() + CHECK_SECONDS

    def _apply(self, message: dict[str, Any] | None) -> bool:
        """Apply one pub/sub message; True when it was the canary's invalidation (tracking is live)."""
        if message is None or message.get("type") != "message" or not self._invalidated(message["data"]):
            return False
        if not self.live:
            self._epoch += 1  # a read that started before tracking was confirmed may have missed a change
            self.live = True
            log.info("near_cache_live", extra={"prefixes": self._prefixes})
        return True


async def _one(fetch: Callable[[], Awaitable[Any]]) -> list[Any]:
    return [await fetch()]
