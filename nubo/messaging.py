"""Conversations, members, messages, likes, read markers and unread counters.

Truth lives in PostgreSQL (`messaging.*`); Mongo `*_recent` and the Redis cache follow through the tiered
store's outbox and projections (messaging's :class:`nubo.stores.projection.Projector`). Events are published
only after the commit (:mod:`nubo.realtime`).

Concurrency rules (why the SQL looks the way it does):

- Every write that touches several rows of a conversation locks its `conversations_meta` row first
  (``FOR UPDATE``), then member rows: one lock order, so no deadlocks, and sends in one conversation are
  serialised. A new message id is made greater than the conversation's `last_message_id` under that lock,
  so message ids in a conversation follow commit order: "read up to id X" and "newest first" are exact.
- `unread_count` (per member) = messages from others, not deleted, with an id above the member's
  `last_read_message_id`. A send adds 1 for every other member, a delete subtracts 1 where the message was
  still unread, and a read recounts after locking the member row in its own statement (so the count's snapshot
  includes every send that committed before the lock was granted).
- Redis keeps the same counters per user (hash ``{p}unread:{user}``, field = conversation id) for cheap badge
  reads. PostgreSQL returns old and new values under the row lock and Redis receives the *difference*;
  differences commute, so Redis converges to PostgreSQL whatever order the post-commit updates arrive in.
  Differences are only applied to a hash that exists; a missing hash is rebuilt from PostgreSQL on read and
  expires daily, which bounds the damage of the one remaining race (a rebuild overlapping a send).
- `client_id` is unique per sender: a retried send returns the stored message, publishes nothing again and
  counts nothing twice.
- A sender's own send does not move their read marker: unread counts only what others sent.
- Delivery order: each member gets one sender's messages in the order they were sent; messages of two
  senders committed a moment apart may be published (hence delivered) in either order, since publishing
  happens after the commit. Clients order a conversation by message id, which is the commit order.
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

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from nubo import posts, ratelimit
from nubo.errors import Conflict, Forbidden, NotFound, ValidationFailed
from nubo.ids import new_id, parse_id
from nubo.logs import get_logger
from nubo.model import (
    ConversationKind,
    ConversationState,
    LikeTarget,
    MemberRole,
    MessageState,
    active_user,
    blocked_either_way,
)
from nubo.pagination import Page, make_page
from nubo.realtime.bus import bus_for, publish_safely
from nubo.realtime.presence import online_among
from nubo.stores import Stores
from nubo.stores.postgres import PgConnection, single_statement
from nubo.stores.projection import projection_for
from nubo.stores.redis import REDIS_FAILURES
from nubo.stores.tiered import Row, Transaction, normalize_row
from nubo.stores.unread import SCRIPT_CHUNK, Delta, unread_counters

log = get_logger(__name__)

KINDS = {"direct": ConversationKind.DIRECT, "group": ConversationKind.GROUP}  # the kinds a client may create
KIND_NAMES = {kind: kind.name.lower() for kind in ConversationKind}
ROLE_NAMES = {role: role.name.lower() for role in MemberRole}

MAX_CONTENT = 4000
MAX_TITLE = 100
MAX_CLIENT_ID = 64
MAX_MEMBERS = 1000
PREVIEW_CHARS = 200
PRESENCE_GROUP_LIMIT = 100  # presence changes are pushed to peers of groups up to this size


@dataclass(frozen=True)
class SendResult:
    """A stored message and whether this call created it (False: an idempotent retry)."""

    message: dict[str, Any]
    created: bool


WAIT_PROJECTION_SECONDS = 2.0


@asynccontextmanager
async def _write(stores: Stores, *, wait: bool = True) -> AsyncIterator[Transaction]:
    """A PostgreSQL transaction (outbox rows in the same commit) whose rows go to Mongo and Redis through
    messaging's :class:`~nubo.stores.projection.Projector`; with `wait`, returns once they are there (or after
    a bounded wait: the outbox worker finishes the job if a store is slow or down)."""
    async with stores.pg.connection() as conn, conn.transaction():
        tx = Transaction(conn)
        yield tx
        await tx.record_outbox()
    await stores.derived.invalidate(tx.tags)  # as tiered.transaction() does (none today: no tagged rows here)
    if not tx.touched:
        return
    # Re-read at flush: concurrent writes to one conversation's rows finish in any order, the newest state wins.
    done = projection_for(stores).defer(tx, urgent=wait, reread=True)
    if wait:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(done), WAIT_PROJECTION_SECONDS)


# ---- validation ------------------------------------------------------------------------------------------


def _clean_content(content: object) -> str:
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


def _clean_client_id(client_id: object) -> str | None:
    if client_id is None or client_id == "":
        return None
    if not isinstance(client_id, str) or len(client_id) > MAX_CLIENT_ID or "\x00" in client_id:
        raise ValidationFailed(
            f"client_id must be a string of at most {MAX_CLIENT_ID} characters",
            fields={"client_id": "invalid"},
        )
    return client_id


def _clean_title(title: object) -> str:
    if not isinstance(title, str) or not title.strip() or len(title) > MAX_TITLE or "\x00" in title:
        raise ValidationFailed(f"title must be 1 to {MAX_TITLE} characters", fields={"title": "invalid"})
    return title.strip()


def _user_ids(raw: object, field: str = "user_ids") -> list[uuid.UUID]:
    if not isinstance(raw, list | tuple):
        raise ValidationFailed(f"{field} must be a list of user ids", fields={field: "expected a list"})
    return list(dict.fromkeys(parse_id(item, field) for item in raw))


# ---- views -----------------------------------------------------------------------------------------------


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


# ---- reads shared by writes ------------------------------------------------------------------------------


async def _lock_conversation(conn: PgConnection, conversation_id: uuid.UUID, user_id: uuid.UUID) -> Row:
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


async def _member_ids(conn: PgConnection, conversation_id: uuid.UUID) -> list[uuid.UUID]:
    rows = await (
        await conn.execute(
            "SELECT user_id FROM messaging.conversation_members WHERE conversation_id = %s",
            (conversation_id,),
        )
    ).fetchall()
    return [row["user_id"] for row in rows]


async def member_ids(stores: Stores, conversation_id: uuid.UUID) -> list[uuid.UUID]:
    """Every member of a conversation (PostgreSQL)."""
    async with stores.pg.connection() as conn:
        return await _member_ids(conn, conversation_id)


async def _require_member(stores: Stores, conversation_id: uuid.UUID, user_id: uuid.UUID) -> Row:
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


# ---- conversations ---------------------------------------------------------------------------------------


async def create_conversation(
    stores: Stores, creator_id: uuid.UUID, *, kind: str, user_ids: object, title: object = None
) -> tuple[dict[str, Any], bool]:
    """A direct conversation (returns the existing one with that user) or a group; (view, created)."""
    if kind not in KINDS:
        raise ValidationFailed("type must be 'direct' or 'group'", fields={"type": "direct or group"})
    others = [uid for uid in _user_ids(user_ids) if uid != creator_id]
    if KINDS[kind] == ConversationKind.DIRECT:
        if len(others) != 1:
            raise ValidationFailed(
                "a direct conversation has exactly one other user",
                fields={"user_ids": "exactly one other user"},
            )
        return await _create_direct(stores, creator_id, others[0])
    clean_title = _clean_title(title)
    if len(others) + 1 > MAX_MEMBERS:
        raise ValidationFailed(f"a group has at most {MAX_MEMBERS} members", fields={"user_ids": "too many"})
    return await _create_group(stores, creator_id, others, clean_title), True


async def _create_direct(stores: Stores, creator_id: uuid.UUID, other_id: uuid.UUID) -> tuple[dict[str, Any], bool]:
    low, high = sorted((str(creator_id), str(other_id)))
    direct_key = f"{low}:{high}"
    async with _write(stores) as tx:
        await _check_can_meet(tx.conn, creator_id, [other_id])
        try:
            conv = await tx.insert(
                "conversations",
                {"id": new_id(), "type": ConversationKind.DIRECT, "direct_key": direct_key, "created_by": creator_id},
                on_conflict_do_nothing=True,
            )
        except LookupError:
            conv = None
        if conv is not None:
            await _insert_members(tx, conv["id"], [(creator_id, MemberRole.CREATOR), (other_id, MemberRole.MEMBER)])
    if conv is None:  # it already existed (maybe created by the other user at the same moment)
        async with stores.pg.connection() as conn:
            row = await (
                await conn.execute("SELECT id FROM messaging.conversations_meta WHERE direct_key = %s", (direct_key,))
            ).fetchone()
        assert row is not None
        return await get_conversation(stores, creator_id, row["id"]), False
    return await get_conversation(stores, creator_id, conv["id"]), True


async def _check_can_meet(conn: PgConnection, user_id: uuid.UUID, others: Sequence[uuid.UUID]) -> None:
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


async def _check_no_blocks(conn: PgConnection, newcomers: Sequence[uuid.UUID], present: Sequence[uuid.UUID]) -> None:
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


async def _insert_members(
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


async def _create_group(stores: Stores, creator_id: uuid.UUID, others: list[uuid.UUID], title: str) -> dict[str, Any]:
    async with _write(stores) as tx:
        await _check_can_meet(tx.conn, creator_id, others)
        await _check_no_blocks(tx.conn, others, others)
        conv = await tx.insert(
            "conversations", {"id": new_id(), "type": ConversationKind.GROUP, "title": title, "created_by": creator_id}
        )
        await _insert_members(
            tx, conv["id"], [(creator_id, MemberRole.CREATOR)] + [(uid, MemberRole.MEMBER) for uid in others]
        )
    return await get_conversation(stores, creator_id, conv["id"])


async def get_conversation(stores: Stores, user_id: uuid.UUID, conversation_id: uuid.UUID) -> dict[str, Any]:
    """The conversation with its members (role, read marker, online) and the caller's unread count."""
    conv = await _require_member(stores, conversation_id, user_id)
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
    view = conversation_view(conv)
    if conv["type"] == ConversationKind.DIRECT:
        view["peer_id"] = next((row["user_id"] for row in rows if row["user_id"] != user_id), None)
    view["members"] = [
        {
            "user_id": row["user_id"],
            "username": row["username"],
            "role": ROLE_NAMES.get(row["role"], "member"),
            "joined_at": row["joined_at"],
            "last_read_message_id": row["last_read_message_id"],
            "online": row["user_id"] in online,
        }
        for row in rows
    ]
    return view


