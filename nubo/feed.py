"""The home feed: posts of followed users and one's own, newest first, respecting blocks and visibility.

Design (fan-out on write for small authors, pull on read for big ones, PostgreSQL as the safety net):

- **Where it lives.** Recently active users (those who read their feed) have one cached document
  (:class:`~nubo.stores.feed_cache.FeedDocument`: items "<post id hex><author id hex>", the hash of the
  followed set, the big authors followed, `checked_id` (a uuid7 high-water mark) and `floor` (the oldest id
  the items are complete down to)), kept in Mongo `feed_cache` with a hot copy in Redis by
  :mod:`nubo.stores.feed_cache`. Items are unsorted and sorted at read time.
- **Fan-out on write.** After a post commits, ``stores.feed_fan_out`` (a batch queue) adds it to the
  documents of the author and of each follower, only when the author has at most
  `settings.feed_fanout_max_followers` followers (``NUBO_FEED_FANOUT_MAX_FOLLOWERS``). Posts committed while
  a fan-out runs go out together in the next one (one follower query, one Mongo bulk write). Users without a
  document (inactive) are skipped by the update itself. The post reaches active followers' feeds within
  milliseconds.
- **Pull on read.** Authors with more followers than that are "big": their posts are never fanned out (one
  post would mean a write per follower, as Mastodon learned); each read queries PostgreSQL for the big authors
  the reader follows, on the page's id range (`(user_id, id DESC)` index) and merges them in.
- **Safety net.** Fan-out is best effort: if the task fails (Mongo down, process stopped) nothing is lost,
  because a read `settings.feed_catchup_seconds` (``NUBO_FEED_CATCHUP``) or more after the last check asks
  PostgreSQL for all posts of the followed authors newer than `checked_id` and merges them into the document.
  `checked_id` is set a few seconds in the past (`COMMIT_MARGIN_SECONDS`): a post whose id was minted before
  the check but committed after it is found by the next check. A changed follow set rebuilds the document
  from PostgreSQL.
- **Else PostgreSQL.** Without a document (first read, or Mongo down) the page comes from PostgreSQL; the
  document is then built for next time (when Mongo answers). Pages older than the document's `floor` (items
  are trimmed to `FEED_CAP`) also come from PostgreSQL.
- **Kept ready.** The documents of users connected to `/ws` are kept current continuously, those of other
  recently active users when the instance has CPU to spare (:mod:`nubo.precompute`, through :func:`refresh`):
  a document that exists is what fan-out writes to, and a fresh one spares the read its catch-up.
- **Visibility.** Every read takes the reader's current follow set from PostgreSQL (followed, active, not
  blocked either way) and keeps only posts whose row — read through the tiers — is by the reader or by one of
  those authors; followers-only posts are then visible by definition. A cached feed never decides visibility.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from nubo import posts as posts_domain
from nubo.logs import get_logger
from nubo.model import FollowState, active_user, blocked_either_way
from nubo.pagination import Page
from nubo.posts import PostView
from nubo.stores import Stores
from nubo.stores.entities import Row
from nubo.stores.feed_cache import FeedCache, FeedDocument
from nubo.stores.postgres import pg_read

log = get_logger(__name__)

FEED_CAP = 800  # items kept per document (older pages come from PostgreSQL)
COMMIT_MARGIN_SECONDS = 10.0  # a post id minted this long before its commit is still caught up
PAGE_SLACK = 10  # extra candidates per page, for rows deleted since they were fanned out


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
                f"WHERE f.follower_id = %(viewer)s AND f.state = {FollowState.ACTIVE:d} AND {active_user('u')} "
                f"AND NOT {blocked_either_way('u.id', '%(viewer)s')}",
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
    """Which `authors` have more than the fan-out threshold of followers (each count stops at it)."""
    if not authors:
        return []
    threshold = stores.settings.feed_fanout_max_followers
    async with pg_read(stores) as conn:
        rows = await (
            await conn.execute(
                "SELECT a FROM unnest(%(a)s::uuid[]) AS a "
                "WHERE (SELECT count(*) FROM (SELECT 1 FROM auth.follows "
                f"WHERE followed_id = a AND state = {FollowState.ACTIVE:d} LIMIT %(n)s) s) > %(t)s",
                {"a": list(authors), "n": threshold + 1, "t": threshold},
            )
        ).fetchall()
    return [row["a"] for row in rows]


# ---- fan-out on write --------------------------------------------------------------------------------------


async def fan_out(stores: Stores, posts: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> int:
    """Add posts `(id, author)` to the feed documents of their authors and followers; big authors' posts are
    skipped (readers pull them). Returns how many documents changed. Never raises."""
    try:
        threshold = stores.settings.feed_fanout_max_followers  # above it an author's posts are pulled on read
        authors = list({author for _, author in posts})
        async with pg_read(stores) as conn:
            rows = await (
                await conn.execute(
                    "SELECT a AS author, f.follower_id FROM unnest(%(a)s::uuid[]) AS a "
                    "CROSS JOIN LATERAL (SELECT follower_id FROM auth.follows "
                    f"WHERE followed_id = a AND state = {FollowState.ACTIVE:d} LIMIT %(n)s) f",
                    {"a": authors, "n": threshold + 1},
                )
            ).fetchall()
        followers: dict[uuid.UUID, list[uuid.UUID]] = {a: [a] for a in authors}
        for row in rows:
            followers[row["author"]].append(row["follower_id"])
        targets: dict[uuid.UUID, list[str]] = {}
        for post_id, author in posts:
            if len(followers[author]) > threshold + 1:
                continue  # a big author: readers pull these posts
            for user in followers[author]:
                targets.setdefault(user, []).append(pack(post_id, author))
        cache = FeedCache(stores)
        if not targets or not cache.mongo_available:
            return 0
        return await cache.add_items(targets)  # users without a document (not recently active) are skipped
    except Exception as exc:  # the read-time catch-up repairs it; a fan-out must never crash anything
        log.warning("feed_fan_out_failed", extra={"posts": len(posts), "error": f"{type(exc).__name__}: {exc}"[:200]})
        return 0


# ---- the feed document -------------------------------------------------------------------------------------


async def _rebuild(stores: Stores, cache: FeedCache, viewer: uuid.UUID, authors: set[uuid.UUID]) -> FeedDocument:
    """A fresh document from PostgreSQL (newest FEED_CAP posts of `authors`); saved when Mongo answers."""
    checked = uuid7_floor(datetime.now(UTC) - timedelta(seconds=COMMIT_MARGIN_SECONDS))
    found = await _post_ids(stores, list(authors), limit=FEED_CAP)
    doc = FeedDocument(
        user=viewer,
        items=[pack(i, a) for i, a in found],
        authors=_authors_hash(authors),
        big=await _big_authors(stores, list(authors - {viewer})),
        checked_id=checked,
        checked_at=time.time(),
        floor=found[-1][0] if len(found) >= FEED_CAP else None,
        last_use=datetime.now(UTC),
    )
    await cache.replace(doc)
    return doc


async def _catch_up(stores: Stores, cache: FeedCache, doc: FeedDocument, authors: set[uuid.UUID]) -> FeedDocument:
    """Merge posts newer than `checked_id` from PostgreSQL (repairs failed fan-outs, adds big authors'
    posts)."""
    checked = uuid7_floor(datetime.now(UTC) - timedelta(seconds=COMMIT_MARGIN_SECONDS))
    found = await _post_ids(stores, list(authors), after=doc.checked_id, limit=FEED_CAP)
    if len(found) >= FEED_CAP:
        return await _rebuild(stores, cache, doc.user, authors)
    known = set(doc.items)
    new_items = [item for item in (pack(i, a) for i, a in found) if item not in known]
    doc.items.extend(new_items)
    doc.checked_id, doc.checked_at = checked, time.time()
    doc.big = await _big_authors(stores, list(authors - {doc.user}))
    await cache.record_check(doc, new_items)
    await _trim(cache, doc)
    return doc


async def _trim(cache: FeedCache, doc: FeedDocument) -> None:
    """Keep the newest FEED_CAP items (with a little slack so trimming is rare)."""
    if len(doc.items) <= FEED_CAP + FEED_CAP // 4:
        return
    items = sorted(doc.items, reverse=True)  # hex of UUIDv7 sorts like the ids: newest first
    kept, dropped = items[:FEED_CAP], items[FEED_CAP:]
    doc.items, doc.floor = kept, unpack(kept[-1])[0]
    await cache.record_trim(doc, dropped)


async def refresh(stores: Stores, viewer: uuid.UUID) -> bool:
    """Make the viewer's document current ahead of a read (the precompute of :mod:`nubo.precompute`): built
    when missing or when the follow set changed, caught up when its last check is `NUBO_FEED_CATCHUP` old.
    True when it was written. Does nothing while Mongo is failing (reads then use PostgreSQL)."""
    cache = FeedCache(stores)
    if not cache.mongo_available:
        return False
    authors = await followed_authors(stores, viewer) | {viewer}
    doc = await cache.load(viewer)
    if doc is None or doc.authors != _authors_hash(authors):
        await _rebuild(stores, cache, viewer, authors)
        return True
    if time.time() - doc.checked_at >= stores.settings.feed_catchup_seconds:
        await _catch_up(stores, cache, doc, authors)
        return True
    return False


# ---- reading -----------------------------------------------------------------------------------------------


async def _candidates(
    stores: Stores, viewer: uuid.UUID, authors: set[uuid.UUID], before: uuid.UUID | None, want: int
) -> tuple[list[tuple[uuid.UUID, uuid.UUID]], bool]:
    """Up to `want` (post id, author) candidates older than `before`, newest first, and whether more exist."""
    cache = FeedCache(stores)
    doc = await cache.load(viewer)
    if doc is not None and doc.authors != _authors_hash(authors):
        doc = await _rebuild(stores, cache, viewer, authors)
    elif doc is not None and time.time() - doc.checked_at >= stores.settings.feed_catchup_seconds:
        doc = await _catch_up(stores, cache, doc, authors)
    elif doc is None and before is None and cache.mongo_available:
        doc = await _rebuild(stores, cache, viewer, authors)  # a first read makes the user "recently active"
    if doc is None:
        found = await _post_ids(stores, list(authors), before=before, limit=want + 1)
        return found[:want], len(found) > want
    floor = doc.floor
    if floor is not None and before is not None and before <= floor:
        found = await _post_ids(stores, list(authors), before=before, limit=want + 1)
        return found[:want], len(found) > want
    merged = dict(map(unpack, _newest_items(doc.items, authors, before, want + 1)))
    big = [a for a in doc.big if a in authors]
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


async def feed_page(stores: Stores, viewer: uuid.UUID, *, limit: int, before: uuid.UUID | None) -> Page[PostView]:
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
