"""The one tiered read/write path (DESIGN §2): PostgreSQL is the truth, Mongo `*_recent` and Redis are copies.

Reads go Redis -> Mongo -> PostgreSQL and fill the upper tiers on a miss. Writes run in one PostgreSQL
transaction that also records each touched row in `logic.outbox`; after the commit the row is projected to
Mongo and Redis. When a projection fails (a store is down) the request still succeeds: the failure is logged
and counted, and `drain_outbox` (run by every server) re-projects the row's current PostgreSQL state later.
Projections are idempotent upserts/deletes, so running one twice is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection, sql
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb
from pymongo import ReplaceOne, ReturnDocument
from pymongo.errors import BulkWriteError, PyMongoError
from redis.exceptions import RedisError

from nubo.logs import get_logger
from nubo.stores.cache.schema import CacheError
from nubo.stores.derived import entity_has_tags, tags_of
from nubo.stores.mongo import MongoDoc, server_info
from nubo.stores.near import MISSING

if TYPE_CHECKING:
    from nubo.stores import Stores
    from nubo.stores.cache.collection import CacheCollection
    from nubo.stores.projection import Projector

log = get_logger(__name__)

Row = dict[str, Any]


class _Reread:
    """Marks a touched row whose projection must re-read PostgreSQL (`Transaction.touch(..., row=None)`)."""


REREAD: Any = _Reread()
DUPLICATE_KEY = 11000
USE_BATCH = 4096  # near-copy uses reported to the cache's usage order per batch (distinct members)...
USE_REPORT_SECONDS = 5.0  # ...or at least this often
TIER_RETRY_SECONDS = 1.0  # after a failure, skip that tier this long instead of waiting on it per request


@dataclass(frozen=True)
class Entity:
    """A table mirrored in Mongo (`mongo_collection`) and Redis (`cache_collection`)."""

    name: str
    table: str
    mongo_collection: str
    cache_collection: str
    json_columns: frozenset[str] = frozenset()
    private_columns: frozenset[str] = frozenset()  # never leave PostgreSQL (credentials)
    near: bool = False  # hot rows read by id on most requests: copies kept in-process (nubo.stores.near)

    def row(self, raw: Mapping[str, Any]) -> Row:
        """The in-app row: normalized values, private columns left out, whichever tier it came from."""
        return {k: _normalize_value(v) for k, v in raw.items() if k not in self.private_columns}

    @property
    def table_sql(self) -> sql.Composed:
        schema, table = self.table.split(".")
        return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


ENTITIES: dict[str, Entity] = {
    entity.name: entity
    for entity in (
        Entity("users", "auth.users", "users_recent", "users", private_columns=frozenset({"password_hash"}), near=True),
        Entity(
            "user_settings",
            "auth.user_settings",
            "user_settings_recent",
            "user_settings",
            frozenset({"privacy", "notifications"}),
        ),
        Entity("follows", "auth.follows", "relations_recent", "relations"),
        Entity("posts", "content.posts", "posts_recent", "posts", frozenset({"meta"}), near=True),
        Entity("comments", "content.comments", "comments_recent", "comments"),
        Entity("likes", "content.likes", "likes_recent", "likes"),
        Entity("media", "content.media", "media_recent", "media"),
        Entity("conversations", "messaging.conversations_meta", "conversations_recent", "conversations_meta"),
        Entity(
            "conversation_members",
            "messaging.conversation_members",
            "conversation_members_recent",
            "conversation_members",
        ),
        Entity("messages", "messaging.message_index", "messages_recent", "messages", frozenset({"attachments"})),
    )
}


def normalize_row(row: Mapping[str, Any]) -> Row:
    """One in-app shape for a row whichever tier answered: dates as ISO strings, addresses as strings,
    datetimes aware and cut to milliseconds."""
    return {key: _normalize_value(value) for key, value in row.items()}


def _normalize_value(value: Any) -> Any:
    if isinstance(value, datetime):
        # BSON dates hold milliseconds: cut PostgreSQL's microseconds too, so every tier gives the same row.
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.replace(microsecond=aware.microsecond // 1000 * 1000)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, list):
        return [_normalize_value(item) for item in value]
    return value


@asynccontextmanager
async def pg_read(stores: Stores) -> AsyncIterator[AsyncConnection[DictRow]]:
    """A pooled connection in autocommit mode, for single-statement reads and writes.

    The pool's connections are not autocommit, so one query through `pool.connection()` costs three round
    trips (BEGIN, the query, COMMIT): two thirds of a read's PostgreSQL CPU on both sides. Autocommit is a
    client-side flag (no round trip); it is put back before the connection returns to the pool, so code
    relying on implicit transactions is unaffected. Not for several statements that must commit together.
    """
    async with stores.pg.connection() as conn:
        await conn.set_autocommit(True)
        try:
            yield conn
        finally:
            # A broken connection refuses the change; the pool discards it anyway.
            with contextlib.suppress(Exception):
                await conn.set_autocommit(False)


def to_document(row: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    doc = {("_id" if key == "id" else key): value for key, value in row.items()}
    doc["last_use"] = now
    return doc


def from_document(doc: Mapping[str, Any]) -> Row:
    row = {("id" if key == "_id" else key): value for key, value in doc.items() if key != "last_use"}
    return normalize_row(row)


@dataclass
class _TierHealth:
    """Skips a failing tier briefly so an outage costs one failed call per second, not one per request."""

    down_until: dict[str, float] = field(default_factory=dict)

    def available(self, tier: str) -> bool:
        return time.monotonic() >= self.down_until.get(tier, 0.0)

    def failed(self, tier: str) -> None:
        self.down_until[tier] = time.monotonic() + TIER_RETRY_SECONDS

    def succeeded(self, tier: str) -> None:
        self.down_until.pop(tier, None)


class TieredStore:
    """Reads and writes rows of :data:`ENTITIES` across PostgreSQL, Mongo and Redis."""

    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self.health = _TierHealth()
        self._projector: Projector | None = None
        self._uses: set[str] = set()  # cache members served from near copies, not yet reported
        self._uses_due = 0.0
        self._background: set[asyncio.Task[None]] = set()
        self._replace_by_delete: bool | None = None  # see _replace_documents; known after the first replacement

    # ---- reads -------------------------------------------------------------------------------------------

    def _cache(self, entity: Entity) -> CacheCollection:
        return self.stores.cache.collection(entity.cache_collection)

    async def get(self, entity_name: str, entity_id: uuid.UUID) -> Row | None:
        """One row by id: Redis, else Mongo (refreshing `last_use`), else PostgreSQL; fills the tiers
        above."""
        entity = ENTITIES[entity_name]
        row = await self._from_redis(entity, entity_id)
        if row is not None:
            return row
        row = await self._from_mongo(entity, entity_id)
        if row is not None:
            await self._to_redis(entity, [row])
            return row
        row = await self._from_postgres(entity, entity_id)
        if row is not None:
            await self._to_mongo(entity, [row])
            await self._to_redis(entity, [row])
        return row

    async def get_many(self, entity_name: str, ids: Sequence[uuid.UUID]) -> list[Row]:
        """Rows for `ids` in the given order (missing ones left out), each tier asked once for what is
        left."""
        entity = ENTITIES[entity_name]
        found: dict[uuid.UUID, Row] = {}
        wanted = list(dict.fromkeys(ids))
        for row in await self._many_from_redis(entity, wanted):
            found[row["id"]] = row
        missing = [i for i in wanted if i not in found]
        if missing:
            from_mongo = await self._many_from_mongo(entity, missing)
            await self._to_redis(entity, from_mongo)
            found.update((row["id"], row) for row in from_mongo)
            missing = [i for i in missing if i not in found]
        if missing:
            from_pg = await self._many_from_postgres(entity, missing)
            await self._to_mongo(entity, from_pg)
            await self._to_redis(entity, from_pg)
            found.update((row["id"], row) for row in from_pg)
        return [found[i] for i in wanted if i in found]

    async def _from_redis(self, entity: Entity, entity_id: uuid.UUID) -> Row | None:
        if not self.health.available("redis"):
            return None
        cache = self._cache(entity)
        try:
            if entity.near:
                return await self._near_row(cache, entity_id)
            row = await cache.get_by_id(entity_id)
        except (RedisError, OSError) as exc:
            self._tier_failed("redis", "read", entity, exc)
            return None
        return normalize_row(row) if row is not None else None

    async def _near_row(self, cache: CacheCollection, entity_id: uuid.UUID) -> Row | None:
        """A hot row from this process's copy (its use reported to Redis in batches), else from Redis."""
        id_text = str(entity_id)
        key = cache.hash_key(id_text)
        near = self.stores.near
        row = near.get_cached(key)
        if row is MISSING:
            row = await near.get(key, lambda: self._read_cached(cache, entity_id))
        else:
            self._note_use(cache.member(id_text))
        return dict(row) if row is not None else None  # a copy: the held row is shared

    @staticmethod
    async def _read_cached(cache: CacheCollection, entity_id: uuid.UUID) -> Row | None:
        row = await cache.get_by_id(entity_id)
        return normalize_row(row) if row is not None else None

    def _note_use(self, member: str) -> None:
        """Rows served from near copies are still in use: tell the cache's shared usage order, in batches
        (the governor evicts the least recently used elements)."""
        self._uses.add(member)
        now = time.monotonic()
        if len(self._uses) < USE_BATCH and now < self._uses_due:
            return
        members, self._uses, self._uses_due = list(self._uses), set(), now + USE_REPORT_SECONDS
        task = asyncio.create_task(self._report_uses(members))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _report_uses(self, members: list[str]) -> None:
        try:
            await self.stores.cache.touch(members)
        except (RedisError, OSError) as exc:
            self.stores.count_failure("redis")
            log.warning("cache_use_report_failed", extra={"members": len(members), "error": type(exc).__name__})

    async def _many_from_redis(self, entity: Entity, ids: list[uuid.UUID]) -> list[Row]:
        if not ids or not self.health.available("redis"):
            return []
        try:
            rows = await self._cache(entity).get_many_by_id(ids)
        except (RedisError, OSError) as exc:
            self._tier_failed("redis", "read", entity, exc)
            return []
        return [normalize_row(row) for row in rows]

    async def _from_mongo(self, entity: Entity, entity_id: uuid.UUID) -> Row | None:
        if not self.health.available("mongo"):
            return None
        try:
            doc = await self.stores.mongo[entity.mongo_collection].find_one_and_update(
                {"_id": entity_id}, {"$set": {"last_use": datetime.now(UTC)}}, return_document=ReturnDocument.AFTER
            )
        except PyMongoError as exc:
            self._tier_failed("mongo", "read", entity, exc)
            return None
        return entity.row(from_document(doc)) if doc is not None else None

    async def _many_from_mongo(self, entity: Entity, ids: list[uuid.UUID]) -> list[Row]:
        if not self.health.available("mongo"):
            return []
        collection = self.stores.mongo[entity.mongo_collection]
        try:
            docs = await collection.find({"_id": {"$in": ids}}).to_list(None)
            if docs:
                await collection.update_many(
                    {"_id": {"$in": [d["_id"] for d in docs]}}, {"$set": {"last_use": datetime.now(UTC)}}
                )
        except PyMongoError as exc:
            self._tier_failed("mongo", "read", entity, exc)
            return []
        return [entity.row(from_document(doc)) for doc in docs]

    async def _from_postgres(self, entity: Entity, entity_id: uuid.UUID) -> Row | None:
        query = sql.SQL("SELECT * FROM {} WHERE id = %s").format(entity.table_sql)
        async with pg_read(self.stores) as conn:
            row = await (await conn.execute(query, (entity_id,))).fetchone()
        return entity.row(row) if row is not None else None

    async def _many_from_postgres(self, entity: Entity, ids: list[uuid.UUID]) -> list[Row]:
        query = sql.SQL("SELECT * FROM {} WHERE id = ANY(%s)").format(entity.table_sql)
        async with pg_read(self.stores) as conn:
            rows = await (await conn.execute(query, (ids,))).fetchall()
        return [entity.row(row) for row in rows]

    # ---- projections (idempotent) -----------------------------------------------------------------------

    async def _to_mongo(self, entity: Entity, rows: Sequence[Row]) -> bool:
        if not rows:
            return True
        if not self.health.available("mongo"):
            return False
        now = datetime.now(UTC)
        docs = [to_document(row, now) for row in rows]
        collection = self.stores.mongo[entity.mongo_collection]
        try:
            # Insert first, replace only what already exists: on FerretDB's SQLite backend an upsert by a UUID
            # `_id` that is not there yet scans the whole collection (~100 ms at a few thousand documents),
            # while an insert is an index probe. New rows are the common case (every create).
            try:
                await collection.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(error.get("code") != DUPLICATE_KEY for error in errors):
                    raise
                await self._replace_documents(collection, [docs[error["index"]] for error in errors])
        except (PyMongoError, KeyError) as exc:  # KeyError: FerretDB's reply to racing upserts lacks nModified
            self._tier_failed("mongo", "write", entity, exc)
            return False
        self.health.succeeded("mongo")
        return True

    async def _replace_documents(self, collection: Any, docs: list[MongoDoc]) -> None:
        """Replace existing documents. MongoDB: one ReplaceOne each (an `_id` index probe). FerretDB v1: an
        update or delete by a UUID `_id` scans the whole collection (measured: 1.9 ms per document at 100
        documents, 14 ms at 3,000; a find by `_id` is a probe), so one delete of them all (one scan), then an
        insert. A reader in between finds no copy and reads PostgreSQL, which is right anyway."""
        if self._replace_by_delete is None:
            server = await server_info(self.stores.mongo)
            self._replace_by_delete = server.scans_for_writes_by_id
            if self._replace_by_delete:
                log.info(
                    "mongo_replace_by_delete",
                    extra={"server": str(server), "why": "this server scans the collection for each write by _id"},
                )
        if not self._replace_by_delete:
            await collection.bulk_write(
                [ReplaceOne({"_id": doc["_id"]}, doc, upsert=True) for doc in docs], ordered=False
            )
            return
        await collection.delete_many({"_id": {"$in": [doc["_id"] for doc in docs]}})
        try:
            await collection.insert_many(docs, ordered=False)
        except BulkWriteError as exc:  # another writer put a copy back meanwhile: it copied the same rows
            if any(error.get("code") != DUPLICATE_KEY for error in exc.details.get("writeErrors", [])):
                raise

    async def _to_redis(self, entity: Entity, rows: Sequence[Row]) -> bool:
        if not rows:
            return True
        if not self.health.available("redis"):
            return False
        cache = self._cache(entity)
        try:
            await cache.set_many(rows)
        except (RedisError, OSError, CacheError) as exc:  # CacheError: schema out of step; the outbox retries
            self._tier_failed("redis", "write", entity, exc)
            return False
        finally:
            self._drop_near(entity, cache, [row["id"] for row in rows])
        self.health.succeeded("redis")
        return True

    async def _remove_from_copies(self, entity: Entity, ids: Sequence[uuid.UUID]) -> bool:
        mongo_ok = redis_ok = False
        if self.health.available("mongo"):
            try:
                await self.stores.mongo[entity.mongo_collection].delete_many({"_id": {"$in": list(ids)}})
                mongo_ok = True
            except PyMongoError as exc:
                self._tier_failed("mongo", "delete", entity, exc)
        if self.health.available("redis"):
            try:
                cache = self._cache(entity)
                for entity_id in ids:
                    await cache.delete_by_id(entity_id)
                redis_ok = True
            except (RedisError, OSError) as exc:
                self._tier_failed("redis", "delete", entity, exc)
            finally:
                self._drop_near(entity, self._cache(entity), ids)
        return mongo_ok and redis_ok

    def _drop_near(self, entity: Entity, cache: CacheCollection, ids: Iterable[Any]) -> None:
        """This process wrote these rows to Redis: its near copies go now (read-your-writes), the other
        processes' when Redis's invalidation reaches them."""
        if entity.near:
            self.stores.near.drop([cache.hash_key(str(entity_id)) for entity_id in ids])

    async def project(
        self, entity_name: str, ids: Sequence[uuid.UUID], rows: Mapping[uuid.UUID, Row | None] | None = None
    ) -> bool:
        """Make the Mongo and Redis copies of `ids` match PostgreSQL.

        `rows` gives the committed state of each id (None: deleted; REREAD: read it now); without `rows`
        every id is read from PostgreSQL now.
        """
        entity = ENTITIES[entity_name]
        rows = dict.fromkeys(ids, REREAD) if rows is None else rows
        reread = [i for i in ids if rows.get(i) is REREAD]
        present = {i: r for i, r in rows.items() if r is not None and r is not REREAD}
        if reread:
            present.update((row["id"], row) for row in await self._many_from_postgres(entity, reread))
        upserts = [present[i] for i in ids if i in present]
        gone = [i for i in ids if i not in present]
        # The two copies are independent: written concurrently, a projection waits for the slower one only.
        mongo_ok, redis_ok = await asyncio.gather(self._to_mongo(entity, upserts), self._to_redis(entity, upserts))
        ok = mongo_ok and redis_ok
        if gone:
            ok = await self._remove_from_copies(entity, gone) and ok
        return ok

    def _tier_failed(self, tier: str, action: str, entity: Entity, exc: BaseException) -> None:
        self.tier_failed(tier, action, entity.name, exc)

    def tier_failed(self, tier: str, action: str, what: str, exc: BaseException) -> None:
        """Record a failed call to Mongo or Redis (skipped for a moment, counted, logged). Also for derived
        data kept outside the entities (e.g. the feed documents)."""
        self.health.failed(tier)
        self.stores.count_failure(tier)
        log.warning(
            "tier_unavailable",
            extra={"tier": tier, "action": action, "entity": what, "error": f"{type(exc).__name__}: {exc}"[:200]},
        )

    # ---- writes ------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A PostgreSQL transaction; touched rows are projected to Mongo and Redis after it commits."""
        async with self.stores.pg.connection() as conn, conn.transaction():
            tx = Transaction(conn)
            yield tx
            await tx.record_outbox()
        await self.stores.derived.invalidate(tx.tags)
        if tx.touched:
            await self.projector.defer(tx)  # the request answers once its copies are written (or failed)

    @property
    def projector(self) -> Projector:
        """This store's projector (messaging writes have their own: `nubo.stores.projection.projection_for`)."""
        if self._projector is None:
            from nubo.stores.projection import Projector

            self._projector = Projector(self.stores, "tiered")
        return self._projector

    async def insert(self, entity_name: str, values: Mapping[str, Any]) -> Row:
        async with self.transaction() as tx:
            return await tx.insert(entity_name, values)

    async def update(self, entity_name: str, entity_id: uuid.UUID, changes: Mapping[str, Any]) -> Row | None:
        async with self.transaction() as tx:
            return await tx.update(entity_name, entity_id, changes)

    async def delete(self, entity_name: str, entity_id: uuid.UUID) -> Row | None:
        async with self.transaction() as tx:
            return await tx.delete(entity_name, entity_id)


