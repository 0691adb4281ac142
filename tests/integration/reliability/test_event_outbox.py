"""The event outbox and the epoch, in process against the run's services: what the relay publishes, that an
identity is published once, and that a lost Redis state is answered with resync."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from nubo.ids import new_id
from nubo.realtime.hub import Connection, Hub
from nubo.stores import Stores
from nubo.stores.events import epoch_of, seq_of


class Recorder:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_text(self, data: str) -> None:
        self.sent.append(json.loads(data))

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        pass


async def _until(predicate: Any, within: float = 5.0, message: object = "condition not met") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.01)


async def _outbox_has(db: Stores, key: object) -> bool:
    async with db.pg.connection() as conn:
        row = await (await conn.execute("SELECT 1 FROM logic.event_outbox WHERE id = %s", (key,))).fetchone()
    return row is not None


async def test_an_event_left_in_the_outbox_is_published_once_by_the_relay(db: Stores) -> None:
    user, key = new_id(), new_id()
    published_fast = db.relay.publish_committed

    async def dies_before_publishing(*_: Any) -> None:  # as if the process died after the commit
        return None

    db.relay.publish_committed = dies_before_publishing  # type: ignore[method-assign]
    try:
        async with db.transaction() as tx:
            tx.emit([user], {"type": "probe"}, key=key)
    finally:
        db.relay.publish_committed = published_fast  # type: ignore[method-assign]
    assert await _outbox_has(db, key)
    assert seq_of(await db.events.current_seq(user)) == 0
    assert await db.relay.relay_once(min_age_seconds=0) >= 1
    assert seq_of(await db.events.current_seq(user)) == 1
    assert not await _outbox_has(db, key)
    # Published again (a relay retry after a crash): Redis knows the identity, nothing new goes out.
    again = await db.events.publish([user], {"type": "probe"}, event_key=key)
    assert seq_of(again[user]) == 1 and seq_of(await db.events.current_seq(user)) == 1


async def test_a_retry_makes_sure_the_event_went_out(db: Stores) -> None:
    user, key = new_id(), new_id()
    async with db.pg.connection() as conn:
        await conn.execute(
            "INSERT INTO logic.event_outbox (id, recipients, body) VALUES (%s, %s, %s)",
            (key, [user], '{"type":"probe"}'),
        )
    assert await db.relay.ensure_published(key)
    assert seq_of(await db.events.current_seq(user)) == 1
    assert not await _outbox_has(db, key)


async def test_a_lost_redis_state_is_answered_with_resync_never_a_silent_gap(db: Stores) -> None:
    hub = Hub(db)
    await hub.start()
    try:
        user = new_id()
        sock = Recorder()
        conn = Connection(hub, user, sock)
        await hub.attach(conn)
        conn.writer_task = asyncio.create_task(conn.run_writer())
        await _until(lambda: bool(sock.sent))  # hello: the position is read
        await db.events.publish([user], {"type": "t", "i": 0})
        await _until(lambda: any(f.get("i") == 0 for f in sock.sent))
        old_epoch = epoch_of(sock.sent[-1]["event_id"])
        # Redis loses everything of this prefix (a flush, an empty restart): ids start again at 1.
        keys = [key async for key in db.redis.scan_iter(match=db.keys("rt", "*"))]
        await db.redis.delete(*keys)
        await db.events.publish([user], {"type": "t", "i": 1})
        await _until(lambda: any(f.get("i") == 1 for f in sock.sent), message=sock.sent)
        kinds = [f["type"] for f in sock.sent]
        assert kinds == ["hello", "t", "resync", "t"], kinds
        assert epoch_of(sock.sent[-1]["event_id"]) != old_epoch
        assert sock.sent[2]["reason"] == "epoch_changed"
        hub.detach_now(conn)
        conn.writer_task.cancel()
        await asyncio.gather(conn.writer_task, return_exceptions=True)
    finally:
        await hub.stop()


async def test_a_send_writes_its_event_row_in_its_one_statement(db: Stores) -> None:
    from datetime import datetime

    from nubo import messaging
    from tests.helpers.messaging import make_users

    alice, bob = await make_users(db, "alice", "bob")
    conv, _ = await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id])
    content = 'quotes " and "@@id-x@@" stay content \\ ✓'
    sent = await messaging.send_message(db, alice.id, conv.id, content, "row-1")
    async with db.pg.connection() as conn:
        row = await (
            await conn.execute("SELECT recipients, body FROM logic.event_outbox WHERE id = %s", (sent.message.id,))
        ).fetchone()
    assert row is not None and row["recipients"] == [alice.id, bob.id]
    body = json.loads(row["body"])
    message = body["message"]
    assert body["type"] == "message.new" and body["conversation_id"] == str(conv.id)
    assert message["id"] == str(sent.message.id) and message["content"] == content
    assert datetime.fromisoformat(message["created_at"]) == sent.message.created_at
    assert list(message) == list(json.loads(messaging_body(sent))["message"])


def messaging_body(sent: Any) -> str:
    from nubo.realtime.frames import MessageNewFrame
    from nubo.stores.events import to_json

    return to_json(MessageNewFrame(conversation_id=sent.message.conversation_id, message=sent.message))