async def _online(stores: Stores, user_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    try:
        return await online_among(stores.redis, stores.keys, user_ids)
    except REDIS_FAILURES:
        return set()  # presence is decoration: without Redis everybody looks offline


async def list_conversations(
    stores: Stores, user_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
) -> Page[dict[str, Any]]:
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
    return make_page(views, limit)


async def add_members(
    stores: Stores, actor_id: uuid.UUID, conversation_id: uuid.UUID, user_ids: object
) -> dict[str, Any]:
    """Admins and the creator add users to a group (existing members are skipped)."""
    wanted = [uid for uid in _user_ids(user_ids) if uid != actor_id]
    if not wanted:
        raise ValidationFailed("user_ids must name at least one other user", fields={"user_ids": "empty"})
    async with _write(stores) as tx:
        conv = await _lock_conversation(tx.conn, conversation_id, actor_id)
        _require_group_admin(conv)
        present = await _member_ids(tx.conn, conversation_id)
        newcomers = [uid for uid in wanted if uid not in set(present)]
        if len(present) + len(newcomers) > MAX_MEMBERS:
            raise ValidationFailed(f"a group has at most {MAX_MEMBERS} members", fields={"user_ids": "too many"})
        await _check_can_meet(tx.conn, actor_id, newcomers)
        await _check_no_blocks(tx.conn, newcomers, [*present, *newcomers])
        await _insert_members(tx, conversation_id, [(uid, MemberRole.MEMBER) for uid in newcomers])
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
    async with _write(stores) as tx:
        conv = await _lock_conversation(tx.conn, conversation_id, actor_id)
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
    await unread_counters(stores).apply([(user_id, conversation_id, -removed)])


async def _delete_member(tx: Transaction, member_id: uuid.UUID) -> int:
    """Delete one membership row (its conversation is locked); returns its unread count (to take out of
    Redis)."""
    row = await tx.delete("conversation_members", member_id)
    return int(row["unread_count"]) if row else 0


async def leave_conversation(stores: Stores, user_id: uuid.UUID, conversation_id: uuid.UUID) -> None:
    """Leave a group; a leaving creator hands the role to the longest-standing admin, else member."""
    async with _write(stores) as tx:
        conv = await _lock_conversation(tx.conn, conversation_id, user_id)
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
    await unread_counters(stores).apply([(user_id, conversation_id, -removed)])


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


# ---- messages --------------------------------------------------------------------------------------------


async def send_message(
    stores: Stores,
    sender_id: uuid.UUID,
    conversation_id: uuid.UUID,
    content: object,
    client_id: object = None,
    *,
    committed: Callable[[SendResult], None] | None = None,
) -> SendResult:
    """Store a message (idempotent per `client_id`), count it unread for the others, then publish it.

    `committed` (e.g. the WebSocket ack) is called once the message is committed in PostgreSQL, before it is
    published: the sender learns its id without waiting for the delivery to others, which adds no guarantee
    (a failed publish is logged, never reported to the sender)."""
    text = _clean_content(content)
    cid = _clean_client_id(client_id)
    # Retries count against the limit too: a client stuck retrying is exactly what the limit is for.
    await ratelimit.rate_limit(stores, "messages", str(sender_id), stores.settings.rate_messages)
    row = await _store_send(stores, sender_id, conversation_id, text, cid)
    if row is None:  # this client_id was used before: an idempotent retry
        existing = await _existing_send(stores, sender_id, cid or "")
        assert existing is not None
        replayed = _replayed(existing, conversation_id)
        if committed is not None:
            committed(replayed)
        return replayed
    recipients = [sender_id, *row.pop("recipients")]
    view = message_view(row)
    result = SendResult(view, True)
    if committed is not None:
        committed(result)
    await _publish_with_unread(
        stores,
        recipients,
        {"type": "message.new", "conversation_id": conversation_id, "message": view},
        [(uid, conversation_id, 1) for uid in recipients[1:]],
    )
    return result


async def _publish_with_unread(
    stores: Stores,
    recipients: list[uuid.UUID],
    event: dict[str, Any],
    deltas: list[Delta],
) -> None:
    """Unread deltas then the event, in one Redis round trip (see `before` in :meth:`Bus.publish
    <nubo.realtime.bus.Bus.publish>`); failures as in :meth:`UnreadCounters.apply
    <nubo.stores.unread.UnreadCounters.apply>` and :func:`publish_safely`: logged and counted, never a failed
    send (PostgreSQL already committed)."""
    counters = unread_counters(stores)
    if len(deltas) > SCRIPT_CHUNK:  # big groups: the chunked paths
        await counters.apply(deltas)
        await publish_safely(stores, recipients, event)
        return
    try:
        await bus_for(stores).publish(recipients, event, before=counters.applier(deltas))
    except REDIS_FAILURES as exc:
        stores.count_failure("realtime")
        log.warning("event_publish_failed", extra={"type": event.get("type"), "error": str(exc)[:200]})
        # Which part failed is unknown: drop the hashes so reads rebuild them from PostgreSQL.
        await counters.forget(uid for uid, _, _ in deltas)


async def _store_send(
    stores: Stores, sender_id: uuid.UUID, conversation_id: uuid.UUID, text: str, cid: str | None
) -> Row | None:
    """The send in one statement (:data:`_SEND_SQL`: lock, checks, insert, counters, outbox), so one round
    trip, committed when it returns: our caller acks only after the commit. None: a replayed client_id. The
    rows go to Mongo/Redis through messaging's projector without being waited for."""
    params = {
        "id": new_id(),
        "conv": conversation_id,
        "sender": sender_id,
        "content": text,
        "client_id": cid,
        "preview": PREVIEW_CHARS,
    }
    async with stores.pg.connection() as conn:
        found = await single_statement(conn, _SEND_SQL, params)
    if found is None:
        raise NotFound("No such conversation", code="conversation_not_found")
    if found["closed"]:
        raise Forbidden("You cannot send messages in this conversation", code="conversation_closed")
    if found["id"] is None:
        return None
    row = normalize_row({name: value for name, value in found.items() if name != "closed"})
    projector = projection_for(stores)
    # Projected later from PostgreSQL's current state; only the message is read through the tiers.
    projector.defer_rows({"messages": [row["id"]]}, row.pop("message_outbox_ids"))
    summaries = {"conversations": [conversation_id], "conversation_members": row.pop("member_row_ids")}
    projector.defer_rows(summaries, row.pop("summary_outbox_ids"), lazy=True)
    return row


# One statement for the whole send, so that it needs one round trip:
# - conv: the conversation, locked, when the sender is a member (no row: 404); `closed` when it is a direct
#   one whose other user is not active or blocks or is blocked by the sender (403);
# - msg: the message (none when closed, or when its client_id was used: an idempotent retry). Its id is the
#   UUIDv7 drawn in Python, or the conversation's last id plus one when that one is not above it (clocks of
#   two instances may disagree by a ms): ids only grow within a conversation. The +1 bumps the random tail;
#   version and variant bits stay;
# - meta, bumped: the conversation's last message and +1 unread for every other member;
# - outbox: the outbox rows of all three (same commit).
# The FOR UPDATE in `conv` makes concurrent sends to one conversation wait for each other, and the waiting one
# then reads the committed last id. PostgreSQL runs every data-modifying CTE to completion, referenced or not.
_SEND_SQL = f"""
WITH conv AS (
    SELECT c.id, c.last_message_id, (c.type = {ConversationKind.DIRECT:d} AND EXISTS (
        SELECT 1 FROM messaging.conversation_members o JOIN auth.users u ON u.id = o.user_id
        WHERE o.conversation_id = c.id AND o.user_id <> %(sender)s
            AND (NOT {active_user("u")} OR {blocked_either_way("o.user_id", "%(sender)s")}))) AS closed
    FROM messaging.conversations_meta c JOIN messaging.conversation_members m
        ON m.conversation_id = c.id AND m.user_id = %(sender)s
    WHERE c.id = %(conv)s AND c.state = {ConversationState.ACTIVE:d}
    FOR UPDATE OF c
), msg AS (
    INSERT INTO messaging.message_index (id, conversation_id, sender_id, content, client_id)
    SELECT CASE WHEN conv.last_message_id IS NULL OR %(id)s::uuid > conv.last_message_id THEN %(id)s::uuid
                ELSE (left(replace(conv.last_message_id::text, '-', ''), 16) || lpad(to_hex(
                    ('x' || right(replace(conv.last_message_id::text, '-', ''), 16))::bit(64)::bigint + 1
                ), 16, '0'))::uuid END,
           conv.id, %(sender)s, %(content)s, %(client_id)s
    FROM conv WHERE NOT conv.closed
    ON CONFLICT (sender_id, client_id) DO NOTHING RETURNING *
), meta AS (
    UPDATE messaging.conversations_meta c SET last_message_id = msg.id, last_message_time = msg.created_at,
        last_message_text = left(msg.content, %(preview)s)
    FROM msg WHERE c.id = msg.conversation_id RETURNING c.id
), bumped AS (
    UPDATE messaging.conversation_members m SET unread_count = m.unread_count + 1
    FROM msg WHERE m.conversation_id = msg.conversation_id AND m.user_id <> msg.sender_id
    RETURNING m.id, m.user_id
), outbox AS (
    INSERT INTO logic.outbox (collection, entity_id, op)
    SELECT 'messages', id, 'upsert' FROM msg
    UNION ALL SELECT 'conversations', id, 'upsert' FROM meta
    UNION ALL SELECT 'conversation_members', id, 'upsert' FROM bumped
    RETURNING id, collection
)
SELECT conv.closed, msg.*, coalesce((SELECT array_agg(user_id) FROM bumped), '{{}}') AS recipients,
       coalesce((SELECT array_agg(id) FROM bumped), '{{}}') AS member_row_ids,
       coalesce((SELECT array_agg(id) FROM outbox WHERE collection = 'messages'), '{{}}') AS message_outbox_ids,
       coalesce((SELECT array_agg(id) FROM outbox WHERE collection <> 'messages'), '{{}}') AS summary_outbox_ids
FROM conv LEFT JOIN msg ON true
"""


async def _existing_send(stores: Stores, sender_id: uuid.UUID, client_id: str) -> Row | None:
    async with stores.pg.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT * FROM messaging.message_index WHERE sender_id = %s AND client_id = %s",
                (sender_id, client_id),
            )
        ).fetchone()
    return normalize_row(row) if row is not None else None


