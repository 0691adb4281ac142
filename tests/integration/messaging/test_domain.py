"""nubo.messaging against the real stores: conversations, idempotent sends, unread counters, reads."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from nubo import messaging
from nubo.errors import Forbidden, NotFound, RateLimited, ValidationFailed
from nubo.ids import new_id
from nubo.model import MessageState
from nubo.stores import Stores
from nubo.stores.events import seq_of
from nubo.stores.projection import Projector
from tests.helpers.messaging import make_users


async def _settled(stores: Stores) -> None:
    """Let the background projection of recent sends finish, so the reads below are served by the upper
    tiers (what is being checked) rather than by the PostgreSQL fallback."""
    await stores.messaging_projector.drain()


async def test_direct_conversation_is_unique_per_pair(db: Stores) -> None:
    alice, bob = await make_users(db, "alice", "bob")
    first, created = await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[str(bob.id)])
    again, created_again = await messaging.create_conversation(db, bob.id, kind="direct", user_ids=[alice.id])
    assert created and not created_again
    assert first.id == again.id
    assert {m.user_id for m in first.members} == {alice.id, bob.id}
    assert first.peer_id == bob.id and again.peer_id == alice.id


async def test_concurrent_direct_creation_makes_one(db: Stores) -> None:
    alice, bob = await make_users(db, "alice", "bob")
    results = await asyncio.gather(
        *(
            messaging.create_conversation(db, a.id, kind="direct", user_ids=[b.id])
            for a, b in [(alice, bob), (bob, alice)] * 3
        )
    )
    assert len({view.id for view, _ in results}) == 1
    assert sum(created for _, created in results) == 1


async def test_blocked_users_cannot_meet(db: Stores) -> None:
    alice, bob, carol = await make_users(db, "alice", "bob", "carol")
    async with db.pg.connection() as conn:
        await conn.execute(
            "INSERT INTO auth.blocks (id, blocker_id, blocked_id) VALUES (%s, %s, %s)",
            (new_id(), bob.id, alice.id),
        )
    with pytest.raises(NotFound):
        await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id])
    with pytest.raises(Forbidden):  # carol may not put alice and bob together either
        await messaging.create_conversation(db, carol.id, kind="group", user_ids=[alice.id, bob.id], title="g")
    group, _ = await messaging.create_conversation(db, carol.id, kind="group", user_ids=[alice.id], title="g")
    with pytest.raises(Forbidden):
        await messaging.add_members(db, carol.id, group.id, [bob.id])


async def test_send_is_idempotent_and_counts_unread(db: Stores) -> None:
    alice, bob, carol = await make_users(db, "alice", "bob", "carol")
    group, _ = await messaging.create_conversation(
        db, alice.id, kind="group", user_ids=[bob.id, carol.id], title="trio"
    )
    cid = group.id
    first = await messaging.send_message(db, alice.id, cid, "hello", "c-1")
    retry = await messaging.send_message(db, alice.id, cid, "hello", "c-1")
    assert first.created and not retry.created and first.message.id == retry.message.id
    await messaging.send_message(db, bob.id, cid, "hi alice", "c-1")  # client ids are per sender
    for user, expected in ((alice, 1), (bob, 1), (carol, 2)):
        assert (await messaging.unread_counts_from_postgres(db, user.id))[cid] == expected
        assert (await messaging.unread_counts(db, user.id)).get(cid, 0) == expected
    async with db.pg.connection() as conn:
        row = await (
            await conn.execute("SELECT count(*) AS n FROM messaging.message_index WHERE conversation_id = %s", (cid,))
        ).fetchone()
    assert row is not None and row["n"] == 2


async def test_the_sender_learns_the_id_once_committed_and_before_the_publish(db: Stores) -> None:
    """The WebSocket ack goes out from `committed`: after the commit (the row is in PostgreSQL), before the
    delivery to others; an idempotent retry is acknowledged too, and published nothing new (it only makes sure
    the first attempt's event went out: an identity is published once)."""
    alice, bob = await make_users(db, "alice", "bob")
    conv, _ = await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id])
    steps: list[tuple[str, object]] = []
    real_publish = db.relay.publish_committed

    async def publish(*args: Any, **kwargs: Any) -> None:
        steps.append(("published", None))
        await real_publish(*args, **kwargs)

    def committed(result: messaging.SendResult) -> None:
        steps.append(("committed", (result.message.id, result.created)))

    db.relay.publish_committed = publish  # type: ignore[method-assign]  # records the order; the real one runs
    try:
        sent = await messaging.send_message(db, alice.id, conv.id, "hi", "ack-1", committed=committed)
        retry = await messaging.send_message(db, alice.id, conv.id, "hi", "ack-1", committed=committed)
    finally:
        db.relay.publish_committed = real_publish  # type: ignore[method-assign]
    message_id = sent.message.id
    assert steps == [("committed", (message_id, True)), ("published", None), ("committed", (message_id, False))]
    assert retry.message.id == message_id
    async with db.pg.connection() as conn:
        row = await (
            await conn.execute("SELECT content FROM messaging.message_index WHERE id = %s", (message_id,))
        ).fetchone()
    assert row is not None and row["content"] == "hi"
    assert seq_of(await db.events.current_seq(bob.id)) == 1  # delivered once


