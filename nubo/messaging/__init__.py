"""Conversations, members, messages, likes, read markers and unread counters.

Truth lives in PostgreSQL (`messaging.*`); Mongo `*_recent` and the Redis cache follow through the tiered
store's outbox and projections (messaging's :class:`nubo.stores.projection.Projector`). Events are published
only after the commit (:mod:`nubo.realtime`).

One module per concept: :mod:`~nubo.messaging.conversations`, :mod:`~nubo.messaging.members`,
:mod:`~nubo.messaging.messages` and :mod:`~nubo.messaging.read_state` (each states its own rules), over
:mod:`~nubo.messaging.admission` (who may meet), :mod:`~nubo.messaging.views` (the public shapes, as Structs) and
:mod:`~nubo.messaging.shared` (limits, validation, the write transaction, membership look-ups). The unread
counters' Redis copy is :mod:`nubo.stores.unread`. Callers use the names re-exported here.

Concurrency rules of the whole package (why the SQL looks the way it does):

- Every write that touches several rows of a conversation locks its `conversations_meta` row first
  (``FOR UPDATE``), then member rows: one lock order, so no deadlocks, and sends in one conversation are
  serialised.
- Every write here commits in PostgreSQL and leaves the Mongo/Redis copies to its `Projector`
  (sends and reads do not even wait for it; edits, deletes and member changes do): one background task per
  process that coalesces the rows touched by many sends and projects each entity in one bulk (re-reading
  PostgreSQL, so the newest state wins whatever order commits finished in). The outbox rows are written in the
  same transaction as ever, so a crash before the projection is repaired by the outbox worker. Reads stay
  correct meanwhile: message pages take their ids from PostgreSQL and fall through the tiers to PostgreSQL for
  a body not copied yet. Synchronous projection capped the whole system at about 20 sends/s (FerretDB writes
  one document set at a time); coalesced, a burst costs one bulk per entity.
"""

from __future__ import annotations

from nubo.messaging.conversations import (
    KINDS,
    PRESENCE_GROUP_LIMIT,
    conversation_peers,
    create_conversation,
    get_conversation,
    list_conversations,
)
from nubo.messaging.members import add_members, leave_conversation, member_ids, remove_member, typing_recipients
from nubo.messaging.messages import (
    delete_message,
    edit_message,
    like_message,
    list_messages,
    send_message,
)
from nubo.messaging.read_state import mark_read, unread_counts, unread_counts_from_postgres
from nubo.messaging.shared import MAX_CLIENT_ID, MAX_CONTENT, MAX_MEMBERS, MAX_TITLE, PREVIEW_CHARS
from nubo.messaging.views import (
    KIND_NAMES,
    ROLE_NAMES,
    ConversationView,
    LastMessage,
    MemberView,
    MessageLikes,
    MessageView,
    ReadMarker,
    SendResult,
    UnreadCounts,
    conversation_view,
    member_view,
    message_view,
    unread_view,
)

__all__ = [
    "KINDS",
    "KIND_NAMES",
    "MAX_CLIENT_ID",
    "MAX_CONTENT",
    "MAX_MEMBERS",
    "MAX_TITLE",
    "PRESENCE_GROUP_LIMIT",
    "PREVIEW_CHARS",
    "ROLE_NAMES",
    "ConversationView",
    "LastMessage",
    "MemberView",
    "MessageLikes",
    "MessageView",
    "ReadMarker",
    "SendResult",
    "UnreadCounts",
    "add_members",
    "conversation_peers",
    "conversation_view",
    "create_conversation",
    "delete_message",
    "edit_message",
    "get_conversation",
    "leave_conversation",
    "like_message",
    "list_conversations",
    "list_messages",
    "mark_read",
    "member_ids",
    "member_view",
    "message_view",
    "remove_member",
    "send_message",
    "typing_recipients",
    "unread_counts",
    "unread_counts_from_postgres",
    "unread_view",
]