def _replayed(existing: Row, conversation_id: uuid.UUID) -> SendResult:
    if existing["conversation_id"] != conversation_id:
        raise Conflict("client_id was already used for a message in another conversation", code="client_id_reused")
    return SendResult(message_view(existing), False)


async def list_messages(
    stores: Stores, user_id: uuid.UUID, conversation_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
) -> Page[dict[str, Any]]:
    """Newest first. The page's ids come from PostgreSQL's (conversation_id, id) index — always complete —
    and the bodies through the tiers (Redis, then Mongo `messages_recent`, then PostgreSQL for older ones)."""
    await _require_member(stores, conversation_id, user_id)
    async with stores.pg.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT id FROM messaging.message_index "
                "WHERE conversation_id = %s AND (%s::uuid IS NULL OR id < %s) "
                "ORDER BY id DESC LIMIT %s",
                (conversation_id, before, before, limit + 1),
            )
        ).fetchall()
    ids = [row["id"] for row in rows]
    found = {row["id"]: row for row in await _messages_by_id(stores, ids)}
    views = [message_view(found[mid]) for mid in ids if mid in found]
    return make_page(views, limit)


async def _messages_by_id(stores: Stores, ids: list[uuid.UUID]) -> list[Row]:
    """Bodies through the tiers. FerretDB can answer a fill racing another instance's projection of the same
    document with a bulk reply pymongo cannot parse (KeyError, not a PyMongoError): then read PostgreSQL."""
    try:
        return await stores.tiered.get_many("messages", ids)
    except KeyError as exc:
        log.warning("message_fill_failed", extra={"error": f"KeyError: {exc}"})
        async with stores.pg.connection() as conn:
            rows = await (
                await conn.execute("SELECT * FROM messaging.message_index WHERE id = ANY(%s)", (ids,))
            ).fetchall()
        return [normalize_row(row) for row in rows]


