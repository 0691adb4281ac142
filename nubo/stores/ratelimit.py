"""Rate limits shared by every instance: a sliding-window counter in Redis, one short script per hit.

A limit of N hits per window keeps two counters per caller, the current window's and the previous one's (the
`limits` package's sliding-window-counter layout: ``{prefix}ratelimit:{LIMITER/<name>/<key>/<n>/<s>/second}``
and the same with ``/-1``, so `limits`' own limiter reads and clears the same windows). The hits in the
last window are estimated as the previous count, weighted by the part of it still in the window, plus the
current count. A hit costs O(1) Redis work whatever the limit (a moving window kept one timestamp per hit),
and one script both takes the hit and measures the window: `limits` needs two round trips for that, and the
per-user limit runs on every authenticated request. Being one script, it is atomic: two instances can never
both take the last slot. The estimate assumes the previous window's hits were spread evenly; a caller can
at worst fit twice the limit in a span straddling two windows, never more than the limit on average.

When Redis is down the limiter fails open (the request goes through, the failure is logged and counted):
refusing every login during a cache outage would be worse than a few unthrottled attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from limits import RateLimitItemPerSecond
from redis.asyncio import Redis
from redis.exceptions import RedisError

from nubo.errors import RateLimited
from nubo.logs import get_logger
from nubo.metrics import Metrics
from nubo.settings import RateLimit
from nubo.stores.redis import Keys

log = get_logger(__name__)

# The sliding window on KEYS[n] (previous window) and KEYS[n + 1] (current window): ARGV limit, window
# seconds and (optional) how many hits to take at once. Leaves in locals, for the caller's `return`: hits
# taken (0 = refused), hits counted in the window and the milliseconds until one of them leaves it. A current
# window older than one window becomes the previous one (`limits`' own rule: the current counter lives for
# two windows, so its TTL tells its age). Taking several hits is a lease (see HitLeases): never more than an
# eighth of what the window has left, so a limit stays exact near its end.
_WINDOW = """
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2]) * 1000
local want = tonumber(ARGV[3] or '1')
local previous, current = KEYS[%d], KEYS[%d]
local current_ttl = redis.call('pttl', current)
if current_ttl > 0 and current_ttl < window then
    redis.call('rename', current, previous)
    current_ttl = current_ttl + window
    redis.call('set', current, 0, 'PX', current_ttl)
end
local previous_count = tonumber(redis.call('get', previous)) or 0
local previous_ttl = math.max(0, redis.call('pttl', previous))
local count = tonumber(redis.call('get', current)) or 0
local weighted = math.floor(previous_count * previous_ttl / window)
local used = weighted + count
local taken = math.min(want, limit - used)
if taken > 1 then taken = math.max(1, math.min(taken, math.floor((limit - used) / 8))) end
if taken >= 1 then
    if current_ttl > 0 then
        redis.call('incrby', current, taken)
    else
        current_ttl = window * 2
        redis.call('set', current, count + taken, 'PX', current_ttl)
    end
    used = used + taken
    count = count + taken
else
    taken = 0
end
local reset = window
if count > 0 then reset = math.max(0, current_ttl - window) end
if weighted > 0 then reset = math.min(reset, previous_ttl %% (window / previous_count)) end
reset = math.ceil(reset)
"""
# KEYS[1], KEYS[2]: the window. Returns {hits taken (0/1), hits in the window, ms until one leaves it}.
_ACQUIRE_AND_MEASURE = (_WINDOW % (1, 2)) + "return {taken, used, reset}"
# KEYS[1]: a guard value (the session mirror), KEYS[2], KEYS[3]: the window. Hits are taken only when the
# guard exists and is not a revocation marker, so a refused request never uses up the caller's quota.
# Returns {guard} when no hit was taken, else {guard, hits taken (0 = refused), used, reset, guard's PTTL}.
_GUARDED_HIT = (
    """