async def test_read_delete_and_unread_stay_in_step(db: Stores) -> None:
    alice, bob = await make_users(db, "alice", "bob")
    conv, _ = await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id])
    cid = conv.id
    await messaging.unread_counts(db, bob.id)  # builds Bob's Redis hash now, so later changes are deltas
    sent = [(await messaging.send_message(db, alice.id, cid, f"m{i}")).message for i in range(5)]
    assert (await messaging.unread_counts(db, bob.id))[cid] == 5
    read = await messaging.mark_read(db, bob.id, cid, sent[1].id)
    assert read.unread_count == 3
    stale = await messaging.mark_read(db, bob.id, cid, sent[0].id)  # never backwards
    assert stale.last_read_message_id == sent[1].id and stale.unread_count == 3
    await messaging.delete_message(db, alice.id, sent[4].id)  # unread for Bob: one less
    await messaging.delete_message(db, alice.id, sent[0].id)  # already read: unchanged
    assert (await messaging.unread_counts_from_postgres(db, bob.id))[cid] == 2
    assert (await messaging.unread_counts(db, bob.id))[cid] == 2
    with pytest.raises(Forbidden):
        await messaging.edit_message(db, bob.id, sent[2].id, "not mine")
    edited = await messaging.edit_message(db, alice.id, sent[2].id, "fixed")
    assert edited.state == MessageState.EDITED and edited.content == "fixed"
    await _settled(db)
    page = await messaging.list_messages(db, bob.id, cid, limit=10, before=None)
    assert [m.id for m in page.items] == [m.id for m in reversed(sent)]
    assert page.items[0].content is None and page.items[0].state == MessageState.DELETED
    assert page.items[2].content == "fixed"
    await messaging.mark_read(db, bob.id, cid)
    assert (await messaging.unread_counts(db, bob.id)).get(cid, 0) == 0


async def test_message_pages_newest_first_with_cursor(db: Stores) -> None:
    alice, bob = await make_users(db, "alice", "bob")
    conv, _ = await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id])
    ids = [(await messaging.send_message(db, alice.id, conv.id, f"n{i}")).message.id for i in range(7)]
    await _settled(db)
    seen: list[uuid.UUID] = []
    before = None
    while True:
        page = await messaging.list_messages(db, bob.id, conv.id, limit=3, before=before)
        seen += [m.id for m in page.items]
        if page.next is None:
            break
        before = page.next
    assert seen == list(reversed(ids))
    assert ids == sorted(ids)  # ids follow commit order inside a conversation


async def test_ids_grow_past_a_last_id_from_a_clock_ahead(db: Stores) -> None:
    """Another instance's clock may be ahead: a message id drawn here that is not above the conversation's last
    id becomes that id plus one (version and variant kept), so ids keep following commit order."""
    alice, bob = await make_users(db, "alice", "bob")
    conv, _ = await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id])
    ahead = uuid.UUID("7fffffff-ffff-7abc-8123-4567890abcde")  # a UUIDv7 of the year 4147
    async with db.pg.connection() as conn:
        await conn.execute(
            "UPDATE messaging.conversations_meta SET last_message_id = %s WHERE id = %s", (ahead, conv.id)
        )
    first = (await messaging.send_message(db, bob.id, conv.id, "one")).message.id
    second = (await messaging.send_message(db, alice.id, conv.id, "two")).message.id
    assert first == uuid.UUID("7fffffff-ffff-7abc-8123-4567890abcdf")
    assert second == uuid.UUID("7fffffff-ffff-7abc-8123-4567890abce0")
    assert (first.version, first.variant) == (7, uuid.RFC_4122)