async def _lock_message(tx: Transaction, user_id: uuid.UUID, message_id: uuid.UUID) -> tuple[Row, Row]:
    """Lock the message's conversation (then the message) for its sender; 404 for non-members, 403 others."""
    found = await (
        await tx.conn.execute("SELECT conversation_id FROM messaging.message_index WHERE id = %s", (message_id,))
    ).fetchone()
    if found is None:
        raise NotFound("No such message", code="message_not_found")
    try:
        conv = await _lock_conversation(tx.conn, found["conversation_id"], user_id)
    except NotFound:
        raise NotFound("No such message", code="message_not_found") from None
    row = await (
        await tx.conn.execute("SELECT * FROM messaging.message_index WHERE id = %s FOR UPDATE", (message_id,))
    ).fetchone()
    assert row is not None
    message = normalize_row(row)
    if message["sender_id"] != user_id:
        raise Forbidden("Only the sender can change a message", code="not_sender")
    return conv, message


async def edit_message(stores: Stores, user_id: uuid.UUID, message_id: uuid.UUID, content: object) -> dict[str, Any]:
    text = _clean_content(content)
    async with _write(stores) as tx:
        conv, message = await _lock_message(tx, user_id, message_id)
        if message["state"] == MessageState.DELETED:
            raise Conflict("This message was deleted", code="message_deleted")
        updated = await (
            await tx.conn.execute(
                f"UPDATE messaging.message_index SET content = %s, state = {MessageState.EDITED:d}, edited_at = now() "
                "WHERE id = %s "
                "RETURNING *",
                (text, message_id),
            )
        ).fetchone()
        assert updated is not None
        row = normalize_row(updated)
        tx.touch("messages", message_id, row)
        if conv.get("last_message_id") == message_id:
            await _set_preview(tx, conv["id"], text[:PREVIEW_CHARS])
        members = await _member_ids(tx.conn, conv["id"])
    view = message_view(row)
    await publish_safely(stores, members, {"type": "message.edited", "conversation_id": conv["id"], "message": view})
    return view


