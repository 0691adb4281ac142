"""The request guard: who is behind a verified access token, if its session is still live, and (with the
per-user rate limit) whether they may make this request.

The session mirror answers (a process copy, else one Redis round trip); PostgreSQL decides when the mirror is
missing or Redis is failing, and the session is then mirrored again. A revocation marker refuses at once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from nubo.accounts.mirrors import (
    MIRROR_REFRESH_BELOW,
    is_live,
    mark_revoked,
    mirror_live,
    session_state,
)
from nubo.errors import Unauthorized
from nubo.settings import RateLimit
from nubo.stores import Stores, session_mirrors
from nubo.stores.near import MISSING
from nubo.stores.ratelimit import RateStatus
from nubo.stores.redis import REDIS_FAILURES


@dataclass(frozen=True)
class AuthUser:
    """The authenticated caller (``request.user``): who, through which session."""

    id: uuid.UUID
    session_id: uuid.UUID
    username: str
    grade: int


async def authenticate_session(
    stores: Stores, user_id: uuid.UUID, session_id: uuid.UUID, *, mirror_missing: bool = False
) -> AuthUser:
    """The caller behind a verified token, if its session is live; else 401 `invalid_token`.

    The Redis mirror first (unless the caller just found it `mirror_missing`), else PostgreSQL, which then
    mirrors the session again."""
    redis_up, raw = True, None
    if not mirror_missing:
        try:
            raw = await session_mirrors.read(stores, session_id)
        except REDIS_FAILURES:
            redis_up = False
            stores.count_failure("redis_session")
    if raw is not None:
        return _principal_from_mirror(raw, user_id, session_id)
    row = await session_state(stores, session_id)
    if row is None or row["user_id"] != user_id or not is_live(row):
        if redis_up and row is not None and row["user_id"] == user_id:
            await mark_revoked(stores, [session_id])
        raise Unauthorized("The session of this token is revoked or expired", code="invalid_token")
    if redis_up:
        await mirror_live(stores, session_id, {"id": user_id, **row}, int(row["seconds_left"]))
    return AuthUser(id=user_id, session_id=session_id, username=row["username"], grade=int(row["grade"]))


async def authenticate_and_limit(
    stores: Stores, user_id: uuid.UUID, session_id: uuid.UUID, rate: RateLimit, name: str = "user"
) -> tuple[AuthUser, RateStatus | None]:
    """:func:`authenticate_session` plus one hit of the caller's rate limit `name` (429 when over it).

    The hot path needs no Redis call: the session mirror is this process's copy (:mod:`nubo.stores.near`,
    dropped by Redis as soon as the session is revoked) and the hit comes from a lease of hits this process
    already counted in the shared window (:class:`nubo.stores.ratelimit.HitLeases`). Otherwise one round trip: a
    script reads the mirror and, when it is live, takes the hit(s) atomically
    (:meth:`nubo.stores.ratelimit.RateLimits.guarded_hit`). A lapsed mirror: PostgreSQL decides, the session is
    mirrored again and the script runs again. Redis failing: :func:`authenticate_session` (PostgreSQL), then a
    separate hit (which fails open when Redis is down).
    """
    key = session_mirrors.key(stores, session_id)
    user_key = str(user_id)
    leases = stores.rate_limits.leases
    held = stores.near.get_cached(key)
    if held is MISSING and leases.holds(name, user_key):
        held = await _mirror(stores, key)  # the session check alone: the lease pays the hit
    if held is not MISSING and held is not None:
        user = _principal_from_mirror(held, user_id, session_id)  # a revoked copy refuses at once
        status = await leases.take_or_wait(name, user_key, rate)
        if status is not None:
            return user, status
    # Leases only pay off while the session check needs no Redis call (near copies are live).
    want = leases.want(name, user_key, rate) if stores.near.live else 1
    try:
        return await _check_and_hit(stores, user_id, session_id, key, name, rate, want)
    finally:
        if want > 1:
            leases.settle(name, user_key)  # whatever happened, wake the requests waiting for this lease


async def _check_and_hit(
    stores: Stores, user_id: uuid.UUID, session_id: uuid.UUID, key: str, name: str, rate: RateLimit, want: int
) -> tuple[AuthUser, RateStatus | None]:
    """The Redis side of :func:`authenticate_and_limit`: the guarded script taking `want` hits."""
    user_key = str(user_id)
    try:
        raw, status = await _guarded_hit(stores, user_id, session_id, key, name, rate, want)
        if raw is None:  # no mirror (it lapsed): PostgreSQL decides and mirrors the session again
            await authenticate_session(stores, user_id, session_id, mirror_missing=True)
            raw, status = await _guarded_hit(stores, user_id, session_id, key, name, rate, want)
    except REDIS_FAILURES:
        raw = None
    if raw is None:  # Redis is failing: authenticate_session retries it, counts the failure, asks PostgreSQL
        user = await authenticate_session(stores, user_id, session_id)
        return user, await stores.rate_limits.limit(name, user_key, rate)
    user = _principal_from_mirror(raw, user_id, session_id)  # refuses a revoked mirror (no hit was taken)
    status = stores.rate_limits.leases.record(name, user_key, rate, status, want)
    stores.rate_limits.enforce(name, status)
    return user, status


async def _mirror(stores: Stores, key: str) -> Any:
    """The session mirror through the near cache; MISSING when Redis fails (the caller's script retries)."""
    try:
        return await session_mirrors.read_near(stores, key)
    except REDIS_FAILURES:
        return MISSING


async def _guarded_hit(
    stores: Stores, user_id: uuid.UUID, session_id: uuid.UUID, key: str, name: str, rate: RateLimit, want: int
) -> tuple[str | bytes | None, RateStatus | None]:
    """:meth:`nubo.stores.ratelimit.RateLimits.guarded_hit` on the session mirror `key`, keeping the mirror as a
    near copy. A mirror close to its end is checked again against PostgreSQL in the background
    (``stores.mirror_refresh``, which batches them into :func:`~nubo.accounts.mirrors.refresh_mirrors`), so an
    active session never waits for that check."""
    with stores.near.reading([key]) as keep:
        raw, status, ttl_ms = await stores.rate_limits.guarded_hit(key, name, str(user_id), rate, want=want)
        keep([raw])
    if ttl_ms is not None and 0 <= ttl_ms < MIRROR_REFRESH_BELOW * 1000:
        stores.mirror_refresh.add(session_id, user_id)
    return raw, status


@lru_cache(maxsize=16384)  # the same mirror is read on every request of a session
def _principal_from_mirror(raw: str | bytes, user_id: uuid.UUID, session_id: uuid.UUID) -> AuthUser:
    mirror = session_mirrors.decode(raw)
    if mirror is None or mirror.user_id != str(user_id):
        raise Unauthorized("The session of this token is revoked", code="invalid_token")
    return AuthUser(id=user_id, session_id=session_id, username=mirror.username, grade=mirror.grade)
