"""Messages: sending, the history, editing, deleting and likes.

- Message ids follow commit order within a conversation: a new id is made greater than the conversation's
  `last_message_id` under the conversation's lock, so "read up to id X" and "newest first" are exact.
- `client_id` is unique per sender: a retried send returns the stored message, publishes nothing again and
  counts nothing twice.
- Delivery order: each member gets one sender's messages in the order they were sent; messages of two
  senders committed a moment apart may be published (hence delivered) in either order, since publishing
  happens after the commit. Clients order a conversation by message id, which is the commit order.
- A send is one statement (:data:`_SEND_SQL`), committed before the sender is acknowledged; its rows reach
  Mongo and Redis through messaging's projector without being waited for.
- Attachments (`media_ids`, the sender's own ready media, stored as `{"media_ids": [...]}`) are shown with
  their URLs to the conversation's members only; deleting the message deletes them unless used elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from nubo import posts
from nubo.errors import Conflict, Forbidden, NotFound, StoreUnavailable
from nubo.ids import new_id
from nubo.logs import get_logger
from nubo.media import MediaView, check_attachable, media_views, release_media
from nubo.messaging.shared import (
    PREVIEW_CHARS,
    clean_client_id,
    clean_content,
    fetch_member_ids,
    lock_conversation,
    require_member,
    write,
)
from nubo.messaging.views import MessageLikes, MessageView, SendResult, attachment_ids, message_view, message_views
from nubo.model import ConversationKind, ConversationState, LikeTarget, MessageState, active_user, blocked_either_way
from nubo.pagination import Page, make_page
from nubo.realtime.frames import MessageDeletedFrame, MessageEditedFrame, MessageNewFrame
from nubo.stores import Stores
from nubo.stores.breaker import store_of
from nubo.stores.entities import Row, normalize_row
from nubo.stores.events import to_json
from nubo.stores.postgres import pg_read
from nubo.stores.redis import REDIS_FAILURES
from nubo.stores.transaction import Transaction
from nubo.stores.unread import SCRIPT_CHUNK, Delta

log = get_logger(__name__)


async def send_message(
    stores: Stores,
    sender_id: uuid.UUID,
    conversation_id: uuid.UUID,
    content: object,
    client_id: object = None,
    *,
    media_ids: object = None,
    committed: Callable[[SendResult], None] | None = None,
) -> SendResult:
    """Store a message (idempotent per `client_id`), count it unread for the others, then publish it.

    `committed` (e.g. the WebSocket ack) is called once the message is committed in PostgreSQL, before it is
    published: the sender learns its id without waiting for the delivery to others, which adds no guarantee
    (a failed publish is logged, never reported to the sender)."""
    attached = posts.media_id_list(media_ids or [])
    text = "" if attached and content in (None, "") else clean_content(content)  # a photo needs no caption
    cid = clean_client_id(client_id)
    stores.require("postgres")  # refused at once, and not counted, while PostgreSQL is down
    # Retries count against the limit too: a client stuck retrying is exactly what the limit is for.
    counted = await _count_send(stores, sender_id)
    try:
        attachments = await _checked_attachments(stores, sender_id, attached)
        result = await _store_send(stores, sender_id, conversation_id, text, cid, attachments, committed)
    except Exception as exc:
        if counted and store_of(exc) is not None:  # failed for an outage: the client did nothing wrong
            await stores.rate_limits.refund("messages", str(sender_id), stores.settings.rate_messages)
        if store_of(exc) is not None and not isinstance(exc, StoreUnavailable):
            raise StoreUnavailable(store_of(exc) or "postgres") from exc
        raise
    if result is None:  # this client_id was used before: an idempotent retry
        existing = await _existing_send(stores, sender_id, cid or "")
        assert existing is not None
        replayed = _replayed(existing, conversation_id)
        if committed is not None:
            committed(replayed)
        # The first attempt committed; its process may have died before publishing: make sure it went out.
        await stores.relay.ensure_published(replayed.message.id)
        return replayed
    return result


async def _checked_attachments(stores: Stores, sender_id: uuid.UUID, attached: list[uuid.UUID]) -> list[MediaView]:
    """The views of the attachments, in order, once checked to be the sender's own ready media (422 if not)."""
    if not attached:
        return []
    async with pg_read(stores) as conn:
        await check_attachable(conn, sender_id, attached, field="media_ids")
    found = await media_views(stores, attached)
    return [found[media_id] for media_id in attached if media_id in found]


