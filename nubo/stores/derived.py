"""Values computed from PostgreSQL (counts, relations) cached in Redis and invalidated by *tags*.

A derived value depends on rows that no single cache entry holds: "may viewer V see author A's post P, and
its counts" depends on A's row, on follows and blocks between V and A, on P's likes and comments. Each such
dependency is a tag (``user:<id>``, ``post:<id>``). A write transaction tags what it changed
(:func:`tags_of` for rows written through :class:`~nubo.stores.tiered.Transaction`, ``tx.tag(...)`` for
custom SQL) and, once committed, gives each tag a new random version. A cached value records the versions of
its tags, read *before* its PostgreSQL query; it is served only while they are all unchanged.

Why that order is enough (no locks, no leases): a reader that saw version v of a tag queried PostgreSQL after
seeing it. If a writer's commit came before that query, the reader saw the new data; if after, the writer's
version change (which follows its commit) makes v stale, so the value is never served. Every version change
is a new random token, so a tag that expired and came back cannot match an old value by accident. When Redis
fails to take a version change, the value lives at most its TTL (:data:`DERIVED_TTL_SECONDS`).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from redis.exceptions import RedisError

from nubo.logs import get_logger
from nubo.stores.near import NearCache
from nubo.stores.redis import Keys

log = get_logger(__name__)

DERIVED_TTL_SECONDS = 30  # the staleness bound when a version change could not be written
TAG_TTL_SECONDS = 3600  # far longer than any value's life: a tag never expires under a value that used it

Row = dict[str, Any]


def user_tag(user_id: object) -> str:
    """A user's row and their relations (follows, blocks) with anyone."""
    return f"user:{user_id}"


def post_tag(post_id: object) -> str:
    """A post's row, its likes and its comments."""
    return f"post:{post_id}"


# Which tags a write of each entity's rows changes (entities absent here feed no derived value).
_ENTITY_TAGS: dict[str, Callable[[Row], list[str]]] = {
    "users": lambda row: [user_tag(row["id"])],
    "follows": lambda row: [user_tag(row["follower_id"]), user_tag(row["followed_id"])],
    "posts": lambda row: [post_tag(row["id"])],
    "comments": lambda row: [post_tag(row["post_id"])],
    "likes": lambda row: [post_tag(row["target_id"])] if row.get("target_type") == 0 else [],
}


def tags_of(entity_name: str, row: Row) -> list[str]:
    """The tags a write of `row` (before or after the change) invalidates."""
    tagger = _ENTITY_TAGS.get(entity_name)
    return tagger(row) if tagger is not None else []


def entity_has_tags(entity_name: str) -> bool:
    return entity_name in _ENTITY_TAGS


@lru_cache(maxsize=4096)
def _decode_entry(raw: str | bytes) -> tuple[Sequence[str], Mapping[str, Any]]:
    """The tag versions a cached value was computed at, and the value. Decoded once per distinct entry: a
    near copy (:mod:`nubo.stores.near`) hands back the same string for as long as the value is unchanged."""
    entry = json.loads(raw)
    return entry.get("v"), entry["d"]


class DerivedCache:
    """Get-or-compute for tagged values, and the version changes that invalidate them."""

    def __init__(
        self, redis: Any, keys: Keys, count_failure: Callable[[str], None], near: NearCache | None = None
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.count_failure = count_failure
        self.near = near  # in-process copies of values and tag versions (nubo.stores.near)
        # Hot values are read far more often than they change: their Redis keys are built once.
        self._redis_keys = lru_cache(maxsize=8192)(self._build_redis_keys)

    async def get(
        self,
        name: str,
        tags: Iterable[str],
        compute: Callable[[], Awaitable[Mapping[str, Any]]],
        ttl: int = DERIVED_TTL_SECONDS,
    ) -> Mapping[str, Any]:
        """The cached value `name` if none of its `tags` changed since it was computed, else `compute()`
        (stored for the next reader). Redis down: computed every time. A cached value may be shared with other
        readers: do not change it."""
        wanted = self._redis_keys(name, tuple(tags))
        key = wanted[0]
        try:
            if self.near is None:
                raw, *versions = await self.redis.mget(list(wanted))
            else:
                raw, *versions = await self.near.get_many(wanted, self.redis.mget)
        except (RedisError, OSError) as exc:
            self._failed("read", exc)
            return await compute()
        current = [version or "" for version in versions]
        if raw is not None:
            computed_at, cached = _decode_entry(raw)
            if computed_at == current:
                return cached
        value = await compute()
        try:
            await self.redis.set(key, json.dumps({"v": current, "d": value}, default=str), ex=ttl)
        except (RedisError, OSError) as exc:
            self._failed("write", exc)
        return value

    def _build_redis_keys(self, name: str, tags: tuple[str, ...]) -> tuple[str, ...]:
        return (self.keys("derived", name), *(self.keys("tag", tag) for tag in tags))

    async def invalidate(self, tags: Iterable[str]) -> None:
        """Give each tag a new version (after the commit that changed its rows)."""
        tag_keys = [self.keys("tag", tag) for tag in sorted(set(tags))]
        if not tag_keys:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in tag_keys:
                    pipe.set(key, secrets.token_hex(8), ex=TAG_TTL_SECONDS)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("invalidate", exc)
        finally:
            if self.near is not None:
                self.near.drop(tag_keys)  # this process reads its own writes at once

    def _failed(self, action: str, exc: Exception) -> None:
        self.count_failure("redis_derived")
        log.warning("derived_cache_failed", extra={"action": action, "error": f"{type(exc).__name__}: {exc}"[:200]})