local guard = redis.call('get', KEYS[1])
if not guard or string.find(guard, '"revoked"', 1, true) then return {guard} end
"""
    + (_WINDOW % (2, 3))
    + "return {guard, taken, used, reset, redis.call('pttl', KEYS[1])}"
)
LEASE_FIRST = 4  # hits a process takes for a caller it holds no lease for (a caller rarely asks once)...
LEASE_MAX = 32  # ...doubling up to this while each lease is used up in time...
LEASE_SECONDS = 5.0  # ...and uses within this time, else they are dropped
LEASE_MIN_LIMIT = 64  # smaller limits are never leased: each hit is one Redis call
LEASE_WAITS = 8  # lease calls of other requests a request may wait for before making its own
_REFUND_HIT = """
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end
return 0
"""
_LOG_EVERY = 10.0  # seconds between two "limiter down" log lines, so an outage does not flood the log


@dataclass(slots=True)  # built on every authenticated request: a frozen dataclass is slower to build
class RateStatus:
    """The state of one limit after a hit: used for the `X-RateLimit-*` headers."""

    limit: int
    remaining: int
    reset_after: int  # seconds until a hit leaves the window (a slot frees)
    allowed: bool
    taken: int = 1  # hits taken in the shared window by this call (more than one: a lease, see HitLeases)

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The `X-RateLimit-*` headers as ASGI (lower-case name, value) byte pairs."""
        return [
            (b"x-ratelimit-limit", b"%d" % self.limit),
            (b"x-ratelimit-remaining", b"%d" % self.remaining),
            (b"x-ratelimit-reset", b"%d" % self.reset_after),
        ]

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_after),
        }


def raise_if_limited(status: RateStatus | None) -> None:
    """Raise :class:`RateLimited` (429, `Retry-After`, `X-RateLimit-*`) when `status` refused the hit."""
    if status is not None and not status.allowed:
        raise RateLimited(
            f"Too many requests; retry in {status.reset_after} s",
            retry_after=status.reset_after,
            headers=status.headers(),
        )


@lru_cache(maxsize=256)
def _window_template(prefix: str, name: str, amount: int, seconds: int) -> tuple[str, str]:
    # Built once per limit (the per-user limit runs on every request); `limits` makes the format.
    head, _, tail = RateLimitItemPerSecond(amount, seconds).key_for(name, "\x00").partition("\x00")
    return f"{prefix}:{{{head}", tail + "}"


def _status(rate: RateLimit, taken: Any, used: Any, reset_ms: Any) -> RateStatus:
    return RateStatus(
        limit=rate.amount,
        remaining=max(0, rate.amount - int(used)),
        reset_after=max(1, math.ceil(int(reset_ms) / 1000)),
        allowed=int(taken) > 0,
        taken=int(taken),
    )


