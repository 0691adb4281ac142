"""Routes for conversations, messages, read markers, unread counters and notifications.

Handlers are thin: parse, call `nubo.messaging` / `nubo.notifications`, return its shapes. Conversations the
caller is not a member of are 404 (their existence is not revealed). Lists use the one shape
``{"items", "next"}`` with ``?limit=&before=``.
"""

from __future__ import annotations

import uuid
from typing import Annotated, ClassVar, Literal

import msgspec
from litestar import Response, delete, get, patch, post
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody, Parameter
from msgspec import UNSET, Meta, UnsetType

from nubo import messaging, notifications, posts
from nubo.errors import ValidationFailed
from nubo.ids import parse_id
from nubo.messaging.shared import MAX_CLIENT_ID, MAX_CONTENT, MAX_MEMBERS, MAX_TITLE
from nubo.messaging.views import ConversationView, MessageLikes, MessageView, ReadMarker, UnreadCounts
from nubo.pagination import Page
from nubo.server.contract import NO_NUL, NOT_BLANK, errors
from nubo.server.errors import every_bad_field
from nubo.server.users import AnyRequest, Before, Limit, StoresDep, caller_id

IdPath = FromPath[Annotated[str, Parameter(description="An id (UUID)", schema_extra={"format": "uuid"})]]


# ---- request bodies --------------------------------------------------------------------------------------


UserIds = Annotated[list[uuid.UUID], Meta(min_length=1, max_length=MAX_MEMBERS, description="User ids (at least one)")]
MessageText = Annotated[str, Meta(min_length=1, max_length=MAX_CONTENT, pattern=NOT_BLANK, examples=["See you at 8?"])]
ClientId = Annotated[str, Meta(max_length=MAX_CLIENT_ID, pattern=NO_NUL, examples=["c-7f3a"])]
Title = Annotated[str, Meta(min_length=1, max_length=MAX_TITLE, pattern=NOT_BLANK, examples=["Climbing"])]


class CreateConversationIn(msgspec.Struct, forbid_unknown_fields=True):
    """`direct`: exactly one other user (the existing conversation is returned); `group`: a title."""

    json_schema_extra: ClassVar[dict[str, object]] = {
        "anyOf": [
            {"properties": {"type": {"const": "direct"}, "user_ids": {"maxItems": 1}}},
            {"required": ["title"], "properties": {"type": {"const": "group"}, "title": {"type": "string"}}},
        ]
    }

    type: Literal["direct", "group"]
    user_ids: UserIds
    title: Title | None = None


class MembersIn(msgspec.Struct, forbid_unknown_fields=True):
    """Users to add to a group."""

    user_ids: UserIds


class SendMessageIn(msgspec.Struct, forbid_unknown_fields=True):
    """`client_id` (optional, unique per sender) makes the send idempotent."""

    json_schema_extra: ClassVar[dict[str, object]] = {
        "examples": [{"content": "See you at 8?", "client_id": "c-7f3a"}],
        "anyOf": [  # text, attachments, or both
            {"required": ["content"], "properties": {"content": {"minLength": 1, "pattern": NOT_BLANK}}},
            {"required": ["media_ids"], "properties": {"media_ids": {"minItems": 1}}},
        ],
    }

    content: Annotated[str, Meta(max_length=MAX_CONTENT, pattern=NO_NUL, examples=["See you at 8?"])] = ""
    client_id: ClientId | None = None
    # attachments: the sender's own ready media (content may then be empty)
    media_ids: Annotated[list[uuid.UUID], Meta(max_length=posts.MAX_MEDIA_PER_POST)] | None = None


class EditMessageIn(msgspec.Struct, forbid_unknown_fields=True):
    """The new text of one's own message."""

    content: MessageText


class ReadIn(msgspec.Struct, forbid_unknown_fields=True):
    """The last message read (default: the latest message of the conversation)."""

    message_id: uuid.UUID | None = None


class NotificationsReadIn(msgspec.Struct, forbid_unknown_fields=True):
    """Mark read the notifications up to this id (`{}`: all of them). The body is required."""

    up_to: uuid.UUID | None = None


# ---- responses (messaging's are its views, nubo.messaging.views) -----------------------------------------


