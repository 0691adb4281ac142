"""The hub and bus against real Redis, in process: ids, history, gap filling, resync, overflow, presence.

The sockets here are recording stand-ins for a WebSocket (the stores are all real).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nubo import accounts, messaging
from nubo.ids import new_id
from nubo.realtime.hub import CLOSE_QUEUE_OVERFLOW, CLOSE_SESSION_REVOKED, Connection, Durable, Hub
from nubo.stores import BACKGROUND_PG_SLOTS, Stores
from nubo.stores import events as bus_module
from nubo.stores.events import epoch_of, position, seq_of
from nubo.stores.presence import online_among
from tests.helpers.frames import known_frame_problem
from tests.helpers.harness import user_with_session


class RecordingSocket:
    """Collects what the writer sends; `block` makes sends hang like a client that stopped reading. A frame of a
    documented type that does not fit the AsyncAPI document is recorded in `invalid` (checked after each test)."""

    created: list[RecordingSocket] = []  # noqa: RUF012 (every socket of the running test)

    def __init__(self) -> None:
        RecordingSocket.created.append(self)
        self.invalid: list[str] = []
        self.sent: list[Any] = []
        self.block = asyncio.Event()
        self.block.set()
        self.closed: int | None = None

    async def send_text(self, data: str) -> None:
        await self.block.wait()
        if (problem := known_frame_problem(data)) is not None:
            self.invalid.append(problem)
        self.sent.append(json.loads(data) if data.startswith("{") else data)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = code

    def durable_ids(self) -> list[int]:
        """Sequence numbers (within the epoch) of the durable events received."""
        return [
            seq_of(f["event_id"])
            for f in self.sent
            if isinstance(f, dict) and "event_id" in f and f.get("type") != "resync"
        ]


@pytest.fixture(autouse=True)
def frames_fit_the_document() -> Any:
    """Every frame of a documented type that a test's sockets received fits the AsyncAPI document."""
    RecordingSocket.created.clear()
    yield
    invalid = [problem for socket in RecordingSocket.created for problem in socket.invalid]
    assert not invalid, f"frames outside the AsyncAPI document: {invalid[:3]}"


