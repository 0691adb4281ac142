"""Mongo `notifications`: each user's notifications, newest first by their UUIDv7 `_id`.

Documents are ``{_id, user_id, kind, actor_id, data, read, created_at, last_use}``; `last_use` lets
`nubo db purge` age them out like every `*_recent` collection. Notifications are derived data (they can be
regenerated from the relations, likes and comments they point at), so a failed insert is counted and logged,
not raised; a failed read or update raises :class:`NotificationsUnavailable`.
"""

from __future__ import annotations

import uuid
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
