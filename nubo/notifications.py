"""Notifications (new follower, like, comment, mention...) and `post.new` pushes to online followers.

Notifications are derived data: the follow, like or comment that causes one is committed in PostgreSQL first,
and the notification is then stored in Mongo `notifications` (:mod:`nubo.stores.notifications`: newest first
by UUIDv7 `_id`, aged out by `nubo db purge`) and pushed live as a durable ``notification``
event to its one target user. If Mongo is down the live event still goes out and the failure is counted: the
notification is lost from the list, never the cause itself. This is a deliberate exception to "everything is
in PostgreSQL": notifications can be regenerated from the relations, likes and comments they point at.

Each cause registers its notification inside its own transaction, to run after the commit: the routes pass
``on_created`` to :func:`nubo.social.follow` (a `notify` of the followed user), :func:`nubo.posts.create_post`,
:func:`nubo.posts.add_comment` and :func:`nubo.posts.like`, which call ``tx.on_commit`` with the created row;
:func:`post_created`, :func:`comment_created` and :func:`like_created` say who is told:

- ``follow``: the followed user; ``like``: the author of the liked post or comment;
- ``comment``: the post's author; ``reply``: the users who commented on the post before;
- ``mention``: the users a post or comment @mentions (and who may see the post).

Notifications are grouped: one per user, kind and subject ("3 people liked your post"), see
:class:`Notification`. Self-notifications, pairs blocked either way (checked when stored, and again when
listed: actors blocked since are left out) and the kinds the user turned off (``/me/settings/notifications``,
stored in the `notifications` map of their settings) are skipped.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Set
from datetime import UTC, datetime
from typing import Any, Self

import msgspec

from nubo import accounts
from nubo.errors import Unavailable, ValidationFailed
from nubo.ids import new_id
from nubo.model import FollowState, LikeTarget, active_user, blocked_either_way
from nubo.pagination import Page, make_page
from nubo.posts import earlier_commenters, post_summary
from nubo.realtime.frames import NotificationFrame, PostNewFrame
from nubo.social import blocked_between, can_see_post, hidden_authors
from nubo.stores import Stores
from nubo.stores import notifications as notification_store
from nubo.stores.notifications import NotificationsUnavailable
from nubo.stores.presence import online_among

KINDS = frozenset({"follow", "follow_request", "like", "comment", "reply", "mention", "message", "system"})
# The kinds a user may turn off (`/me/settings/notifications`); the others are always delivered.
SETTABLE_KINDS = ("follow", "like", "comment", "reply", "mention")
MAX_DATA_KEYS = 20
LATEST_ACTORS = 3  # actors shown in a grouped notification ("alice, bob and 5 others")
KEPT_ACTORS = 50  # actors a group document remembers (to drop the ones blocked since)


class Notification(msgspec.Struct, gc=False):
    """A notification as its user sees it: in `GET /notifications` and in the ``notification`` event.

    One notification per kind and subject ("3 people liked your post"): `count` distinct users acted,
    `actors` are the latest of them (newest first, at most 3), `actor_id` the latest one. New activity gives
    the group a new `id` (it moves to the top) and makes it unread again.
    """

    id: uuid.UUID
    kind: str
    actor_id: uuid.UUID | None
    data: dict[str, Any]
    read: bool
    created_at: datetime
    count: int = 1
    actors: list[uuid.UUID] = msgspec.field(default_factory=list)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], hidden: Set[uuid.UUID] = frozenset()) -> Self:
        """A stored notification document (:mod:`nubo.stores.notifications`), without the `hidden` actors."""
        actor = doc.get("actor_id")
        kept = doc.get("actor_ids") or ([actor] if actor is not None else [])
        visible = [a for a in kept if a not in hidden]
        count = max(int(doc.get("count") or len(kept) or 1) - (len(kept) - len(visible)), len(visible), 1)
        return cls(
            id=doc["_id"],
            kind=doc["kind"],
            actor_id=visible[0] if visible else None,
            data=doc.get("data") or {},
            read=bool(doc.get("read")),
            created_at=doc["created_at"],
            count=count,
            actors=visible[:LATEST_ACTORS],
        )


class NotificationSettings(msgspec.Struct, gc=False):
    """Which kinds of notification the user receives (all on unless turned off)."""

    follow: bool = True
    like: bool = True
    comment: bool = True
    reply: bool = True
    mention: bool = True


def _merge_group(previous: Mapping[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    """Fold the previous document of a group into the new activity: actors newest first, distinct, counted.
    None (nothing to tell) when the actor is already among the group's unread actors: liking, unliking and
    liking again is not news twice."""
    actor = new["actor_id"]
    actors = list(previous.get("actor_ids") or [])
    if actor in actors and not previous.get("read"):
        return None
    earlier = [a for a in actors if a != actor]
    count = int(previous.get("count") or len(actors) or 1) + (0 if actor in actors else 1)
    return {**new, "actor_ids": [actor, *earlier][:KEPT_ACTORS], "count": count}


async def wanted(stores: Stores, user_id: uuid.UUID, kind: str) -> bool:
    """False when the user turned this kind off in their notification settings."""
    if kind not in SETTABLE_KINDS:
        return True
    settings = await accounts.get_settings(stores, user_id)
    return settings.notifications.get(kind) is not False


async def notify(
    stores: Stores,
    user_id: uuid.UUID,
    kind: str,
    *,
    actor_id: uuid.UUID | None = None,
    data: Mapping[str, Any] | None = None,
    group: str | None = None,
) -> Notification | None:
    """Store a notification for `user_id` and push it live; None when skipped (self, a pair blocked either
    way, or a kind the user turned off). With `group`, it joins the user's notification of that group."""
    if kind not in KINDS:
        raise ValueError(f"unknown notification kind {kind!r}")
    if actor_id is not None and (actor_id == user_id or await blocked_between(stores, actor_id, user_id)):
        return None
    if not await wanted(stores, user_id, kind):
        return None
    now = datetime.now(UTC)
    doc = {
        "_id": new_id(),
        "user_id": user_id,
        "kind": kind,
        "group": group,
        "actor_id": actor_id,
        "actor_ids": [actor_id] if actor_id is not None else [],
        "count": 1,
        "data": dict(data or {}),
        "read": False,
        "created_at": now,
        "last_use": now,
    }
    if group is not None and actor_id is not None:
        stored = await notification_store.insert_grouped(stores, doc, _merge_group)
        if stored is None:
            return None
        doc = stored
    else:
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
    page = make_page(docs, limit, key=lambda doc: doc["_id"])
    hidden = await hidden_authors(stores, user_id, [a for doc in page.items for a in _actors_of(doc)])
    items = []
    for doc in page.items:
        view = Notification.from_doc(doc, hidden)
        if view.actor_id is None and _actors_of(doc):
            continue  # every actor is hidden now (blocked since, banned): left out, the cursor moves on
        items.append(view)
    return Page(items=items, next=page.next)


