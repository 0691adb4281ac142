"""When rows committed in PostgreSQL are projected to Mongo and Redis: one scheduler, :class:`Projector`.

Each process runs two of them, so a burst of messages never delays a post's projection: the tiered store's
(``stores.projector``: the request waits, its rows are projected at once) and messaging's
(``stores.messaging_projector``: sends do not wait; rows are coalesced and re-read from PostgreSQL at flush).
Both project through :meth:`nubo.stores.tiered.TieredStore.project`, each from one task (so one writer per
document), and delete the rows' outbox entries once their copies are written; the outbox worker repairs
whatever they could not write.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nubo.logs import get_logger
from nubo.stores.entities import REREAD, Row
from nubo.stores.outbox import OUTBOX_MIN_AGE_SECONDS, project_safely
from nubo.stores.postgres import pg_read
from nubo.stores.tiered import TieredStore

if TYPE_CHECKING:
    from nubo.stores.transaction import Transaction

log = get_logger(__name__)

Touched = Mapping[str, Mapping[uuid.UUID, Row | None]] | Mapping[str, Iterable[uuid.UUID]]


class Projector:
    """Group commit for projections: the rows of every transaction queued while a flush runs go in the next
    flush, one bulk per entity (the seed's advice: batch the writes).

    A caller that waits (`urgent`) starts its batch at once, so at low load nothing waits for a timer. Rows
    nobody waits for start their batch up to :attr:`COALESCE_SECONDS` later. *Lazy* rows (a send's
    conversation and member rows: nothing reads them through the tiers, PostgreSQL answers) wait up to
    :attr:`LAZY_SECONDS`: replacing existing documents is what costs Mongo most (on FerretDB each round of
    replacements scans the collection, see :meth:`~nubo.stores.tiered.TieredStore._replace_documents`), and a
    busy conversation then costs one replacement per interval, not per send. At 300 sends/s over 50
    conversations, going from 1 s to 5 s cut FerretDB's CPU from 1.64 to 0.44 ms per message and the
    send->ack p99 from 118 to 28 ms (the Mongo copies of those rows lag by up to 5 s).

    A row is queued with its committed state (None: deleted) or as :data:`~nubo.stores.tiered.REREAD`; when
    one row is queued twice, the later state wins, and REREAD (the newest state, read at flush) wins over any.
    One writer per process also means no two of our projections upsert one document at the same time (FerretDB
    answers such a race with a reply pymongo cannot parse).
    """

    MAX_PENDING_IDS = 50_000  # beyond this, leave the rows to the outbox worker instead of growing memory
    # Rows per projection round (one PostgreSQL read, one Mongo bulk, one Redis script). On FerretDB existing
    # documents are replaced with one delete per round, which scans the collection: rounds of 50 made a
    # 1,000-member group's flush 20 scans (fan-out p99 up to 184 ms, 89-153 ms with 500).
    CHUNK = 500
    COALESCE_SECONDS = 0.05  # how long a batch nobody waits for gathers more rows
    LAZY_SECONDS = OUTBOX_MIN_AGE_SECONDS / 2  # so the outbox worker does not redo our work
    # Each lazy batch waits a random 60-100% of LAZY_SECONDS: instances started together (a deploy, a
    # benchmark) would otherwise flush in step every interval, each burst landing on Mongo at the same time.
    LAZY_JITTER = 0.4

    def __init__(self, name: str, tiered: TieredStore) -> None:
        self.tiered = tiered
        self.name = name
        self.pending: dict[str, dict[uuid.UUID, Any]] = {}
        self.outbox_ids: list[int] = []
        self.lazy: dict[str, dict[uuid.UUID, Any]] = {}
        self.lazy_outbox_ids: list[int] = []
        self.lazy_due: float | None = None
        self.pending_count = 0
        self.flushing = False
        self.wakeup = asyncio.Event()
        self.urgent = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.next_batch: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    def defer(self, tx: Transaction, *, urgent: bool = True, reread: bool = False) -> asyncio.Future[None]:
        """Queue the rows `tx` touched (their committed state, or with `reread` their state at flush time);
        the future completes once their batch was projected (or given up)."""
        touched: Touched = {name: list(rows) for name, rows in tx.touched.items()} if reread else tx.touched
        return self.defer_rows(touched, tx.outbox_ids, urgent=urgent)

    def defer_rows(
        self,
        touched: Touched,
        outbox_ids: Sequence[int],
        *,
        urgent: bool = False,
        lazy: bool = False,
    ) -> asyncio.Future[None]:
        """Queue rows by entity (`{id: state}`, or ids to re-read) and their outbox ids (deleted once these rows
        are projected). `urgent`: someone waits, start the batch now; `lazy`: see the class docstring."""
        loop = asyncio.get_running_loop()
        if self.pending_count > self.MAX_PENDING_IDS:
            log.warning("projection_backlog_full", extra={"projector": self.name, "left_to_outbox": len(outbox_ids)})
            done: asyncio.Future[None] = loop.create_future()
            done.set_result(None)
            return done
        target = self.lazy if lazy else self.pending
        for name, rows in touched.items():
            queued = target.setdefault(name, {})
            before = len(queued)
            states = rows.items() if isinstance(rows, Mapping) else ((i, REREAD) for i in rows)
            for entity_id, state in states:
                if queued.get(entity_id) is not REREAD:
                    queued[entity_id] = REREAD if lazy else state
            self.pending_count += len(queued) - before
        if lazy:
            self.lazy_outbox_ids.extend(outbox_ids)
            if self.lazy_due is None:
                self.lazy_due = loop.time() + self.LAZY_SECONDS * (1 - self.LAZY_JITTER * random.random())
        else:
            self.outbox_ids.extend(outbox_ids)
        if self.next_batch is None:
            self.next_batch = loop.create_future()
        self.idle.clear()
        self.wakeup.set()
        if urgent:
            self.urgent.set()
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name=f"{self.name}-projection")
        return self.next_batch

    async def _wait_for_work(self) -> None:
        """Until fast rows are due (an urgent write, or :attr:`COALESCE_SECONDS` after the first one) or the
        lazy rows are."""
        loop = asyncio.get_running_loop()
        timeout = None if self.lazy_due is None else max(0.0, self.lazy_due - loop.time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wakeup.wait(), timeout)
        if self.pending and not self.urgent.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.urgent.wait(), self.COALESCE_SECONDS)
        self.wakeup.clear()
        self.urgent.clear()

    def _take(self) -> tuple[dict[str, dict[uuid.UUID, Any]], list[int]]:
        """The rows due now (fast ones, plus the lazy ones once due or when draining) and their outbox ids."""
        pending, self.pending = self.pending, {}
        outbox, self.outbox_ids = self.outbox_ids, []
        due = self.lazy_due is not None and asyncio.get_running_loop().time() >= self.lazy_due
        if self.lazy and (due or self.flushing):
            for name, rows in self.lazy.items():
                pending.setdefault(name, {}).update(rows)  # REREAD: the newest state wins
            outbox += self.lazy_outbox_ids
            self.lazy, self.lazy_outbox_ids, self.lazy_due = {}, [], None
            self.flushing = False
        self.pending_count = sum(len(rows) for rows in self.lazy.values())
        return pending, outbox

    async def _run(self) -> None:
        while True:
            await self._wait_for_work()
            pending, outbox = self._take()
            if not pending and not outbox:  # only lazy rows, not due yet
                if not self.lazy:
                    self.idle.set()
                continue
            batch, self.next_batch = self.next_batch, None
            ok = False
            try:
                ok = await self._project(pending)
            except Exception as exc:  # a store down: the outbox worker repairs these rows later
                log.warning(
                    "projection_failed", extra={"projector": self.name, "error": f"{type(exc).__name__}: {exc}"[:200]}
                )
            finally:
                if batch is not None and not batch.done():
                    batch.set_result(None)  # the copies are written: waiting requests may answer now
            if ok and outbox:
                await self._clear_outbox(outbox)
            if not self.pending and not self.lazy:
                self.idle.set()

    async def _project(self, pending: dict[str, dict[uuid.UUID, Any]]) -> bool:
        ok = True
        for name, rows in pending.items():
            ordered = sorted(rows)
            for start in range(0, len(ordered), self.CHUNK):
                chunk = ordered[start : start + self.CHUNK]
                states = {i: rows[i] for i in chunk}
                ok = await project_safely(self.tiered, name, chunk, states) and ok
        return ok

    async def _clear_outbox(self, outbox: list[int]) -> None:
        try:
            async with pg_read(self.tiered) as conn:
                await conn.execute("DELETE FROM logic.outbox WHERE id = ANY(%s)", (outbox,))
        except Exception as exc:  # the worker will redo the (idempotent) projection later
            log.warning("outbox_cleanup_failed", extra={"projector": self.name, "error": str(exc)[:200]})

    async def drain(self, seconds: float = 10.0) -> None:
        """Wait until everything queued so far is projected, lazy rows included (shutdown, tests)."""
        if not self.idle.is_set():
            self.flushing = True
            self.urgent.set()
            self.wakeup.set()
            await asyncio.wait_for(self.idle.wait(), seconds)
