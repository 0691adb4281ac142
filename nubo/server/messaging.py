"""Routes for conversations, messages, read markers, unread counters and notifications.

Handlers are thin: parse, call `nubo.messaging` / `nubo.notifications`, shape the answer. Conversations the
caller is not a member of are 404 (their existence is not revealed). Lists use the one shape
``{"items", "next"}`` with ``?limit=&before=``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from litestar import Response, delete, get, patch, post
from litestar.params import FromPath, JSONBody, Parameter

from nubo import messaging, notifications
from nubo.ids import parse_id
from nubo.pagination import Page
from nubo.server.users import AnyRequest, Before, Limit, StoresDep, caller_id

IdPath = FromPath[Annotated[str, Parameter(description="An id (UUID)", schema_extra={"format": "uuid"})]]


# ---- request bodies --------------------------------------------------------------------------------------


@dataclass
class CreateConversationIn:
    """`direct`: exactly one other user (the existing conversation is returned); `group`: a title."""

    type: str
    user_ids: list[uuid.UUID]
    title: str | None = None


@dataclass
class MembersIn:
    user_ids: list[uuid.UUID]


@dataclass
class SendMessageIn:
    """`client_id` (optional, unique per sender) makes the send idempotent."""

    content: str
    client_id: str | None = None


@dataclass
class EditMessageIn:
    content: str


@dataclass
class ReadIn:
    """The last message read (default: the latest message of the conversation)."""

    message_id: uuid.UUID | None = None


@dataclass
class NotificationsReadIn:
    """Mark read the notifications up to this id (default: all)."""

    up_to: uuid.UUID | None = None


# ---- responses -------------------------------------------------------------------------------------------


@dataclass
class MessageOut:
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


@dataclass
class LastMessage:
    id: uuid.UUID
    text: str | None
    created_at: datetime | None


@dataclass
class MemberOut:
    user_id: uuid.UUID
    username: str
    role: str
    joined_at: datetime
    last_read_message_id: uuid.UUID | None
    online: bool


@dataclass
class ConversationOut:
    """A conversation as the caller sees it (`members` only on the single-conversation routes)."""

    id: uuid.UUID
    type: str
    title: str | None
    created_by: uuid.UUID | None
    created_at: datetime
    last_message: LastMessage | None
    unread_count: int
    role: str
    peer_id: uuid.UUID | None
    members: list[MemberOut] | None = None


@dataclass
class ReadOut:
    conversation_id: uuid.UUID
    last_read_message_id: uuid.UUID | None
    unread_count: int


@dataclass
class UnreadOut:
    """Unread counts per conversation (from Redis, rebuilt from PostgreSQL when absent)."""

    total: int
    conversations: dict[str, int] = field(default_factory=dict)


@dataclass
class LikeOut:
    message_id: uuid.UUID
    liked: bool
    likes: int


@dataclass
class NotificationOut:
    id: uuid.UUID
    kind: str
    actor_id: uuid.UUID | None
    data: dict[str, Any]
    read: bool
    created_at: datetime


@dataclass
class UpdatedOut:
    updated: int


def to_conversation(view: dict[str, Any]) -> ConversationOut:
    last = view.get("last_message")
    members = view.get("members")
    return ConversationOut(
        **{k: v for k, v in view.items() if k not in ("last_message", "members")},
        last_message=LastMessage(**last) if last else None,
        members=[MemberOut(**m) for m in members] if members is not None else None,
    )


# ---- conversations ---------------------------------------------------------------------------------------


@post("/conversations", summary="Start a direct conversation or create a group", tags=["messaging"])
async def create_conversation(
    request: AnyRequest, stores: StoresDep, data: JSONBody[CreateConversationIn]
) -> Response[ConversationOut]:
    """201 when created; 200 with the existing direct conversation between the two users."""
    view, created = await messaging.create_conversation(
        stores, caller_id(request), kind=data.type, user_ids=data.user_ids, title=data.title
    )
    return Response(to_conversation(view), status_code=201 if created else 200)


@get("/conversations", summary="The caller's conversations, latest activity first", tags=["messaging"])
async def list_conversations(
    request: AnyRequest, stores: StoresDep, limit: Limit = 20, before: Before = None
) -> Page[ConversationOut]:
    page = await messaging.list_conversations(stores, caller_id(request), limit=limit, before=before)
    return Page(items=[to_conversation(v) for v in page.items], next=page.next)


@get("/conversations/{conversation_id:str}", summary="A conversation with its members", tags=["messaging"])
async def get_conversation(request: AnyRequest, stores: StoresDep, conversation_id: IdPath) -> ConversationOut:
    view = await messaging.get_conversation(stores, caller_id(request), parse_id(conversation_id, "conversation_id"))
    return to_conversation(view)


@post(
    "/conversations/{conversation_id:str}/members",
    summary="Add members (admins)",
    tags=["messaging"],
    status_code=200,
)
async def add_members(
    request: AnyRequest, stores: StoresDep, conversation_id: IdPath, data: JSONBody[MembersIn]
) -> ConversationOut:
    view = await messaging.add_members(
        stores, caller_id(request), parse_id(conversation_id, "conversation_id"), data.user_ids
    )
    return to_conversation(view)


@delete(
    "/conversations/{conversation_id:str}/members/{user_id:str}",
    summary="Remove a member (admins)",
    tags=["messaging"],
    status_code=204,
)
async def remove_member(request: AnyRequest, stores: StoresDep, conversation_id: IdPath, user_id: IdPath) -> None:
    await messaging.remove_member(
        stores, caller_id(request), parse_id(conversation_id, "conversation_id"), parse_id(user_id, "user_id")
    )


@post("/conversations/{conversation_id:str}/leave", summary="Leave a group", tags=["messaging"], status_code=204)
async def leave_conversation(request: AnyRequest, stores: StoresDep, conversation_id: IdPath) -> None:
    await messaging.leave_conversation(stores, caller_id(request), parse_id(conversation_id, "conversation_id"))


# ---- messages --------------------------------------------------------------------------------------------


@post("/conversations/{conversation_id:str}/messages", summary="Send a message", tags=["messaging"])
async def send_message(
    request: AnyRequest, stores: StoresDep, conversation_id: IdPath, data: JSONBody[SendMessageIn]
) -> Response[MessageOut]:
    """201 when stored; 200 with the stored message when `client_id` was already used (idempotent retry)."""
    result = await messaging.send_message(
        stores, caller_id(request), parse_id(conversation_id, "conversation_id"), data.content, data.client_id
    )
    return Response(MessageOut(**result.message), status_code=201 if result.created else 200)


@get("/conversations/{conversation_id:str}/messages", summary="Messages, newest first", tags=["messaging"])
async def list_messages(
    request: AnyRequest, stores: StoresDep, conversation_id: IdPath, limit: Limit = 20, before: Before = None
) -> Page[MessageOut]:
    page = await messaging.list_messages(
        stores, caller_id(request), parse_id(conversation_id, "conversation_id"), limit=limit, before=before
    )
    return Page(items=[MessageOut(**m) for m in page.items], next=page.next)


@patch("/messages/{message_id:str}", summary="Edit a message (sender only)", tags=["messaging"])
async def edit_message(
    request: AnyRequest, stores: StoresDep, message_id: IdPath, data: JSONBody[EditMessageIn]
) -> MessageOut:
    view = await messaging.edit_message(stores, caller_id(request), parse_id(message_id, "message_id"), data.content)
    return MessageOut(**view)


@delete(
    "/messages/{message_id:str}",
    summary="Delete a message (sender only)",
    tags=["messaging"],
    status_code=200,
)
async def delete_message(request: AnyRequest, stores: StoresDep, message_id: IdPath) -> MessageOut:
    view = await messaging.delete_message(stores, caller_id(request), parse_id(message_id, "message_id"))
    return MessageOut(**view)


@post("/messages/{message_id:str}/like", summary="Like a message", tags=["messaging"], status_code=200)
async def like_message(request: AnyRequest, stores: StoresDep, message_id: IdPath) -> LikeOut:
    return LikeOut(**await messaging.like_message(stores, caller_id(request), parse_id(message_id, "message_id"), True))


@delete("/messages/{message_id:str}/like", summary="Unlike a message", tags=["messaging"], status_code=200)
async def unlike_message(request: AnyRequest, stores: StoresDep, message_id: IdPath) -> LikeOut:
    return LikeOut(
        **await messaging.like_message(stores, caller_id(request), parse_id(message_id, "message_id"), False)
    )


@post(
    "/conversations/{conversation_id:str}/read",
    summary="Mark read up to a message",
    tags=["messaging"],
    status_code=200,
)
async def mark_read(
    request: AnyRequest, stores: StoresDep, conversation_id: IdPath, data: JSONBody[ReadIn | None] = None
) -> ReadOut:
    result = await messaging.mark_read(
        stores,
        caller_id(request),
        parse_id(conversation_id, "conversation_id"),
        data.message_id if data else None,
    )
    return ReadOut(**result)


@get("/unread", summary="Unread counts per conversation", tags=["messaging"])
async def get_unread(request: AnyRequest, stores: StoresDep) -> UnreadOut:
    counts = await messaging.unread_counts(stores, caller_id(request))
    return UnreadOut(total=sum(counts.values()), conversations={str(k): v for k, v in counts.items()})


# ---- notifications ---------------------------------------------------------------------------------------


@get("/notifications", summary="The caller's notifications, newest first", tags=["notifications"])
async def list_notifications(
    request: AnyRequest, stores: StoresDep, limit: Limit = 20, before: Before = None
) -> Page[NotificationOut]:
    page = await notifications.list_notifications(stores, caller_id(request), limit=limit, before=before)
    return Page(items=[NotificationOut(**n) for n in page.items], next=page.next)


@post("/notifications/read", summary="Mark notifications read", tags=["notifications"], status_code=200)
async def read_notifications(
    request: AnyRequest, stores: StoresDep, data: JSONBody[NotificationsReadIn | None] = None
) -> UpdatedOut:
    return UpdatedOut(updated=await notifications.mark_read(stores, caller_id(request), data.up_to if data else None))


ROUTES = [
    create_conversation,
    list_conversations,
    get_conversation,
    add_members,
    remove_member,
    leave_conversation,
    send_message,
    list_messages,
    edit_message,
    delete_message,
    like_message,
    unlike_message,
    mark_read,
    get_unread,
    list_notifications,
    read_notifications,
]
