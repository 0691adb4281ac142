"""The one tiered read/write path (docs/architecture.md §1): PostgreSQL is the truth, Mongo `*_recent` and
Redis are copies.

Reads go Redis -> Mongo -> PostgreSQL and fill the upper tiers on a miss. Writes run in
:mod:`nubo.stores.transaction`, which records each touched row in `logic.outbox`; after the commit a
:class:`~nubo.stores.projection.Projector` has :meth:`TieredStore.project` write the rows' Mongo and Redis
copies. When a projection fails (a store is down) the request still succeeds: the failure is logged and
counted, and the outbox worker (:mod:`nubo.stores.outbox`) re-projects the row's current PostgreSQL state
later. Projections are idempotent upserts/deletes, so running one twice is harmless.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg import sql
from pymongo import ReplaceOne, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, PyMongoError
from redis.exceptions import RedisError

from nubo.logs import get_logger
from nubo.metrics import Metrics
from nubo.stores.cache.collection import CacheCollection, RedisCache
from nubo.stores.cache.schema import CacheError
from nubo.stores.entities import ENTITIES, REREAD, Entity, Row, from_document, normalize_row, to_document
from nubo.stores.mongo import MongoDoc, server_info
from nubo.stores.near import MISSING, NearCache
from nubo.stores.postgres import PgPool, pg_read

log = get_logger(__name__)

DUPLICATE_KEY = 11000
USE_BATCH = 4096  # near-copy uses reported to the cache's usage order per batch (distinct members)...
USE_REPORT_SECONDS = 5.0  # ...or at least this often
TIER_RETRY_SECONDS = 1.0  # after a failure, skip that tier this long instead of waiting on it per request


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

    def __init__(
        self,
        pg: PgPool,
        mongo: AsyncDatabase[MongoDoc],
        cache: RedisCache,
        near: NearCache,
        count_failure: Callable[[str], None],
        metrics: Metrics,
    ) -> None:
        self.pg = pg
        self.reads = metrics.tier_reads
        self.mongo = mongo
        self.cache = cache
        self.near = near
        self.count_failure = count_failure
        self.health = _TierHealth()
        self._uses: set[str] = set()  # cache members served from near copies, not yet reported
        self._uses_due = 0.0
        self._background: set[asyncio.Task[None]] = set()
        self._replace_by_delete: bool | None = None  # see _replace_documents; known after the first replacement

    # ---- reads -------------------------------------------------------------------------------------------

    def _cache(self, entity: Entity) -> CacheCollection:
        return self.cache.collection(entity.cache_collection)

    async def get(self, entity_name: str, entity_id: uuid.UUID) -> Row | None:
        """One row by id: Redis, else Mongo (refreshing `last_use`), else PostgreSQL; fills the tiers
        above."""
        entity = ENTITIES[entity_name]
        row = await self._from_redis(entity, entity_id)
        self._count(entity_name, "redis", row is not None)
        if row is not None:
            return row
        row = await self._from_mongo(entity, entity_id)
        self._count(entity_name, "mongo", row is not None)
        if row is not None:
            await self._to_redis(entity, [row])
            return row
        row = await self._from_postgres(entity, entity_id)
        self._count(entity_name, "postgres", row is not None)
        if row is not None:
            await self._to_mongo(entity, [row], fill=True)
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
        self._count(entity_name, "redis", len(found), len(missing))
        if missing:
            from_mongo = await self._many_from_mongo(entity, missing)
            await self._to_redis(entity, from_mongo)
            found.update((row["id"], row) for row in from_mongo)
            self._count(entity_name, "mongo", len(from_mongo), len(missing) - len(from_mongo))
            missing = [i for i in missing if i not in found]
        if missing:
            from_pg = await self._many_from_postgres(entity, missing)
            self._count(entity_name, "postgres", len(from_pg), len(missing) - len(from_pg))
            await self._to_mongo(entity, from_pg, fill=True)
            await self._to_redis(entity, from_pg)
            found.update((row["id"], row) for row in from_pg)
        return [found[i] for i in wanted if i in found]

    def _count(self, entity: str, tier: str, hits: int, misses: int | None = None) -> None:
        """Count reads of one tier (`nubo_tier_reads_total`): `hits` found, `misses` not (default: the
        other outcome of a single read, given `hits` as a bool)."""
        if misses is None:
            hits, misses = int(bool(hits)), int(not hits)
        if hits:
            self.reads.labels(entity, tier, "hit").inc(hits)
        if misses:
            self.reads.labels(entity, tier, "miss").inc(misses)

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
        near = self.near
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
            await self.cache.touch(members)
        except (RedisError, OSError) as exc:
            self.count_failure("redis")
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
            doc = await self.mongo[entity.mongo_collection].find_one_and_update(
                {"_id": entity_id}, {"$set": {"last_use": datetime.now(UTC)}}, return_document=ReturnDocument.AFTER
            )
        except PyMongoError as exc:
            self._tier_failed("mongo", "read", entity, exc)
            return None
        return entity.row(from_document(doc)) if doc is not None else None

    async def _many_from_mongo(self, entity: Entity, ids: list[uuid.UUID]) -> list[Row]:
        if not self.health.available("mongo"):
            return []
        collection = self.mongo[entity.mongo_collection]
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
        async with pg_read(self) as conn:
            row = await (await conn.execute(query, (entity_id,))).fetchone()
        return entity.row(row) if row is not None else None

    async def _many_from_postgres(self, entity: Entity, ids: list[uuid.UUID]) -> list[Row]:
        query = sql.SQL("SELECT * FROM {} WHERE id = ANY(%s)").format(entity.table_sql)
        async with pg_read(self) as conn:
            rows = await (await conn.execute(query, (ids,))).fetchall()
        return [entity.row(row) for row in rows]

    # ---- projections (idempotent) -----------------------------------------------------------------------

    async def _to_mongo(self, entity: Entity, rows: Sequence[Row], *, fill: bool = False) -> bool:
        """Write the Mongo copies of `rows`. A `fill` (a read that missed Mongo) only inserts: a document that
        exists was written by a projection, which is authoritative. Replacing it meant deleting it first (see
        :meth:`_replace_documents`); a fill racing a projection then deleted the projection's copy, and when
        its own insert failed (FerretDB's reply to racing writes) the copy was gone while the projection had
        reported success and cleared its outbox entry: committed messages without a `messages_recent` copy."""
        if not rows:
            return True
        if not self.health.available("mongo"):
            return False
        now = datetime.now(UTC)
        docs = [to_document(row, now) for row in rows]
        collection = self.mongo[entity.mongo_collection]
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
                if not fill:
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
            server = await server_info(self.mongo)
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
                await self.mongo[entity.mongo_collection].delete_many({"_id": {"$in": list(ids)}})
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
            self.near.drop([cache.hash_key(str(entity_id)) for entity_id in ids])

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

    async def copy_to_mongo(self, entity_name: str, rows: Sequence[Row]) -> bool:
        """Write the Mongo copies of committed `rows` only (bulk loads: the Redis copies are filled by reads).
        False when Mongo failed (recorded like any tier failure)."""
        return await self._to_mongo(ENTITIES[entity_name], rows)

    def _tier_failed(self, tier: str, action: str, entity: Entity, exc: BaseException) -> None:
        self.tier_failed(tier, action, entity.name, exc)

    def tier_failed(self, tier: str, action: str, what: str, exc: BaseException) -> None:
        """Record a failed call to Mongo or Redis (skipped for a moment, counted, logged). Also for derived
        data kept outside the entities (e.g. the feed documents)."""
        self.health.failed(tier)
        self.count_failure(tier)
        log.warning(
            "tier_unavailable",
            extra={"tier": tier, "action": action, "entity": what, "error": f"{type(exc).__name__}: {exc}"[:200]},
        )

    # ---- writes ------------------------------------------------------------------------------------------
