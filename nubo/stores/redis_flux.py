"""Flux: ephemeral messages (typing indicators...) that live a short time and reach every instance.

:func:`publish` stores the body under ``{prefix}flux:{channel}:{msgid}`` with a per-message TTL (PX, 1 s by
default) and announces the id on the pub/sub channel ``{prefix}flux:{channel}``, both in one MULTI/EXEC so the
body exists before anyone hears of it. A :class:`FluxSubscription` receives the ids, GETs each body and skips
the ones that already expired, so a late subscriber never acts on stale news.

    sub = await subscribe(redis, keys, "typing:<conversation id>")
    async with sub:
        async for body in sub:
            ...
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from nubo.ids import new_id
from nubo.logs import get_logger
from nubo.stores.redis import Keys

log = get_logger(__name__)

DEFAULT_TTL_MS = 1000


def channel_name(keys: Keys, channel: str) -> str:
    return keys("flux", channel)


def message_key(keys: Keys, channel: str, message_id: str) -> str:
    return keys("flux", channel, message_id)


async def publish(redis: Redis, keys: Keys, channel: str, body: dict[str, Any], ttl_ms: int = DEFAULT_TTL_MS) -> str:
    """Store `body` for `ttl_ms` and announce it on `channel`; returns the message id."""
    if ttl_ms < 1:
        raise ValueError(f"ttl_ms must be >= 1, got {ttl_ms}")
    message_id = new_id().hex
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(message_key(keys, channel, message_id), json.dumps(body, default=str), px=ttl_ms)
        pipe.publish(channel_name(keys, channel), message_id)
        await pipe.execute()
    return message_id


class FluxSubscription:
    """Live messages of one flux channel, on a dedicated pub/sub connection; an async iterator of bodies."""

    def __init__(self, redis: Redis, keys: Keys, channel: str) -> None:
        self.redis = redis
        self.keys = keys
        self.channel = channel
        self._pubsub: PubSub = redis.pubsub()

    async def start(self) -> FluxSubscription:
        """Subscribe and wait for Redis to confirm, so nothing published afterwards is missed."""
        await self._pubsub.subscribe(channel_name(self.keys, self.channel))
        while True:
            message = await self._pubsub.get_message(timeout=5.0)
            if message is None:
                raise TimeoutError(f"no subscription confirmation for flux channel {self.channel!r}")
            if message["type"] == "subscribe":
                return self

    def __aiter__(self) -> FluxSubscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while True:
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is None or message["type"] != "message":
                continue
            body = await self.redis.get(message_key(self.keys, self.channel, str(message["data"])))
            if body is None:
                continue  # expired before we got to it: stale, skip
            try:
                return dict(json.loads(body))
            except (ValueError, TypeError):
                log.warning("flux_bad_body", extra={"channel": self.channel})

    async def aclose(self) -> None:
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> FluxSubscription:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def subscribe(redis: Redis, keys: Keys, channel: str) -> FluxSubscription:
    """A started subscription to `channel` (iterate it for message bodies; `aclose()` when done)."""
    return await FluxSubscription(redis, keys, channel).start()
