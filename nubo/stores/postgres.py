"""PostgreSQL, the source of truth: the async connection pool every write commits through."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, LiteralString

from psycopg import AsyncConnection, sql
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

PgPool = AsyncConnectionPool[AsyncConnection[DictRow]]


def sql_text(text: LiteralString) -> sql.SQL:
    """A fixed piece of SQL as psycopg composes it (e.g. the condition of `Transaction.delete_where`), for
    domain modules, which do not import psycopg."""
    return sql.SQL(text)


def jsonb(value: Any) -> Jsonb:
    """`value` sent as a JSONB parameter (a plain dict or list would be refused by the driver)."""
    return Jsonb(value)


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
