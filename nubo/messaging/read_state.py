"""Read markers and unread counters.

- `unread_count` (per member) = messages from others, not deleted, with an id above the member's
  `last_read_message_id`. A send adds 1 for every other member, a delete subtracts 1 where the message was
  still unread, and a read recounts after locking the member row in its own statement (so the count's snapshot
  includes every send that committed before the lock was granted).
- A sender's own send does not move their read marker: unread counts only what others sent.
- Redis keeps the same counters per user for cheap badge reads (:mod:`nubo.stores.unread`): PostgreSQL
  returns old and new values under the row lock and Redis receives the *difference*, after the commit.
"""

from __future__ import annotations

import uuid

from nubo.errors import NotFound
from nubo.messaging.shared import fetch_member_ids, require_member_in, write
from nubo.messaging.views import ReadMarker
from nubo.model import MessageState
from nubo.realtime.frames import ReadFrame
from nubo.stores import Stores
from nubo.stores.entities import normalize_row


async def mark_read(
    stores: Stores, user_id: uuid.UUID, conversation_id: uuid.UUID, message_id: uuid.UUID | None = None
) -> ReadMarker:
    """Move the caller's read marker forward to `message_id` (default: the latest message), never back."""
    async with write(stores, wait=False) as tx:
        conv = await require_member_in(tx.conn, conversation_id, user_id)
        target = message_id or conv.get("last_message_id")
        if target is None:
            return ReadMarker(conversation_id=conversation_id, last_read_message_id=None, unread_count=0)
        if message_id is not None:
            exists = await (
                await tx.conn.execute(
                    "SELECT 1 FROM messaging.message_index WHERE id = %s AND conversation_id = %s",
                    (message_id, conversation_id),
                )
            ).fetchone()
            if exists is None:
                raise NotFound("No such message in this conversation", code="message_not_found")
        # Lock first, count in a later statement: its snapshot then includes every send that held this row.
        member = await (
            await tx.conn.execute(
                "SELECT * FROM messaging.conversation_members WHERE conversation_id = %s AND user_id = %s FOR UPDATE",
                (conversation_id, user_id),
            )
        ).fetchone()
        if member is None:
            raise NotFound("No such conversation", code="conversation_not_found")
        marker = member["last_read_message_id"]
        if marker is not None and marker >= target:
            return ReadMarker(
                conversation_id=conversation_id, last_read_message_id=marker, unread_count=member["unread_count"]
            )
        updated = await (
            await tx.conn.execute(
                "UPDATE messaging.conversation_members m SET last_read_message_id = %(mid)s, unread_count = "
                "(SELECT count(*) FROM messaging.message_index x WHERE x.conversation_id = m.conversation_id "
                f" AND x.id > %(mid)s AND x.sender_id <> m.user_id AND x.state <> {MessageState.DELETED:d}) "
                "WHERE m.id = %(id)s RETURNING *",
                {"mid": target, "id": member["id"]},
            )
        ).fetchone()
        assert updated is not None
        row = normalize_row(updated)
        tx.touch("conversation_members", row["id"], row)
        members = await fetch_member_ids(tx.conn, conversation_id)
        delta = row["unread_count"] - member["unread_count"]
        tx.on_commit(lambda: stores.unread.apply([(user_id, conversation_id, delta)]))
        tx.emit(members, ReadFrame(conversation_id=conversation_id, user_id=user_id, message_id=target))
    return ReadMarker(conversation_id=conversation_id, last_read_message_id=target, unread_count=row["unread_count"])


async def unread_counts(stores: Stores, user_id: uuid.UUID) -> dict[uuid.UUID, int]:
    """The caller's unread count per conversation, from Redis (rebuilt from PostgreSQL when absent)."""
    counters = stores.unread
    cached = await counters.read(user_id)
    if cached is not None:
        return cached
    counts = await unread_counts_from_postgres(stores, user_id)
    await counters.rebuild(user_id, counts)
    return {cid: n for cid, n in counts.items() if n}


async def unread_counts_from_postgres(stores: Stores, user_id: uuid.UUID) -> dict[uuid.UUID, int]:
    async with stores.pg.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT conversation_id, unread_count FROM messaging.conversation_members WHERE user_id = %s",
                (user_id,),
            )
        ).fetchall()
    return {row["conversation_id"]: int(row["unread_count"]) for row in rows}
