"""PostgreSQL, the source of truth: the async connection pool every write commits through."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, LiteralString, Protocol, TypeAlias

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.errors import UniqueViolation as UniqueViolation
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb as Jsonb
from psycopg_pool import AsyncConnectionPool

# Re-exported for domain modules, which never import psycopg themselves: a pooled connection as they receive
# it, the base of every PostgreSQL error, a unique-constraint violation and the JSONB parameter wrapper.
PgConnection: TypeAlias = AsyncConnection[DictRow]
PgError = psycopg.Error

PgPool = AsyncConnectionPool[AsyncConnection[DictRow]]


class HasPool(Protocol):
    """Anything holding the pool (the stores, the tiered store)."""

    @property
    def pg(self) -> PgPool: ...


def sql_text(text: LiteralString) -> sql.SQL:
    """A fixed piece of SQL as psycopg composes it (e.g. the condition of `Transaction.delete_where`), for
    domain modules, which do not import psycopg."""
    return sql.SQL(text)


async def open_pool(url: str, *, min_size: int = 2, max_size: int = 20, wait: bool = False) -> PgPool:
    """Open a pool of dict-row connections. With `wait=False` the server may start while PostgreSQL is down."""
    pool: PgPool = AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        timeout=5.0,
        kwargs={"row_factory": dict_row},
        connection_class=AsyncConnection[DictRow],
        # No `check=` on checkout: it costs a round trip per query. Broken connections are discarded when
        # returned in a failed state, and `max_idle`/`reconnect_timeout` bound how long a stale one lives.
        max_idle=300.0,
        # A failed reconnection is retried with a growing backoff (1 s, 2 s, 4 s...): after a 5 s outage the
        # pool's next attempt could come seconds after PostgreSQL is back. Give up after 1 s instead; the next
        # request that needs a connection grows the pool again at once (requests are refused meanwhile by
        # the breaker, nubo.stores.breaker).
        reconnect_timeout=1.0,
        name="nubo-pg",
    )
    await pool.open(wait=wait, timeout=10.0)
    return pool


async def single_statement(
    conn: AsyncConnection[DictRow], query: LiteralString, params: Mapping[str, Any]
) -> DictRow | None:
    """Run one statement as its own transaction and return its first row: one round trip, where the pool's
    transactional connections take three (BEGIN, the statement, COMMIT). The statement commits when it
    returns; it must do all of its work itself (data-modifying CTEs)."""
    await conn.set_autocommit(True)
    try:
        return await (await conn.execute(query, params)).fetchone()
    finally:
        # Not idle: cancelled mid-query. The pool discards such a connection, so it never lends it out in
        # autocommit mode.
        if conn.info.transaction_status == TransactionStatus.IDLE:
            await conn.set_autocommit(False)


async def ping(pool: PgPool) -> dict[str, Any]:
    async with pool.connection(timeout=2.0) as conn:
        row = await (await conn.execute("SELECT current_setting('server_version') AS version")).fetchone()
    return {"version": row["version"] if row else None}


@asynccontextmanager
async def pg_read(holder: HasPool) -> AsyncIterator[PgConnection]:
    """A pooled connection in autocommit mode, for single-statement reads and writes.

    The pool's connections are not autocommit, so one query through `pool.connection()` costs three round
    trips (BEGIN, the query, COMMIT): two thirds of a read's PostgreSQL CPU on both sides. Autocommit is a
    client-side flag (no round trip); it is put back before the connection returns to the pool, so code
    relying on implicit transactions is unaffected. Not for several statements that must commit together.
    """
    async with holder.pg.connection() as conn:
        await conn.set_autocommit(True)
        try:
            yield conn
        finally:
            # A broken connection refuses the change; the pool discards it anyway.
            with contextlib.suppress(Exception):
                await conn.set_autocommit(False)