def _actors_of(doc: Mapping[str, Any]) -> list[uuid.UUID]:
    actor = doc.get("actor_id")
    return list(doc.get("actor_ids") or ([actor] if actor is not None else []))


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


# ---- the causes: each runs after the commit of what it reports -------------------------------------------


async def like_created(stores: Stores, like: Mapping[str, Any]) -> None:
    """A like of a post or a comment, to its author ("3 people liked your post"); message likes notify nobody
    (the conversation shows them)."""
    liker, target_id = like["user_id"], like["target_id"]
    if like["target_type"] == LikeTarget.POST:
        post = await stores.tiered.get("posts", target_id)
        if post is not None:
            data = {"target_type": "post", "post_id": target_id}
            await notify(stores, post["user_id"], "like", actor_id=liker, data=data, group=f"like:post:{target_id}")
    elif like["target_type"] == LikeTarget.COMMENT:
        comment = await stores.tiered.get("comments", target_id)
        if comment is not None:
            data = {"target_type": "comment", "comment_id": target_id, "post_id": comment["post_id"]}
            group = f"like:comment:{target_id}"
            await notify(stores, comment["user_id"], "like", actor_id=liker, data=data, group=group)


async def post_created(stores: Stores, post: Mapping[str, Any]) -> None:
    """The users a new post @mentions and who may see it."""
    data = {"post_id": post["id"]}
    await _notify_mentions(stores, post, post, data, group=f"mention:post:{post['id']}")


async def comment_created(stores: Stores, comment: Mapping[str, Any]) -> None:
    """A new comment: its @mentions (`mention`), the post's author (`comment`) and the earlier commenters of the
    post (`reply`), each told once, in that order of precedence, and only if they may see the post."""
    post = await stores.tiered.get("posts", comment["post_id"])
    if post is None:
        return
    actor, post_id = comment["user_id"], post["id"]
    data = {"post_id": post_id, "comment_id": comment["id"]}
    told = await _notify_mentions(stores, comment, post, data, group=f"mention:comment:{comment['id']}")
    if post["user_id"] not in told:
        await notify(stores, post["user_id"], "comment", actor_id=actor, data=data, group=f"comment:post:{post_id}")
    told |= {post["user_id"], actor}
    for user_id in await earlier_commenters(stores, post_id, comment["id"], exclude=told):
        if await can_see_post(stores, user_id, post):
            await notify(stores, user_id, "reply", actor_id=actor, data=data, group=f"reply:post:{post_id}")


async def _notify_mentions(
    stores: Stores, source: Mapping[str, Any], post: Mapping[str, Any], data: dict[str, Any], *, group: str
) -> set[uuid.UUID]:
    """Tell each user `source` (a post or a comment, with its parsed `meta`) mentions; returns who was told."""
    told: set[uuid.UUID] = set()
    for mention in (source.get("meta") or {}).get("mentions") or []:
        user_id = uuid.UUID(str(mention["user_id"]))
        if user_id in told or user_id == source["user_id"] or not await can_see_post(stores, user_id, dict(post)):
            continue
        await notify(stores, user_id, "mention", actor_id=source["user_id"], data=data, group=group)
        told.add(user_id)
    return told


# ---- settings ----------------------------------------------------------------------------------------------


async def get_notification_settings(stores: Stores, user_id: uuid.UUID) -> NotificationSettings:
    """The kinds the user receives (`notifications` of their settings; a kind not set is on)."""
    stored = (await accounts.get_settings(stores, user_id)).notifications
    return NotificationSettings(**{kind: stored.get(kind) is not False for kind in SETTABLE_KINDS})


async def update_notification_settings(
    stores: Stores, user_id: uuid.UUID, changes: Mapping[str, bool]
) -> NotificationSettings:
    """Turn kinds on or off (the others are kept); returns every kind's state."""
    unknown = sorted(set(changes) - set(SETTABLE_KINDS))
    if unknown:
        raise ValidationFailed("Unknown notification kinds", fields={k: "not a notification kind" for k in unknown})
    current = await accounts.get_settings(stores, user_id)
    values = msgspec.structs.asdict(current) | {"notifications": {**current.notifications, **changes}}
    await accounts.put_settings(stores, user_id, values)
    return await get_notification_settings(stores, user_id)
