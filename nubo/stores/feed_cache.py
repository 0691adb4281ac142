"""The home-feed cache: one document per recently active user in Mongo `feed_cache`, and its hot copy in Redis.

The feed's rules (who sees what, fan-out policy, paging) live in :mod:`nubo.feed`; this module only keeps its
documents. A :class:`FeedDocument` is stored as:

- **Mongo** ``feed_cache``, `_id` = user id: ``{items: ["<post id hex><author id hex>", ...], authors: <hash
  of the followed set>, big: [author ids], checked_id: <uuid7 high-water mark>, checked_at: <epoch seconds>,
  floor: <oldest id the items are complete down to, or null>, last_use: <date>}``. One document per user is
  read by `_id` (the cheapest lookup on MongoDB and FerretDB alike). Items are 64-character strings, not
  sub-documents: FerretDB decodes a 600-item document 3x faster so. They are kept unsorted (FerretDB ignores
  `$push`'s `$sort`/`$slice`); writers only use `$addToSet` (idempotent: a retried fan-out adds nothing twice)
  and `$pullAll` for trimming. `last_use` is what `nubo db purge` ages out.
- **Redis** ``{p}feed:{user}:items`` (a set: SADD is as idempotent as `$addToSet`) and ``{p}feed:{user}:meta``
  (a hash of the other fields), read first and refilled from Mongo on a miss, like the tiered entities:
  reading a large document from FerretDB costs several ms of its CPU. A copy without its meta hash is ignored
  and replaced from Mongo on the next read; an idle user's copy expires, Mongo keeps it.

Every call is best effort: a failing Mongo or Redis is recorded with the tiered store (skipped for a moment,
counted, logged) and the feed falls back to PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pymongo import UpdateOne
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from nubo.stores.mongo import MongoDoc

if TYPE_CHECKING:
    from nubo.stores import Stores

COLLECTION = "feed_cache"
REDIS_TTL_SECONDS = 24 * 3600  # the Redis copy of an idle user's feed expires; Mongo keeps it
LAST_USE_REFRESH = timedelta(hours=1)  # how stale `last_use` may get before a check rewrites it

_background: set[asyncio.Task[None]] = set()


@dataclass
class FeedDocument:
    """One user's cached feed: unsorted items (64 hex characters each) and the bookkeeping of their checks."""

    user: uuid.UUID
    items: list[str]
    authors: str | None  # hash of the followed set the items were gathered for
    big: list[uuid.UUID] = field(default_factory=list)  # followed authors whose posts are pulled at read time
    checked_id: uuid.UUID | None = None  # posts up to this id have been merged in
    checked_at: float = 0.0  # when (epoch seconds) the document was last reconciled with PostgreSQL
    floor: uuid.UUID | None = None  # the items are complete down to this id (None: down to the first post)
    last_use: datetime | None = None  # None when read from Redis (which does not keep it)