async def test_concurrent_sends_to_one_conversation_get_ids_in_commit_order(db: Stores) -> None:
    """Each send sets the conversation's last message to its own: the last to commit must hold the highest id
    (a send that committed after a higher id would leave a lower one there)."""
    alice, bob, carol = await make_users(db, "alice", "bob", "carol")
    group, _ = await messaging.create_conversation(
        db, alice.id, kind="group", user_ids=[bob.id, carol.id], title="busy"
    )
    for round_ in range(3):
        sent = await asyncio.gather(
            *(messaging.send_message(db, user.id, group.id, f"r{round_}") for user in [alice, bob, carol] * 7)
        )
        async with db.pg.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT last_message_id FROM messaging.conversations_meta WHERE id = %s", (group.id,)
                )
            ).fetchone()
        ids = [result.message.id for result in sent]
        assert len(set(ids)) == 21
        assert row is not None and row["last_message_id"] == max(ids)


async def test_a_block_closes_an_existing_direct_conversation(db: Stores) -> None:
    alice, bob = await make_users(db, "alice", "bob")
    conv, _ = await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id])
    await messaging.send_message(db, alice.id, conv.id, "before")
    async with db.pg.connection() as conn:
        await conn.execute(
            "INSERT INTO auth.blocks (id, blocker_id, blocked_id) VALUES (%s, %s, %s)",
            (new_id(), bob.id, alice.id),
        )
    for sender in (alice, bob):  # either way
        with pytest.raises(Forbidden) as refused:
            await messaging.send_message(db, sender.id, conv.id, "after")
        assert refused.value.code == "conversation_closed"
    async with db.pg.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT count(*) AS n FROM messaging.message_index WHERE conversation_id = %s", (conv.id,)
            )
        ).fetchone()
    assert row is not None and row["n"] == 1


async def _script_checks(stores: Stores) -> int:
    stats = await stores.redis.info("commandstats")
    return int(stats.get("cmdstat_script|exists", {}).get("calls", 0))


async def test_a_send_updates_unread_and_publishes_without_a_script_check(db: Stores) -> None:
    """The unread deltas and the event leave in one batch; a redis-py pipeline holding scripts would first ask
    SCRIPT EXISTS, one more round trip per message."""
    alice, bob = await make_users(db, "alice", "bob")
    conv, _ = await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id])
    await messaging.unread_counts(db, bob.id)  # Bob's hash exists: sends apply deltas to it
    checks = await _script_checks(db)
    for i in range(5):
        await messaging.send_message(db, alice.id, conv.id, f"m{i}")
    assert await _script_checks(db) == checks
    assert (await messaging.unread_counts(db, bob.id))[conv.id] == 5
    assert seq_of(await db.events.current_seq(bob.id)) == 5


async def test_presence_goes_to_peers_of_direct_conversations_and_small_groups_only(db: Stores) -> None:
    alice, bob, carol, dave = await make_users(db, "alice", "bob", "carol", "dave")
    crowd = [new_id() for _ in range(messaging.PRESENCE_GROUP_LIMIT - 1)]  # with alice and dave: one over
    async with db.pg.connection() as conn, conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO auth.users (id, username, email, password_hash, first_name, last_name) "
            "VALUES (%s, %s, %s, 'x', 'C', 'Rowd')",
            [(uid, f"crowd_{uid.hex[-12:]}", f"{uid.hex}@example.test") for uid in crowd],
        )
    await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id])
    await messaging.create_conversation(db, alice.id, kind="group", user_ids=[carol.id], title="small")
    big, _ = await messaging.create_conversation(
        db, alice.id, kind="group", user_ids=[dave.id, *crowd], title="one over the limit"
    )
    assert len(big.members) == messaging.PRESENCE_GROUP_LIMIT + 1
    assert set(await messaging.conversation_peers(db, alice.id)) == {bob.id, carol.id}
    assert await messaging.conversation_peers(db, dave.id) == []
    await messaging.leave_conversation(db, crowd[0], big.id)  # now exactly at the limit
    assert set(await messaging.conversation_peers(db, dave.id)) == {alice.id, *crowd[1:]}


