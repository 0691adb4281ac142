"""The per-instance hub: local sockets, one Redis pub/sub subscription, exactly-once in-order delivery.

Every socket is a :class:`Connection` with a bounded queue drained by one writer task, so only the writer ever
sends on the socket (ASGI sends must not interleave) and a slow client cannot grow server memory: when its
queue is full the hub closes it with :data:`CLOSE_QUEUE_OVERFLOW`. The writer delivers durable events in
event-id order, each once (see :mod:`nubo.realtime`); the hub's listener only routes and enqueues the messages
its :class:`~nubo.stores.events.EventSubscriber` decodes, it never waits on a socket.

Delivery guarantees and how they hold:

- *Registered before reading the position*: a socket joins the routing table before the writer reads the
  user's current id or replays history, so an event is either in that snapshot or arrives live afterwards;
  both paths meet in the writer, which drops ids it already sent.
- *Lost pub/sub messages* (the subscription dropped and came back): any id jump is filled from the history;
  after a resubscribe and every :data:`~nubo.stores.presence.HEARTBEAT_SECONDS`, each socket also compares
  its position with the user's current id, so a lost *last* event is caught up without waiting for the next
  one.
- *History too short*: the client receives ``resync`` and refetches over REST.
- *Redis lost its data* (flush, empty restart): positions carry Redis's epoch
  (:func:`~nubo.stores.events.position`); an event, a catch-up target or a resume position of another epoch
  gets ``resync`` (``epoch_changed``), never a silent skip.
- *The same event twice* (the relay re-published it): each socket remembers the last :data:`SEEN_KEYS`
  event identities and skips a repeat.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket as socket_module
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from nubo.logs import current_request_id, get_logger
from nubo.realtime.frames import ErrorFrame, Frame, HelloFrame, ResyncFrame
from nubo.stores import Stores
from nubo.stores.events import (
    DurableMessage,
    EphemeralMessage,
    EventSubscriber,
    LobbyMessage,
    ReceivedMessage,
    RevokedMessage,
    epoch_of,
    frame,
    to_json,
)
from nubo.stores.presence import HEARTBEAT_SECONDS, Presence
from nubo.stores.redis import REDIS_FAILURES

log = get_logger(__name__)

CLOSE_SERVICE_RESTART = 1012  # RFC 6455 §7.4.1 (IANA registry): the server is restarting, reconnect elsewhere
CLOSE_QUEUE_OVERFLOW = 4008
CLOSE_SESSION_REVOKED = 4401  # 4xxx: application codes (RFC 6455 §7.4.2); 401 as in HTTP
CLOSE_REASONS = {
    CLOSE_SERVICE_RESTART: "service restart",
    CLOSE_QUEUE_OVERFLOW: "send queue full",
    CLOSE_SESSION_REVOKED: "session revoked",
}
CLOSE_LABELS = {  # metric labels
    CLOSE_SERVICE_RESTART: "service_restart",
    CLOSE_QUEUE_OVERFLOW: "queue_full",
    CLOSE_SESSION_REVOKED: "session_revoked",
}
CLOSE_TIMEOUT_SECONDS = 5.0
SEEN_KEYS = 1024  # event identities each socket remembers, to never deliver one event twice


class Socket(Protocol):
    """What the hub needs from a WebSocket (Litestar's WebSocket adapts to it in `nubo.server.realtime`)."""

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


@dataclass(frozen=True)
class Durable:
    """A durable event for this socket's user: delivered once, in id order, and once per identity.
    `received`: when the hub got it (``time.perf_counter()``; 0 when unknown), for the fan-out latency."""

    event_id: int
    body: str
    event_key: str = ""
    received: float = 0.0


@dataclass(frozen=True)
class Live:
    """A ready frame sent as is (replies, ephemeral events, lobby text)."""

    text: str
    expires_ms: int | None = None


@dataclass(frozen=True)
class CatchUp:
    """Deliver everything up to `upto` from the history (after a resubscribe or a heartbeat check).

    ``None`` means "read the current id now": used when the id seemed to go backwards (Redis lost the
    counter), which only the writer can confirm, since its own position never passes the id it reads after.
    """

    upto: int | None


@dataclass(frozen=True)
class Resume:
    """The client asked (first frame) to resume after `last_event_id`."""

    last_event_id: int


QueueItem = Durable | Live | CatchUp | Resume


class Connection:
    """One client socket: its queue, its delivery position and its writer."""

    def __init__(
        self,
        hub: Hub,
        user_id: uuid.UUID,
        socket: Socket,
        *,
        resume_from: int | None = None,
        session_id: uuid.UUID | None = None,
    ) -> None:
        self.hub = hub
        self.user_id = user_id
        self.user_key = str(user_id)
        self.session_key = str(session_id) if session_id is not None else None
        self.socket = socket
        self.queue: asyncio.Queue[QueueItem] = asyncio.Queue(maxsize=hub.queue_size)
        self.resume_from = resume_from
        self.last = 0
        self.seen_keys: dict[str, None] = {}  # identities of the last SEEN_KEYS events delivered, oldest first
        self.delivered_durable = False
        self.close_code: int | None = None
        self.writer_task: asyncio.Task[None] | None = None
        self.membership_cache: dict[uuid.UUID, tuple[float, list[uuid.UUID]]] = {}

    # ---- called by the hub and the reader (never block) --------------------------------------------------

    def offer(self, item: QueueItem) -> bool:
        """Queue `item`; a full queue closes the socket with :data:`CLOSE_QUEUE_OVERFLOW`."""
        if self.close_code is not None:
            return False
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.abort(CLOSE_QUEUE_OVERFLOW)
            return False
        return True

    def send_event(self, event: Frame) -> bool:
        """Queue a reply or ephemeral event (no event id)."""
        return self.offer(Live(to_json(event)))

    def abort(self, code: int) -> None:
        """Stop delivering now (the hub forgets the socket); the server closes it with `code`."""
        if self.close_code is None:
            self.close_code = code
            self.hub.metrics.ws_closes.labels(CLOSE_LABELS.get(code, str(code))).inc()
            self.hub.detach_now(self)
            log.warning("ws_closing", extra={"user_id": self.user_key, "code": code})
            if self.writer_task is not None:
                self.writer_task.cancel()

    # ---- the writer --------------------------------------------------------------------------------------

    async def run_writer(self) -> None:
        """Say hello (with the resume position), replay what was missed, then deliver the queue forever."""
        bus = self.hub.bus
        if self.resume_from is None:
            self.last = await bus.current_seq(self.user_id)
            await self._send_hello()
        else:
            self.last = self.resume_from
            await self._send_hello()
            await self._catch_up(None)
        while True:
            item = await self.queue.get()
            if isinstance(item, Durable):
                await self._deliver(item)
            elif isinstance(item, Live):
                if item.expires_ms is None or item.expires_ms >= time.time() * 1000:
                    await self._send(item.text)
            elif isinstance(item, CatchUp):
                if item.upto is None or item.upto > self.last:
                    await self._catch_up(item.upto)
            else:
                await self._resume(item.last_event_id)

    async def _send(self, text: str) -> None:
        """The one place this connection writes a frame (counted as `out`)."""
        await self.socket.send_text(text)
        self.hub.frames_out.inc()

    async def _send_hello(self) -> None:
        hello = HelloFrame(user_id=self.user_id, last_event_id=self.last, instance=self.hub.instance_id)
        await self._send(to_json(hello))

    async def _deliver(self, item: Durable) -> None:
        if epoch_of(item.event_id) != epoch_of(self.last):
            # Redis lost its state (flush, empty restart): what was published before cannot be proven
            # delivered, so the client refetches; delivery goes on in the new epoch.
            await self._resync(item.event_id - 1, "epoch_changed")
        if item.event_id <= self.last:
            return  # already delivered (live copy of a replayed event, or a duplicate)
        if item.event_id > self.last + 1:
            await self._catch_up(item.event_id - 1)
        if item.event_id <= self.last:
            return
        await self._send_durable(item.event_id, item.body, item.event_key)
        if item.received:
            self.hub.metrics.ws_fanout.observe(time.perf_counter() - item.received)

    async def _send_durable(self, event_id: int, body: str, event_key: str) -> None:
        """Send one durable event, unless an event of the same identity was sent on this socket already
        (the relay re-published it, or Redis lost what it knew of it): its position is taken all the same."""
        self.last = event_id
        if event_key:
            if event_key in self.seen_keys:
                return
            self.seen_keys[event_key] = None
            if len(self.seen_keys) > SEEN_KEYS:
                del self.seen_keys[next(iter(self.seen_keys))]
        await self._send(frame(body, event_id))
        self.delivered_durable = True

    async def _catch_up(self, upto: int | None) -> None:
        """Send history entries after `self.last` up to `upto` (default: the user's current id), or resync."""
        bus = self.hub.bus
        target = upto if upto is not None else await bus.current_seq(self.user_id)
        if epoch_of(target) != epoch_of(self.last):
            await self._resync(target, "epoch_changed")
            return
        if target < self.last:
            await self._resync(target, "position_ahead_of_server")
            return
        if target == self.last:
            return
        entries = await bus.history(self.user_id, self.last, target)
        complete = len(entries) == target - self.last and entries[0][0] == self.last + 1 and entries[-1][0] == target
        if not complete:
            await self._resync(target, "history_gap")
            return
        for event_id, body, event_key in entries:
            await self._send_durable(event_id, body, event_key)

    async def _resync(self, event_id: int, reason: str) -> None:
        log.info("ws_resync", extra={"user_id": self.user_key, "from": self.last, "to": event_id, "reason": reason})
        self.hub.metrics.ws_resyncs.labels(reason).inc()
        await self._send(to_json(ResyncFrame(event_id=event_id, reason=reason)))
        self.last = event_id

    async def _resume(self, last_event_id: int) -> None:
        if self.delivered_durable:
            too_late = ErrorFrame(
                code="resume_too_late",
                error="resume must be the first frame; reconnect with ?last_event_id= instead",
                request_id=current_request_id(),
            )
            await self._send(to_json(too_late))
            return
        self.last = last_event_id
        await self._catch_up(None)


PresenceCallback = Callable[[uuid.UUID, bool], Awaitable[None]]
RevokedCheck = Callable[[list[str]], Awaitable[set[str]]]  # which of these session ids are revoked


class Hub:
    """Connections of this instance and the routing to them of what its subscriber receives."""

    def __init__(
        self,
        stores: Stores,
        *,
        on_presence: PresenceCallback | None = None,
        revoked_among: RevokedCheck | None = None,
    ) -> None:
        self.settings = stores.settings
        self.metrics = stores.metrics
        self.frames_out = stores.metrics.ws_frames.labels("out")
        self.frames_in = stores.metrics.ws_frames.labels("in")
        self.queue_size = self.settings.ws_queue_size
        self.instance_id = f"{socket_module.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.bus = stores.events
        self.presence = Presence(stores, self.instance_id)
        self.on_presence = on_presence
        self.revoked_among = revoked_among
        self.local: dict[str, set[Connection]] = {}
        self.by_session: dict[str, set[Connection]] = {}
        self.everyone: set[Connection] = set()
        self._subscriber: EventSubscriber | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.subscribed = asyncio.Event()
        self.stats = {"routed": 0, "overflow_closes": 0, "resubscribes": 0}
        self.draining = False  # SIGTERM: no new socket, no new send (see drain)
        self.in_flight = 0  # sends being handled by this instance's sockets
        self._idle = asyncio.Event()
        self._idle.set()

    # ---- graceful drain ----------------------------------------------------------------------------------

    def send_started(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def send_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= 0:
            self._idle.set()

    async def drain(self, seconds: float) -> None:
        """Stop taking sockets and sends, wait (at most `seconds`) for the sends in flight to be acknowledged,
        then close every socket with :data:`CLOSE_SERVICE_RESTART`: clients resume elsewhere with their last
        event id."""
        self.draining = True
        log.info("drain_started", extra={"sockets": len(self.everyone), "sends_in_flight": self.in_flight})
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except TimeoutError:
            log.warning("drain_timeout", extra={"sends_in_flight": self.in_flight})
        flushed_by = time.monotonic() + 1.0  # the acks just queued reach their sockets first
        while any(not c.queue.empty() for c in self.everyone) and time.monotonic() < flushed_by:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        for conn in list(self.everyone):
            conn.abort(CLOSE_SERVICE_RESTART)
        log.info("drain_done")

    # ---- lifecycle ---------------------------------------------------------------------------------------

    async def start(self, wait_seconds: float = 3.0) -> None:
        """Subscribe (waits until the subscription is active) and start the heartbeat."""
        self._subscriber = EventSubscriber(self.settings.redis_url, self.bus.channels)
        self._tasks = [
            asyncio.create_task(self._listen(), name="realtime-listen"),
            asyncio.create_task(self._heartbeat(), name="realtime-heartbeat"),
        ]
        try:
            await asyncio.wait_for(self.subscribed.wait(), wait_seconds)
        except TimeoutError:
            # Redis down at start: serve anyway (docs/architecture.md §1); the listener keeps retrying and catches up.
            log.warning("realtime_subscription_pending", extra={"waited_seconds": wait_seconds})

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in list(self.everyone):
            await self.detach(conn)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._subscriber is not None:
            await self._subscriber.aclose()

    @property
    def subscriber(self) -> EventSubscriber:
        """This instance's subscriber, for long-lived subscriptions (the hub's own and flux typing)."""
        assert self._subscriber is not None, "Hub.start() first"
        return self._subscriber

    # ---- sockets -----------------------------------------------------------------------------------------

    async def attach(self, conn: Connection) -> None:
        """Route events to `conn` from now on (before its writer reads any position)."""
        first = conn.user_key not in self.local
        self.local.setdefault(conn.user_key, set()).add(conn)
        if conn not in self.everyone:
            self.everyone.add(conn)
            self.metrics.ws_connections.inc()
        if conn.session_key is not None:
            self.by_session.setdefault(conn.session_key, set()).add(conn)
        if first:
            try:
                came_online = await self.presence.connected(conn.user_id)
            except REDIS_FAILURES as exc:
                log.warning("presence_failed", extra={"error": str(exc)[:200]})
                return
            if came_online:
                self._spawn(self._announce(conn.user_id, True))

    def detach_now(self, conn: Connection) -> bool:
        """Stop routing to `conn`; True when it was this instance's last socket of its user."""
        if conn in self.everyone:
            self.everyone.discard(conn)
            self.metrics.ws_connections.dec()
        if conn.session_key is not None and conn.session_key in self.by_session:
            self.by_session[conn.session_key].discard(conn)
            if not self.by_session[conn.session_key]:
                del self.by_session[conn.session_key]
        conns = self.local.get(conn.user_key)
        if conns is None or conn not in conns:
            return False
        conns.discard(conn)
        if conns:
            return False
        del self.local[conn.user_key]
        self._spawn(self._went_away(conn.user_id))
        return True

    async def detach(self, conn: Connection) -> None:
        self.detach_now(conn)

    async def _went_away(self, user_id: uuid.UUID) -> None:
        if str(user_id) in self.local:
            return  # reconnected on this instance meanwhile
        try:
            gone = await self.presence.disconnected(user_id)
        except REDIS_FAILURES as exc:
            log.warning("presence_failed", extra={"error": str(exc)[:200]})
            return
        if gone:
            await self._announce(user_id, False)

    async def _announce(self, user_id: uuid.UUID, online: bool) -> None:
        if self.on_presence is None:
            return
        try:
            await self.on_presence(user_id, online)
        except Exception as exc:  # presence is best effort: never break a connection for it
            log.warning("presence_announce_failed", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- routing -----------------------------------------------------------------------------------------

    def route_events(self, message: DurableMessage) -> None:
        to, body = message.event_ids, message.body
        if len(to) > len(self.local):
            targets = [(key, to[key]) for key in self.local if key in to]
        else:
            targets = [(key, eid) for key, eid in to.items() if key in self.local]
        received = time.perf_counter()
        for key, event_id in targets:
            for conn in list(self.local.get(key, ())):
                conn.offer(Durable(event_id, body, message.event_key, received))
                self.stats["routed"] += 1

    def route_ephemeral(self, message: EphemeralMessage) -> None:
        self.deliver_ephemeral(message.to, message.body, message.expires_ms)

    def route_revoked(self, message: RevokedMessage) -> None:
        self.close_sessions(message.session_ids)

    def close_sessions(self, session_keys: Iterable[str]) -> None:
        """Close this instance's sockets of these sessions with :data:`CLOSE_SESSION_REVOKED`."""
        for session_key in session_keys:
            for conn in list(self.by_session.get(session_key, ())):
                conn.abort(CLOSE_SESSION_REVOKED)

    def route_lobby(self, text: str) -> None:
        for conn in list(self.everyone):
            conn.offer(Live(text))

    def deliver_ephemeral(self, user_ids: list[str], event: Mapping[str, object], expires_ms: int | None) -> None:
        """Route an ephemeral event already received from elsewhere (flux typing: the decoded JSON of a
        frame, relayed as is) to local sockets."""
        text = to_json(event)
        for key in user_ids:
            for conn in list(self.local.get(key, ())):
                conn.offer(Live(text, expires_ms))

    def _dispatch(self, message: ReceivedMessage) -> None:
        if isinstance(message, DurableMessage):
            self.route_events(message)
        elif isinstance(message, EphemeralMessage):
            self.route_ephemeral(message)
        elif isinstance(message, LobbyMessage):
            self.route_lobby(message.text)
        else:
            self.route_revoked(message)

    async def _listen(self) -> None:
        backoff = 0.1
        resubscribed = False
        while True:
            try:
                async with self.subscriber.events() as messages:
                    self.subscribed.set()
                    if resubscribed:
                        self.stats["resubscribes"] += 1
                        await self._check_positions()
                        await self._check_sessions()
                    backoff = 0.1
                    async for message in messages:
                        self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis restart or network cut: resubscribe, then catch every socket up
                log.warning("realtime_subscription_lost", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})
                resubscribed = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self.presence.heartbeat(self._local_users())
                await self._check_positions()
                await self._check_sessions()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: try again next beat
                log.warning("realtime_heartbeat_failed", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})

    async def _check_positions(self) -> None:
        """Catch up every socket whose position is behind (or ahead of) its user's current event id."""
        users = self._local_users()
        for start in range(0, len(users), 1000):
            seqs = await self.bus.current_seqs(users[start : start + 1000])
            for user_id, seq in seqs.items():
                for conn in list(self.local.get(str(user_id), ())):
                    if conn.writer_task is not None and conn.last != seq:
                        conn.offer(CatchUp(seq if seq > conn.last else None))

    async def _check_sessions(self) -> None:
        """Close sockets whose session was revoked while a revocation message could have been missed (the
        subscription was down): the same check the HTTP guard makes, once per heartbeat for every session."""
        if self.revoked_among is None:
            return
        sessions = list(self.by_session)
        for start in range(0, len(sessions), 1000):
            self.close_sessions(await self.revoked_among(sessions[start : start + 1000]))

    def _local_users(self) -> list[uuid.UUID]:
        return [next(iter(conns)).user_id for conns in self.local.values() if conns]

    def local_users(self) -> list[uuid.UUID]:
        """The users with a socket on this instance now."""
        return self._local_users()
