"""Typing indicators: ephemeral "flux" messages living 1 second (the seed's flux design, issue 4's engine).

A typing event is published once, as a flux message on ``{p}rt:typing`` carrying its recipients; every
instance listens and hands it to the hub, which delivers it to its local sockets of those recipients and drops
it once expired (a slow socket never shows a stale indicator). Typing is never stored in the per-user history.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from nubo.logs import get_logger
from nubo.realtime.frames import TypingFrame
from nubo.realtime.hub import Hub
from nubo.stores import Stores
from nubo.stores.events import to_json

log = get_logger(__name__)

TYPING_TTL_MS = 1000
CHANNEL = "rt:typing"


async def publish_typing(
    stores: Stores, conversation_id: uuid.UUID, user_id: uuid.UUID, recipients: list[uuid.UUID]
) -> None:
    """Announce that `user_id` is typing in `conversation_id` to `recipients` (for 1 s)."""
    if not recipients:
        return
    event = TypingFrame(conversation_id=conversation_id, user_id=user_id)
    flux = _flux()
    if flux is None:
        await stores.events.publish_ephemeral(recipients, event, TYPING_TTL_MS)
        return
    body = {
        "to": [str(uid) for uid in recipients],
        "body": json.loads(to_json(event)),
        "expires": int(time.time() * 1000) + TYPING_TTL_MS,
    }
    await flux.publish(stores.redis, stores.keys, CHANNEL, body, ttl_ms=TYPING_TTL_MS)


def _flux() -> Any:
    try:
        from nubo.stores import redis_flux
    except ImportError:
        return None
    return redis_flux


async def start_listener(stores: Stores, hub: Hub) -> Callable[[], Awaitable[None]]:
    """Route flux typing messages to the hub; returns the function that stops the listener."""
    flux = _flux()
    if flux is None:
        log.info("typing_via_ephemeral_channel", extra={"reason": "nubo.stores.redis_flux not available"})

        async def nothing() -> None:
            return None

        return nothing
    started = asyncio.Event()
    task = asyncio.create_task(_listen(flux, stores, hub, started), name="typing-flux")
    try:
        await asyncio.wait_for(started.wait(), 3.0)
    except TimeoutError:  # Redis down at start: the listener keeps retrying in the background
        log.warning("typing_subscription_pending")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    return stop


async def _listen(flux: Any, stores: Stores, hub: Hub, started: asyncio.Event) -> None:
    """Listen forever; after a Redis failure, subscribe again (typing lost meanwhile is harmless)."""
    backoff = 0.1
    while True:
        try:
            # The hub's pub/sub client has no read timeout: an idle subscription must not time out.
            async with await flux.subscribe(hub.subscriber_redis, stores.keys, CHANNEL) as subscription:
                started.set()
                backoff = 0.1
                async for message in subscription:
                    _route(hub, message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("typing_subscription_lost", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


def _route(hub: Hub, message: dict[str, Any]) -> None:
    try:
        hub.deliver_ephemeral(list(message["to"]), dict(message["body"]), int(message["expires"]))
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("typing_bad_message", extra={"error": str(exc)[:200]})
