"""Publishing events to users through Redis: per-user ids, a bounded per-user history, one shared channel.

Keys (all under the configured prefix):

- ``rt:epoch`` — the epoch of this Redis life, created by the first publish or position read (SET NX): a
  position (event id) is ``epoch << 32 | seq``, so ids from before a flush or an empty restart are told apart.
- ``rt:published:{event key}:{chunk}`` — the ids an event identity got when it was published (ten minutes): a
  retried publish of the same identity publishes nothing again.
- ``rt:user:{id}:seq`` — the user's last sequence number in the epoch (INCR; never expires).
- ``rt:user:{id}:events`` — a stream holding the user's last :data:`HISTORY_MAX` events (approximately, MAXLEN
  ~) under the explicit stream id ``{event_id}-0``, expiring :data:`HISTORY_TTL_SECONDS` after the last event.
- ``rt:events`` — channel of durable events. Message: ``<epoch> <event key>``, a newline,
  ``{"<user id>": seq, ...}``, a newline, then the event body JSON (no ``event_id``: each instance splices in
  the recipient's id, see :func:`frame`).
- ``rt:ephemeral`` — channel of live-only events: ``{"to": [user ids], "body": {...}, "expires": ms}``.
- ``rt:lobby`` — channel of the public plain-text lobby: the text itself.
- ``rt:revoked`` — channel of revoked session ids (a JSON list): every instance closes their open sockets.

Publish only after the PostgreSQL commit of what the event describes: domain code registers its events
inside the transaction (:meth:`nubo.stores.transaction.Transaction.emit`), which writes them to the event
outbox and publishes them after the commit (:mod:`nubo.stores.event_outbox`). The receiving side is one
:class:`EventSubscriber` per instance (a pub/sub connection yielding the messages decoded);
:class:`nubo.realtime.hub.Hub` routes them to its sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, cast

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from nubo.logs import get_logger
from nubo.metrics import Metrics
from nubo.stores.redis import Keys

log = get_logger(__name__)

HISTORY_MAX = 1000
HISTORY_TTL_SECONDS = 3 * 86400
PUBLISH_CHUNK = 500  # recipients per script call: bounds the time one script blocks Redis
PUBLISHED_TTL_SECONDS = 600  # how long Redis remembers a published identity (covers any relay retry)
EPOCH_BITS = 20  # an epoch is drawn in [1, 2**EPOCH_BITS): positions stay below 2**53 (exact in JSON numbers)
EPOCH_SHIFT = 32  # position = epoch << EPOCH_SHIFT | per-user sequence number

# KEYS: epoch, published, seq1, hist1, seq2, hist2, ...
# ARGV: channel, body, maxlen, ttl, epoch candidate, event identity, published ttl, uid1, uid2, ...
# The epoch is created on first use (a random number drawn by the caller): after a flush or an empty restart
# the next publish or position read creates a new one, so every position names the Redis life it belongs to.
# An event identity already published (the key `published` exists) is not published again: the relay may
# retry an event its writer published just before it died.
# If the seq key was lost (flush) while a history survived, continue after the history's top id: XADD needs
# increasing ids, and clients must never see an id go backwards without a resync.
_PUBLISH_LUA = """
local channel, body, maxlen, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[5]
  redis.call('SET', KEYS[1], epoch)
end
local eid = ARGV[6]
if eid ~= '' then
  local seen = redis.call('GET', KEYS[2])
  if seen then return {epoch, seen, 1} end
