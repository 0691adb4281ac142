"""Mongo `notifications`: each user's notifications, newest first by their UUIDv7 `_id`.

Documents are ``{_id, user_id, kind, group, actor_id, actor_ids, count, data, read, created_at,
last_use}``; `last_use` lets `nubo db purge` age them out like every `*_recent` collection. A `group` names
what a notification is about ("like:post:<id>"): :func:`insert_grouped` keeps one document per user and
group. Notifications are derived data (they can be
regenerated from the relations, likes and comments they point at), so a failed insert is counted and logged,
not raised; a failed read or update raises :class:`NotificationsUnavailable`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pymongo.errors import PyMongoError

from nubo.logs import get_logger
from nubo.stores.mongo import MongoDoc, keep_micros, restore_micros

if TYPE_CHECKING:
    from nubo.stores import Stores

log = get_logger(__name__)

COLLECTION = "notifications"


class NotificationsUnavailable(RuntimeError):
    """Mongo did not answer a read or an update of the notifications (the driver's error is the cause)."""


async def insert(stores: Stores, doc: MongoDoc) -> bool:
    """Store one notification document; False (counted and logged) when Mongo fails."""
    try:
        await stores.mongo[COLLECTION].insert_one(keep_micros(dict(doc)))
    except PyMongoError as exc:
        stores.count_failure("mongo_notifications")
        log.warning("notification_store_failed", extra={"kind": doc.get("kind"), "error": str(exc)[:200]})
        return False
    return True


async def newest(stores: Stores, user_id: uuid.UUID, *, before: uuid.UUID | None, limit: int) -> list[MongoDoc]:
    """Up to `limit` notifications of a user, newest first, older than `before` when given."""
    query: dict[str, Any] = {"user_id": user_id}
    if before is not None:
        query["_id"] = {"$lt": before}
    try:
        docs: list[MongoDoc] = await stores.mongo[COLLECTION].find(query).sort("_id", -1).limit(limit).to_list(None)
    except PyMongoError as exc:
        raise NotificationsUnavailable(str(exc)) from exc
    return [restore_micros(doc) for doc in docs]


async def mark_read(stores: Stores, user_id: uuid.UUID, up_to: uuid.UUID | None) -> int:
    """Mark a user's unread notifications read (all, or those with id <= `up_to`); returns how many changed."""
    query: dict[str, Any] = {"user_id": user_id, "read": False}
    if up_to is not None:
        query["_id"] = {"$lte": up_to}
    try:
        result = await stores.mongo[COLLECTION].update_many(
            query, {"$set": {"read": True, "last_use": datetime.now(UTC)}}
        )
    except PyMongoError as exc:
        raise NotificationsUnavailable(str(exc)) from exc
    return int(result.modified_count)


MERGE_ATTEMPTS = 5


async def insert_grouped(
    stores: Stores, doc: MongoDoc, merge: Callable[[MongoDoc, MongoDoc], MongoDoc | None]
) -> MongoDoc | None:
    """Store `doc`, folding in the newest document of its group (same `user_id` and `group`) when there is one.

    `merge(previous, doc)` gives the document to store, or None when the activity adds nothing (then nothing
    changes and None is returned). The merged document gets `doc`'s new `_id`, so a group moves to the top of
    the newest-first list with its latest activity. The previous document is taken (deleted) before the
    merged one is written; a writer that finds it already taken re-reads and merges with whatever replaced
    it, so concurrent activity is never lost. Returns what was stored (or, when Mongo fails, what would have
    been: the failure is counted).
    """
    notes = stores.mongo[COLLECTION]
    for _ in range(MERGE_ATTEMPTS):
        try:
            previous = await notes.find_one({"user_id": doc["user_id"], "group": doc["group"]}, sort=[("_id", -1)])
            stored = merge(previous, doc) if previous is not None else doc
            if stored is None:
                return None
            if previous is not None and await notes.find_one_and_delete({"_id": previous["_id"]}) is None:
                continue  # merged by a concurrent writer meanwhile: merge with its result
        except PyMongoError as exc:
            stores.count_failure("mongo_notifications")
            log.warning("notification_store_failed", extra={"kind": doc.get("kind"), "error": str(exc)[:200]})
            return doc
        await insert(stores, stored)
        return stored
    await insert(stores, doc)
    return doc
