"""Rate limits shared by every instance: an atomic moving window in Redis (DESIGN §8).

The window is the `limits` package's moving window (its key names and list layout, checked by the tests
against `limits`' own `get_window_stats`), but a hit runs one Lua script that both takes a slot and reads
the window: `limits` needs two round trips for that (`hit`, then `get_window_stats`), and the per-user
limit runs on every authenticated request. Being one script, it is atomic: two instances can never both
take the last slot. Keys live under the prefix (``{prefix}ratelimit:LIMITER/<name>/<key>/<n>/<s>/second``).
When Redis is down the limiter fails open (the request goes through, the failure is logged and counted):
refusing every login during a cache outage would be worse than a few unthrottled attempts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.exceptions import RedisError

from nubo.errors import RateLimited
from nubo.logs import get_logger
from nubo.settings import RateLimit
from nubo.stores import Stores

log = get_logger(__name__)

_ATTR = "_nubo_rate_limiter"
_SCRIPT_ATTR = "_nubo_rate_script"

# KEYS[1]: the window (hit timestamps, newest first, at most `limit` long); ARGV: now, limit, expiry.
# Returns {allowed (0/1), hits in the window, oldest hit in the window (string)}.
_ACQUIRE_AND_MEASURE = """
local now, limit, expiry = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local last = redis.call('lindex', KEYS[1], limit - 1)
local allowed = 0
if not (last and tonumber(last) >= now - expiry) then
    redis.call('lpush', KEYS[1], ARGV[1])
    redis.call('ltrim', KEYS[1], 0, limit - 1)
    redis.call('expire', KEYS[1], expiry)
    allowed = 1
end
local low, high, found = 0, redis.call('llen', KEYS[1]) - 1, -1
while low <= high do
    local mid = math.floor((low + high) / 2)
    local value = tonumber(redis.call('lindex', KEYS[1], mid))
    if value and value >= now - expiry then found = mid; low = mid + 1 else high = mid - 1 end
end
if found < 0 then return {allowed, 0, ARGV[1]} end
return {allowed, found + 1, redis.call('lindex', KEYS[1], found)}
"""
_LOG_EVERY = 10.0  # seconds between two "limiter down" log lines, so an outage does not flood the log
_last_log = 0.0


@dataclass(frozen=True)
class RateStatus:
    """The state of one limit after a hit: used for the `X-RateLimit-*` headers."""

    limit: int
    remaining: int
    reset_after: int  # seconds until the oldest hit leaves the window
    allowed: bool

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_after),
        }


def limiter_for(stores: Stores) -> MovingWindowRateLimiter:
    """The process's limiter on `stores`' Redis connection pool (created once, closed with the stores)."""
    limiter: MovingWindowRateLimiter | None = getattr(stores, _ATTR, None)
    if limiter is None:
        url = stores.settings.redis_url
        storage = RedisStorage(
            f"async+{url}",
            implementation="redispy",
            key_prefix=stores.keys("ratelimit"),
            connection_pool=stores.redis.connection_pool,  # type: ignore[arg-type]  # passed to redis-py
        )
        limiter = MovingWindowRateLimiter(storage)
        setattr(stores, _ATTR, limiter)
    return limiter


def window_key(stores: Stores, name: str, key: str, rate: RateLimit) -> str:
    """The Redis key of one window, exactly as `limits` names it (so `limits` can read and clear it)."""
    item = RateLimitItemPerSecond(rate.amount, rate.seconds)
    return f"{stores.keys('ratelimit')}:{item.key_for(name, key)}"


async def hit(stores: Stores, name: str, key: str, rate: RateLimit) -> RateStatus | None:
    """Count one hit of `key` against limit `name`; None when Redis cannot be reached (fail open)."""
    script = getattr(stores, _SCRIPT_ATTR, None)
    if script is None:
        script = stores.redis.register_script(_ACQUIRE_AND_MEASURE)
        setattr(stores, _SCRIPT_ATTR, script)
    now = time.time()
    try:
        allowed, count, oldest = await script(
            keys=[window_key(stores, name, key, rate)], args=[repr(now), rate.amount, rate.seconds]
        )
    except (RedisError, OSError) as exc:
        _log_down(stores, name, exc)
        return None
    reset_after = max(1, math.ceil(float(oldest) + rate.seconds - now))
    return RateStatus(
        limit=rate.amount,
        remaining=max(0, rate.amount - int(count)),
        reset_after=reset_after,
        allowed=bool(allowed),
    )


async def rate_limit(stores: Stores, name: str, key: str, rate: RateLimit) -> RateStatus | None:
    """Count a hit and raise :class:`RateLimited` (429, `Retry-After`, `X-RateLimit-*`) when over the limit.

    Reusable by any feature, e.g.
    ``await rate_limit(stores, "messages", str(user.id), settings.rate_messages)``.
    """
    status = await hit(stores, name, key, rate)
    if status is not None and not status.allowed:
        raise RateLimited(
            f"Too many requests; retry in {status.reset_after} s",
            retry_after=status.reset_after,
            headers=status.headers(),
        )
    return status


async def clear(stores: Stores, name: str, key: str, rate: RateLimit) -> None:
    """Forget the hits of `key` (used after an operator unlocks an account, and by tests)."""
    await limiter_for(stores).clear(RateLimitItemPerSecond(rate.amount, rate.seconds), name, key)


def _log_down(stores: Stores, name: str, exc: BaseException) -> None:
    global _last_log
    stores.count_failure("redis_ratelimit")
    now = time.monotonic()
    if now - _last_log >= _LOG_EVERY:
        _last_log = now
        log.warning(
            "rate_limiter_unavailable",
            extra={
                "limit": name,
                "error": f"{type(exc).__name__}: {exc}"[:200],
                "failures": stores.failures.get("redis_ratelimit", 0),
            },
        )
