"""Typing indicators: ephemeral "flux" messages living 1 second (the seed's flux design, issue 4's engine).

A typing event is published once, as a flux message carrying its recipients (:mod:`nubo.stores.typing_flux`);
every instance listens and hands it to the hub, which delivers it to its local sockets of those recipients and
drops it once expired (a slow socket never shows a stale indicator). Typing is never stored in the per-user
history.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable

from nubo.logs import get_logger
from nubo.realtime.frames import TypingFrame
from nubo.realtime.hub import Hub
from nubo.stores import Stores, typing_flux

log = get_logger(__name__)

TYPING_TTL_MS = 1000


async def publish_typing(
    stores: Stores, conversation_id: uuid.UUID, user_id: uuid.UUID, recipients: list[uuid.UUID]
) -> None:
    """Announce that `user_id` is typing in `conversation_id` to `recipients` (for 1 s)."""
    if not recipients:
        return
    event = TypingFrame(conversation_id=conversation_id, user_id=user_id)
    await typing_flux.publish(stores, recipients, event, TYPING_TTL_MS)


async def start_listener(hub: Hub) -> Callable[[], Awaitable[None]]:
    """Route flux typing messages to the hub; returns the function that stops the listener."""
    started = asyncio.Event()
    task = asyncio.create_task(_listen(hub, started), name="typing-flux")
    try:
        await asyncio.wait_for(started.wait(), 3.0)
    except TimeoutError:  # Redis down at start: the listener keeps retrying in the background
        log.warning("typing_subscription_pending")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    return stop


async def _listen(hub: Hub, started: asyncio.Event) -> None:
    """Listen forever; after a Redis failure, subscribe again (typing lost meanwhile is harmless)."""
    backoff = 0.1
    while True:
        try:
            # On the hub's subscriber: its client has no read timeout, so an idle subscription does not time out.
            async with await typing_flux.subscribe(hub.subscriber) as subscription:
                started.set()
                backoff = 0.1
                async for message in subscription:
                    hub.deliver_ephemeral(message.to, message.body, message.expires_ms)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("typing_subscription_lost", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