async def test_non_members_see_nothing(db: Stores) -> None:
    alice, bob, eve = await make_users(db, "alice", "bob", "eve")
    conv, _ = await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id])
    sent = await messaging.send_message(db, alice.id, conv.id, "secret")
    for call in (
        messaging.get_conversation(db, eve.id, conv.id),
        messaging.list_messages(db, eve.id, conv.id, limit=5, before=None),
        messaging.send_message(db, eve.id, conv.id, "let me in"),
        messaging.mark_read(db, eve.id, conv.id),
        messaging.edit_message(db, eve.id, sent.message.id, "x"),
        messaging.like_message(db, eve.id, sent.message.id, True),
    ):
        with pytest.raises(NotFound):
            await call


async def test_group_roles(db: Stores) -> None:
    alice, bob, carol, dave = await make_users(db, "alice", "bob", "carol", "dave")
    group, _ = await messaging.create_conversation(db, alice.id, kind="group", user_ids=[bob.id], title="g")
    with pytest.raises(Forbidden):
        await messaging.add_members(db, bob.id, group.id, [carol.id])
    view = await messaging.add_members(db, alice.id, group.id, [carol.id, dave.id])
    assert {m.user_id for m in view.members} == {alice.id, bob.id, carol.id, dave.id}
    with pytest.raises(Forbidden):
        await messaging.remove_member(db, bob.id, group.id, carol.id)
    await messaging.remove_member(db, alice.id, group.id, dave.id)
    await messaging.leave_conversation(db, alice.id, group.id)  # creator leaves: Bob inherits
    view = await messaging.get_conversation(db, bob.id, group.id)
    roles = {m.user_id: m.role for m in view.members}
    assert roles == {bob.id: "creator", carol.id: "member"}
    with pytest.raises(NotFound):
        await messaging.get_conversation(db, dave.id, group.id)


async def test_validation_errors(db: Stores) -> None:
    alice, bob = await make_users(db, "alice", "bob")
    conv, _ = await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id])
    for content in ("", "   ", None, 5, "x" * (messaging.MAX_CONTENT + 1)):
        with pytest.raises(ValidationFailed):
            await messaging.send_message(db, alice.id, conv.id, content)
    with pytest.raises(ValidationFailed):
        await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id, new_id()])
    with pytest.raises(ValidationFailed):
        await messaging.create_conversation(db, alice.id, kind="channel", user_ids=[bob.id])
    with pytest.raises(ValidationFailed):
        await messaging.create_conversation(db, alice.id, kind="group", user_ids=["nope"], title="t")


async def test_sends_are_rate_limited_per_user(db: Stores) -> None:
    alice, bob = await make_users(db, "alice", "bob")
    conv, _ = await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id])
    limit = db.settings.rate_messages.amount
    for i in range(limit):
        await messaging.send_message(db, alice.id, conv.id, f"m{i}")
    with pytest.raises(RateLimited):
        await messaging.send_message(db, alice.id, conv.id, "one too many")
    await messaging.send_message(db, bob.id, conv.id, "bob is not limited")


async def test_events_are_published_after_commit_to_members_only(db: Stores) -> None:
    alice, bob, eve = await make_users(db, "alice", "bob", "eve")
    bus = db.events
    conv, _ = await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id])
    before = {u.id: await bus.current_seq(u.id) for u in (alice, bob, eve)}
    sent = await messaging.send_message(db, alice.id, conv.id, "hi")
    after = {u.id: await bus.current_seq(u.id) for u in (alice, bob, eve)}
    assert after[alice.id] == before[alice.id] + 1 and after[bob.id] == before[bob.id] + 1
    assert after[eve.id] == before[eve.id]
    history = await bus.history(bob.id, before[bob.id])
    assert len(history) == 1 and str(sent.message.id) in history[0][1]


async def test_lazy_batches_of_instances_started_together_fall_due_at_different_times(db: Stores) -> None:
    """Summary rows wait a random 60-100% of LAZY_SECONDS, so instances that start together do not flush them
    to Mongo in step (each flush is a burst of replacements)."""
    loop = asyncio.get_running_loop()
    waits = []
    for index in range(20):
        projector = Projector(db, f"jitter-{index}")
        started = loop.time()
        projector.defer_rows({"conversations": []}, [], lazy=True)
        assert projector.lazy_due is not None and projector.task is not None
        waits.append(projector.lazy_due - started)
        projector.task.cancel()
        await asyncio.gather(projector.task, return_exceptions=True)
    lazy = Projector.LAZY_SECONDS
    assert all((1 - Projector.LAZY_JITTER) * lazy - 0.01 <= wait <= lazy + 0.01 for wait in waits), waits
    assert max(waits) - min(waits) > 0.1 * lazy, waits
