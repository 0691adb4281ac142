"""Notifications (new follower, like, comment, mention...) and `post.new` pushes to online followers.

Notifications are derived data: the follow, like or comment that causes one is committed in PostgreSQL first,
and the notification is then stored in Mongo `notifications` (:mod:`nubo.stores.notifications`: newest first
by UUIDv7 `_id`, aged out by `nubo db purge`) and pushed live as a durable ``notification``
event to its one target user. If Mongo is down the live event still goes out and the failure is counted: the
notification is lost from the list, never the cause itself. This is a deliberate exception to "everything is
in PostgreSQL": notifications can be regenerated from the relations, likes and comments they point at.

Register them inside the transaction of their cause, to run after its commit (the follow route passes
``on_created`` to :func:`nubo.social.follow`):

    tx.on_commit(lambda: notifications.notify(stores, author_id, "like", actor_id=liker_id, data=...))

Self-notifications and pairs blocked either way are skipped.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Self

import msgspec

from nubo.errors import Unavailable, ValidationFailed
from nubo.ids import new_id
from nubo.model import FollowState, active_user, blocked_either_way
from nubo.pagination import Page, make_page
from nubo.posts import post_summary
from nubo.realtime.frames import NotificationFrame, PostNewFrame
from nubo.social import blocked_between
from nubo.stores import Stores
from nubo.stores import notifications as notification_store
from nubo.stores.notifications import NotificationsUnavailable
from nubo.stores.presence import online_among

KINDS = frozenset({"follow", "follow_request", "like", "comment", "mention", "message", "system"})
MAX_DATA_KEYS = 20


class Notification(msgspec.Struct, gc=False):
    """A notification as its user sees it: in `GET /notifications` and in the ``notification`` event."""

    id: uuid.UUID
    kind: str
    actor_id: uuid.UUID | None
    data: dict[str, Any]
    read: bool
    created_at: datetime

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Self:
        """A stored notification document (:mod:`nubo.stores.notifications`)."""
        return cls(
            id=doc["_id"],
            kind=doc["kind"],
            actor_id=doc.get("actor_id"),
            data=doc.get("data") or {},
            read=bool(doc.get("read")),
            created_at=doc["created_at"],
        )


async def notify(
    stores: Stores,
    user_id: uuid.UUID,
    kind: str,
    *,
    actor_id: uuid.UUID | None = None,
    data: Mapping[str, Any] | None = None,
) -> Notification | None:
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
    await notification_store.insert(stores, doc)  # a failure is counted; the live event still goes out
    view = Notification.from_doc(doc)
    await stores.events.publish_safely([user_id], notification_event(view))
    return view


def notification_event(view: Notification) -> NotificationFrame[Notification]:
    """The ``notification`` event (its timestamps in the API's one format, as in `GET /notifications`)."""
    return NotificationFrame(notification=view)


async def notification_page(
    stores: Stores, user_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
) -> Page[Notification]:
    """The caller's notifications, newest first (`before` = the last id of the previous page)."""
    try:
        docs = await notification_store.newest(stores, user_id, before=before, limit=limit + 1)
    except NotificationsUnavailable as exc:
        raise Unavailable("Notifications are unavailable right now", code="notifications_unavailable") from exc
    return make_page([Notification.from_doc(doc) for doc in docs], limit, key=lambda view: view.id)


async def mark_read(stores: Stores, user_id: uuid.UUID, up_to: uuid.UUID | None = None) -> int:
    """Mark the caller's notifications read (all, or those with id <= `up_to`); returns how many changed."""
    try:
        return await notification_store.mark_read(stores, user_id, up_to)
    except NotificationsUnavailable as exc:
        raise Unavailable("Notifications are unavailable right now", code="notifications_unavailable") from exc


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
                f"WHERE f.followed_id = %(author)s AND f.state = {FollowState.ACTIVE:d} AND {active_user('u')} "
                f"AND NOT {blocked_either_way('f.follower_id', '%(author)s')}",
                {"author": author},
            )
        ).fetchall()
    online = await online_among(stores, [row["follower_id"] for row in rows])
    if online:
        await stores.events.publish_safely(online, PostNewFrame(post=post_summary(post)))
    return len(online)
