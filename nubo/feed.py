"""The home feed: posts of followed users and one's own, newest first, respecting blocks and visibility.

Design (fan-out on write for small authors, pull on read for big ones, PostgreSQL as the safety net):

- **Where it lives.** Recently active users (those who read their feed; the document's `last_use` is what
  `nubo db purge` ages out) have one Mongo `feed_cache` document, `_id` = user id:
  ``{items: ["<post id hex><author id hex>", ...], authors: <hash of the followed set>, big: [author ids],
  checked_id: <uuid7 high-water mark>, floor: <oldest id the items are complete down to, or null>}``.
  One document per user is read by `_id` (the cheapest lookup on MongoDB and FerretDB alike). Items are
  64-character strings, not sub-documents: FerretDB decodes a 600-item document 3x faster so. They are kept
  unsorted (FerretDB ignores `$push`'s `$sort`/`$slice`) and sorted at read time; writers only use
  `$addToSet` (idempotent: a retried fan-out adds nothing twice) and `$pullAll` for trimming. Redis holds a
  hot copy (`{p}feed:{user}:items` set + `:meta` hash), read first and refilled from Mongo on a miss, like the
  tiered entities: reading a large document from FerretDB costs several ms of its CPU.
- **Fan-out on write.** After a post commits, ``stores.feed_fan_out`` (a batch queue) adds it to the
  documents of the author and of each follower, only when the author has at most `FANOUT_MAX_FOLLOWERS`
  followers. Posts committed while a fan-out runs go out together in the next one (one follower query, one
  Mongo bulk write). Users without a document (inactive) are skipped by the update itself. The post reaches
  active followers' feeds within milliseconds.
- **Pull on read.** Authors with more followers than that are "big": their posts are never fanned out (one
  post would mean a write per follower, as Mastodon learned); each read queries PostgreSQL for the big authors
  the reader follows, on the page's id range (`(user_id, id DESC)` index) and merges them in.
- **Safety net.** Fan-out is best effort: if the task fails (Mongo down, process stopped) nothing is lost,
  because every read older than `CATCHUP_SECONDS` since the last check asks PostgreSQL for all posts of the
  followed authors newer than `checked_id` and merges them into the document. `checked_id` is set a few
  seconds in the past (`COMMIT_MARGIN_SECONDS`): a post whose id was minted before the check but committed
  after it is found by the next check. A changed follow set rebuilds the document from PostgreSQL.
- **Else PostgreSQL.** Without a document (first read, or Mongo down) the page comes from PostgreSQL; the
  document is then built for next time (when Mongo answers). Pages older than the document's `floor` (items
  are trimmed to `FEED_CAP`) also come from PostgreSQL.
- **Visibility.** Every read takes the reader's current follow set from PostgreSQL (followed, active, not
  blocked either way) and keeps only posts whose row — read through the tiers — is by the reader or by one of
  those authors; followers-only posts are then visible by definition. A cached feed never decides visibility.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from nubo import posts as posts_domain
from nubo.logs import get_logger
from nubo.pagination import Page
from nubo.stores import Stores
from nubo.stores.entities import Row
from nubo.stores.postgres import pg_read

log = get_logger(__name__)

FEED_COLLECTION = "feed_cache"
FANOUT_MAX_FOLLOWERS = 1000  # above this many followers an author's posts are pulled at read time
FEED_CAP = 800  # items kept per document (older pages come from PostgreSQL)
CATCHUP_SECONDS = 5.0  # how often a reader's document is reconciled with PostgreSQL
COMMIT_MARGIN_SECONDS = 10.0  # a post id minted this long before its commit is still caught up
LAST_USE_REFRESH = timedelta(hours=1)
FEED_REDIS_TTL = 24 * 3600  # the Redis copy of an idle user's feed expires; Mongo keeps it
PAGE_SLACK = 10  # extra candidates per page, for rows deleted since they were fanned out

_background: set[asyncio.Task[None]] = set()


def uuid7_floor(at: datetime) -> uuid.UUID:
    """The smallest UUIDv7 of millisecond `at`: every id minted at or after `at` compares greater."""
    millis = int(at.timestamp() * 1000)
    return uuid.UUID(int=(millis << 80) | (0x7 << 76) | (0b10 << 62))


def pack(post_id: uuid.UUID, author: uuid.UUID) -> str:
    """One feed item: the post id and its author's id, as 64 hex characters."""
    return post_id.hex + author.hex


