"""Bulk loading into PostgreSQL with COPY, for `nubo db import` (:mod:`nubo.importing`).

The domain hands over plain tuples per table; this module owns the COPY statements, their column types and
the look-ups a validating loader needs (which ids, names and pairs already exist). Everything runs on one
connection inside one transaction (:func:`bulk_session`): a COPY that fails rolls back every table, so an
import leaves either all of its rows or none.

COPY goes through psycopg's copy API in binary format with the column types set once per table
(`Copy.set_types`): no text formatting and parsing of every value on either side.

Imported rows get no outbox entries: their Mongo copies are written after the commit in bulk
(:func:`copy_recent_to_mongo`), and a copy that is missing is only a cache miss (reads fall through to
PostgreSQL and fill the tiers).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection, sql
from psycopg.rows import DictRow

from nubo.stores.entities import ENTITIES
from nubo.stores.postgres import pg_read

if TYPE_CHECKING:
    from nubo.stores import Stores


@dataclass(frozen=True)
class CopyTable:
    """A table loaded by COPY: its columns in tuple order and their PostgreSQL types."""

    entity: str
    columns: tuple[str, ...]
    types: tuple[str, ...]

    @property
    def table(self) -> str:
        return ENTITIES[self.entity].table

    def statement(self) -> sql.Composed:
        return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            ENTITIES[self.entity].table_sql, sql.SQL(", ").join(map(sql.Identifier, self.columns))
        )


USERS = CopyTable(
    "users",
    (
        "id",
        "username",
        "email",
        "email_verified",
        "password_hash",
        "first_name",
        "last_name",
        "bio",
        "state",
        "created_at",
        "updated_at",
    ),
    ("uuid", "text", "text", "bool", "text", "text", "text", "text", "int2", "timestamptz", "timestamptz"),
)
FOLLOWS = CopyTable(
    "follows",
    ("id", "follower_id", "followed_id", "state", "created_at"),
    ("uuid", "uuid", "uuid", "int2", "timestamptz"),
)
POSTS = CopyTable(
    "posts",
    ("id", "user_id", "content", "meta", "visibility", "location", "created_at", "updated_at"),
    ("uuid", "uuid", "text", "jsonb", "int2", "text", "timestamptz", "timestamptz"),
)
COMMENTS = CopyTable(
    "comments",
    ("id", "post_id", "user_id", "content", "created_at", "updated_at"),
    ("uuid", "uuid", "uuid", "text", "timestamptz", "timestamptz"),
)
LIKES = CopyTable(
    "likes",
    ("id", "target_type", "target_id", "user_id", "created_at"),
    ("uuid", "int2", "uuid", "uuid", "timestamptz"),
)
COPY_TABLES: dict[str, CopyTable] = {t.entity: t for t in (USERS, FOLLOWS, POSTS, COMMENTS, LIKES)}


class BulkSession:
    """Two connections: `conn` holds the one transaction the COPYs run in (committed only when the block ends
    cleanly); `reads` answers the look-ups meanwhile (committed rows), so checking the next kind of rows
    overlaps with the COPY of the previous one."""

    def __init__(self, conn: AsyncConnection[DictRow], reads: AsyncConnection[DictRow]) -> None:
        self.conn = conn
        self.reads = reads

    async def copy(
        self, table: CopyTable, rows: Iterable[Sequence[Any]], on_rows: Callable[[int], None] | None = None
    ) -> int:
        """COPY `rows` (tuples in `table.columns` order) into the table; `on_rows(n)` every 5,000 rows."""
        count = 0
        async with self.conn.cursor() as cur, cur.copy(table.statement()) as copy:
            copy.set_types(list(table.types))
            for row in rows:
                await copy.write_row(row)
                count += 1
                if on_rows is not None and count % 5000 == 0:
                    on_rows(5000)
        if on_rows is not None:
            on_rows(count % 5000)
        return count

    async def existing_ids(self, entity: str, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of `ids` are rows of the entity's table already."""
        if not ids:
            return set()
        query = sql.SQL("SELECT id FROM {} WHERE id = ANY(%s)").format(ENTITIES[entity].table_sql)
        rows = await (await self.reads.execute(query, (list(ids),))).fetchall()
        return {row["id"] for row in rows}

    async def existing_user_names(self, usernames: Sequence[str], emails: Sequence[str]) -> tuple[set[str], set[str]]:
        """Which lower-cased usernames and e-mail addresses are taken already."""
        names = await (
            await self.reads.execute(
                "SELECT lower(username) AS v FROM auth.users WHERE lower(username) = ANY(%s)", (list(usernames),)
            )
        ).fetchall()
        mails = await (
            await self.reads.execute(
                "SELECT lower(email) AS v FROM auth.users WHERE lower(email) = ANY(%s)", (list(emails),)
            )
        ).fetchall()
        return {row["v"] for row in names}, {row["v"] for row in mails}

    async def existing_follows(self, pairs: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> set[tuple[uuid.UUID, uuid.UUID]]:
        """Which (follower, followed) pairs exist already."""
        if not pairs:
            return set()
        rows = await (
            await self.reads.execute(
                "SELECT f.follower_id, f.followed_id FROM auth.follows f "
                "JOIN unnest(%s::uuid[], %s::uuid[]) AS t(a, b) ON f.follower_id = t.a AND f.followed_id = t.b",
                ([a for a, _ in pairs], [b for _, b in pairs]),
            )
        ).fetchall()
        return {(row["follower_id"], row["followed_id"]) for row in rows}

    async def existing_likes(
        self, triples: Sequence[tuple[int, uuid.UUID, uuid.UUID]]
    ) -> set[tuple[int, uuid.UUID, uuid.UUID]]:
        """Which (target type, target id, user id) likes exist already."""
        if not triples:
            return set()
        rows = await (
            await self.reads.execute(
                "SELECT l.target_type, l.target_id, l.user_id FROM content.likes l "
                "JOIN unnest(%s::int2[], %s::uuid[], %s::uuid[]) AS t(k, g, u) "
                "ON l.target_type = t.k AND l.target_id = t.g AND l.user_id = t.u",
                ([k for k, _, _ in triples], [g for _, g, _ in triples], [u for _, _, u in triples]),
            )
        ).fetchall()
        return {(row["target_type"], row["target_id"], row["user_id"]) for row in rows}


@asynccontextmanager
async def bulk_session(stores: Stores) -> AsyncIterator[BulkSession]:
    """A :class:`BulkSession` on two pooled connections; its transaction commits when the block ends without an
    exception and rolls back otherwise (nothing of the import stays)."""
    async with pg_read(stores) as reads, stores.pg.connection() as conn, conn.transaction():
        yield BulkSession(conn, reads)


async def table_counts(stores: Stores) -> dict[str, int]:
    """Rows per imported table (exact counts: for tests, benchmarks and the import report)."""
    counts: dict[str, int] = {}
    async with stores.pg.connection() as conn:
        for name, table in COPY_TABLES.items():
            query = sql.SQL("SELECT count(*) AS n FROM {}").format(ENTITIES[table.entity].table_sql)
            row = await (await conn.execute(query)).fetchone()
            counts[name] = int(row["n"]) if row else 0
    return counts


async def copy_recent_to_mongo(stores: Stores, entity: str, since: datetime, ids: Sequence[uuid.UUID]) -> int:
    """Write the Mongo copies of those `ids` created at or after `since` (the 30-day copies), read back from
    PostgreSQL in chunks and inserted unordered. Returns how many rows were copied; a Mongo failure is
    recorded with the tiered store (reads then fall through to PostgreSQL) and stops the copy."""
    copied = 0
    table = ENTITIES[entity].table_sql
    query = sql.SQL("SELECT * FROM {} WHERE id = ANY(%s) AND created_at >= %s").format(table)
    for start in range(0, len(ids), 2000):
        chunk = list(ids[start : start + 2000])
        async with stores.pg.connection() as conn:
            rows = await (await conn.execute(query, (chunk, since))).fetchall()
        if rows and not await stores.tiered.copy_to_mongo(entity, [ENTITIES[entity].row(r) for r in rows]):
            break
        copied += len(rows)
    return copied