class RateLimits:
    """The process's rate limiter: the shared windows in Redis and this process's :class:`HitLeases`.

    Built once per process with the stores; `leased=False` takes every hit from Redis (one call per hit),
    to measure what the leases save. `failures` is the process's failure counter map (``Stores.failures``):
    an unreachable Redis counts under ``redis_ratelimit``.
    """

    def __init__(
        self, redis: Redis, keys: Keys, *, failures: dict[str, int], leased: bool = True, metrics: Metrics
    ) -> None:
        self._redis = redis
        self._refusals = metrics.ratelimit_refusals
        self._prefix = keys("ratelimit")
        self._acquire = redis.register_script(_ACQUIRE_AND_MEASURE)
        self._guarded = redis.register_script(_GUARDED_HIT)
        self._refund = redis.register_script(_REFUND_HIT)
        self._failures = failures
        self._last_log = 0.0
        self.leases = HitLeases(enabled=leased)

    def window_keys(self, name: str, key: str, rate: RateLimit) -> tuple[str, str]:
        """The Redis keys of one window (previous, current), exactly as `limits` names them."""
        head, tail = _window_template(self._prefix, name, rate.amount, rate.seconds)
        current = head + key + tail
        return current + "/-1", current

    async def hit(self, name: str, key: str, rate: RateLimit, want: int = 1) -> RateStatus | None:
        """Count one hit of `key` against limit `name` (`want` hits for a lease, see :class:`HitLeases`);
        None when Redis cannot be reached (fail open)."""
        try:
            taken, used, reset_ms = await self._acquire(
                keys=self.window_keys(name, key, rate), args=[rate.amount, rate.seconds, want]
            )
        except (RedisError, OSError) as exc:
            self._log_down(name, exc)
            return None
        return _status(rate, taken, used, reset_ms)

    async def guarded_hit(
        self, guard_key: str, name: str, key: str, rate: RateLimit, want: int = 1
    ) -> tuple[bytes | str | None, RateStatus | None, int | None]:
        """Read `guard_key` and, in the same atomic script (one round trip), count a hit of `key` against
        limit `name` (`want` hits for a lease) unless the guard is missing or holds a revocation marker
        (``"revoked"``).

        Returns (guard value, status, guard's time to live in ms); status and TTL are None when no hit was
        taken. Redis errors propagate: the caller decides what a missing guard means (the session check falls
        back to PostgreSQL, then uses :meth:`hit`).
        """
        reply = await self._guarded(
            keys=[guard_key, *self.window_keys(name, key, rate)], args=[rate.amount, rate.seconds, want]
        )
        if len(reply) < 4:
            return reply[0], None, None
        return reply[0], _status(rate, reply[1], reply[2], reply[3]), int(reply[4])

    async def limit(self, name: str, key: str, rate: RateLimit) -> RateStatus | None:
        """Count a hit and raise :class:`RateLimited` (429, `Retry-After`, `X-RateLimit-*`) when over the limit.

        Reusable by any feature, e.g.
        ``await stores.rate_limits.limit("messages", str(user.id), settings.rate_messages)``. Limits of at
        least :data:`LEASE_MIN_LIMIT` are paid from this process's leases (:class:`HitLeases`): most hits of a
        busy caller need no Redis call, and none passes the limit.
        """
        leases = self.leases
        status = await leases.take_or_wait(name, key, rate)
        if status is None:
            want = leases.want(name, key, rate)
            try:
                status = leases.record(name, key, rate, await self.hit(name, key, rate, want), want)
            finally:
                if want > 1:
                    leases.settle(name, key)  # whatever happened, wake the requests waiting for this lease
        self.enforce(name, status)
        return status

    def enforce(self, name: str, status: RateStatus | None) -> None:
        """Raise :class:`RateLimited` when `status` refused the hit, counting the refusal under limit `name`
        (`nubo_ratelimit_refusals_total`)."""
        if status is not None and not status.allowed:
            self._refusals.labels(name).inc()
            raise_if_limited(status)

    async def refund(self, name: str, key: str, rate: RateLimit) -> None:
        """Give back one hit of the current window (a request that failed because a store was down must not
        count against its client); errors are ignored."""
        with contextlib.suppress(RedisError, OSError):
            await self._refund(keys=[self.window_keys(name, key, rate)[1]])

    async def clear(self, name: str, key: str, rate: RateLimit) -> None:
        """Forget the hits of `key` (used after an operator unlocks an account, and by tests)."""
        await self._redis.delete(*self.window_keys(name, key, rate))

    def _log_down(self, name: str, exc: BaseException) -> None:
        self._failures["redis_ratelimit"] = self._failures.get("redis_ratelimit", 0) + 1
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY:
            self._last_log = now
            log.warning(
                "rate_limiter_unavailable",
                extra={
                    "limit": name,
                    "error": f"{type(exc).__name__}: {exc}"[:200],
                    "failures": self._failures["redis_ratelimit"],
                },
            )


@dataclass
class _Lease:
    left: int  # hits taken in the shared window, not yet used by a request
    expires: float  # monotonic time after which the left hits are dropped
    size: int  # hits the last lease asked for
    count: int  # hits in the window when the lease was taken (its own included)
    reset_at: float  # wall-clock time a hit leaves the window


