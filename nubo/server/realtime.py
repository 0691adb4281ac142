"""`GET /ws`: the WebSocket endpoint (docs/architecture.md §10) on top of the per-instance hub
(:mod:`nubo.realtime.hub`).

Handshake, in order, all before any frame:

1. The auth middleware (`nubo.server.auth`) verifies the JWT from ``Authorization: Bearer`` or ``?token=``;
   missing, invalid, expired or revoked credentials refuse the upgrade.
2. ``Origin`` is checked against ``NUBO_ALLOWED_ORIGINS``: ``*`` allows any origin; a list allows exactly
   those origins (scheme://host[:port]); empty (the default) allows clients that send no ``Origin`` (CLI,
   servers) and same-host pages (``Origin`` host equal to the ``Host`` header). Refusals are HTTP 403 with the
   JSON error (ASGI denial response), or a plain 403 where the server lacks that extension.
3. ``?last_event_id=N`` (optional) must be a non-negative integer.

Then the server sends ``hello`` (with the position it resumes from), replays what was missed, and streams.

Server -> client frames are the Structs of :mod:`nubo.realtime.frames` (its docstring lists them). Client -> server
frames are JSON envelopes ``{"type": ...}``; a text frame whose first non-blank character is neither ``{`` nor ``[``
is a plain lobby message (the seed's broadcast, public; :mod:`nubo.realtime.lobby` refuses blank text, text over
4,000 characters and bare JSON values such as ``42`` or ``null``). Types: ``message.send`` {conversation_id, content,
client_id} -> ``ack`` {client_id, message_id, conversation_id, duplicate} right after the PostgreSQL commit (before the
``message.new`` events are published); ``typing`` {conversation_id}; ``read`` {conversation_id, message_id?};
``ping`` -> ``pong``; ``resume`` {last_event_id} (first frame only, an alternative to the query parameter). Any bad
frame — invalid JSON, not an object, unknown type, bad field, binary — gets an ``error`` event {code, error};
nothing closes the socket except a full send queue (close code 4008), the revocation of the token's session (4401:
on every instance at once through ``rt:revoked``, else at the next heartbeat), a frame over ``NUBO_WS_MAX_FRAME``
(uvicorn closes with 1009 before the app sees it, since `nubo serve` sets its ``ws_max_size``; the check here
answers an ``error`` event should the server limit ever be higher) or the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect

from nubo import messaging
from nubo.errors import Forbidden, NuboError, StoreUnavailable, Unauthorized, Unavailable, ValidationFailed
from nubo.ids import parse_id
from nubo.logs import current_request_id, get_logger
from nubo.realtime import typing_events
from nubo.realtime.frames import AckFrame, ErrorFrame, PongFrame
from nubo.realtime.hub import CLOSE_REASONS, CLOSE_TIMEOUT_SECONDS, Connection, Hub, Resume
from nubo.realtime.lobby import checked_lobby_text
from nubo.root import Root
from nubo.server.auth import deny_websocket
from nubo.settings import Settings
from nubo.stores import Stores
from nubo.stores.breaker import store_of

log = get_logger(__name__)

TYPING_MIN_INTERVAL = 1.0  # seconds between two typing events of one socket for one conversation
MEMBERS_CACHE_SECONDS = 10.0


# ---- handshake -------------------------------------------------------------------------------------------


def origin_allowed(settings: Settings, origin: str | None, host: str | None) -> bool:
    """The `Origin` rule of the module docstring."""
    allowed = settings.allowed_origins
    if "*" in allowed or origin is None:
        return True
    normalized = origin.rstrip("/").lower()
    if allowed:
        return normalized in {item.rstrip("/").lower() for item in allowed}
    origin_host = urlsplit(normalized).netloc
    return bool(host) and origin_host == (host or "").lower()


async def deny(socket: WebSocket[Any, Any, Any], error: NuboError) -> None:
    """Refuse the upgrade before any frame: HTTP status and JSON error body (see `nubo.server.auth`)."""
    log.info("ws_refused", extra={"status": error.status, "code": error.code})
    await deny_websocket(socket.scope, socket.receive, socket.send, error)


def _last_event_id(socket: WebSocket[Any, Any, Any]) -> int | None:
    raw = parse_qs(socket.scope.get("query_string", b"").decode("latin-1")).get("last_event_id")
    if not raw or raw[0] == "":
        return None
    if not raw[0].isdigit() or len(raw[0]) > 18:
        raise ValidationFailed("last_event_id must be a non-negative integer", fields={"last_event_id": "integer"})
    return int(raw[0])


def _caller(socket: WebSocket[Any, Any, Any]) -> uuid.UUID | None:
    user = socket.scope.get("user")
    user_id = getattr(user, "id", None)
    return user_id if isinstance(user_id, uuid.UUID) else None


@websocket("/ws", name="ws")
async def ws_endpoint(socket: WebSocket[Any, Any, Any]) -> None:
    """The realtime socket: authenticated events in, JSON envelopes and lobby text out."""
    root: Root = socket.app.state.root
    settings, hub = root.settings, root.hub
    user_id = _caller(socket)
    if user_id is None:  # only when the auth guard is not installed: never serve anonymous sockets
        await deny(socket, Unauthorized("Authentication required", code="missing_token"))
        return
    if not origin_allowed(settings, socket.headers.get("origin"), socket.headers.get("host")):
        await deny(socket, Forbidden("This Origin is not allowed", code="origin_not_allowed"))
        return
    if hub.draining:
        await deny(socket, Unavailable("This instance is restarting; connect again", code="server_restarting"))
        return
    try:
        resume_from = _last_event_id(socket)
    except ValidationFailed as exc:
        await deny(socket, exc)
        return
    await socket.accept()
    session_id = getattr(socket.scope.get("user"), "session_id", None)
    await Session(socket, hub, root.stores, user_id, resume_from, session_id).run()


# ---- one connection --------------------------------------------------------------------------------------


class Session:
    """One accepted socket: its hub connection, the reader loop and the frame handlers."""

    def __init__(
        self,
        socket: WebSocket[Any, Any, Any],
        hub: Hub,
        stores: Stores,
        user_id: uuid.UUID,
        resume_from: int | None,
        session_id: uuid.UUID | None = None,
    ) -> None:
        self.socket = socket
        self.hub = hub
        self.stores = stores
        self.settings = stores.settings
        self.user_id = user_id
        self.conn = Connection(hub, user_id, socket, resume_from=resume_from, session_id=session_id)
        self.first_frame = True
        self.request_id = current_request_id()  # the handshake's (nubo.server.context), in every error event
        self.typing_sent: dict[uuid.UUID, float] = {}
        self.handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "message.send": self.on_send,
            "typing": self.on_typing,
            "read": self.on_read,
            "ping": self.on_ping,
            "resume": self.on_resume,
        }

    async def run(self) -> None:
        await self.hub.attach(self.conn)
        writer = asyncio.create_task(self.conn.run_writer(), name="ws-writer")
        self.conn.writer_task = writer
        reader = asyncio.create_task(self.read_loop(), name="ws-reader")
        try:
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.hub.detach_now(self.conn)
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
            if self.conn.close_code is not None:
                # Bounded wait: the close frame queues behind data a stuck client never reads.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        self.socket.close(
                            code=self.conn.close_code, reason=CLOSE_REASONS.get(self.conn.close_code, "")
                        ),
                        CLOSE_TIMEOUT_SECONDS,
                    )
            elif writer.done() and not writer.cancelled() and writer.exception() is not None:
                exc = writer.exception()
                if not isinstance(exc, WebSocketDisconnect | OSError):
                    log.warning("ws_writer_failed", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})

    async def read_loop(self) -> None:
        while True:
            try:
                message = await self.socket.receive()
            except WebSocketDisconnect:
                return
            if message["type"] == "websocket.disconnect":
                return
            self.hub.frames_in.inc()
            text = message.get("text")
            if not isinstance(text, str):
                self.error("binary_not_supported", "Frames must be text (JSON envelopes or lobby text)")
                continue
            await self.on_text(text)

    async def on_text(self, text: str) -> None:
        first, self.first_frame = self.first_frame, False
        if len(text.encode("utf-8", "surrogatepass")) > self.settings.ws_max_frame_bytes:
            self.error("payload_too_large", f"Frames are limited to {self.settings.ws_max_frame_bytes} bytes")
            return
        if not text.lstrip().startswith(("{", "[")):
            await self.guard(self.on_lobby(text), None)
            return
        try:
            envelope = json.loads(text)
        except ValueError:
            self.error("invalid_json", "The frame is not valid JSON")
            return
        if not isinstance(envelope, dict) or not isinstance(envelope.get("type"), str):
            self.error("invalid_envelope", 'A JSON frame must be an object with a string "type"')
            return
        handler = self.handlers.get(envelope["type"])
        if handler is None:
            self.error("unknown_type", f"Unknown frame type {envelope['type'][:40]!r}")
            return
        if envelope["type"] == "resume" and not first:
            self.error("resume_too_late", "resume must be the first frame")
            return
        await self.guard(handler(envelope), envelope)

    async def guard(self, work: Awaitable[None], envelope: dict[str, Any] | None) -> None:
        """Run a handler; a failure becomes an `error` event (with the request's client_id), never a crash."""
        raw_client_id = envelope.get("client_id") if envelope is not None else None
        client_id = raw_client_id if isinstance(raw_client_id, str) else None
        try:
            await work
        except NuboError as exc:
            self.error(exc.code, exc.message, fields=exc.fields or None, client_id=client_id)
        except Exception as exc:
            if (store := store_of(exc)) is not None:  # an outage: logged once by the breaker, no traceback
                unavailable = StoreUnavailable(store)
                self.error(unavailable.code, unavailable.message, client_id=client_id)
                return
            log.exception("ws_handler_failed", extra={"type": (envelope or {}).get("type")})
            self.error("internal_error", "The server could not handle this frame", client_id=client_id)

    def error(
        self, code: str, message: str, *, fields: dict[str, str] | None = None, client_id: str | None = None
    ) -> None:
        self.conn.send_event(
            ErrorFrame(code=code, error=message, fields=fields, client_id=client_id, request_id=self.request_id)
        )

    # ---- handlers ----------------------------------------------------------------------------------------

    async def on_send(self, envelope: dict[str, Any]) -> None:
        if self.hub.draining:  # the socket closes with 1012 once the sends in flight are acknowledged
            raise Unavailable("This instance is restarting; send again after reconnecting", code="server_restarting")
        self.hub.send_started()
        try:
            await self._send(envelope)
        finally:
            self.hub.send_finished()

    async def _send(self, envelope: dict[str, Any]) -> None:
        conversation_id = parse_id(envelope.get("conversation_id"), "conversation_id")
        started = time.perf_counter()

        def ack(result: messaging.SendResult) -> None:  # once committed, before the publish
            self.hub.metrics.ws_send_ack.observe(time.perf_counter() - started)
            self.conn.send_event(
                AckFrame(
                    client_id=envelope.get("client_id"),
                    message_id=result.message.id,
                    conversation_id=conversation_id,
                    duplicate=not result.created,
                )
            )

        await messaging.send_message(
            self.stores,
            self.user_id,
            conversation_id,
            envelope.get("content"),
            envelope.get("client_id"),
            media_ids=envelope.get("media_ids"),
            committed=ack,
        )

    async def on_typing(self, envelope: dict[str, Any]) -> None:
        conversation_id = parse_id(envelope.get("conversation_id"), "conversation_id")
        now = time.monotonic()
        if now - self.typing_sent.get(conversation_id, 0.0) < TYPING_MIN_INTERVAL:
            return  # throttled: the previous typing event is still showing
        self.typing_sent[conversation_id] = now
        recipients = await self.members(conversation_id)
        await typing_events.publish_typing(self.stores, conversation_id, self.user_id, recipients)

    async def members(self, conversation_id: uuid.UUID) -> list[uuid.UUID]:
        cached = self.conn.membership_cache.get(conversation_id)
        if cached is not None and time.monotonic() - cached[0] < MEMBERS_CACHE_SECONDS:
            return cached[1]
        recipients = await messaging.typing_recipients(self.stores, self.user_id, conversation_id)
        self.conn.membership_cache[conversation_id] = (time.monotonic(), recipients)
        return recipients

    async def on_read(self, envelope: dict[str, Any]) -> None:
        conversation_id = parse_id(envelope.get("conversation_id"), "conversation_id")
        raw = envelope.get("message_id")
        message_id = parse_id(raw, "message_id") if raw is not None else None
        await messaging.mark_read(self.stores, self.user_id, conversation_id, message_id)

    async def on_ping(self, envelope: dict[str, Any]) -> None:
        self.conn.send_event(PongFrame(id=envelope.get("id"), ts=int(time.time() * 1000)))

    async def on_resume(self, envelope: dict[str, Any]) -> None:
        raw = envelope.get("last_event_id")
        if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
            raise ValidationFailed("last_event_id must be a non-negative integer", fields={"last_event_id": "integer"})
        self.conn.offer(Resume(raw))

    async def on_lobby(self, text: str) -> None:
        checked_lobby_text(text)  # blank, too long or a bare JSON value: an `error` frame, nothing broadcast
        await self.stores.rate_limits.limit("lobby", str(self.user_id), self.settings.rate_messages)
        await self.hub.bus.publish_lobby(text)


ROUTES = [ws_endpoint]