async def _count_send(stores: Stores, sender_id: uuid.UUID) -> bool:
    """Count the send against the sender's limit (429 when over it); True when counted. While Redis is down
    or stalled the send is not limited (fail open) and waits at most ``NUBO_REDIS_STALL_MS`` for it."""
    if stores.store_down("redis"):
        return False
    counting = asyncio.ensure_future(
        stores.rate_limits.limit("messages", str(sender_id), stores.settings.rate_messages)
    )
    try:
        await asyncio.wait_for(asyncio.shield(counting), stores.settings.redis_stall_ms / 1000)
    except TimeoutError:
        counting.add_done_callback(_ignore_outcome)  # counted late, or not at all: never refused for it
        stores.failures.breakers.stalled("redis")  # the next sends do not wait, their events go by the relay
        return False
    return True


def _ignore_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _store_send(
    stores: Stores,
    sender_id: uuid.UUID,
    conversation_id: uuid.UUID,
    text: str,
    cid: str | None,
    attachments: list[MediaView],
    committed: Callable[[SendResult], None] | None,
) -> SendResult | None:
    """The send: one statement (:data:`_SEND_SQL`: lock, checks, insert, counters, outbox rows and the
    ``message.new`` event row), committed by itself: one round trip. After the commit, in order: the ack
    (`committed`), then the unread deltas and the publish in one Redis round trip. None: a replayed client_id.
    The rows go to Mongo/Redis through messaging's projector without being waited for."""
    params = {
        "id": new_id(),
        "conv": conversation_id,
        "sender": sender_id,
        "content": text,
        "client_id": cid,
        "preview": PREVIEW_CHARS,
        "attachments": json.dumps({"media_ids": [str(media.id) for media in attachments]} if attachments else {}),
        **_event_template(conversation_id, sender_id, text, cid, attachments),
    }
    async with stores.transaction(one_statement=True, wait=False) as tx:
        found = await (await tx.conn.execute(_SEND_SQL, params)).fetchone()
        if found is None:
            raise NotFound("No such conversation", code="conversation_not_found")
        if found["closed"]:
            raise Forbidden("You cannot send messages in this conversation", code="conversation_closed")
        if found["id"] is None:
            return None
        row = normalize_row({name: value for name, value in found.items() if name != "closed"})
        recipients = [sender_id, *row.pop("recipients")]
        message_outbox_ids, summary_outbox_ids = row.pop("message_outbox_ids"), row.pop("summary_outbox_ids")
        member_row_ids = row.pop("member_row_ids")
        view = message_view(row, attachments)
        result = SendResult(message=view, created=True)
        if committed is not None:
            tx.on_commit(lambda: committed(result))
        deltas = [(uid, conversation_id, 1) for uid in recipients[1:]]
        event = MessageNewFrame(conversation_id=conversation_id, message=view)
        if len(deltas) > SCRIPT_CHUNK:  # big groups: the chunked path, then the event on its own
            tx.on_commit(lambda: stores.unread.apply(deltas))
            tx.emit(recipients, event, key=view.id, written=True)
        else:
            tx.emit(recipients, event, key=view.id, before=_unread_writer(stores, deltas), written=True)
    projector = stores.messaging_projector
    # Projected later from PostgreSQL's current state; only the message is read through the tiers.
    projector.defer_rows({"messages": [view.id]}, message_outbox_ids)
    summaries = {"conversations": [conversation_id], "conversation_members": member_row_ids}
    projector.defer_rows(summaries, summary_outbox_ids, lazy=True)
    return result


_MARK = secrets.token_hex(8)  # placeholders in the event template: no content can hold them unescaped
_ID_MARK, _AT_MARK = f"@@id-{_MARK}@@", f"@@at-{_MARK}@@"


def _event_template(
    conversation_id: uuid.UUID, sender_id: uuid.UUID, text: str, cid: str | None, attachments: list[MediaView]
) -> dict[str, str]:
    """The ``message.new`` body as the event row keeps it, with the two values only the statement knows (the
    message id and its creation time) as quoted placeholders the statement replaces. JSON escapes every quote
    of the content, so a quoted placeholder can only be one of ours. The writer publishes the body it builds
    from the committed row; the relay publishes this one (same fields, the same RFC 3339 time text)."""
    message = dict.fromkeys(MessageView.__struct_fields__)
    message.update(
        id=_ID_MARK,
        conversation_id=str(conversation_id),
        sender_id=str(sender_id),
        content=text,
        state=int(MessageState.SENT),
        message_type=0,
        client_id=cid,
        created_at=_AT_MARK,
        edited_at=None,
        attachments=attachments,
    )
    body = {"type": "message.new", "conversation_id": str(conversation_id), "message": message}
    return {"event": to_json(body), "id_mark": f'"{_ID_MARK}"', "at_mark": f'"{_AT_MARK}"'}


