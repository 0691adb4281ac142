"""Durable realtime events: the event outbox (``logic.event_outbox``) and its relay (:class:`EventRelay`).

Every event a transaction emits (:meth:`nubo.stores.transaction.Transaction.emit`) is written to the event
outbox in that transaction, so it commits with the change it describes. After the commit the writer publishes
it at once (the fast path, waiting at most ``NUBO_REDIS_STALL_MS`` for Redis) and the row is deleted once
published. Whatever the writer could not publish (Redis down or stalled, the process killed between commit and
publish) is published by the relay: one task per process claims rows older than :data:`RELAY_MIN_AGE_SECONDS`
with ``FOR UPDATE SKIP LOCKED`` (several instances share the work), publishes them and deletes them.

Delivery is at least once; each event carries an identity (the row's id) and Redis remembers the identities it
published (:meth:`nubo.stores.events.EventBus.publish`), so an event published twice reaches clients once; the
hub also never sends one identity twice to a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from nubo.logs import get_logger
from nubo.stores.events import EventBus
from nubo.stores.postgres import PgPool
from nubo.stores.redis import REDIS_FAILURES

log = get_logger(__name__)

RELAY_MIN_AGE_SECONDS = 1.0  # younger rows are still their writer's to publish
RELAY_POLL_SECONDS = 0.25
RELAY_BATCH = 200
FAULT_EXIT_BEFORE_PUBLISH = "exit_before_publish:"  # NUBO_TEST_FAULT value prefix (tests only)


@dataclass
class PendingEvent:
    """An event emitted inside a transaction: its identity, recipients, body JSON, and the caller's Redis write
    issued in the same round trip as its publish (see `before` in :meth:`EventBus.publish`)."""

    key: uuid.UUID
    recipients: list[uuid.UUID]
    body: str
    before: Callable[[], Awaitable[Any]] | None = None
    written: bool = False  # the caller's own statement wrote its row


async def write_events(conn: AsyncConnection[DictRow], events: list[PendingEvent]) -> None:
    """Insert the transaction's events into the outbox (in that transaction, before its commit)."""
    rows = [(event.key, event.recipients, event.body) for event in events if not event.written]
    if rows:
        async with conn.cursor() as cur:
            await cur.executemany("INSERT INTO logic.event_outbox (id, recipients, body) VALUES (%s, %s, %s)", rows)


class EventRelay:
    """Publishes committed events: the writer's fast path and the relay loop (see the module)."""

    def __init__(
        self,
        pg: PgPool,
        bus: EventBus,
        *,
        stall_seconds: float,
        redis_down: Callable[[], bool] = lambda: False,
        on_stall: Callable[[], None] = lambda: None,
        test_fault: str = "",
    ) -> None:
        self.pg = pg
        self.bus = bus
        self.stall_seconds = stall_seconds
        self.redis_down = redis_down  # Redis's breaker is open: leave events to the relay, do not wait
        self.on_stall = on_stall  # a publish outlived the stall bound (Redis's breaker: stalled)
        self.test_fault = test_fault
        self.published: list[uuid.UUID] = []  # rows to delete (published by the fast path)
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._down_since: float | None = None

    def check_fault(self, events: list[PendingEvent]) -> None:
        """Test-only fault point (``NUBO_TEST_FAULT=exit_before_publish:<event type>``): the process dies right
        after the commit of an event of that type, before publishing it."""
        if self.test_fault.startswith(FAULT_EXIT_BEFORE_PUBLISH):
            wanted = '{"type":"' + self.test_fault.removeprefix(FAULT_EXIT_BEFORE_PUBLISH) + '"'
            if any(event.body.startswith(wanted) for event in events):
                log.warning("test_fault_exit", extra={"fault": self.test_fault})
                os._exit(70)

    async def publish_committed(self, event: PendingEvent) -> None:
        """The fast path: publish, waiting at most the stall bound; a publish still running goes on in the
        background, and one that fails is left to the relay loop (as is every event while Redis is down)."""
        if self.redis_down():
            return
        task = asyncio.ensure_future(self._publish(event))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        try:
            await asyncio.wait_for(asyncio.shield(task), self.stall_seconds)
        except TimeoutError:
            self.on_stall()

    async def _publish(self, event: PendingEvent) -> None:
        try:
            await self.bus.publish(event.recipients, event.body, before=event.before, event_key=event.key)
        except REDIS_FAILURES as exc:
            self._note_down(exc)
            return
        self.published.append(event.key)
        self._note_up()

    async def ensure_published(self, key: uuid.UUID) -> bool:
        """Publish the event `key` now if it is still in the outbox (a retried request whose first attempt
        committed but may not have published); False when Redis refused."""
        async with self.pg.connection() as conn, conn.transaction():
            row = await (
                await conn.execute(
                    "SELECT recipients, body FROM logic.event_outbox WHERE id = %s FOR UPDATE SKIP LOCKED", (key,)
                )
            ).fetchone()
            if row is None:
                return True  # published already (or being published by the relay right now)
            try:
                await self.bus.publish(row["recipients"], row["body"], event_key=key)
            except REDIS_FAILURES as exc:
                self._note_down(exc)
                return False
            await conn.execute("DELETE FROM logic.event_outbox WHERE id = %s", (key,))
        return True

    async def relay_once(self, *, min_age_seconds: float = RELAY_MIN_AGE_SECONDS) -> int:
        """Delete the rows the fast path published, then publish a batch of the rows left behind; returns how
        many the relay published."""
        done, self.published = self.published, []
        if done:
            async with self.pg.connection() as conn:
                await conn.execute("DELETE FROM logic.event_outbox WHERE id = ANY(%s)", (done,))
        if self.redis_down():
            return 0
        async with self.pg.connection() as conn, conn.transaction():
            rows = await (
                await conn.execute(
                    "SELECT id, recipients, body FROM logic.event_outbox "
                    "WHERE created_at <= now() - make_interval(secs => %s) "
                    "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                    (min_age_seconds, RELAY_BATCH),
                )
            ).fetchall()
            published = []
            for row in rows:
                try:
                    await self.bus.publish(row["recipients"], row["body"], event_key=row["id"])
                except REDIS_FAILURES as exc:
                    self._note_down(exc)
                    break
                published.append(row["id"])
            if published:
                await conn.execute("DELETE FROM logic.event_outbox WHERE id = ANY(%s)", (published,))
        if published:
            self._note_up()
            log.info("events_relayed", extra={"events": len(published)})
        return len(published)

    async def run(self, interval: float = RELAY_POLL_SECONDS) -> None:
        """The relay loop (one task per process)."""
        while True:
            try:
                while await self.relay_once() >= RELAY_BATCH:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # PostgreSQL down: keep trying, never crash the server
                self._note_down(exc)
            await asyncio.sleep(interval)

    async def drain(self, seconds: float) -> None:
        """Wait (bounded) for the fast-path publishes in flight, then delete what they published."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=seconds)
        done, self.published = self.published, []
        if done:
            with contextlib.suppress(Exception):  # left for the relay of another process
                async with self.pg.connection() as conn:
                    await conn.execute("DELETE FROM logic.event_outbox WHERE id = ANY(%s)", (done,))

    def _note_down(self, exc: BaseException) -> None:
        """One log line when publishing starts failing (not one per event)."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("event_relay_failing", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})

    def _note_up(self) -> None:
        if self._down_since is not None:
            log.info("event_relay_recovered", extra={"seconds": round(time.monotonic() - self._down_since, 1)})
            self._down_since = None
