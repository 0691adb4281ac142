"""The rate-limit calls of domain modules, delegating to the process's limiter (``stores.rate_limits``).

The limiter itself (the Redis windows, their script, the leases) is :mod:`nubo.stores.ratelimit`. These
functions keep the signatures domain code calls today; new code calls ``stores.rate_limits.<method>``.
"""

from __future__ import annotations

from nubo.settings import RateLimit
from nubo.stores import Stores
from nubo.stores.ratelimit import LEASE_MIN_LIMIT, HitLeases, RateStatus, raise_if_limited

__all__ = [
    "LEASE_MIN_LIMIT",
    "HitLeases",
    "RateStatus",
    "guarded_hit",
    "hit",
    "leases_for",
    "raise_if_limited",
    "rate_limit",
]


def leases_for(stores: Stores) -> HitLeases:
    """The process's leases."""
    return stores.rate_limits.leases


async def hit(stores: Stores, name: str, key: str, rate: RateLimit, want: int = 1) -> RateStatus | None:
    """:meth:`nubo.stores.ratelimit.RateLimits.hit`."""
    return await stores.rate_limits.hit(name, key, rate, want)


async def guarded_hit(
    stores: Stores, guard_key: str, name: str, key: str, rate: RateLimit, want: int = 1
) -> tuple[bytes | str | None, RateStatus | None, int | None]:
    """:meth:`nubo.stores.ratelimit.RateLimits.guarded_hit`."""
    return await stores.rate_limits.guarded_hit(guard_key, name, key, rate, want)


async def rate_limit(stores: Stores, name: str, key: str, rate: RateLimit) -> RateStatus | None:
    """:meth:`nubo.stores.ratelimit.RateLimits.limit`: a hit, or :class:`nubo.errors.RateLimited` (429)."""
    return await stores.rate_limits.limit(name, key, rate)
