"""Conversations: starting a direct one or a group, a conversation with its members, a user's list, and the
peers who see a user's presence."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from nubo.errors import ValidationFailed
from nubo.ids import new_id
from nubo.messaging.admission import check_can_meet, check_no_blocks, insert_members
from nubo.messaging.shared import MAX_MEMBERS, clean_title, parse_user_ids, require_member, write
from nubo.messaging.views import ConversationView, conversation_view, member_view
from nubo.model import ConversationKind, ConversationState, MemberRole
from nubo.pagination import Page, make_page
from nubo.stores import Stores
from nubo.stores.entities import normalize_row
from nubo.stores.presence import online_among
from nubo.stores.redis import REDIS_FAILURES

KINDS = {"direct": ConversationKind.DIRECT, "group": ConversationKind.GROUP}  # the kinds a client may create


PRESENCE_GROUP_LIMIT = 100  # presence changes are pushed to peers of groups up to this size


async def create_conversation(
    stores: Stores, creator_id: uuid.UUID, *, kind: str, user_ids: object, title: object = None
) -> tuple[ConversationView, bool]:
    """A direct conversation (returns the existing one with that user) or a group; (view, created)."""
    if kind not in KINDS:
        raise ValidationFailed("type must be 'direct' or 'group'", fields={"type": "direct or group"})
    others = [uid for uid in parse_user_ids(user_ids) if uid != creator_id]
    if KINDS[kind] == ConversationKind.DIRECT:
        if len(others) != 1:
            raise ValidationFailed(
                "a direct conversation has exactly one other user",
                fields={"user_ids": "exactly one other user"},
            )
        return await _create_direct(stores, creator_id, others[0])
    group_title = clean_title(title)
    if len(others) + 1 > MAX_MEMBERS:
        raise ValidationFailed(f"a group has at most {MAX_MEMBERS} members", fields={"user_ids": "too many"})
    return await _create_group(stores, creator_id, others, group_title), True


async def _create_direct(stores: Stores, creator_id: uuid.UUID, other_id: uuid.UUID) -> tuple[ConversationView, bool]:
    low, high = sorted((str(creator_id), str(other_id)))
    direct_key = f"{low}:{high}"
    async with write(stores) as tx:
        await check_can_meet(tx.conn, creator_id, [other_id])
        try:
            conv = await tx.insert(
                "conversations",
                {"id": new_id(), "type": ConversationKind.DIRECT, "direct_key": direct_key, "created_by": creator_id},
                on_conflict_do_nothing=True,
            )
        except LookupError:
            conv = None
        if conv is not None:
            await insert_members(tx, conv["id"], [(creator_id, MemberRole.CREATOR), (other_id, MemberRole.MEMBER)])
    if conv is None:  # it already existed (maybe created by the other user at the same moment)
        async with stores.pg.connection() as conn:
            row = await (
                await conn.execute("SELECT id FROM messaging.conversations_meta WHERE direct_key = %s", (direct_key,))
            ).fetchone()
        assert row is not None
        return await get_conversation(stores, creator_id, row["id"]), False
    return await get_conversation(stores, creator_id, conv["id"]), True


async def _create_group(stores: Stores, creator_id: uuid.UUID, others: list[uuid.UUID], title: str) -> ConversationView:
    async with write(stores) as tx:
        await check_can_meet(tx.conn, creator_id, others)
        await check_no_blocks(tx.conn, others, others)
        conv = await tx.insert(
            "conversations", {"id": new_id(), "type": ConversationKind.GROUP, "title": title, "created_by": creator_id}
        )
        await insert_members(
            tx, conv["id"], [(creator_id, MemberRole.CREATOR)] + [(uid, MemberRole.MEMBER) for uid in others]
        )
    return await get_conversation(stores, creator_id, conv["id"])


async def get_conversation(stores: Stores, user_id: uuid.UUID, conversation_id: uuid.UUID) -> ConversationView:
    """The conversation with its members (role, read marker, online) and the caller's unread count."""
    conv = await require_member(stores, conversation_id, user_id)
    async with stores.pg.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT m.user_id, m.role, m.joined_at, m.last_read_message_id, u.username "
                "FROM messaging.conversation_members m JOIN auth.users u ON u.id = m.user_id "
                "WHERE m.conversation_id = %s ORDER BY m.joined_at, m.user_id",
                (conversation_id,),
            )
        ).fetchall()
    online = await _online(stores, [row["user_id"] for row in rows])
    peer_id = None
    if conv["type"] == ConversationKind.DIRECT:
        peer_id = next((row["user_id"] for row in rows if row["user_id"] != user_id), None)
    members = [member_view(row, row["user_id"] in online) for row in rows]
    return conversation_view(conv, peer_id=peer_id, members=members)


async def _online(stores: Stores, user_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    try:
        return await online_among(stores, user_ids)
    except REDIS_FAILURES:
        return set()  # presence is decoration: without Redis everybody looks offline


async def list_conversations(
    stores: Stores, user_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
) -> Page[ConversationView]:
    """The caller's conversations, latest activity first; `before` is the last conversation id of a page."""
    async with stores.pg.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT c.*, m.role, m.unread_count, m.last_read_message_id, "
                f"  (SELECT o.user_id FROM messaging.conversation_members o WHERE c.type = {ConversationKind.DIRECT:d} "
                "   AND o.conversation_id = c.id AND o.user_id <> %(me)s LIMIT 1) AS peer_id "
                "FROM messaging.conversation_members m "
                "JOIN messaging.conversations_meta c ON c.id = m.conversation_id "
                f"WHERE m.user_id = %(me)s AND c.state = {ConversationState.ACTIVE:d} AND (%(before)s::uuid IS NULL OR "
                "  (coalesce(c.last_message_time, c.created_at), c.id) < "
                "  (SELECT coalesce(b.last_message_time, "
                "   b.created_at), b.id FROM messaging.conversations_meta b WHERE b.id = %(before)s)) "
                "ORDER BY coalesce(c.last_message_time, c.created_at) DESC, c.id DESC LIMIT %(n)s",
                {"me": user_id, "before": before, "n": limit + 1},
            )
        ).fetchall()
    views = [conversation_view(normalize_row(row)) for row in rows]
    return make_page(views, limit, key=lambda view: view.id)


async def conversation_peers(stores: Stores, user_id: uuid.UUID, limit: int = 5000) -> list[uuid.UUID]:
    """Users who see this user's presence: peers of direct conversations and of small groups. A group's size
    is counted up to the limit only: every socket that comes online asks, and a 1,000-member group's members
    coming online together would otherwise each count all of its rows. Asked in the background (presence
    announcements), so through :attr:`Stores.background_pg <nubo.stores.Stores.background_pg>`."""
    async with stores.background_pg, stores.pg.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT DISTINCT o.user_id FROM messaging.conversation_members m "
                "JOIN messaging.conversation_members o "
                "  ON o.conversation_id = m.conversation_id AND o.user_id <> m.user_id "
                "WHERE m.user_id = %(me)s AND (SELECT count(*) FROM (SELECT FROM messaging.conversation_members c "
                "  WHERE c.conversation_id = m.conversation_id LIMIT %(small)s + 1) AS up_to) <= %(small)s "
                "LIMIT %(limit)s",
                {"me": user_id, "small": PRESENCE_GROUP_LIMIT, "limit": limit},
            )
        ).fetchall()
    return [row["user_id"] for row in rows]