class UpdatedOut(msgspec.Struct):
    """How many notifications changed."""

    updated: int


# ---- conversations ---------------------------------------------------------------------------------------


@post(
    "/conversations",
    summary="Start a direct conversation or create a group",
    tags=["messaging"],
    status_code=201,
    responses={
        200: ResponseSpec(ConversationView, description="The existing direct conversation with that user"),
        **errors(403, 404),
    },
)
async def create_conversation(
    request: AnyRequest, stores: StoresDep, data: JSONBody[CreateConversationIn]
) -> Response[ConversationView]:
    """201 when created; 200 with the existing direct conversation between the two users."""
    view, created = await messaging.create_conversation(
        stores, caller_id(request), kind=data.type, user_ids=data.user_ids, title=data.title
    )
    return Response(view, status_code=201 if created else 200)


@get("/conversations", summary="The caller's conversations, latest activity first", tags=["messaging"])
async def list_conversations(
    request: AnyRequest, stores: StoresDep, limit: Limit = 20, before: Before = None
) -> Page[ConversationView]:
    return await messaging.list_conversations(stores, caller_id(request), limit=limit, before=before)


@get("/conversations/{conversation_id:str}", summary="A conversation with its members", tags=["messaging"])
async def get_conversation(request: AnyRequest, stores: StoresDep, conversation_id: IdPath) -> ConversationView:
    return await messaging.get_conversation(stores, caller_id(request), parse_id(conversation_id, "conversation_id"))


@post(
    "/conversations/{conversation_id:str}/members",
    summary="Add members (admins)",
    tags=["messaging"],
    status_code=200,
    responses=errors(403),
)
async def add_members(
    request: AnyRequest, stores: StoresDep, conversation_id: IdPath, data: JSONBody[MembersIn]
) -> ConversationView:
    return await messaging.add_members(
        stores, caller_id(request), parse_id(conversation_id, "conversation_id"), data.user_ids
    )


@delete(
    "/conversations/{conversation_id:str}/members/{user_id:str}",
    summary="Remove a member (admins)",
    tags=["messaging"],
    status_code=204,
    responses=errors(403),
)
async def remove_member(request: AnyRequest, stores: StoresDep, conversation_id: IdPath, user_id: IdPath) -> None:
    await messaging.remove_member(
        stores, caller_id(request), parse_id(conversation_id, "conversation_id"), parse_id(user_id, "user_id")
    )


@post("/conversations/{conversation_id:str}/leave", summary="Leave a group", tags=["messaging"], status_code=204)
async def leave_conversation(request: AnyRequest, stores: StoresDep, conversation_id: IdPath) -> None:
    await messaging.leave_conversation(stores, caller_id(request), parse_id(conversation_id, "conversation_id"))


# ---- messages --------------------------------------------------------------------------------------------


@post(
    "/conversations/{conversation_id:str}/messages",
    summary="Send a message",
    tags=["messaging"],
    status_code=201,
    responses={
        200: ResponseSpec(MessageView, description="Already stored with this client_id (an idempotent retry)"),
        **errors(403),
    },
)
async def send_message(
    request: AnyRequest, stores: StoresDep, conversation_id: IdPath, data: JSONBody[SendMessageIn]
) -> Response[MessageView]:
    """201 when stored; 200 with the stored message when `client_id` was already used (idempotent retry)."""
    result = await messaging.send_message(
        stores,
        caller_id(request),
        parse_id(conversation_id, "conversation_id"),
        data.content,
        data.client_id,
        media_ids=data.media_ids,
    )
    return Response(result.message, status_code=201 if result.created else 200)


@get("/conversations/{conversation_id:str}/messages", summary="Messages, newest first", tags=["messaging"])
async def list_messages(
    request: AnyRequest, stores: StoresDep, conversation_id: IdPath, limit: Limit = 20, before: Before = None
) -> Page[MessageView]:
    return await messaging.list_messages(
        stores, caller_id(request), parse_id(conversation_id, "conversation_id"), limit=limit, before=before
    )