def unpack(item: str) -> tuple[uuid.UUID, uuid.UUID]:
    return uuid.UUID(item[:32]), uuid.UUID(item[32:])


def _authors_hash(authors: set[uuid.UUID]) -> str:
    return hashlib.sha1(b"".join(a.bytes for a in sorted(authors))).hexdigest()


# ---- PostgreSQL queries ------------------------------------------------------------------------------------


async def followed_authors(stores: Stores, viewer: uuid.UUID) -> set[uuid.UUID]:
    """Whom the viewer follows and may see now (active, not blocked either way), from PostgreSQL."""
    async with pg_read(stores) as conn:
        rows = await (
            await conn.execute(
                "SELECT f.followed_id FROM auth.follows f JOIN auth.users u ON u.id = f.followed_id "
                "WHERE f.follower_id = %(viewer)s AND f.state = 1 AND u.state = 1 "
                "AND NOT EXISTS (SELECT 1 FROM auth.blocks b "
                "WHERE (b.blocker_id = u.id AND b.blocked_id = %(viewer)s) "
                "OR (b.blocker_id = %(viewer)s AND b.blocked_id = u.id))",
                {"viewer": viewer},
            )
        ).fetchall()
    return {row["followed_id"] for row in rows}


async def _post_ids(
    stores: Stores,
    authors: Sequence[uuid.UUID],
    *,
    after: uuid.UUID | None = None,
    before: uuid.UUID | None = None,
    limit: int,
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(post id, author id) of `authors`' posts in (after, before), newest first."""
    if not authors:
        return []
    async with pg_read(stores) as conn:
        rows = await (
            await conn.execute(
                "SELECT id, user_id FROM content.posts WHERE user_id = ANY(%(a)s) "
                "AND (%(after)s::uuid IS NULL OR id > %(after)s) "
                "AND (%(before)s::uuid IS NULL OR id < %(before)s) "
                "ORDER BY id DESC LIMIT %(n)s",
                {"a": list(authors), "after": after, "before": before, "n": limit},
            )
        ).fetchall()
    return [(row["id"], row["user_id"]) for row in rows]


async def _big_authors(stores: Stores, authors: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Which `authors` have more than FANOUT_MAX_FOLLOWERS followers (each count stops at the threshold)."""
    if not authors:
        return []
    async with pg_read(stores) as conn:
        rows = await (
            await conn.execute(
                "SELECT a FROM unnest(%(a)s::uuid[]) AS a "
                "WHERE (SELECT count(*) FROM (SELECT 1 FROM auth.follows "
                "WHERE followed_id = a AND state = 1 LIMIT %(n)s) s) > %(t)s",
                {"a": list(authors), "n": FANOUT_MAX_FOLLOWERS + 1, "t": FANOUT_MAX_FOLLOWERS},
            )
        ).fetchall()
    return [row["a"] for row in rows]


# ---- fan-out on write --------------------------------------------------------------------------------------


async def fan_out(stores: Stores, posts: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> int:
    """Add posts `(id, author)` to the feed documents of their authors and followers; big authors' posts are
    skipped (readers pull them). Returns how many documents changed. Never raises."""
    try:
        authors = list({author for _, author in posts})
        async with pg_read(stores) as conn:
            rows = await (
                await conn.execute(
                    "SELECT a AS author, f.follower_id FROM unnest(%(a)s::uuid[]) AS a "
                    "CROSS JOIN LATERAL (SELECT follower_id FROM auth.follows "
                    "WHERE followed_id = a AND state = 1 LIMIT %(n)s) f",
                    {"a": authors, "n": FANOUT_MAX_FOLLOWERS + 1},
                )
            ).fetchall()
        followers: dict[uuid.UUID, list[uuid.UUID]] = {a: [a] for a in authors}
        for row in rows:
            followers[row["author"]].append(row["follower_id"])
        targets: dict[uuid.UUID, list[str]] = {}
        for post_id, author in posts:
            if len(followers[author]) > FANOUT_MAX_FOLLOWERS + 1:
                continue  # a big author: readers pull these posts
            for user in followers[author]:
                targets.setdefault(user, []).append(pack(post_id, author))
        if not targets or not stores.tiered.health.available("mongo"):
            return 0
        collection = stores.mongo[FEED_COLLECTION]
        # Only users with a document (recently active). One `$in` query finds them: on FerretDB's SQLite
        # backend an update by an absent UUID `_id` scans the collection, so misses are filtered out first.
        active = {doc["_id"] async for doc in collection.find({"_id": {"$in": list(targets)}}, {"_id": 1})}
        ops = [
            UpdateOne({"_id": user}, {"$addToSet": {"items": {"$each": items}}})
            for user, items in targets.items()
            if user in active
        ]
        if not ops:
            return 0
        result = await collection.bulk_write(ops, ordered=False)
        await _hot_add(stores, {user: items for user, items in targets.items() if user in active})
        return result.modified_count
    except Exception as exc:  # the read-time catch-up repairs it; a fan-out must never crash anything
        log.warning("feed_fan_out_failed", extra={"posts": len(posts), "error": f"{type(exc).__name__}: {exc}"[:200]})
        return 0


# ---- the feed document -------------------------------------------------------------------------------------


async def _load(stores: Stores, viewer: uuid.UUID) -> dict[str, Any] | None:
    """The viewer's feed document: the Redis copy, else Mongo's (copied to Redis), else None."""
    doc = await _hot_load(stores, viewer)
    if doc is not None:
        return doc
    doc = await _cold_load(stores, viewer)
    if doc is not None:
        await _hot_store(stores, doc, replace=True)
    return doc


async def _cold_load(stores: Stores, viewer: uuid.UUID) -> dict[str, Any] | None:
    if not stores.tiered.health.available("mongo"):
        return None
    try:
        doc: dict[str, Any] | None = await stores.mongo[FEED_COLLECTION].find_one({"_id": viewer})
    except PyMongoError as exc:
        stores.tiered.tier_failed("mongo", "read", "feed", exc)
        return None
    return doc


async def _rebuild(stores: Stores, viewer: uuid.UUID, authors: set[uuid.UUID]) -> dict[str, Any]:
    """A fresh document from PostgreSQL (newest FEED_CAP posts of `authors`); saved when Mongo answers."""
    checked = uuid7_floor(datetime.now(UTC) - timedelta(seconds=COMMIT_MARGIN_SECONDS))
    found = await _post_ids(stores, list(authors), limit=FEED_CAP)
    doc = {
        "_id": viewer,
        "items": [pack(i, a) for i, a in found],
        "authors": _authors_hash(authors),
        "big": await _big_authors(stores, list(authors - {viewer})),
        "checked_id": checked,
        "checked_at": time.time(),
        "floor": found[-1][0] if len(found) >= FEED_CAP else None,
        "last_use": datetime.now(UTC),
    }
    await _save(stores, doc, replace=True)
    await _hot_store(stores, doc, replace=True)
    return doc


async def _catch_up(stores: Stores, doc: dict[str, Any], authors: set[uuid.UUID]) -> dict[str, Any]:
    """Merge posts newer than `checked_id` from PostgreSQL (repairs failed fan-outs, adds big authors'
    posts)."""
    now = datetime.now(UTC)
    checked = uuid7_floor(now - timedelta(seconds=COMMIT_MARGIN_SECONDS))
    found = await _post_ids(stores, list(authors), after=doc.get("checked_id"), limit=FEED_CAP)
    if len(found) >= FEED_CAP:
        return await _rebuild(stores, doc["_id"], authors)
    known = set(doc["items"])
    new_items = [item for item in (pack(i, a) for i, a in found) if item not in known]
    doc["items"].extend(new_items)
    update: dict[str, Any] = {
        "$set": {
            "checked_id": checked,
            "checked_at": time.time(),
            "big": await _big_authors(stores, list(authors - {doc["_id"]})),
        }
    }
    doc.update(update["$set"])
    if new_items:
        update["$addToSet"] = {"items": {"$each": new_items}}
    if now - doc.get("last_use", now) >= LAST_USE_REFRESH or "last_use" not in doc:
        update["$set"]["last_use"] = doc["last_use"] = now
    if new_items:
        await _update(stores, doc["_id"], update)
    else:
        # Only bookkeeping changed: the Redis copy (written below) is what the next reads use, so the reader
        # does not wait for Mongo (a FerretDB update of a large document took tens of ms: the feed's p99).
        _in_background(_update(stores, doc["_id"], update))
    await _hot_store(stores, doc, replace=False, new_items=new_items)
    await _trim(stores, doc)
    return doc


def _in_background(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` without waiting for it (a reference is kept so the task is not garbage-collected)."""
    task = asyncio.create_task(work)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _trim(stores: Stores, doc: dict[str, Any]) -> None:
    """Keep the newest FEED_CAP items (with a little slack so trimming is rare)."""
    if len(doc["items"]) <= FEED_CAP + FEED_CAP // 4:
        return
    items = sorted(doc["items"], reverse=True)  # hex of UUIDv7 sorts like the ids: newest first
    kept, dropped = items[:FEED_CAP], items[FEED_CAP:]
    doc["items"], doc["floor"] = kept, unpack(kept[-1])[0]
    await _update(stores, doc["_id"], {"$pullAll": {"items": dropped}, "$set": {"floor": doc["floor"]}})
    await _hot_store(stores, doc, replace=False, dropped=dropped)


async def _save(stores: Stores, doc: dict[str, Any], *, replace: bool) -> None:
    if not stores.tiered.health.available("mongo"):
        return
    try:
        await stores.mongo[FEED_COLLECTION].replace_one({"_id": doc["_id"]}, doc, upsert=replace)
    except PyMongoError as exc:
        stores.tiered.tier_failed("mongo", "write", "feed", exc)


async def _update(stores: Stores, viewer: uuid.UUID, update: dict[str, Any]) -> None:
    if not stores.tiered.health.available("mongo"):
        return
    try:
        await stores.mongo[FEED_COLLECTION].update_one({"_id": viewer}, update)
    except PyMongoError as exc:
        stores.tiered.tier_failed("mongo", "write", "feed", exc)


# ---- the Redis copy of feed documents (hot tier) -----------------------------------------------------------
# `{p}feed:{user}:items` (a set: SADD is as idempotent as `$addToSet`) and `{p}feed:{user}:meta` (a hash of
# the other fields). A copy without its meta hash is ignored and replaced from Mongo on the next read.


def _hot_keys(stores: Stores, viewer: uuid.UUID) -> tuple[str, str]:
    return stores.keys("feed", viewer, "items"), stores.keys("feed", viewer, "meta")


def _id_or_none(raw: str | None) -> uuid.UUID | None:
    return uuid.UUID(raw) if raw else None


async def _hot_load(stores: Stores, viewer: uuid.UUID) -> dict[str, Any] | None:
    if not stores.tiered.health.available("redis"):
        return None
    items_key, meta_key = _hot_keys(stores, viewer)
    try:
        async with stores.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(meta_key)
            pipe.smembers(items_key)
            meta, items = await pipe.execute()
    except (RedisError, OSError) as exc:
        stores.tiered.tier_failed("redis", "read", "feed", exc)
        return None
    if not meta or "checked_at" not in meta:
        return None
    return {
        "_id": viewer,
        "items": list(items),
        "authors": meta.get("authors"),
        "big": [uuid.UUID(b) for b in meta.get("big", "").split(",") if b],
        "checked_id": _id_or_none(meta.get("checked_id")),
        "checked_at": float(meta["checked_at"]),
        "floor": _id_or_none(meta.get("floor")),
    }


async def _hot_store(
    stores: Stores, doc: dict[str, Any], *, replace: bool, new_items: Sequence[str] = (), dropped: Sequence[str] = ()
) -> None:
    """Write the Redis copy: all of it (`replace`), or the items added/dropped and the meta fields."""
    if not stores.tiered.health.available("redis"):
        return
    items_key, meta_key = _hot_keys(stores, doc["_id"])
    meta: dict[str, str] = {
        "authors": doc.get("authors") or "",
        "big": ",".join(b.hex for b in doc.get("big", [])),
        "checked_id": doc["checked_id"].hex if doc.get("checked_id") else "",
        "checked_at": repr(float(doc.get("checked_at", 0))),
        "floor": doc["floor"].hex if doc.get("floor") else "",
    }
    try:
        async with stores.redis.pipeline(transaction=True) as pipe:
            if replace:
                pipe.delete(items_key, meta_key)
            added = list(doc["items"]) if replace else list(new_items)
            if added:
                pipe.sadd(items_key, *added)
            if dropped:
                pipe.srem(items_key, *dropped)
            pipe.hset(meta_key, mapping=meta)  # type: ignore[arg-type]  # stubs: invariant Mapping
            pipe.expire(items_key, FEED_REDIS_TTL)
            pipe.expire(meta_key, FEED_REDIS_TTL)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        stores.tiered.tier_failed("redis", "write", "feed", exc)


async def _hot_add(stores: Stores, targets: dict[uuid.UUID, list[str]]) -> None:
    """Fan-out into the Redis copies (a set left without meta expires and is ignored)."""
    if not targets or not stores.tiered.health.available("redis"):
        return
    try:
        async with stores.redis.pipeline(transaction=False) as pipe:
            for user, items in targets.items():
                items_key, _ = _hot_keys(stores, user)
                pipe.sadd(items_key, *items)
                pipe.expire(items_key, FEED_REDIS_TTL)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        stores.tiered.tier_failed("redis", "write", "feed", exc)


# ---- reading -----------------------------------------------------------------------------------------------


async def _candidates(
    stores: Stores, viewer: uuid.UUID, authors: set[uuid.UUID], before: uuid.UUID | None, want: int
) -> tuple[list[tuple[uuid.UUID, uuid.UUID]], bool]:
    """Up to `want` (post id, author) candidates older than `before`, newest first, and whether more exist."""
    doc = await _load(stores, viewer)
    if doc is not None and doc.get("authors") != _authors_hash(authors):
        doc = await _rebuild(stores, viewer, authors)
    elif doc is not None and time.time() - float(doc.get("checked_at", 0)) >= CATCHUP_SECONDS:
        doc = await _catch_up(stores, doc, authors)
    elif doc is None and before is None and stores.tiered.health.available("mongo"):
        doc = await _rebuild(stores, viewer, authors)  # a first read makes the user "recently active"
    if doc is None:
        found = await _post_ids(stores, list(authors), before=before, limit=want + 1)
        return found[:want], len(found) > want
    floor = doc.get("floor")
    if floor is not None and before is not None and before <= floor:
        found = await _post_ids(stores, list(authors), before=before, limit=want + 1)
        return found[:want], len(found) > want
    merged = dict(map(unpack, _newest_items(doc["items"], authors, before, want + 1)))
    big = [a for a in doc.get("big", []) if a in authors]
    if big:
        merged.update(await _post_ids(stores, big, before=before, limit=want + 1))
    ordered = sorted(merged.items(), reverse=True)
    if floor is not None and len(ordered) < want + 1:
        # The document ran out above its floor: the rest of this page comes from PostgreSQL.
        found = await _post_ids(stores, list(authors), before=before, limit=want + 1)
        return found[:want], len(found) > want
    return ordered[:want], len(ordered) > want


def _newest_items(items: list[str], authors: set[uuid.UUID], before: uuid.UUID | None, count: int) -> list[str]:
    """The `count` newest items by `authors` older than `before`, compared as hex strings (hex of UUIDv7 sorts
    like the ids; building UUIDs for the whole document was most of a feed read's CPU)."""
    wanted = {a.hex for a in authors}
    below = before.hex if before is not None else None
    chosen: list[str] = []
    for item in sorted(items, reverse=True):
        if (below is None or item[:32] < below) and item[32:] in wanted:
            chosen.append(item)
            if len(chosen) == count:
                break
    return chosen


async def feed_page(stores: Stores, viewer: uuid.UUID, *, limit: int, before: uuid.UUID | None) -> Page[dict[str, Any]]:
    """One page of the viewer's feed (newest first); the cursor is the last post id of the page."""
    authors = await followed_authors(stores, viewer) | {viewer}
    candidates, more = await _candidates(stores, viewer, authors, before, limit + PAGE_SLACK)
    rows: dict[uuid.UUID, Row] = {}
    fetched: set[uuid.UUID] = set()
    visible: list[Row] = []
    last_seen: uuid.UUID | None = None
    for index, (post_id, _author) in enumerate(candidates):
        if len(visible) == limit:
            more = True
            break
        if post_id not in fetched:
            # Rows are read only as far as the page needs: the slack is for rows deleted since they were
            # listed, and decoding cached rows is a good part of a feed read's CPU.
            wanted = [i for i, _ in candidates[index : index + limit - len(visible)]]
            fetched.update(wanted)
            rows.update((row["id"], row) for row in await stores.tiered.get_many("posts", wanted))
        last_seen = post_id
        row = rows.get(post_id)
        # The check that counts: the row's author (from whichever tier answered) against the fresh set.
        if row is not None and row["user_id"] in authors:
            visible.append(row)
    items = await posts_domain.decorate_posts(stores, viewer, visible)
    return Page(items=items, next=last_seen if more and last_seen is not None else None)
