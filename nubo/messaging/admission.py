"""Who may be in a conversation together, and the inserting of memberships.

A user may only meet (start a conversation with, or be added by) an active user with no block between them
either way; a group may hold no two users with a block between them. Both are checked inside the write
transaction that inserts the members (an added member: under the conversation's lock).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from nubo.errors import Forbidden, NotFound
from nubo.ids import new_id
from nubo.model import active_user, blocked_either_way
from nubo.stores.entities import Row, normalize_row
from nubo.stores.postgres import PgConnection
from nubo.stores.transaction import Transaction


async def check_can_meet(conn: PgConnection, user_id: uuid.UUID, others: Sequence[uuid.UUID]) -> None:
    """Others must be active and not blocked either way with `user_id` (else they look absent: 404)."""
    rows = await (
        await conn.execute(
            f"SELECT u.id FROM auth.users u WHERE u.id = ANY(%(others)s) AND {active_user('u')} "
            f"AND NOT {blocked_either_way('u.id', '%(me)s')}",
            {"others": list(others), "me": user_id},
        )
    ).fetchall()
    can_meet = {row["id"] for row in rows}
    missing = [uid for uid in others if uid not in can_meet]
    if missing:
        raise NotFound("No such user", code="user_not_found", fields={"user_ids": ",".join(map(str, missing))})


async def check_no_blocks(conn: PgConnection, newcomers: Sequence[uuid.UUID], present: Sequence[uuid.UUID]) -> None:
    """No block, either way, between a newcomer and anyone present (newcomers included) (else 403)."""
    if not newcomers:
        return
    row = await (
        await conn.execute(
            f"SELECT {blocked_either_way('ANY(%(newcomers)s)', 'ANY(%(present)s)')} AS blocked",
            {"newcomers": list(newcomers), "present": list(present)},
        )
    ).fetchone()
    if row is not None and row["blocked"]:
        raise Forbidden(
            "These users cannot be in one conversation (a block exists between them)", code="blocked_member"
        )


async def insert_members(
    tx: Transaction, conversation_id: uuid.UUID, members: Sequence[tuple[uuid.UUID, int]]
) -> list[Row]:
    """Insert members in one statement (a 1,000-member group is one round trip); skips existing ones."""
    rows = await (
        await tx.conn.execute(
            "INSERT INTO messaging.conversation_members (id, conversation_id, user_id, role) "
            "SELECT i, %s, u, r FROM unnest(%s::uuid[], %s::uuid[], %s::smallint[]) AS t(i, u, r) "
            "ON CONFLICT (conversation_id, user_id) DO NOTHING RETURNING *",
            (conversation_id, [new_id() for _ in members], [m[0] for m in members], [m[1] for m in members]),
        )
    ).fetchall()
    result = [normalize_row(row) for row in rows]
    for row in result:
        tx.touch("conversation_members", row["id"], row)
    return result