async def _set_preview(tx: Transaction, conversation_id: uuid.UUID, text: str | None) -> None:
    row = await (
        await tx.conn.execute(
            "UPDATE messaging.conversations_meta SET last_message_text = %s WHERE id = %s RETURNING *",
            (text, conversation_id),
        )
    ).fetchone()
    if row is not None:
        tx.touch("conversations", conversation_id, normalize_row(row))


async def delete_message(stores: Stores, user_id: uuid.UUID, message_id: uuid.UUID) -> dict[str, Any]:
    """Tombstone a message (content removed, place kept); members who had not read it count one less."""
    deltas: list[Delta] = []
    async with _write(stores) as tx:
        conv, message = await _lock_message(tx, user_id, message_id)
        if message["state"] != MessageState.DELETED:
            updated = await (
                await tx.conn.execute(
                    "UPDATE messaging.message_index SET content = NULL, attachments = '{}'::jsonb, "
                    f"state = {MessageState.DELETED:d}, edited_at = now() WHERE id = %s RETURNING *",
                    (message_id,),
                )
            ).fetchone()
            assert updated is not None
            message = normalize_row(updated)
            tx.touch("messages", message_id, message)
            lowered = await (
                await tx.conn.execute(
                    "UPDATE messaging.conversation_members SET unread_count = unread_count - 1 "
                    "WHERE conversation_id = %s AND user_id <> %s AND unread_count > 0 "
                    "AND (last_read_message_id IS NULL OR last_read_message_id < %s) RETURNING *",
                    (conv["id"], user_id, message_id),
                )
            ).fetchall()
            for member in lowered:
                tx.touch("conversation_members", member["id"], normalize_row(member))
                deltas.append((member["user_id"], conv["id"], -1))
            if conv.get("last_message_id") == message_id:
                await _set_preview(tx, conv["id"], None)
        members = await _member_ids(tx.conn, conv["id"])
    await unread_counters(stores).apply(deltas)
    await publish_safely(
        stores, members, {"type": "message.deleted", "conversation_id": conv["id"], "message_id": message_id}
    )
    return message_view(message)


