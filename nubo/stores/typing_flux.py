"""Typing indicators on the flux (:mod:`nubo.stores.redis_flux`): their channel and their message shape.

A typing message is stored under ``{p}flux:rt:typing:{msgid}`` for its time to live and announced on
``{p}flux:rt:typing``; its body has the shape of an ``rt:ephemeral`` message (``{"to": [user ids], "body":
{...}, "expires": ms}``), so every instance receives it as an :class:`~nubo.stores.events.EphemeralMessage`,
read on the instance's subscriber client (no read timeout: an idle subscription must not time out).
"""

from __future__ import annotations

import json
import time
import uuid
from types import TracebackType
from typing import TYPE_CHECKING

from nubo.logs import get_logger
from nubo.stores import redis_flux
from nubo.stores.events import EphemeralMessage, Event, EventSubscriber, to_json

if TYPE_CHECKING:
    from nubo.stores import Stores

log = get_logger(__name__)

CHANNEL = "rt:typing"


async def publish(stores: Stores, recipients: list[uuid.UUID], event: Event, ttl_ms: int) -> None:
    """Deliver `event` live to `recipients` on every instance, for `ttl_ms`."""
    body = {
        "to": [str(uid) for uid in recipients],
        "body": json.loads(to_json(event)),
        "expires": int(time.time() * 1000) + ttl_ms,
    }
    await redis_flux.publish(stores.redis, stores.keys, CHANNEL, body, ttl_ms=ttl_ms)


class TypingSubscription:
    """Live typing messages, decoded (a malformed one is logged and skipped); an async iterator and an async
    context manager that unsubscribes on exit."""

    def __init__(self, flux: redis_flux.FluxSubscription) -> None:
        self._flux = flux

    def __aiter__(self) -> TypingSubscription:
        return self

    async def __anext__(self) -> EphemeralMessage:
        while True:
            message = await anext(self._flux)
            try:
                return EphemeralMessage(list(message["to"]), dict(message["body"]), int(message["expires"]))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("typing_bad_message", extra={"error": str(exc)[:200]})

    async def __aenter__(self) -> TypingSubscription:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._flux.aclose()


async def subscribe(subscriber: EventSubscriber) -> TypingSubscription:
    """A started subscription to the typing flux on `subscriber`'s client (nothing published afterwards is
    missed)."""
    return TypingSubscription(await redis_flux.subscribe(subscriber.client, subscriber.keys, CHANNEL))
