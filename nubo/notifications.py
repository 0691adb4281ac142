"""Notifications (new follower, like, comment, mention...) and `post.new` pushes to online followers.

Notifications are derived data: the follow, like or comment that causes one is committed in PostgreSQL first,
and the notification is then stored in Mongo `notifications` (newest first by UUIDv7 `_id`, with `last_use` so
`nubo db purge` ages them out like every `*_recent` collection) and pushed live as a durable ``notification``
event to its one target user. If Mongo is down the live event still goes out and the failure is counted: the
notification is lost from the list, never the cause itself. This is a deliberate exception to "everything is
in PostgreSQL": notifications can be regenerated from the relations, likes and comments they point at.

For other modules (posts, social):

    await notifications.notify(stores, target_id, "follow", actor_id=follower_id)
    await notifications.notify(stores, author_id, "like", actor_id=liker_id, data={"post_id": post_id})
    await notifications.push_post_new(stores, post_row)

Call them after your commit. Self-notifications and pairs blocked either way are skipped.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pymongo.errors import PyMongoError

from nubo.errors import Unavailable, ValidationFailed
from nubo.ids import new_id
from nubo.logs import get_logger
from nubo.pagination import Page, make_page
from nubo.realtime.presence import online_among
from nubo.social import blocked_between
from nubo.stores import Stores

log = get_logger(__name__)

COLLECTION = "notifications"
KINDS = frozenset({"follow", "follow_request", "like", "comment", "mention", "message", "system"})
MAX_DATA_KEYS = 20


def notification_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": doc["_id"],
        "kind": doc["kind"],
        "actor_id": doc.get("actor_id"),
        "data": doc.get("data") or {},
        "read": bool(doc.get("read")),
        "created_at": doc.get("created_at"),
    }


async def notify(
    stores: Stores,
    user_id: uuid.UUID,
    kind: str,
    *,
    actor_id: uuid.UUID | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Store a notification for `user_id` and push it live; None when skipped (self, or blocked pair)."""
    if kind not in KINDS:
        raise ValueError(f"unknown notification kind {kind!r}")
    if actor_id is not None and (actor_id == user_id or await blocked_between(stores, actor_id, user_id)):
        return None
    now = datetime.now(UTC)
    doc = {
        "_id": new_id(),
        "user_id": user_id,
        "kind": kind,
        "actor_id": actor_id,
        "data": dict(data or {}),
        "read": False,
        "created_at": now,
        "last_use": now,
    }
    try:
        await stores.mongo[COLLECTION].insert_one(doc)
    except PyMongoError as exc:
        stores.count_failure("mongo_notifications")
        log.warning("notification_store_failed", extra={"kind": kind, "error": str(exc)[:200]})
    view = notification_view(doc)
    await stores.events.publish_safely([user_id], {"type": "notification", "notification": view})
    return view


async def list_notifications(
    stores: Stores, user_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
) -> Page[dict[str, Any]]:
    """The caller's notifications, newest first (`before` = the last id of the previous page)."""
    query: dict[str, Any] = {"user_id": user_id}
    if before is not None:
        query["_id"] = {"$lt": before}
    try:
        docs = await stores.mongo[COLLECTION].find(query).sort("_id", -1).limit(limit + 1).to_list(None)
    except PyMongoError as exc:
        raise Unavailable("Notifications are unavailable right now", code="notifications_unavailable") from exc
    return make_page([notification_view(doc) for doc in docs], limit)


async def mark_read(stores: Stores, user_id: uuid.UUID, up_to: uuid.UUID | None = None) -> int:
    """Mark the caller's notifications read (all, or those with id <= `up_to`); returns how many changed."""
    query: dict[str, Any] = {"user_id": user_id, "read": False}
    if up_to is not None:
        query["_id"] = {"$lte": up_to}
    try:
        result = await stores.mongo[COLLECTION].update_many(
            query, {"$set": {"read": True, "last_use": datetime.now(UTC)}}
        )
    except PyMongoError as exc:
        raise Unavailable("Notifications are unavailable right now", code="notifications_unavailable") from exc
    return int(result.modified_count)


async def push_post_new(stores: Stores, post: Mapping[str, Any]) -> int:
    """Push ``post.new`` to the author's followers who are online now; returns how many were targeted.

    Offline followers see the post in their feed; pushing to them would only fill histories nobody reads.
    """
    author = post.get("user_id")
    if not isinstance(author, uuid.UUID):
        raise ValidationFailed("post has no user_id", fields={"user_id": "required"})
    async with stores.pg.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT f.follower_id FROM auth.follows f JOIN auth.users u ON u.id = f.follower_id "
                "WHERE f.followed_id = %s AND f.state = 1 AND u.state = 1 "
                "AND NOT EXISTS (SELECT 1 FROM auth.blocks b "
                "WHERE (b.blocker_id = f.follower_id AND b.blocked_id = %s) "
                "OR (b.blocker_id = %s AND b.blocked_id = f.follower_id))",
                (author, author, author),
            )
        ).fetchall()
    online = await online_among(stores.redis, stores.keys, [row["follower_id"] for row in rows])
    if online:
        summary = {
            key: post.get(key)
            for key in ("id", "user_id", "content", "visibility", "media_ids", "created_at")
            if key in post
        }
        await stores.events.publish_safely(online, {"type": "post.new", "post": summary})
    return len(online)
