"""The public shapes of messaging, built from rows: each is defined once, here, as a msgspec Struct.

The HTTP routes return them (Litestar encodes and documents Structs natively) and the WebSocket frames carry
them (e.g. ``MessageNewFrame[MessageView]``, :mod:`nubo.realtime.frames`), so a message has the same fields on
both paths. Field order is wire order, and
every field is always present (``null`` when empty): clients see the same keys whatever the row held.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Literal, cast

import msgspec

from nubo.media import MediaView, media_views
from nubo.model import ConversationKind, MemberRole, MessageState
from nubo.stores import Stores
from nubo.stores.entities import Row

KindName = Literal["direct", "group", "community", "announcement"]
RoleName = Literal["member", "admin", "creator"]
KIND_NAMES: dict[int, KindName] = {kind: cast(KindName, kind.name.lower()) for kind in ConversationKind}
ROLE_NAMES: dict[int, RoleName] = {role: cast(RoleName, role.name.lower()) for role in MemberRole}


class MessageView(msgspec.Struct, frozen=True, gc=False):
    """A message; a deleted one (state 2) keeps its place with `content` null. State 1 means edited."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    sender_id: uuid.UUID
    content: str | None
    state: int
    message_type: int
    client_id: str | None
    created_at: datetime
    edited_at: datetime | None
    attachments: list[MediaView] = msgspec.field(default_factory=list)  # ready media, in order, with URLs


class LastMessage(msgspec.Struct, frozen=True, gc=False):
    """The latest message of a conversation, its text cut to a preview (null once deleted)."""

    id: uuid.UUID
    text: str | None
    created_at: datetime | None


class MemberView(msgspec.Struct, frozen=True, gc=False):
    """A member of a conversation, with their read marker and whether they are online now."""

    user_id: uuid.UUID
    username: str
    role: RoleName
    joined_at: datetime
    last_read_message_id: uuid.UUID | None
    online: bool


class ConversationView(msgspec.Struct, frozen=True, gc=False):
    """A conversation as the caller sees it (`members` only on the single-conversation routes)."""

    id: uuid.UUID
    type: KindName
    title: str | None
    created_by: uuid.UUID | None
    created_at: datetime
    last_message: LastMessage | None
    unread_count: int
    role: RoleName
    peer_id: uuid.UUID | None
    members: list[MemberView] | None = None


class ReadMarker(msgspec.Struct, frozen=True, gc=False):
    """The caller's read marker in a conversation after a read, and what is still unread there."""

    conversation_id: uuid.UUID
    last_read_message_id: uuid.UUID | None
    unread_count: int


class UnreadCounts(msgspec.Struct, frozen=True, gc=False):
    """Unread counts per conversation (from Redis, rebuilt from PostgreSQL when absent)."""

    total: int
    conversations: dict[str, int] = msgspec.field(default_factory=dict)


class MessageLikes(msgspec.Struct, frozen=True, gc=False):
    """Whether the caller likes a message now, and its like count."""

    message_id: uuid.UUID
    liked: bool
    likes: int


class SendResult(msgspec.Struct, frozen=True, gc=False):
    """A stored message and whether this call created it (False: an idempotent retry)."""

    message: MessageView
    created: bool


def attachment_ids(row: Row) -> list[uuid.UUID]:
    """The media ids a message row carries (`attachments` is `{"media_ids": [...]}`)."""
    raw = (row.get("attachments") or {}).get("media_ids") or []
    return [uuid.UUID(str(item)) for item in raw]


async def message_views(stores: Stores, rows: Sequence[Row]) -> list[MessageView]:
    """The public shapes of message rows with their attachments (one read for all of them)."""
    found = await media_views(stores, [mid for row in rows for mid in attachment_ids(row)])
    return [message_view(row, [found[mid] for mid in attachment_ids(row) if mid in found]) for row in rows]


def message_view(row: Row, attachments: list[MediaView] | None = None) -> MessageView:
    """The public shape of a message (a deleted one keeps its place with no content nor attachments)."""
    deleted = row.get("state") == MessageState.DELETED
    return MessageView(
        id=row["id"],
        conversation_id=row["conversation_id"],
        sender_id=row["sender_id"],
        content=None if deleted else row.get("content"),
        state=row.get("state", MessageState.SENT),
        message_type=row.get("message_type", 0),
        client_id=row.get("client_id"),
        created_at=row["created_at"],
        edited_at=row.get("edited_at"),
        attachments=[] if deleted else list(attachments or []),
    )


def conversation_view(
    row: Row, *, peer_id: uuid.UUID | None = None, members: list[MemberView] | None = None
) -> ConversationView:
    """The public shape of a conversation row joined with the caller's membership; `peer_id` (the other
    user of a direct conversation) defaults to the row's own."""
    last = None
    if row.get("last_message_id") is not None:
        last = LastMessage(
            id=row["last_message_id"], text=row.get("last_message_text"), created_at=row.get("last_message_time")
        )
    return ConversationView(
        id=row["id"],
        type=KIND_NAMES.get(row["type"], "group"),
        title=row.get("title"),
        created_by=row.get("created_by"),
        created_at=row["created_at"],
        last_message=last,
        unread_count=row.get("unread_count", 0),
        role=ROLE_NAMES.get(row.get("role", 0), "member"),
        peer_id=peer_id if peer_id is not None else row.get("peer_id"),
        members=members,
    )


def member_view(row: Row, online: bool) -> MemberView:
    """A membership row joined with the user's name."""
    return MemberView(
        user_id=row["user_id"],
        username=row["username"],
        role=ROLE_NAMES.get(row["role"], "member"),
        joined_at=row["joined_at"],
        last_read_message_id=row["last_read_message_id"],
        online=online,
    )


def unread_view(counts: Mapping[uuid.UUID, int]) -> UnreadCounts:
    """The caller's unread counts with their total."""
    return UnreadCounts(total=sum(counts.values()), conversations={str(cid): n for cid, n in counts.items()})