end
local parts = {}
for i = 8, #ARGV do
  local k = (i - 8) * 2 + 2
  local seqkey, histkey = KEYS[k + 1], KEYS[k + 2]
  local seq = redis.call('INCR', seqkey)
  local top = redis.call('XREVRANGE', histkey, '+', '-', 'COUNT', 1)
  if top[1] then
    local topseq = tonumber(string.match(top[1][1], '^(%d+)'))
    if topseq >= seq then
      seq = topseq + 1
      redis.call('SET', seqkey, seq)
    end
  end
  redis.call('XADD', histkey, 'MAXLEN', '~', maxlen, seq .. '-0', 'b', body, 'e', epoch, 'i', eid)
  redis.call('EXPIRE', histkey, ttl)
  parts[#parts + 1] = '"' .. ARGV[i] .. '":' .. seq
end
local ids = '{' .. table.concat(parts, ',') .. '}'
if eid ~= '' then redis.call('SET', KEYS[2], ids, 'EX', tonumber(ARGV[7])) end
redis.call('PUBLISH', channel, epoch .. ' ' .. eid .. '\\n' .. ids .. '\\n' .. body)
return {epoch, ids, 0}
"""

# KEYS: epoch, seq1, seq2, ...   ARGV: epoch candidate. Returns the epoch then each user's sequence number.
_POSITIONS_LUA = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch, 'NX')
  epoch = redis.call('GET', KEYS[1])
end
local out = {epoch}
for i = 2, #KEYS do out[#out + 1] = redis.call('GET', KEYS[i]) or '0' end
return out
"""


def position(epoch: int, seq: int) -> int:
    """The event id a client sees: the epoch of Redis's life in the high bits, the user's sequence below."""
    return (epoch << EPOCH_SHIFT) | seq


def epoch_of(event_id: int) -> int:
    return event_id >> EPOCH_SHIFT


def seq_of(event_id: int) -> int:
    """The per-user sequence number within its epoch."""
    return event_id & ((1 << EPOCH_SHIFT) - 1)


def new_epoch() -> int:
    return secrets.randbelow((1 << EPOCH_BITS) - 1) + 1


Event = Mapping[str, Any] | msgspec.Struct
"""An event body: a mapping, or a tagged Struct (the frames of :mod:`nubo.realtime.frames`)."""


def _default(value: object) -> object:
    if isinstance(value, msgspec.Struct):
        # msgspec writes datetimes as the HTTP responses do (Litestar encodes with msgspec): one format.
        return msgspec.to_builtins(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def rfc3339(value: datetime) -> str:
    """The one timestamp format of the API, HTTP and WebSocket alike: RFC 3339 in UTC with microseconds and
    `Z` (``2026-12-02T01:02:03.495439Z``), written by msgspec as Litestar writes HTTP bodies, so that one value
    has the same text in both (msgspec leaves out a fraction of exactly zero, as RFC 3339 allows); a naive
    datetime is taken as UTC."""
    encoded: str = msgspec.to_builtins(value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC))
    return encoded


def to_json(value: object) -> str:
    """Compact JSON with UUIDs and datetimes as strings (the wire format of every event, timestamps as
    :func:`rfc3339`); Structs as their fields in order, tag first."""
    return json.dumps(value, default=_default, separators=(",", ":"), ensure_ascii=False)


def frame(body: str, event_id: int) -> str:
    """The frame for one recipient: the shared body with that recipient's ``event_id`` spliced in front."""
    return f'{{"event_id":{event_id:d},{body[1:]}'


class Channels:
    """Names of the keys and channels of one prefix."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.events = keys("rt", "events")
        self.ephemeral = keys("rt", "ephemeral")
        self.lobby = keys("rt", "lobby")
        self.revoked = keys("rt", "revoked")

    @property
    def epoch(self) -> str:
        return self.keys("rt", "epoch")

    def published(self, event_key: str) -> str:
        return self.keys("rt", "published", event_key or "-")

    def seq(self, user_id: uuid.UUID | str) -> str:
        return self.keys("rt", "user", user_id, "seq")

    def history(self, user_id: uuid.UUID | str) -> str:
        return self.keys("rt", "user", user_id, "events")


class EventBus:
    """Publishes events for one process (holds the registered Lua scripts); one per process, built with the
    stores."""

    def __init__(self, redis: Redis, keys: Keys, count_failure: Callable[[str], None], metrics: Metrics) -> None:
        self.relay_lag = metrics.events_relay_lag
        self.redis = redis
        self.count_failure = count_failure
        self.channels = Channels(keys)
        self._publish = redis.register_script(_PUBLISH_LUA)
        self._positions = redis.register_script(_POSITIONS_LUA)

    async def publish(
        self,
        user_ids: Iterable[uuid.UUID],
        event: Event | str,
        *,
        before: Callable[[], Awaitable[Any]] | None = None,
        event_key: uuid.UUID | None = None,
    ) -> dict[uuid.UUID, int]:
        """Give `event` a new id per recipient, keep it in their history and fan it out; returns the ids.

        `event` is a body or its JSON already encoded. `event_key`: the event's identity; an identity
        published before (within :data:`PUBLISHED_TTL_SECONDS`) is not published again, and the ids it got
        then are returned.

        `before`: a caller's post-commit Redis write (a call returning its awaitable). It is issued just ahead
        of the first chunk's script, so the client's automatic pipelining (:class:`BatchingRedis
        <nubo.stores.redis.BatchingRedis>`) sends both in one round trip, in that order. An explicit redis-py
        pipeline would cost a second one: it checks with SCRIPT EXISTS that its scripts are loaded before it
        runs them. Both are awaited; the first error is raised."""
        taken = time.perf_counter()  # the relay takes the event now (the post-commit publish)
        body = event if isinstance(event, str) else to_json(event)
        if not body.startswith("{") or body == "{}":
            raise ValueError("an event must be a non-empty JSON object")
        recipients = list(dict.fromkeys(user_ids))
        assigned: dict[uuid.UUID, int] = {}
        for index, start in enumerate(range(0, len(recipients), PUBLISH_CHUNK)):
            chunk = recipients[start : start + PUBLISH_CHUNK]
            ident = f"{event_key}:{index}" if event_key is not None else ""
            keys = [
                self.channels.epoch,
                self.channels.published(ident),
                *(key for uid in chunk for key in (self.channels.seq(uid), self.channels.history(uid))),
            ]
            args: list[str | int] = [
                self.channels.events,
                body,
                HISTORY_MAX,
                HISTORY_TTL_SECONDS,
                new_epoch(),
                ident,
                PUBLISHED_TTL_SECONDS,
                *map(str, chunk),
            ]
            if before is not None:
                done = await asyncio.gather(before(), self._publish(keys=keys, args=args), return_exceptions=True)
                before = None
                for outcome in done:
                    if isinstance(outcome, BaseException):
                        raise outcome
                result = cast(list[Any], done[1])
            else:
                result = await self._publish(keys=keys, args=args)
            epoch, seqs = int(result[0]), json.loads(result[1])
            assigned.update((uid, position(epoch, int(seqs[str(uid)]))) for uid in chunk if str(uid) in seqs)
        self.relay_lag.observe(time.perf_counter() - taken)
        return assigned

    async def publish_ephemeral(self, user_ids: Iterable[uuid.UUID], event: Event, ttl_ms: int = 1000) -> None:
        """Live-only delivery (presence): no id, no history; receivers drop it once `ttl_ms` has passed."""
        to = [str(uid) for uid in dict.fromkeys(user_ids)]
        if to:
            expires = int(time.time() * 1000) + ttl_ms
            await self.redis.publish(self.channels.ephemeral, to_json({"to": to, "body": event, "expires": expires}))

    async def publish_lobby(self, text: str) -> None:
        await self.redis.publish(self.channels.lobby, text)

    async def current_seq(self, user_id: uuid.UUID) -> int:
        """The user's current position (epoch and sequence; the epoch is created if Redis has none)."""
        return (await self.current_seqs([user_id]))[user_id]

    async def current_seqs(self, user_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
        if not user_ids:
            return {}
        keys = [self.channels.epoch, *(self.channels.seq(uid) for uid in user_ids)]
        raw = await self._positions(keys=keys, args=[new_epoch()])
        epoch = int(raw[0])
        return {uid: position(epoch, int(value)) for uid, value in zip(user_ids, raw[1:], strict=True)}

    async def history(self, user_id: uuid.UUID, after: int, upto: int | None = None) -> list[tuple[int, str, str]]:
        """Events of the epoch of `after` with `after` < id <= `upto` (or the newest), oldest first, as
        (event_id, body, event identity); entries of another epoch are left out. `after=0`: from the start of
        the current epoch."""
        epoch, mask = epoch_of(after) or epoch_of(upto or 0), (1 << EPOCH_SHIFT) - 1
        if not epoch:
            epoch = epoch_of(await self.current_seq(user_id))
        end = f"{upto & mask}-0" if upto is not None else "+"
        entries: list[tuple[str, dict[str, str]]] = await self.redis.xrange(  # type: ignore[assignment]
            self.channels.history(user_id), f"{(after & mask) + 1}-0", end
        )
        return [
            (position(epoch, int(entry_id.split("-", 1)[0])), fields["b"], fields.get("i", ""))
            for entry_id, fields in entries
            if int(fields.get("e") or 0) == epoch
        ]

    async def publish_safely(self, user_ids: Iterable[uuid.UUID], event: Event) -> None:
        """Publish after a commit; a Redis failure is logged and counted, never turned into a failed request.

        The write is already committed in PostgreSQL, so nothing is lost: clients that miss the event see it
        over REST (and a reconnect reports ``resync`` when its ids do not line up).
        """
        try:
            await self.publish(user_ids, event)
        except (RedisError, OSError) as exc:
            self.count_failure("realtime")
            log.warning("event_publish_failed", extra={"type": event_type(event), "error": str(exc)[:200]})


# ---- the receiving side ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DurableMessage:
    """A message of ``rt:events``: each recipient's event id (by user id string), the shared body JSON and
    the event's identity ("" when it has none)."""

    event_ids: dict[str, int]
    body: str
    event_key: str = ""


@dataclass(frozen=True)
class EphemeralMessage:
    """A live-only event (``rt:ephemeral``, typing): its recipients (user id strings), its body, its expiry
    (ms since the epoch; ``None``: never)."""

    to: list[str]
    body: dict[str, Any]
    expires_ms: int | None


@dataclass(frozen=True)
class LobbyMessage:
    """A message of ``rt:lobby``: the public plain text."""

    text: str


@dataclass(frozen=True)
class RevokedMessage:
    """A message of ``rt:revoked``: the revoked session ids."""

    session_ids: list[str]


ReceivedMessage = DurableMessage | EphemeralMessage | LobbyMessage | RevokedMessage


class EventSubscription:
    """One pub/sub session on the event channels: an async iterator of decoded messages, ending with an error
    when the connection is lost (subscribing again, and catching up, is the caller's policy). A malformed
    message is logged and skipped."""

    def __init__(self, pubsub: PubSub, channels: Channels) -> None:
        self._pubsub = pubsub
        self._decoders: dict[str, Callable[[str], ReceivedMessage]] = {
            channels.events: _decode_durable,
            channels.ephemeral: _decode_ephemeral,
            channels.lobby: LobbyMessage,
            channels.revoked: _decode_revoked,
        }

    def __aiter__(self) -> EventSubscription:
        return self

    async def __anext__(self) -> ReceivedMessage:
        while True:
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            decode = self._decoders.get(channel)
            if decode is None:
                continue
            try:
                return decode(message["data"])
            except (ValueError, KeyError, TypeError) as exc:  # a malformed message must not stop the listener
                log.warning("realtime_bad_message", extra={"channel": channel, "error": str(exc)[:200]})


class EventSubscriber:
    """The receiving side of one instance: a Redis client of its own for its long-lived subscriptions (the
    event channels here, the typing flux in :mod:`nubo.stores.typing_flux`). Its sockets have no read timeout:
    an idle subscription must not time out. It connects lazily; :meth:`aclose` it when done."""

    def __init__(self, redis_url: str, channels: Channels) -> None:
        self.channels = channels
        self.keys = channels.keys
        self.client = Redis.from_url(
            redis_url,
            decode_responses=True,
            socket_timeout=None,
            socket_connect_timeout=2.0,
            socket_keepalive=True,
        )

    @contextlib.asynccontextmanager
    async def events(self) -> AsyncIterator[EventSubscription]:
        """Subscribe to the event channels (``rt:events``, ``rt:ephemeral``, ``rt:lobby``, ``rt:revoked``) for
        the time of the block; raises if Redis cannot be reached."""
        channels = self.channels
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channels.events, channels.ephemeral, channels.lobby, channels.revoked)
            yield EventSubscription(pubsub, channels)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        await self.client.aclose()


def _decode_durable(data: str) -> DurableMessage:
    head, _, rest = data.partition("\n")
    ids, _, body = rest.partition("\n")
    raw_epoch, _, event_key = head.partition(" ")
    epoch = int(raw_epoch)
    seqs = json.loads(ids)
    if not isinstance(seqs, dict):
        raise TypeError(f"recipients must be an object, got {type(seqs).__name__}")
    return DurableMessage({uid: position(epoch, int(seq)) for uid, seq in seqs.items()}, body, event_key)


def _decode_ephemeral(data: str) -> EphemeralMessage:
    message = json.loads(data)
    if not isinstance(message, dict):
        raise TypeError(f"an ephemeral message must be an object, got {type(message).__name__}")
    return EphemeralMessage(list(message["to"]), message["body"], int(message.get("expires") or 0) or None)


def _decode_revoked(data: str) -> RevokedMessage:
    return RevokedMessage([str(key) for key in json.loads(data)])


def event_type(event: Event) -> object:
    """The ``type`` of an event (a Struct's tag), for logs."""
    return event.__struct_config__.tag if isinstance(event, msgspec.Struct) else event.get("type")