async def like_message(stores: Stores, user_id: uuid.UUID, message_id: uuid.UUID, liked: bool) -> dict[str, Any]:
    """Like (or unlike) a message of a conversation the caller is in; returns the like count.

    Likes of every kind share one implementation (`nubo.posts.like`, membership checked there)."""
    change = posts.like if liked else posts.unlike
    state = await change(stores, user_id, LikeTarget.MESSAGE, message_id)
    return {"message_id": message_id, "liked": state["liked"], "likes": state["like_count"]}


# ---- read markers and unread counters --------------------------------------------------------------------


async def mark_read(
    stores: Stores, user_id: uuid.UUID, conversation_id: uuid.UUID, message_id: uuid.UUID | None = None
) -> dict[str, Any]:
    """Move the caller's read marker forward to `message_id` (default: the latest message), never back."""
    async with _write(stores, wait=False) as tx:
        conv = await _require_member_in(tx.conn, conversation_id, user_id)
        target = message_id or conv.get("last_message_id")
        if target is None:
            return {"conversation_id": conversation_id, "last_read_message_id": None, "unread_count": 0}
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
            return {
                "conversation_id": conversation_id,
                "last_read_message_id": marker,
                "unread_count": member["unread_count"],
            }
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
        members = await _member_ids(tx.conn, conversation_id)
    await unread_counters(stores).apply([(user_id, conversation_id, row["unread_count"] - member["unread_count"])])
    await publish_safely(
        stores,
        members,
        {"type": "read", "conversation_id": conversation_id, "user_id": user_id, "message_id": target},
    )
    return {
        "conversation_id": conversation_id,
        "last_read_message_id": target,
        "unread_count": row["unread_count"],
    }


async def _require_member_in(conn: PgConnection, conversation_id: uuid.UUID, user_id: uuid.UUID) -> Row:
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


async def unread_counts(stores: Stores, user_id: uuid.UUID) -> dict[uuid.UUID, int]:
    """The caller's unread count per conversation, from Redis (rebuilt from PostgreSQL when absent)."""
    counters = unread_counters(stores)
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


async def typing_recipients(stores: Stores, user_id: uuid.UUID, conversation_id: uuid.UUID) -> list[uuid.UUID]:
    """Members other than the typist; 404 when the typist is not a member."""
    members = await member_ids(stores, conversation_id)
    if user_id not in members:
        raise NotFound("No such conversation", code="conversation_not_found")
    return [uid for uid in members if uid != user_id]