async def _until(predicate: Any, within: float = 5.0) -> None:
    """Poll `predicate` (state changes come from other tasks; there is no event to wait on)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)


@pytest.fixture
async def hub(db: Stores) -> Any:
    async def revoked_among(session_keys: list[str]) -> set[str]:
        return await accounts.revoked_among(db, session_keys)

    hub = Hub(db, revoked_among=revoked_among)
    await hub.start()
    yield hub
    await hub.stop()


async def _open(
    hub: Hub, user_id: uuid.UUID, resume_from: int | None = None, session_id: uuid.UUID | None = None
) -> tuple[Connection, RecordingSocket]:
    socket = RecordingSocket()
    conn = Connection(hub, user_id, socket, resume_from=resume_from, session_id=session_id)
    await hub.attach(conn)
    conn.writer_task = asyncio.create_task(conn.run_writer())
    await _until(lambda: bool(socket.sent))  # hello
    return conn, socket


async def _close(hub: Hub, conn: Connection) -> None:
    hub.detach_now(conn)
    assert conn.writer_task is not None
    conn.writer_task.cancel()
    await asyncio.gather(conn.writer_task, return_exceptions=True)


async def test_ids_increase_per_user_and_only_recipients_get_events(db: Stores, hub: Hub) -> None:
    alice, bob = new_id(), new_id()
    conn_a, sock_a = await _open(hub, alice)
    conn_b, sock_b = await _open(hub, bob)
    bus = db.events
    for i in range(5):
        await bus.publish([alice], {"type": "t", "i": i})
    await _until(lambda: len(sock_a.durable_ids()) == 5)
    assert sock_a.durable_ids() == [1, 2, 3, 4, 5]
    assert [f["i"] for f in sock_a.sent[1:]] == [0, 1, 2, 3, 4]
    await asyncio.sleep(0.1)
    assert sock_b.durable_ids() == []
    await _close(hub, conn_a)
    await _close(hub, conn_b)


async def test_duplicates_dropped_and_gaps_filled_from_history(db: Stores, hub: Hub) -> None:
    user = new_id()
    conn, sock = await _open(hub, user)
    bus = db.events
    # Publish while the socket is not registered, as if pub/sub lost these messages on the way.
    hub.detach_now(conn)
    for i in range(3):
        await bus.publish([user], {"type": "t", "i": i})
    hub.local.setdefault(conn.user_key, set()).add(conn)
    await bus.publish([user], {"type": "t", "i": 3})
    await _until(lambda: len(sock.durable_ids()) == 4)
    history = await bus.history(user, 0)
    conn.offer(Durable(history[1][0], history[1][1]))  # a duplicate arriving late
    await bus.publish([user], {"type": "t", "i": 4})
    await _until(lambda: len(sock.durable_ids()) == 5)
    await asyncio.sleep(0.05)
    assert sock.durable_ids() == [1, 2, 3, 4, 5]
    await _close(hub, conn)


async def test_resume_replays_in_order_then_resync_when_trimmed(
    db: Stores, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = new_id()
    bus = db.events
    for i in range(10):
        await bus.publish([user], {"type": "t", "i": i})
    epoch = epoch_of(await bus.current_seq(user))
    conn, sock = await _open(hub, user, resume_from=position(epoch, 6))
    await _until(lambda: len(sock.durable_ids()) == 4)
    assert sock.sent[0]["type"] == "hello" and seq_of(sock.sent[0]["last_event_id"]) == 6
    assert sock.durable_ids() == [7, 8, 9, 10]
    await _close(hub, conn)
    # History trimmed below the client's position: resync instead of a silent gap.
    await db.redis.xtrim(bus.channels.history(user), minid="9-0", approximate=False)
    conn, sock = await _open(hub, user, resume_from=position(epoch, 3))
    await _until(lambda: any(f.get("type") == "resync" for f in sock.sent if isinstance(f, dict)))
    resync = next(f for f in sock.sent if isinstance(f, dict) and f.get("type") == "resync")
    assert resync["event_id"] == position(epoch, 10)
    await bus.publish([user], {"type": "t", "i": 10})
    await _until(lambda: sock.durable_ids() == [11])
    await _close(hub, conn)


async def test_heartbeat_check_catches_up_a_lost_last_event(db: Stores, hub: Hub) -> None:
    user = new_id()
    conn, sock = await _open(hub, user)
    hub.detach_now(conn)
    await db.events.publish([user], {"type": "t"})  # never routed to the socket
    hub.local.setdefault(conn.user_key, set()).add(conn)
    await hub._check_positions()
    await _until(lambda: sock.durable_ids() == [1])
    await _close(hub, conn)


async def test_full_queue_closes_with_distinct_code(db: Stores, hub: Hub) -> None:
    user = new_id()
    conn, sock = await _open(hub, user)
    sock.block.clear()  # the client stops reading
    bus = db.events
    for i in range(hub.queue_size + 5):
        await bus.publish([user], {"type": "t", "i": i})
    await _until(lambda: conn.close_code is not None)
    assert conn.close_code == CLOSE_QUEUE_OVERFLOW
    assert conn.user_key not in hub.local
    assert conn.writer_task is not None
    await asyncio.gather(conn.writer_task, return_exceptions=True)
    assert conn.writer_task.done()


async def test_presence_follows_sockets(db: Stores, hub: Hub) -> None:
    user = new_id()
    changes: list[tuple[uuid.UUID, bool]] = []

    async def record(user_id: uuid.UUID, online: bool) -> None:
        changes.append((user_id, online))

    hub.on_presence = record
    first, _ = await _open(hub, user)
    second, _ = await _open(hub, user)
    assert await online_among(db, [user]) == {user}
    await _close(hub, first)
    await asyncio.sleep(0.05)
    assert await online_among(db, [user]) == {user}
    await _close(hub, second)
    await _until(lambda: len(changes) == 2)
    assert changes == [(user, True), (user, False)]
    assert await online_among(db, [user]) == set()


async def test_malformed_messages_are_skipped_and_the_subscription_goes_on(db: Stores, hub: Hub) -> None:
    user = new_id()
    conn, sock = await _open(hub, user)
    channels = db.events.channels
    for channel, data in [
        (channels.events, "not json\n{}"),
        (channels.events, "[1]\n{}"),
        (channels.ephemeral, "[]"),
        (channels.ephemeral, '{"body": {}}'),
        (channels.revoked, "7"),
    ]:
        await db.redis.publish(channel, data)
    await db.events.publish_ephemeral([user], {"type": "t", "live": True})
    await db.events.publish([user], {"type": "t"})
    await _until(lambda: sock.durable_ids() == [1])
    assert [f.get("live") for f in sock.sent[1:]] == [True, None]
    assert hub.stats["resubscribes"] == 0
    await _close(hub, conn)


async def test_big_fan_out_is_chunked_with_one_id_each(db: Stores, hub: Hub) -> None:
    users = [new_id() for _ in range(bus_module.PUBLISH_CHUNK + 20)]
    ids = await db.events.publish(users, {"type": "t"})
    assert set(ids) == set(users) and {seq_of(i) for i in ids.values()} == {1}
    with pytest.raises(ValueError):
        await db.events.publish(users[:1], {})


async def test_revoked_sessions_are_closed_by_message_and_by_the_periodic_check(db: Stores, hub: Hub) -> None:
    user = new_id()
    by_message, kept, missed = new_id(), new_id(), new_id()
    conns = {sid: (await _open(hub, user, session_id=sid))[0] for sid in (by_message, kept, missed)}
    await accounts.mark_revoked(db, [by_message])  # marker + message on the revocation channel
    await _until(lambda: conns[by_message].close_code is not None)
    assert conns[by_message].close_code == CLOSE_SESSION_REVOKED
    # A revocation whose message this instance missed (its subscription was down): the marker alone.
    await db.redis.set(db.keys("session", missed), accounts.REVOKED_MARKER)
    assert conns[missed].close_code is None
    await hub._check_sessions()  # what the heartbeat (and a resubscribe) runs
    assert conns[missed].close_code == CLOSE_SESSION_REVOKED
    assert conns[kept].close_code is None and str(kept) in hub.by_session
    assert str(by_message) not in hub.by_session and str(missed) not in hub.by_session
    await _close(hub, conns[kept])


async def test_a_burst_of_connecting_sockets_leaves_most_postgres_connections_free(
    db: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What sockets connecting together start in the background, each needing PostgreSQL (the user's presence
    peers; a refresh of a session mirror close to its end), holds at most BACKGROUND_PG_SLOTS pooled
    connections at once, so sends and requests find one; the mirror refreshes go in one query; all of it
    still gets done."""
    sessions = [await user_with_session(db) for _ in range(20)]
    held, most, checkouts = 0, 0, 0
    real_connection = db.pg.connection

    @contextlib.asynccontextmanager
    async def counted_connection(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        nonlocal held, most, checkouts
        async with real_connection(*args, **kwargs) as conn:
            held, checkouts = held + 1, checkouts + 1
            most = max(most, held)
            try:
                await asyncio.sleep(0.01)  # a busy server: each query holds its connection a while
                yield conn
            finally:
                held -= 1

    for _, session_id in sessions:  # mirrors about to lapse: each will be refreshed
        await db.redis.expire(db.keys("session", session_id), 5)
    monkeypatch.setattr(db.pg, "connection", counted_connection)
    for user_id, session_id in sessions:  # what each handshake's session check does for such a mirror
        db.mirror_refresh.add(session_id, user_id)
    await db.mirror_refresh.drain()
    assert checkouts == 1  # 20 mirrors, one query
    peers = await asyncio.gather(*(messaging.conversation_peers(db, user_id) for user_id, _ in sessions))
    assert peers == [[] for _ in range(20)]
    assert 1 < most <= BACKGROUND_PG_SLOTS, most
    for _, session_id in sessions:
        assert await db.redis.ttl(db.keys("session", session_id)) > 5  # every mirror was refreshed
