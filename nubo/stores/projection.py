"""When rows committed in PostgreSQL are projected to Mongo and Redis: the two schedulers of the tiered store.

Both project through :meth:`nubo.stores.tiered.TieredStore.project`, one task per process each (so one writer
per document), and both delete the rows' outbox entries once their copies are written (the outbox worker
repairs whatever they could not write):

- :class:`BatchProjector` (``tiered.transaction()``): the request waits for its copies; transactions that
  commit while a flush runs are projected together, from the rows the transaction wrote.
- :class:`DeferredProjection` (messaging writes): sends do not wait; rows are coalesced over a short window
  (and "lazy" rows over a longer one) and re-read from PostgreSQL at flush, so the newest state wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nubo.logs import get_logger
from nubo.stores import Stores
from nubo.stores.tiered import (
    OUTBOX_MIN_AGE_SECONDS,
    Row,
    TieredStore,
    Transaction,
    pg_read,
    project_safely,
)

log = get_logger(__name__)


@dataclass
class _Submission:
    touched: Mapping[str, Mapping[uuid.UUID, Row | None]]
    outbox_ids: list[int]
    done: asyncio.Future[bool]


class BatchProjector:
    """Group commit for projections: transactions committed while a flush runs are projected together.

    One flush makes, per entity, one Mongo `bulk_write`, one Redis pipeline and one outbox `DELETE` for every
    transaction it holds, instead of one of each per transaction (the seed's advice: batch the writes). At low
    load a flush holds one transaction and starts at once, so nothing waits for a timer. When two
    transactions of a batch touched the same row, the later submission's state wins (it committed later).
    """

    def __init__(self, tiered: TieredStore) -> None:
        self.tiered = tiered
        self.pending: list[_Submission] = []
        self.task: asyncio.Task[None] | None = None

    async def submit(self, touched: Mapping[str, Mapping[uuid.UUID, Row | None]],
                     outbox_ids: list[int]) -> bool:
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.pending.append(_Submission(touched, list(outbox_ids), done))
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name="tiered-projector")
        return await done

    async def _run(self) -> None:
        while self.pending:
            batch, self.pending = self.pending, []
            try:
                await self._flush(batch)
            except Exception as exc:  # never leave a request waiting; the outbox keeps every row
                log.warning("projection_batch_failed", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})
                _finish(batch, lambda _: False)

    async def _flush(self, batch: list[_Submission]) -> None:
        merged: dict[str, dict[uuid.UUID, Row | None]] = {}
        for submission in batch:
            for name, rows in submission.touched.items():
                merged.setdefault(name, {}).update(rows)
        ok = {name: await project_safely(self.tiered, name, list(rows), rows)
              for name, rows in merged.items()}

        def all_ok(submission: _Submission) -> bool:
            return all(ok[name] for name in submission.touched)

        done_ids = [i for submission in batch if all_ok(submission) for i in submission.outbox_ids]
        # The copies are written: the requests may answer now; the outbox cleanup need not delay them.
        _finish(batch, all_ok)
        if done_ids:
            try:
                async with pg_read(self.tiered.stores) as conn:
                    await conn.execute("DELETE FROM logic.outbox WHERE id = ANY(%s)", (done_ids,))
            except Exception as exc:  # the worker will redo the (idempotent) projection later
                log.warning("outbox_cleanup_failed", extra={"error": str(exc)[:200]})


def _finish(batch: list[_Submission], result: Any) -> None:
    for submission in batch:
        if not submission.done.done():  # the waiting request may have been cancelled
            submission.done.set_result(bool(result(submission)))


class DeferredProjection:
    """The one writer of messaging rows to Mongo and Redis in this process, many transactions per bulk.

    Sends do not wait for it. Other writes (edits, deletes, member changes) wait for the batch holding their
    rows, so a read through the tiers right after them sees the change. One writer per process also means no
    two of our projections upsert one document at the same time (FerretDB answers such a race with a reply
    pymongo cannot parse).

    Rows nobody waits for start their batch up to :attr:`COALESCE_SECONDS` later. *Lazy* rows (a send's
    conversation and member rows: nothing here reads them through the tiers, PostgreSQL answers) wait up to
    :attr:`LAZY_SECONDS`: replacing an existing document is what costs FerretDB most (about 1.5 ms of its CPU
    per document, measured), and a busy conversation then costs one replacement per interval, not per send.
    At 300 sends/s over 50 conversations, going from 1 s to 5 s cut FerretDB's CPU from 1.64 to 0.44 ms per
    message and the send->ack p99 from 118 to 28 ms (the Mongo copies of those rows lag by up to 5 s).
    """

    MAX_PENDING_IDS = 50_000  # beyond this, leave the rows to the outbox worker instead of growing memory
    CHUNK = 50  # FerretDB's upserts slow down sharply past a few dozen documents per bulk
    COALESCE_SECONDS = 0.05  # how long a batch nobody waits for gathers more rows
    LAZY_SECONDS = OUTBOX_MIN_AGE_SECONDS / 2  # so the outbox worker does not redo our work

    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self.pending: dict[str, set[uuid.UUID]] = {}
        self.outbox_ids: list[int] = []
        self.lazy: dict[str, set[uuid.UUID]] = {}
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

    def defer(self, tx: Transaction, *, urgent: bool = True) -> asyncio.Future[None]:
        """Queue the rows `tx` touched; the future completes once their batch was projected (or given up)."""
        return self.defer_rows(tx.touched, tx.outbox_ids, urgent=urgent)

    def defer_rows(
        self,
        touched: Mapping[str, Iterable[uuid.UUID]],
        outbox_ids: Sequence[int],
        *,
        urgent: bool = False,
        lazy: bool = False,
    ) -> asyncio.Future[None]:
        """Queue rows (by entity) and their outbox ids (deleted once these rows are projected). `urgent`:
        someone waits, start the batch now; `lazy`: see the class docstring."""
        loop = asyncio.get_running_loop()
        if self.pending_count > self.MAX_PENDING_IDS:
            log.warning("projection_backlog_full", extra={"left_to_outbox": len(outbox_ids)})
            done: asyncio.Future[None] = loop.create_future()
            done.set_result(None)
            return done
        target = self.lazy if lazy else self.pending
        for name, ids in touched.items():
            rows = target.setdefault(name, set())
            before = len(rows)
            rows.update(ids)
            self.pending_count += len(rows) - before
        if lazy:
            self.lazy_outbox_ids.extend(outbox_ids)
            if self.lazy_due is None:
                self.lazy_due = loop.time() + self.LAZY_SECONDS
        else:
            self.outbox_ids.extend(outbox_ids)
        if self.next_batch is None:
            self.next_batch = loop.create_future()
        self.idle.clear()
        self.wakeup.set()
        if urgent:
            self.urgent.set()
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name="messaging-projection")
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

    def _take(self) -> tuple[dict[str, set[uuid.UUID]], list[int]]:
        """The rows due now (fast ones, plus the lazy ones once due or when draining) and their outbox ids."""
        pending, self.pending = self.pending, {}
        outbox, self.outbox_ids = self.outbox_ids, []
        due = self.lazy_due is not None and asyncio.get_running_loop().time() >= self.lazy_due
        if self.lazy and (due or self.flushing):
            for name, ids in self.lazy.items():
                pending.setdefault(name, set()).update(ids)
            outbox += self.lazy_outbox_ids
            self.lazy, self.lazy_outbox_ids, self.lazy_due = {}, [], None
            self.flushing = False
        self.pending_count = sum(len(ids) for ids in self.lazy.values())
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
            try:
                await self._project(pending, outbox)
            except Exception as exc:  # a store down: the outbox worker repairs these rows later
                log.warning(
                    "deferred_projection_failed", extra={"error": f"{type(exc).__name__}: {exc}"[:200]}
                )
            finally:
                if batch is not None and not batch.done():
                    batch.set_result(None)
            if not self.pending and not self.lazy:
                self.idle.set()

    async def _project(self, pending: dict[str, set[uuid.UUID]], outbox: list[int]) -> None:
        ok = True
        for name, ids in pending.items():
            ordered = sorted(ids)
            for start in range(0, len(ordered), self.CHUNK):
                chunk = ordered[start : start + self.CHUNK]
                ok = await self.stores.tiered.project(name, chunk) and ok  # re-read: newest state wins
        if ok and outbox:
            async with self.stores.pg.connection() as conn:
                await conn.execute("DELETE FROM logic.outbox WHERE id = ANY(%s)", (outbox,))

    async def drain(self, seconds: float = 10.0) -> None:
        """Wait until everything deferred so far is projected, lazy rows included (shutdown, tests)."""
        if not self.idle.is_set():
            self.flushing = True
            self.urgent.set()
            self.wakeup.set()
            await asyncio.wait_for(self.idle.wait(), seconds)


def projection_for(stores: Stores) -> DeferredProjection:
    projector = getattr(stores, "_messaging_projection", None)
    if projector is None:
        projector = DeferredProjection(stores)
        stores._messaging_projection = projector  # type: ignore[attr-defined]
    return projector
