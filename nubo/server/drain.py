"""Graceful drain on SIGTERM: the sends in flight are acknowledged before uvicorn shuts the sockets.

uvicorn's own shutdown stops accepting and then cuts every WebSocket at once (1012), with the sends being
handled losing their ack. :func:`drain_on_sigterm` puts a handler in front of uvicorn's for the life of the
app: on SIGTERM the hub stops taking sockets and sends, waits (at most ``NUBO_DRAIN_SECONDS``) for the sends in
flight, closes the sockets with 1012, then hands the signal to uvicorn, which finishes its shutdown (the
lifespan drains the queues; `nubo serve` exits 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from typing import Any

from nubo.logs import get_logger
from nubo.realtime.hub import Hub

log = get_logger(__name__)


@contextlib.contextmanager
def drain_on_sigterm(hub: Hub, seconds: float) -> Iterator[None]:
    """Within the block, SIGTERM drains `hub` first, then reaches the handler that was there before."""
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):  # nothing to hand over to (not under uvicorn): leave the default alone
        yield
        return
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[Any]] = set()

    async def drain_then_exit() -> None:
        try:
            await hub.drain(seconds)
        finally:
            previous(signal.SIGTERM, None)

    def on_sigterm() -> None:
        if not tasks:  # a second SIGTERM while draining changes nothing
            tasks.add(asyncio.ensure_future(drain_then_exit()))

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous)
