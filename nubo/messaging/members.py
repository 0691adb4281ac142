"""Members of a group: adding, removing, leaving (with the creator role handed on), and who is in a
conversation.

Admins and the creator add members and remove plain members; only the creator removes admins; nobody removes
the creator. Each change locks the conversation row first (the package's lock order). A removed member's
unread count leaves their Redis hash after the commit.
"""

from __future__ import annotations

import uuid

from nubo.errors import Forbidden, NotFound, ValidationFailed
from nubo.messaging.admission import check_can_meet, check_no_blocks, insert_members
from nubo.messaging.conversations import get_conversation
from nubo.messaging.shared import MAX_MEMBERS, fetch_member_ids, lock_conversation, parse_user_ids, write
from nubo.messaging.views import ConversationView
from nubo.model import ConversationKind, MemberRole
from nubo.stores import Stores
from nubo.stores.entities import Row, normalize_row
from nubo.stores.transaction import Transaction


async def member_ids(stores: Stores, conversation_id: uuid.UUID) -> list[uuid.UUID]:
    """Every member of a conversation (PostgreSQL)."""
    async with stores.pg.connection() as conn:
        return await fetch_member_ids(conn, conversation_id)


async def add_members(
    stores: Stores, actor_id: uuid.UUID, conversation_id: uuid.UUID, user_ids: object
) -> ConversationView:
    """Admins and the creator add users to a group (existing members are skipped)."""
    wanted = [uid for uid in parse_user_ids(user_ids) if uid != actor_id]
    if not wanted:
        raise ValidationFailed("user_ids must name at least one other user", fields={"user_ids": "empty"})
    async with write(stores) as tx:
        conv = await lock_conversation(tx.conn, conversation_id, actor_id)
        _require_group_admin(conv)
        present = await fetch_member_ids(tx.conn, conversation_id)
        newcomers = [uid for uid in wanted if uid not in set(present)]
        if len(present) + len(newcomers) > MAX_MEMBERS:
            raise ValidationFailed(f"a group has at most {MAX_MEMBERS} members", fields={"user_ids": "too many"})
        await check_can_meet(tx.conn, actor_id, newcomers)
        await check_no_blocks(tx.conn, newcomers, [*present, *newcomers])
        await insert_members(tx, conversation_id, [(uid, MemberRole.MEMBER) for uid in newcomers])
    return await get_conversation(stores, actor_id, conversation_id)


def _require_group_admin(conv: Row) -> None:
    if conv["type"] != ConversationKind.GROUP:
        raise ValidationFailed("members of a direct conversation cannot change", fields={"conversation_id": "direct"})
    if conv["role"] < MemberRole.ADMIN:
        raise Forbidden("Only admins can change the members", code="not_admin")


async def remove_member(stores: Stores, actor_id: uuid.UUID, conversation_id: uuid.UUID, user_id: uuid.UUID) -> None:
    """Admins remove members; only the creator removes admins; nobody removes the creator."""
    if user_id == actor_id:
        await leave_conversation(stores, actor_id, conversation_id)
        return
    async with write(stores) as tx:
        conv = await lock_conversation(tx.conn, conversation_id, actor_id)
        _require_group_admin(conv)
        target = await (
            await tx.conn.execute(
                "SELECT id, role FROM messaging.conversation_members WHERE conversation_id = %s AND user_id = %s",
                (conversation_id, user_id),
            )
        ).fetchone()
        if target is None:
            raise NotFound("Not a member of this conversation", code="member_not_found")
        if target["role"] == MemberRole.CREATOR or (
            target["role"] == MemberRole.ADMIN and conv["role"] != MemberRole.CREATOR
        ):
            raise Forbidden("You cannot remove this member", code="cannot_remove")
        removed = await _delete_member(tx, target["id"])
        tx.on_commit(lambda: stores.unread.apply([(user_id, conversation_id, -removed)]))


async def _delete_member(tx: Transaction, member_id: uuid.UUID) -> int:
    """Delete one membership row (its conversation is locked); returns its unread count (to take out of
    Redis)."""
    row = await tx.delete("conversation_members", member_id)
    return int(row["unread_count"]) if row else 0


async def leave_conversation(stores: Stores, user_id: uuid.UUID, conversation_id: uuid.UUID) -> None:
    """Leave a group; a leaving creator hands the role to the longest-standing admin, else member."""
    async with write(stores) as tx:
        conv = await lock_conversation(tx.conn, conversation_id, user_id)
        if conv["type"] != ConversationKind.GROUP:
            raise ValidationFailed("you cannot leave a direct conversation", fields={"conversation_id": "direct"})
        removed = await _delete_member(tx, conv["member_id"])
        if conv["role"] == MemberRole.CREATOR:
            heir = await (
                await tx.conn.execute(
                    f"UPDATE messaging.conversation_members SET role = {MemberRole.CREATOR:d} WHERE id = ("
                    "SELECT id FROM messaging.conversation_members WHERE conversation_id = %s "
                    "ORDER BY role DESC, joined_at, id "
                    "LIMIT 1) RETURNING *",
                    (conversation_id,),
                )
            ).fetchone()
            if heir is not None:
                tx.touch("conversation_members", heir["id"], normalize_row(heir))
        tx.on_commit(lambda: stores.unread.apply([(user_id, conversation_id, -removed)]))


async def typing_recipients(stores: Stores, user_id: uuid.UUID, conversation_id: uuid.UUID) -> list[uuid.UUID]:
    """Members other than the typist; 404 when the typist is not a member."""
    members = await member_ids(stores, conversation_id)
    if user_id not in members:
        raise NotFound("No such conversation", code="conversation_not_found")
    return [uid for uid in members if uid != user_id]