_INSERT_SQL: dict[tuple[str, tuple[str, ...], bool], str] = {}
_OUTBOX_ID = "_nubo_outbox_id"  # the extra column of an INSERT's result: its outbox entry's id


class Transaction:
    """Writes inside one PostgreSQL transaction; remembers which rows to project after the commit."""

    def __init__(self, conn: AsyncConnection[DictRow]) -> None:
        self.conn = conn
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
        for row in rows:
            self.touched.setdefault(entity_name, {})[row["id"]] = None
            self.tags.update(tags_of(entity_name, row))
        return rows

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


# The worker leaves younger entries alone: their own request (or a deferred projection) is still on them.
OUTBOX_MIN_AGE_SECONDS = 10.0


async def drain_outbox(
    tiered: TieredStore, *, batch: int = 200, min_age_seconds: float = OUTBOX_MIN_AGE_SECONDS
) -> int:
    """Re-project rows whose post-commit projection did not complete; returns how many were repaired."""
    async with tiered.stores.pg.connection() as conn, conn.transaction():
        rows = await (
            await conn.execute(
                "SELECT id, collection, entity_id, attempts FROM logic.outbox "
                "WHERE next_try_at <= now() AND created_at <= now() - make_interval(secs => %s) "
                "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                (min_age_seconds, batch),
            )
        ).fetchall()
        if not rows:
            return 0
        by_entity: dict[str, list[uuid.UUID]] = {}
        for row in rows:
            by_entity.setdefault(row["collection"], []).append(row["entity_id"])
        failed = {
            name for name, ids in by_entity.items() if not await project_safely(tiered, name, list(dict.fromkeys(ids)))
        }
        done = [row["id"] for row in rows if row["collection"] not in failed]
        retry = [row["id"] for row in rows if row["collection"] in failed]
        if done:
            await conn.execute("DELETE FROM logic.outbox WHERE id = ANY(%s)", (done,))
        if retry:
            await conn.execute(
                "UPDATE logic.outbox SET attempts = attempts + 1, last_error = 'projection failed', "
                "next_try_at = now() + make_interval(secs => least(5, 0.5 * (attempts + 1))) "
                "WHERE id = ANY(%s)",
                (retry,),
            )
    if done:
        log.info("outbox_repaired", extra={"rows": len(done)})
    return len(done)


async def project_safely(
    tiered: TieredStore, name: str, ids: list[uuid.UUID], rows: Mapping[uuid.UUID, Row | None] | None = None
) -> bool:
    """`project`, with any error (a row a cache schema rejects, an unknown collection) counted as a failure of
    this collection only, so one bad row cannot roll back, and so block, the repair of every other."""
    try:
        return await tiered.project(name, ids, rows)
    except Exception as exc:
        log.warning(
            "outbox_projection_error", extra={"collection": name, "error": f"{type(exc).__name__}: {exc}"[:200]}
        )
        return False


async def run_outbox_worker(tiered: TieredStore, interval: float = 1.0) -> None:
    """Drain the outbox forever (one task per server process; SKIP LOCKED shares the work)."""
    while True:
        try:
            while await drain_outbox(tiered) > 0:
                pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # PostgreSQL itself down: keep trying, never crash the server
            log.warning("outbox_drain_failed", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})
        await asyncio.sleep(interval)


def ids_of(rows: Iterable[Row]) -> list[uuid.UUID]:
    return [row["id"] for row in rows]
