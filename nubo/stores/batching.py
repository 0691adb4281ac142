"""Work that many requests hand over and one background task does in batches (:class:`BatchQueue`).

Used where per-request background work would flood a store in a burst: a feed fan-out per post, a session
re-check per socket. Items added while a batch runs go in the next one, so a burst costs a few queries, not
one each. The handler is the owner's function, bound once when the composition root builds the process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from nubo.logs import get_logger

log = get_logger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BatchQueue(Generic[K, V]):
    """Items `{key: value}` handed to one handler in batches of at most `max_batch`, by one task per process.

    A key already queued or in the batch being handled is not queued again (its work is under way). The task
    starts on the first item and ends when the queue is empty; :meth:`drain` waits for it (shutdown, tests).
    A failing batch is logged; the owner's own repair path (a read-time catch-up, a later re-check) covers it.
    """

    def __init__(self, name: str, *, max_batch: int = 1000) -> None:
        self.name = name
        self.max_batch = max_batch
        self._handler: Callable[[dict[K, V]], Awaitable[object]] | None = None
        self._pending: dict[K, V] = {}
        self._in_flight: set[K] = set()
        self._task: asyncio.Task[None] | None = None

    def bind(self, handler: Callable[[dict[K, V]], Awaitable[object]]) -> None:
        """Set the handler (once, by the composition root)."""
        if self._handler is not None:
            raise RuntimeError(f"batch queue {self.name!r} already has a handler")
        self._handler = handler

    def add(self, key: K, value: V) -> None:
        if self._handler is None:
            raise RuntimeError(f"batch queue {self.name!r} has no handler: build the process with nubo.root")
        if key in self._in_flight:
            return
        self._pending[key] = value
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        await asyncio.sleep(0)  # what the other requests of this turn of the loop add joins the batch
        while self._pending:
            keys = list(self._pending)[: self.max_batch]
            batch = {key: self._pending.pop(key) for key in keys}
            self._in_flight = set(batch)
            try:
                assert self._handler is not None
                await self._handler(batch)
            except Exception as exc:
                log.warning("batch_failed", extra={"queue": self.name, "error": f"{type(exc).__name__}: {exc}"[:200]})
            finally:
                self._in_flight = set()

    async def drain(self, seconds: float = 10.0) -> None:
        """Wait until every item queued so far has been handled."""
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait_for(asyncio.shield(task), seconds)