@patch("/messages/{message_id:str}", summary="Edit a message (sender only)", tags=["messaging"], responses=errors(403))
async def edit_message(
    request: AnyRequest, stores: StoresDep, message_id: IdPath, data: JSONBody[EditMessageIn]
) -> MessageView:
    return await messaging.edit_message(stores, caller_id(request), parse_id(message_id, "message_id"), data.content)


@delete(
    "/messages/{message_id:str}",
    summary="Delete a message (sender only)",
    tags=["messaging"],
    status_code=200,
    responses=errors(403),
)
async def delete_message(request: AnyRequest, stores: StoresDep, message_id: IdPath) -> MessageView:
    return await messaging.delete_message(stores, caller_id(request), parse_id(message_id, "message_id"))


@post("/messages/{message_id:str}/like", summary="Like a message", tags=["messaging"], status_code=200)
async def like_message(request: AnyRequest, stores: StoresDep, message_id: IdPath) -> MessageLikes:
    return await messaging.like_message(stores, caller_id(request), parse_id(message_id, "message_id"), True)


@delete("/messages/{message_id:str}/like", summary="Unlike a message", tags=["messaging"], status_code=200)
async def unlike_message(request: AnyRequest, stores: StoresDep, message_id: IdPath) -> MessageLikes:
    return await messaging.like_message(stores, caller_id(request), parse_id(message_id, "message_id"), False)


@post(
    "/conversations/{conversation_id:str}/read",
    summary="Mark read up to a message",
    tags=["messaging"],
    status_code=200,
)
async def mark_read(
    request: AnyRequest, stores: StoresDep, conversation_id: IdPath, data: JSONBody[ReadIn | None] = None
) -> ReadMarker:
    return await messaging.mark_read(
        stores,
        caller_id(request),
        parse_id(conversation_id, "conversation_id"),
        data.message_id if data else None,
    )


@get("/unread", summary="Unread counts per conversation", tags=["messaging"])
async def get_unread(request: AnyRequest, stores: StoresDep) -> UnreadCounts:
    return messaging.unread_view(await messaging.unread_counts(stores, caller_id(request)))


# ---- notifications ---------------------------------------------------------------------------------------


@get("/notifications", summary="The caller's notifications, newest first", tags=["notifications"])
async def list_notifications(
    request: AnyRequest, stores: StoresDep, limit: Limit = 20, before: Before = None
) -> Page[notifications.Notification]:
    return await notifications.notification_page(stores, caller_id(request), limit=limit, before=before)


@post("/notifications/read", summary="Mark notifications read", tags=["notifications"], status_code=200)
async def read_notifications(request: AnyRequest, stores: StoresDep, data: JSONBody[NotificationsReadIn]) -> UpdatedOut:
    return UpdatedOut(updated=await notifications.mark_read(stores, caller_id(request), data.up_to))


class NotificationSettingsPatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Kinds to turn on (`true`) or off (`false`), at least one; absent kinds are kept."""

    json_schema_extra: ClassVar[dict[str, object]] = {"minProperties": 1, "examples": [{"like": False}]}

    follow: bool | UnsetType = UNSET
    like: bool | UnsetType = UNSET
    comment: bool | UnsetType = UNSET
    reply: bool | UnsetType = UNSET
    mention: bool | UnsetType = UNSET


@get("/me/settings/notifications", summary="Which notification kinds the caller receives", tags=["notifications"])
async def get_notification_settings(request: AnyRequest, stores: StoresDep) -> notifications.NotificationSettings:
    return await notifications.get_notification_settings(stores, caller_id(request))


@patch("/me/settings/notifications", summary="Turn notification kinds on or off", tags=["notifications"])
async def patch_notification_settings(
    request: AnyRequest, stores: StoresDep, data: JSONBody[NotificationSettingsPatch]
) -> notifications.NotificationSettings:
    # Litestar decodes bodies leniently (0 becomes false): a flag must be a JSON boolean, as the schema says.
    if strictly_bad := every_bad_field(NotificationSettingsPatch, await request.body()):
        raise ValidationFailed("Invalid body", fields=strictly_bad)
    changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not UNSET}
    if not changes:
        raise ValidationFailed("Nothing to change", fields={"body": "at least one notification kind"})
    return await notifications.update_notification_settings(stores, caller_id(request), changes)


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
    get_notification_settings,
    patch_notification_settings,
]
