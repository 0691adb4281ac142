"""The public shapes of messages and conversations, built from their rows."""

from __future__ import annotations

from typing import Any

from nubo.model import ConversationKind, MemberRole, MessageState
from nubo.stores.entities import Row

KIND_NAMES = {kind: kind.name.lower() for kind in ConversationKind}
ROLE_NAMES = {role: role.name.lower() for role in MemberRole}


def message_view(row: Row) -> dict[str, Any]:
    """The public shape of a message (a deleted one keeps its place with no content)."""
    deleted = row.get("state") == MessageState.DELETED
    return {
        "id": row["id"],
        "conversation_id": row["conversation_id"],
        "sender_id": row["sender_id"],
        "content": None if deleted else row.get("content"),
        "state": row.get("state", MessageState.SENT),
        "message_type": row.get("message_type", 0),
        "client_id": row.get("client_id"),
        "created_at": row.get("created_at"),
        "edited_at": row.get("edited_at"),
    }


def conversation_view(row: Row) -> dict[str, Any]:
    last = None
    if row.get("last_message_id") is not None:
        last = {
            "id": row["last_message_id"],
            "text": row.get("last_message_text"),
            "created_at": row.get("last_message_time"),
        }
    return {
        "id": row["id"],
        "type": KIND_NAMES.get(row["type"], "group"),
        "title": row.get("title"),
        "created_by": row.get("created_by"),
        "created_at": row.get("created_at"),
        "last_message": last,
        "unread_count": row.get("unread_count", 0),
        "role": ROLE_NAMES.get(row.get("role", 0), "member"),
        "peer_id": row.get("peer_id"),
    }