class HitLeases:
    """Hits of per-caller limits taken from the shared Redis window a few at a time by one process.

    The per-user limit is checked on every authenticated request; taking one hit per request costs a Redis
    call per request. A caller who comes to this process gets a lease of several hits (:data:`LEASE_FIRST`,
    doubling while each lease is used up within :data:`LEASE_SECONDS`, up to :data:`LEASE_MAX`, never more
    than an eighth of what the window has left); one whose lease lapsed unused gets half as many next.
    Every hit a request uses was counted in the shared window before that request, so no instance ever lets
    a caller past the limit; hits of a lapsed lease count until they leave the window, so a caller spread
    over many instances may be refused a few hits early. Limits under :data:`LEASE_MIN_LIMIT` (login,
    signup) are never leased, nor any limit when `enabled` is false (``NUBO_RATE_LEASES=off``).
    """

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._held: dict[tuple[str, str], _Lease] = {}
        # A lease call in flight per caller: (give up on it after this monotonic time, set when it is done).
        self._asking: dict[tuple[str, str], tuple[float, asyncio.Event]] = {}

    def leased(self, rate: RateLimit) -> bool:
        """Whether hits of `rate` are taken a few at a time."""
        return self.enabled and rate.amount >= LEASE_MIN_LIMIT

    def holds(self, name: str, key: str) -> bool:
        """Whether a lease with hits left is held for `key`."""
        lease = self._held.get((name, key))
        return lease is not None and lease.left > 0 and time.monotonic() < lease.expires

    def in_flight(self, name: str, key: str) -> asyncio.Event | None:
        """Set when the lease call in flight for `key` is done (None: there is none). Concurrent requests
        of one caller wait for it, then take from its lease, instead of each calling Redis."""
        asking = self._asking.get((name, key))
        return asking[1] if asking is not None and time.monotonic() < asking[0] else None

    def settle(self, name: str, key: str) -> None:
        """The lease call for `key` is done (recorded or failed): wake the requests waiting for it."""
        asking = self._asking.pop((name, key), None)
        if asking is not None:
            asking[1].set()

    def take(self, name: str, key: str, rate: RateLimit) -> RateStatus | None:
        """A hit from a lease this process holds for `key` (no Redis call), or None."""
        lease = self._held.get((name, key))
        if lease is None or lease.left <= 0 or time.monotonic() >= lease.expires:
            return None
        lease.left -= 1
        return RateStatus(
            limit=rate.amount,
            remaining=max(0, rate.amount - lease.count + lease.left),
            reset_after=max(1, math.ceil(lease.reset_at - time.time())),
            allowed=True,
            taken=0,
        )

    async def take_or_wait(self, name: str, key: str, rate: RateLimit) -> RateStatus | None:
        """A hit from a lease held for `key`, waiting (a bounded number of times) for the lease call of a
        concurrent request of the same caller; None: the caller must call Redis (:meth:`want` hits)."""
        for _ in range(LEASE_WAITS):
            status = self.take(name, key, rate)
            if status is not None:
                return status
            asking = self.in_flight(name, key)
            if asking is None:
                return None
            try:
                async with asyncio.timeout(LEASE_SECONDS):
                    await asking.wait()
            except TimeoutError:
                return None
        return None

    def want(self, name: str, key: str, rate: RateLimit) -> int:
        """How many hits to take in the next Redis call for `key`."""
        if not self.leased(rate):
            return 1
        held_key = (name, key)
        lease = self._held.get(held_key)
        now = time.monotonic()
        # Another request of this caller is already asking for a lease: a single hit (concurrent requests
        # would each take a lease and waste all but one hit of each).
        if self.in_flight(name, key) is not None:
            return 1
        self._asking[held_key] = (now + LEASE_SECONDS, asyncio.Event())
        if lease is None:
            return LEASE_FIRST
        if lease.left > 0 or now > lease.expires + LEASE_SECONDS:  # lapsed unused, or back after a pause
            return max(LEASE_FIRST, lease.size // 2)
        return min(LEASE_MAX, lease.size * 2)

    def record(self, name: str, key: str, rate: RateLimit, status: RateStatus | None, want: int) -> RateStatus | None:
        """Keep the hits a Redis call took beyond the one its own request uses; the status as that request
        sees it (the kept hits are not used yet)."""
        if status is None or not self.leased(rate):
            return status
        held_key = (name, key)
        if status.taken == 0:  # refused: nothing held
            self._held.pop(held_key, None)
            return status
        left = status.taken - 1
        now = time.monotonic()
        if want > 1:  # this was the call asking for a lease
            self.settle(name, key)
        if not left:
            lease = self._held.get(held_key)
            if lease is not None and lease.left > 0 and now < lease.expires:
                return status  # a single hit: leave the lease a concurrent call just took
        if len(self._held) > 10_000:
            self._forget_lapsed()
        self._held[held_key] = _Lease(
            left=left,
            expires=now + LEASE_SECONDS,
            size=status.taken,
            count=status.limit - status.remaining,
            reset_at=time.time() + status.reset_after,
        )
        return replace(status, remaining=status.remaining + left) if left else status

    def _forget_lapsed(self) -> None:
        now = time.monotonic()
        for held_key in [k for k, lease in self._held.items() if now >= lease.expires]:
            del self._held[held_key]
        for held_key in [k for k, (until, _) in self._asking.items() if now >= until]:
            del self._asking[held_key]
