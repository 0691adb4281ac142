"""PostgreSQL, the source of truth: the async connection pool every write commits through."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

PgPool = AsyncConnectionPool[AsyncConnection[DictRow]]


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


async def ping(pool: PgPool) -> dict[str, Any]:
    async with pool.connection(timeout=2.0) as conn:
        row = await (await conn.execute("SELECT current_setting('server_version') AS version")).fetchone()
    return {"version": row["version"] if row else None}
