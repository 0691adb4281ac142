"""What the messaging modules share: limits, input validation, the write transaction and the membership
look-ups that every operation starts with (internal to :mod:`nubo.messaging`)."""

from __future__ import annotations

import uuid
from contextlib import AbstractAsyncContextManager

from nubo.errors import NotFound, ValidationFailed
from nubo.ids import parse_id
from nubo.model import ConversationState
from nubo.stores import Stores
from nubo.stores.entities import Row, normalize_row
from nubo.stores.postgres import PgConnection
from nubo.stores.transaction import Transaction

MAX_CONTENT = 4000
MAX_TITLE = 100
MAX_CLIENT_ID = 64
MAX_MEMBERS = 1000
PREVIEW_CHARS = 200


def write(stores: Stores, *, wait: bool = True) -> AbstractAsyncContextManager[Transaction]:
    """A PostgreSQL transaction whose rows go to Mongo and Redis through messaging's projector (re-read at
    flush: concurrent writes to one conversation's rows finish in any order, the newest state wins); with
    `wait`, returns once they are there or after a bounded wait (the outbox worker finishes the job if a
    store is slow or down)."""
    return stores.transaction(projector=stores.messaging_projector, wait=wait, reread=True)


def clean_content(content: object) -> str:
    """A message body: non-empty text of at most :data:`MAX_CONTENT` characters, no NUL."""
    if not isinstance(content, str) or not content.strip():
        raise ValidationFailed("content must be a non-empty string", fields={"content": "required"})
    if len(content) > MAX_CONTENT:
        raise ValidationFailed(
            f"content is limited to {MAX_CONTENT} characters",
            fields={"content": f"at most {MAX_CONTENT} characters"},
        )
    if "\x00" in content:
        raise ValidationFailed("content must not contain NUL characters", fields={"content": "NUL character"})
    return content


def clean_client_id(client_id: object) -> str | None:
    """The sender's idempotency key, or None when absent."""
    if client_id is None or client_id == "":
        return None
    if not isinstance(client_id, str) or len(client_id) > MAX_CLIENT_ID or "\x00" in client_id:
        raise ValidationFailed(
            f"client_id must be a string of at most {MAX_CLIENT_ID} characters",
            fields={"client_id": "invalid"},
        )
    return client_id


def clean_title(title: object) -> str:
    """A group title, stripped: 1 to :data:`MAX_TITLE` characters."""
    if not isinstance(title, str) or not title.strip() or len(title) > MAX_TITLE or "\x00" in title:
        raise ValidationFailed(f"title must be 1 to {MAX_TITLE} characters", fields={"title": "invalid"})
    return title.strip()


def parse_user_ids(raw: object, field: str = "user_ids") -> list[uuid.UUID]:
    """A list of user ids, duplicates dropped (order kept)."""
    if not isinstance(raw, list | tuple):
        raise ValidationFailed(f"{field} must be a list of user ids", fields={field: "expected a list"})
    return list(dict.fromkeys(parse_id(item, field) for item in raw))


async def lock_conversation(conn: PgConnection, conversation_id: uuid.UUID, user_id: uuid.UUID) -> Row:
    """Lock the conversation row and return it with the caller's role and membership row id (`member_id`);
    404 unless the caller is a member."""
    row = await (
        await conn.execute(
            "SELECT c.*, m.role, m.id AS member_id FROM messaging.conversations_meta c "
            "JOIN messaging.conversation_members m ON m.conversation_id = c.id AND m.user_id = %s "
            f"WHERE c.id = %s AND c.state = {ConversationState.ACTIVE:d} FOR UPDATE OF c",
            (user_id, conversation_id),
        )
    ).fetchone()
    if row is None:
        raise NotFound("No such conversation", code="conversation_not_found")
    return normalize_row(row)


async def fetch_member_ids(conn: PgConnection, conversation_id: uuid.UUID) -> list[uuid.UUID]:
    """Every member of a conversation, on the caller's connection (inside its transaction)."""
    rows = await (
        await conn.execute(
            "SELECT user_id FROM messaging.conversation_members WHERE conversation_id = %s",
            (conversation_id,),
        )
    ).fetchall()
    return [row["user_id"] for row in rows]


async def require_member(stores: Stores, conversation_id: uuid.UUID, user_id: uuid.UUID) -> Row:
    """The active conversation with the caller's role, unread count and read marker; 404 unless a member."""
    async with stores.pg.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT c.*, m.role, m.unread_count, m.last_read_message_id "
                "FROM messaging.conversations_meta c "
                "JOIN messaging.conversation_members m ON m.conversation_id = c.id AND m.user_id = %s "
                f"WHERE c.id = %s AND c.state = {ConversationState.ACTIVE:d}",
                (user_id, conversation_id),
            )
        ).fetchone()
    if row is None:
        raise NotFound("No such conversation", code="conversation_not_found")
    return normalize_row(row)


async def require_member_in(conn: PgConnection, conversation_id: uuid.UUID, user_id: uuid.UUID) -> Row:
    """The active conversation (no lock), on the caller's connection; 404 unless the caller is a member."""
    row = await (
        await conn.execute(
            "SELECT c.* FROM messaging.conversations_meta c JOIN messaging.conversation_members m "
            "ON m.conversation_id = c.id AND m.user_id = %s "
            f"WHERE c.id = %s AND c.state = {ConversationState.ACTIVE:d}",
            (user_id, conversation_id),
        )
    ).fetchone()
    if row is None:
        raise NotFound("No such conversation", code="conversation_not_found")
    return normalize_row(row)