class FeedCache:
    """Reads and writes the feed documents of one process's stores (Redis copy first, then Mongo)."""

    def __init__(self, stores: Stores) -> None:
        self.stores = stores

    @property
    def mongo_available(self) -> bool:
        """False for a moment after Mongo failed (the feed then reads PostgreSQL without building documents)."""
        return self.stores.tiered.health.available("mongo")

    # ---- reads -------------------------------------------------------------------------------------------

    async def load(self, user: uuid.UUID) -> FeedDocument | None:
        """The user's document: the Redis copy, else Mongo's (copied to Redis), else None."""
        doc = await self._hot_load(user)
        if doc is not None:
            return doc
        doc = await self._cold_load(user)
        if doc is not None:
            await self._hot_store(doc, replace=True)
        return doc

    async def _cold_load(self, user: uuid.UUID) -> FeedDocument | None:
        if not self.mongo_available:
            return None
        try:
            found: MongoDoc | None = await self.stores.mongo[COLLECTION].find_one({"_id": user})
        except PyMongoError as exc:
            self.stores.tiered.tier_failed("mongo", "read", "feed", exc)
            return None
        return _from_mongo(found) if found is not None else None

    async def _hot_load(self, user: uuid.UUID) -> FeedDocument | None:
        if not self.stores.tiered.health.available("redis"):
            return None
        items_key, meta_key = self._hot_keys(user)
        try:
            async with self.stores.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(meta_key)
                pipe.smembers(items_key)
                meta, items = await pipe.execute()
        except (RedisError, OSError) as exc:
            self.stores.tiered.tier_failed("redis", "read", "feed", exc)
            return None
        if not meta or "checked_at" not in meta:
            return None
        return FeedDocument(
            user=user,
            items=list(items),
            authors=meta.get("authors"),
            big=[uuid.UUID(b) for b in meta.get("big", "").split(",") if b],
            checked_id=_id_or_none(meta.get("checked_id")),
            checked_at=float(meta["checked_at"]),
            floor=_id_or_none(meta.get("floor")),
        )

    # ---- writes ------------------------------------------------------------------------------------------

    async def replace(self, doc: FeedDocument) -> None:
        """Store a freshly built document in Mongo (created when absent) and in Redis."""
        if self.mongo_available:
            try:
                await self.stores.mongo[COLLECTION].replace_one({"_id": doc.user}, _to_mongo(doc), upsert=True)
            except PyMongoError as exc:
                self.stores.tiered.tier_failed("mongo", "write", "feed", exc)
        await self._hot_store(doc, replace=True)

    async def record_check(self, doc: FeedDocument, new_items: Sequence[str]) -> None:
        """Store a reconciliation: `doc`'s check fields (`checked_id`, `checked_at`, `big`), the items it
        gained (already in `doc.items`) and a `last_use` refreshed when stale."""
        update: dict[str, Any] = {"$set": {"checked_id": doc.checked_id, "checked_at": doc.checked_at, "big": doc.big}}
        if new_items:
            update["$addToSet"] = {"items": {"$each": list(new_items)}}
        now = datetime.now(UTC)
        if doc.last_use is None or now - doc.last_use >= LAST_USE_REFRESH:
            update["$set"]["last_use"] = doc.last_use = now
        if new_items:
            await self._update(doc.user, update)
        else:
            # Only bookkeeping changed: the Redis copy (written below) is what the next reads use, so the reader
            # does not wait for Mongo (a FerretDB update of a large document took tens of ms: the feed's p99).
            _in_background(self._update(doc.user, update))
        await self._hot_store(doc, replace=False, new_items=new_items)

    async def record_trim(self, doc: FeedDocument, dropped: Sequence[str]) -> None:
        """Store a trim: `dropped` items left `doc` (already without them), whose `floor` moved up."""
        await self._update(doc.user, {"$pullAll": {"items": list(dropped)}, "$set": {"floor": doc.floor}})
        await self._hot_store(doc, replace=False, dropped=dropped)

    async def add_items(self, targets: Mapping[uuid.UUID, Sequence[str]]) -> int:
        """Fan-out: add items to the documents of those `targets` users that have one (recently active users;
        others are skipped). Returns how many Mongo documents changed. Raises when Mongo fails."""
        if not targets:
            return 0
        collection = self.stores.mongo[COLLECTION]
        # Only users with a document (recently active). One `$in` query finds them: on FerretDB's SQLite
        # backend an update by an absent UUID `_id` scans the collection, so misses are filtered out first.
        active = {doc["_id"] async for doc in collection.find({"_id": {"$in": list(targets)}}, {"_id": 1})}
        ops = [
            UpdateOne({"_id": user}, {"$addToSet": {"items": {"$each": list(items)}}})
            for user, items in targets.items()
            if user in active
        ]
        if not ops:
            return 0
        result = await collection.bulk_write(ops, ordered=False)
        await self._hot_add({user: items for user, items in targets.items() if user in active})
        return result.modified_count

    async def _update(self, user: uuid.UUID, update: dict[str, Any]) -> None:
        if not self.mongo_available:
            return
        try:
            await self.stores.mongo[COLLECTION].update_one({"_id": user}, update)
        except PyMongoError as exc:
            self.stores.tiered.tier_failed("mongo", "write", "feed", exc)

    # ---- the Redis copy ----------------------------------------------------------------------------------

    def _hot_keys(self, user: uuid.UUID) -> tuple[str, str]:
        return self.stores.keys("feed", user, "items"), self.stores.keys("feed", user, "meta")

    async def _hot_store(
        self, doc: FeedDocument, *, replace: bool, new_items: Sequence[str] = (), dropped: Sequence[str] = ()
    ) -> None:
        """Write the Redis copy: all of it (`replace`), or the items added/dropped and the meta fields."""
        if not self.stores.tiered.health.available("redis"):
            return
        items_key, meta_key = self._hot_keys(doc.user)
        meta: dict[str, str] = {
            "authors": doc.authors or "",
            "big": ",".join(b.hex for b in doc.big),
            "checked_id": doc.checked_id.hex if doc.checked_id else "",
            "checked_at": repr(float(doc.checked_at)),
            "floor": doc.floor.hex if doc.floor else "",
        }
        try:
            async with self.stores.redis.pipeline(transaction=True) as pipe:
                if replace:
                    pipe.delete(items_key, meta_key)
                added = list(doc.items) if replace else list(new_items)
                if added:
                    pipe.sadd(items_key, *added)
                if dropped:
                    pipe.srem(items_key, *dropped)
                pipe.hset(meta_key, mapping=meta)  # type: ignore[arg-type]  # stubs: invariant Mapping
                pipe.expire(items_key, REDIS_TTL_SECONDS)
                pipe.expire(meta_key, REDIS_TTL_SECONDS)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self.stores.tiered.tier_failed("redis", "write", "feed", exc)

    async def _hot_add(self, targets: Mapping[uuid.UUID, Sequence[str]]) -> None:
        """Fan-out into the Redis copies (a set left without meta expires and is ignored)."""
        if not targets or not self.stores.tiered.health.available("redis"):
            return
        try:
            async with self.stores.redis.pipeline(transaction=False) as pipe:
                for user, items in targets.items():
                    items_key, _ = self._hot_keys(user)
                    pipe.sadd(items_key, *items)
                    pipe.expire(items_key, REDIS_TTL_SECONDS)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self.stores.tiered.tier_failed("redis", "write", "feed", exc)


def _to_mongo(doc: FeedDocument) -> MongoDoc:
    return {
        "_id": doc.user,
        "items": doc.items,
        "authors": doc.authors,
        "big": doc.big,
        "checked_id": doc.checked_id,
        "checked_at": doc.checked_at,
        "floor": doc.floor,
        "last_use": doc.last_use,
    }


def _from_mongo(found: MongoDoc) -> FeedDocument:
    return FeedDocument(
        user=found["_id"],
        items=list(found.get("items", [])),
        authors=found.get("authors"),
        big=list(found.get("big", [])),
        checked_id=found.get("checked_id"),
        checked_at=float(found.get("checked_at", 0)),
        floor=found.get("floor"),
        last_use=found.get("last_use"),
    )


def _id_or_none(raw: str | None) -> uuid.UUID | None:
    return uuid.UUID(raw) if raw else None


def _in_background(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` without waiting for it (a reference is kept so the task is not garbage-collected)."""
    task = asyncio.create_task(work)
    _background.add(task)
    task.add_done_callback(_background.discard)