def _unread_writer(stores: Stores, deltas: list[Delta]) -> Callable[[], Awaitable[None]] | None:
    """The unread deltas as a Redis write issued with the event's publish (one round trip). A failure is
    logged and counted, and drops the hashes so that reads rebuild them from PostgreSQL."""
    counters = stores.unread
    apply = counters.applier(deltas)
    if apply is None:
        return None

    async def write() -> None:
        try:
            await apply()
        except REDIS_FAILURES as exc:
            stores.count_failure("redis_unread")
            log.warning("unread_update_failed", extra={"error": str(exc)[:200]})
            await counters.forget(uid for uid, _, _ in deltas)

    return write


# One statement for the whole send, so that it needs one round trip:
# - conv: the conversation, locked, when the sender is a member (no row: 404); `closed` when it is a direct
#   one whose other user is not active or blocks or is blocked by the sender (403);
# - msg: the message (none when closed, or when its client_id was used: an idempotent retry). Its id is the
#   UUIDv7 drawn in Python, or the conversation's last id plus one when that one is not above it (clocks of
#   two instances may disagree by a ms): ids only grow within a conversation. The +1 bumps the random tail;
#   version and variant bits stay;
# - meta, bumped: the conversation's last message and +1 unread for every other member;
# - event: the `message.new` event row (identity: the message id), from the template of `_event_template`;
# - outbox: the outbox rows of all three (same commit).
# The FOR UPDATE in `conv` makes concurrent sends to one conversation wait for each other, and the waiting one
# then reads the committed last id. PostgreSQL runs every data-modifying CTE to completion, referenced or not.
_SEND_SQL = rf"""
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
    INSERT INTO messaging.message_index (id, conversation_id, sender_id, content, client_id, attachments)
    SELECT CASE WHEN conv.last_message_id IS NULL OR %(id)s::uuid > conv.last_message_id THEN %(id)s::uuid
                ELSE (left(replace(conv.last_message_id::text, '-', ''), 16) || lpad(to_hex(
                    ('x' || right(replace(conv.last_message_id::text, '-', ''), 16))::bit(64)::bigint + 1
                ), 16, '0'))::uuid END,
           conv.id, %(sender)s, %(content)s, %(client_id)s, %(attachments)s::jsonb
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
), event AS (
    INSERT INTO logic.event_outbox (id, recipients, body)
    SELECT msg.id, array_prepend(msg.sender_id, coalesce((SELECT array_agg(user_id) FROM bumped), '{{}}')),
           replace(replace(%(event)s, %(id_mark)s, '"' || msg.id::text || '"'), %(at_mark)s,
                   '"' || regexp_replace(to_char(msg.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'),
                                         '\.000000$', '') || 'Z"')
    FROM msg
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
    return SendResult(message=message_view(existing), created=False)


async def list_messages(
    stores: Stores, user_id: uuid.UUID, conversation_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
) -> Page[MessageView]:
    """Newest first. The page's ids come from PostgreSQL's (conversation_id, id) index — always complete —
    and the bodies through the tiers (Redis, then Mongo `messages_recent`, then PostgreSQL for older ones)."""
    await require_member(stores, conversation_id, user_id)
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
    views = await message_views(stores, [found[mid] for mid in ids if mid in found])
    return make_page(views, limit, key=lambda view: view.id)


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
        conv = await lock_conversation(tx.conn, found["conversation_id"], user_id)
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


async def edit_message(stores: Stores, user_id: uuid.UUID, message_id: uuid.UUID, content: object) -> MessageView:
    text = clean_content(content)
    async with write(stores) as tx:
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
        members = await fetch_member_ids(tx.conn, conv["id"])
        view = (await message_views(stores, [row]))[0]
        tx.emit(members, MessageEditedFrame(conversation_id=conv["id"], message=view))
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


async def delete_message(stores: Stores, user_id: uuid.UUID, message_id: uuid.UUID) -> MessageView:
    """Tombstone a message (content removed, place kept); members who had not read it count one less."""
    deltas: list[Delta] = []
    async with write(stores) as tx:
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
            await release_media(tx, stores, user_id, attachment_ids(message))  # used nowhere else: deleted
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
        members = await fetch_member_ids(tx.conn, conv["id"])
        tx.on_commit(lambda: stores.unread.apply(deltas))
        tx.emit(members, MessageDeletedFrame(conversation_id=conv["id"], message_id=message_id))
    return message_view(message)


async def like_message(stores: Stores, user_id: uuid.UUID, message_id: uuid.UUID, liked: bool) -> MessageLikes:
    """Like (or unlike) a message of a conversation the caller is in; returns the like count.

    Likes of every kind share one implementation (`nubo.posts.like`, membership checked there)."""
    change = posts.like if liked else posts.unlike
    state = await change(stores, user_id, LikeTarget.MESSAGE, message_id)
    return MessageLikes(message_id=message_id, liked=state.liked, likes=state.like_count)
