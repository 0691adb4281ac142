"""Redis connection and key naming: every key and channel starts with the configured prefix (DESIGN §3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis


def open_redis(url: str, *, timeout: float = 2.0) -> Redis:
    """A lazily connecting client returning `str` values."""
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        retry_on_timeout=False,
    )


@dataclass(frozen=True)
class Keys:
    """Builds prefixed key names, so nubo never touches another application's keys."""

    prefix: str

    def __call__(self, *parts: object) -> str:
        return self.prefix + ":".join(str(part) for part in parts)

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key of this prefix."""
        return _escape_glob(self.prefix) + "*"


def _escape_glob(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


async def scan_prefix(redis: Redis, keys: Keys, suffix_pattern: str = "*", count: int = 1000) -> AsyncIterator[str]:
    """Iterate over keys under the prefix with SCAN (never KEYS, which blocks the server)."""
    async for key in redis.scan_iter(match=_escape_glob(keys.prefix) + suffix_pattern, count=count):
        yield key


async def delete_prefix(redis: Redis, keys: Keys, batch: int = 500) -> int:
    """Delete every key under the prefix in batches; returns how many were deleted."""
    deleted = 0
    pending: list[str] = []
    async for key in scan_prefix(redis, keys):
        pending.append(key)
        if len(pending) >= batch:
            deleted += await redis.unlink(*pending)
            pending.clear()
    if pending:
        deleted += await redis.unlink(*pending)
    return deleted


async def ping(redis: Redis) -> dict[str, Any]:
    await redis.ping()
    info = await redis.info("server")
    return {"version": info.get("redis_version")}
