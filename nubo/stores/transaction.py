"""One PostgreSQL transaction and what follows its commit (:func:`transaction`, :class:`Transaction`).

After the commit, in this order: derived values of the written rows' tags are invalidated, the rows are
handed to a :class:`~nubo.stores.projection.Projector` (which writes their Mongo and Redis copies; the outbox
rows written in the same commit let the outbox worker repair what it could not), then the callbacks that the
domain registered inside the transaction run (:meth:`Transaction.on_commit`, :meth:`Transaction.emit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection, sql
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from nubo.ids import new_id
from nubo.logs import get_logger
from nubo.stores.derived import entity_has_tags, tags_of
from nubo.stores.entities import ENTITIES, REREAD, Entity, Row
from nubo.stores.event_outbox import EventRelay, PendingEvent, write_events
from nubo.stores.events import to_json

if TYPE_CHECKING:
    from nubo.stores import Stores
    from nubo.stores.events import Event, EventBus
    from nubo.stores.projection import Projector

log = get_logger(__name__)

AfterCommit = Callable[[], Awaitable[object] | object]
"""A side effect registered inside a transaction, run after its commit."""

CHECKOUT_SECONDS = 1.0  # a write waits at most this long for a pooled connection (then: 503)
WAIT_PROJECTION_SECONDS = 2.0  # a writer that waits for its copies waits at most this long (then: the outbox)


@asynccontextmanager
async def transaction(
    stores: Stores,
    *,
    projector: Projector | None = None,
    wait: bool = True,
    reread: bool = False,
    one_statement: bool = False,
) -> AsyncIterator[Transaction]:
    """A PostgreSQL transaction; after its commit, its rows are projected and its callbacks run.

    `projector`: which scheduler projects the rows (default: the tiered store's, ``stores.projector``).
    `wait`: return only once the copies are written (bounded by :data:`WAIT_PROJECTION_SECONDS` for
    non-default projectors; the outbox worker finishes the job if a store is slow or down). `reread`: project
    the rows' state at flush time rather than their committed state (concurrent writes to the same rows finish
    in any order; the newest state wins). `one_statement`:
    the block runs exactly one statement, which commits by itself (autocommit, one round trip); that statement
    writes its own outbox rows and event rows (see ``written`` in :meth:`Transaction.emit`).
    """
    stores.require("postgres")
    if one_statement:
        async with stores.pg.connection(timeout=CHECKOUT_SECONDS) as conn, _autocommit(conn):
            tx = Transaction(conn, stores.events, stores.relay)
            yield tx
            if tx.touched or any(not event.written for event in tx.pending_events):
                raise RuntimeError("a one-statement transaction writes its outbox and event rows itself")
    else:
        async with stores.pg.connection(timeout=CHECKOUT_SECONDS) as conn, conn.transaction():
            tx = Transaction(conn, stores.events, stores.relay)
            yield tx
            await tx.record_outbox()
            if tx.pending_events:
                await write_events(conn, tx.pending_events)
    if tx.pending_events:
        stores.relay.check_fault(tx.pending_events)
    await stores.derived.invalidate(tx.tags)
    if tx.touched:
        await _project(tx, projector or stores.projector, wait=wait, reread=reread, bounded=projector is not None)
    await tx.run_after_commit(stores.count_failure)


@asynccontextmanager
async def _autocommit(conn: AsyncConnection[DictRow]) -> AsyncIterator[None]:
    """Autocommit for the block (a client-side flag, no round trip), put back before the connection returns to
    the pool; a connection left mid-query (cancelled) is discarded by the pool anyway."""
    await conn.set_autocommit(True)
    try:
        yield
    finally:
        if conn.info.transaction_status == TransactionStatus.IDLE:
            await conn.set_autocommit(False)


async def _project(tx: Transaction, projector: Projector, *, wait: bool, reread: bool, bounded: bool) -> None:
    done = projector.defer(tx, urgent=wait, reread=reread)
    if not wait:
        return
    if not bounded:
        await done  # the request answers once its copies are written (or failed)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(done), WAIT_PROJECTION_SECONDS)


_INSERT_SQL: dict[tuple[str, tuple[str, ...], bool], str] = {}
_OUTBOX_ID = "_nubo_outbox_id"  # the extra column of an INSERT's result: its outbox entry's id


class Transaction:
    """Writes inside one PostgreSQL transaction, and what must happen once it commits.

    Rows written through it are recorded in the outbox (same commit) and projected to Mongo and Redis after
    the commit; derived values of their tags are invalidated. Domain code registers any other side effect
    (a realtime event, a fan-out, a counter in Redis) with :meth:`on_commit` or :meth:`emit` *inside* the
    transaction: it runs only after the commit, never after a rollback, and a failing callback is logged and
    counted, never undoing the commit (the way Zulip's ``send_event_on_commit`` works). Events go through
    :meth:`emit` so that a durable event outbox can replace the direct publish without touching callers.
    """

    def __init__(
        self, conn: AsyncConnection[DictRow], events: EventBus | None = None, relay: EventRelay | None = None
    ) -> None:
        self.conn = conn
        self.events = events
        self.relay = relay
        self.pending_events: list[PendingEvent] = []  # written to the event outbox just before the commit
        self.after_commit: list[AfterCommit] = []
        self.touched: dict[str, dict[uuid.UUID, Row | None]] = {}
        self.outbox_ids: list[int] = []
        self.tags: set[str] = set()  # derived values this transaction invalidates (nubo.stores.derived)
        self._recorded: set[tuple[str, uuid.UUID]] = set()  # rows whose outbox entry is already written

    def _adapt(self, entity: Entity, values: Mapping[str, Any]) -> dict[str, Any]:
        return {k: Jsonb(v) if k in entity.json_columns and v is not None else v for k, v in values.items()}

    def _insert_sql(self, entity: Entity, columns: tuple[str, ...], do_nothing: bool) -> str:
        """The INSERT statement for these columns, composed once per shape (composing costs ~100 us)."""
        key = (entity.name, columns, do_nothing)
        query = _INSERT_SQL.get(key)
        if query is None:
            # The outbox entry is written by the same statement (a data-modifying CTE): one round trip less
            # per created row than a separate outbox INSERT, in the same transaction all the same.
            query = _INSERT_SQL[key] = (
                sql.SQL(
                    "WITH r AS (INSERT INTO {} ({}) VALUES ({}){} RETURNING *), "
                    "o AS (INSERT INTO logic.outbox (collection, entity_id, op) SELECT {}, id, 'upsert' FROM r "
                    "RETURNING id) SELECT r.*, (SELECT o.id FROM o) AS {} FROM r"
                )
                .format(
                    entity.table_sql,
                    sql.SQL(", ").join(map(sql.Identifier, columns)),
                    sql.SQL(", ").join(sql.Placeholder() * len(columns)),
                    sql.SQL(" ON CONFLICT DO NOTHING") if do_nothing else sql.SQL(""),
                    sql.Literal(entity.name),
                    sql.Identifier(_OUTBOX_ID),
                )
                .as_string(self.conn)
            )
        return query

    def touch(self, entity_name: str, entity_id: uuid.UUID, row: Row | None = None) -> None:
        """Mark a row changed by custom SQL; `row=None` means "re-read it from PostgreSQL to project"
        (not for entities that feed derived values: their tags come from the row)."""
        ENTITIES[entity_name]
        if row is None and entity_has_tags(entity_name):
            raise ValueError(f"touch({entity_name!r}) needs the row: its tags are computed from it")
        self.touched.setdefault(entity_name, {})[entity_id] = REREAD if row is None else row
        if row is not None:
            self.tags.update(tags_of(entity_name, row))

    def on_commit(self, callback: AfterCommit) -> None:
        """Run `callback` (a function, sync or async, taking nothing) after the commit, in registration
        order; never if the transaction rolls back."""
        self.after_commit.append(callback)

    def emit(
        self,
        recipients: Iterable[uuid.UUID],
        event: Event,
        *,
        key: uuid.UUID | None = None,
        before: Callable[[], Awaitable[Any]] | None = None,
        written: bool = False,
    ) -> None:
        """Publish a realtime event to `recipients` once this transaction has committed.

        The event is written to the event outbox in this transaction (:mod:`nubo.stores.event_outbox`), so it
        is published at least once even if this process dies right after the commit. `key`: the event's
        identity (default: a new id), e.g. the id of the row it announces, so that a retried request can make
        sure it went out. `before`: a Redis write issued in the same round trip as the publish. `written`: the
        caller's own statement wrote the event row (id `key`) in this transaction (a one-statement send);
        only its publication is registered here."""
        relay = self.relay
        if relay is None:
            raise RuntimeError("this transaction has no event relay (open it with nubo.stores.transaction)")
        body = to_json(event)
        if not body.startswith("{") or body == "{}":
            raise ValueError("an event must be a non-empty JSON object")
        if written and key is None:
            raise ValueError("an event written by the caller's statement needs its key")
        pending = PendingEvent(key or new_id(), list(dict.fromkeys(recipients)), body, before, written)
        self.pending_events.append(pending)
        self.on_commit(lambda: relay.publish_committed(pending))

    async def run_after_commit(self, count_failure: Callable[[str], None]) -> None:
        """Run the registered callbacks (the caller has committed). One that fails is logged and counted as
        a failure of ``after_commit``; the others still run."""
        callbacks, self.after_commit = self.after_commit, []
        for callback in callbacks:
            try:
                result = callback()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                count_failure("after_commit")
                log.warning(
                    "after_commit_failed",
                    extra={
                        "callback": getattr(callback, "__qualname__", repr(callback)),
                        "error": f"{type(exc).__name__}: {exc}"[:200],
                    },
                )

    def tag(self, *tags: str) -> None:
        """Invalidate derived values of these tags after the commit (for changes made by custom SQL to rows
        that are not entities, e.g. blocks)."""
        self.tags.update(tags)

    async def insert(self, entity_name: str, values: Mapping[str, Any], *, on_conflict_do_nothing: bool = False) -> Row:
        entity = ENTITIES[entity_name]
        adapted = self._adapt(entity, values)
        query = self._insert_sql(entity, tuple(adapted), on_conflict_do_nothing)
        row = await (await self.conn.execute(query, list(adapted.values()))).fetchone()
        if row is None:
            raise LookupError("insert skipped by ON CONFLICT")
        row = dict(row)
        self.outbox_ids.append(row.pop(_OUTBOX_ID))
        result = entity.row(row)
        self.touch(entity_name, result["id"], result)
        self._recorded.add((entity_name, result["id"]))
        return result

    async def update(self, entity_name: str, entity_id: uuid.UUID, changes: Mapping[str, Any]) -> Row | None:
        entity = ENTITIES[entity_name]
        adapted = self._adapt(entity, changes)
        if not adapted:
            row = await (
                await self.conn.execute(
                    sql.SQL("SELECT * FROM {} WHERE id = %s").format(entity.table_sql), (entity_id,)
                )
            ).fetchone()
            return entity.row(row) if row else None
        query = sql.SQL("UPDATE {} SET {} WHERE id = {} RETURNING *").format(
            entity.table_sql,
            sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder()) for k in adapted),
            sql.Placeholder(),
        )
        row = await (await self.conn.execute(query, [*adapted.values(), entity_id])).fetchone()
        if row is None:
            return None
        result = entity.row(row)
        self.touch(entity_name, entity_id, result)
        return result

    async def delete(self, entity_name: str, entity_id: uuid.UUID) -> Row | None:
        rows = await self.delete_where(entity_name, sql.SQL("id = %s"), (entity_id,))
        return rows[0] if rows else None

    async def delete_where(self, entity_name: str, where: sql.Composable, params: Sequence[Any]) -> list[Row]:
        entity = ENTITIES[entity_name]
        query = sql.SQL("DELETE FROM {} WHERE {} RETURNING *").format(entity.table_sql, where)
        rows = [entity.row(r) for r in await (await self.conn.execute(query, params)).fetchall()]
        self.mark_deleted(entity_name, rows)
        return rows

    def mark_deleted(self, entity_name: str, rows: Sequence[Row]) -> None:
        """Rows deleted by custom SQL (each with its `id`): their copies are deleted after the commit."""
        for row in rows:
            self.touched.setdefault(entity_name, {})[row["id"]] = None
            self.tags.update(tags_of(entity_name, row))

    async def record_outbox(self) -> None:
        """Record every touched row in the outbox, in this transaction, before it commits."""
        pairs = [
            (name, entity_id)
            for name, touched in self.touched.items()
            for entity_id in touched
            if (name, entity_id) not in self._recorded
        ]
        if not pairs:
            return
        async with self.conn.cursor() as cur:
            await cur.execute(
                "INSERT INTO logic.outbox (collection, entity_id, op) "
                "SELECT c, e, 'upsert' FROM unnest(%s::text[], %s::uuid[]) AS t(c, e) RETURNING id",
                ([p[0] for p in pairs], [p[1] for p in pairs]),
            )
            self.outbox_ids += [row["id"] for row in await cur.fetchall()]
