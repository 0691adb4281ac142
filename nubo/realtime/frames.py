"""Every frame the server sends on the WebSocket, as a msgspec Struct tagged by its ``type``.

The tag is encoded first, then the fields in the order written here: the wire shape of each frame is its
class. Frames are encoded by :func:`nubo.stores.events.to_json` (timestamps in RFC 3339, UTC, ``Z``, microseconds:
the same text as in the HTTP responses).

A frame that carries a domain's shape (a message, a notification, a post) is generic in it: the payload is
the domain's own view, defined once in the domain and shared with its HTTP routes (e.g.
``MessageNewFrame[MessageView]``). This module imports no domain package, so that the domains can build their
frames without an import cycle (importing ``nubo.messaging.views`` loads all of ``nubo.messaging``).

Replies to one socket (no ``event_id``):

- ``hello`` {user_id, last_event_id, instance}: first frame, with the position delivery resumes from.
- ``ack`` {client_id, message_id, conversation_id, duplicate}: a ``message.send`` is committed.
- ``error`` {code, error, fields?, client_id?}: a frame could not be handled (the keys with ``?`` only when
  known).
- ``pong`` {id, ts}: answers ``ping``, echoing its ``id`` (null when absent); ``ts`` in ms since the epoch.
- ``resync`` {event_id, reason}: history no longer reaches back; refetch over REST, resume from ``event_id``.

Ephemeral events (live only, no ``event_id``):

- ``typing`` {conversation_id, user_id}: shown for 1 s.
- ``presence`` {user_id, online}: a peer came online or went offline.

Durable events (``event_id`` spliced in front by :func:`nubo.stores.events.frame`, replayed on resume):

- ``message.new`` / ``message.edited`` {conversation_id, message}: a :class:`nubo.messaging.views.MessageView`.
- ``message.deleted`` {conversation_id, message_id}.
- ``read`` {conversation_id, user_id, message_id}: a member's read marker moved.
- ``notification`` {notification}: the notification as :mod:`nubo.notifications` shapes it.
- ``post.new`` {post}: a followed user posted; the post summary as :mod:`nubo.notifications` shapes it.

Client -> server frames (:data:`ClientFrames`) are declared here too, for the AsyncAPI document of ``/ws``
(:mod:`nubo.server.asyncapi`, served at ``/schema/asyncapi.json``), which is generated from these classes.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Generic, TypeVar

import msgspec

Payload = TypeVar("Payload")
"""A domain's shape carried by a frame (its view Struct)."""


class Frame(msgspec.Struct, frozen=True, tag_field="type", gc=False):
    """A server -> client frame; its ``type`` is the subclass's tag."""


class HelloFrame(Frame, frozen=True, tag="hello"):
    user_id: uuid.UUID
    last_event_id: int
    instance: str


class AckFrame(Frame, frozen=True, tag="ack"):
    client_id: str | None
    message_id: uuid.UUID
    conversation_id: uuid.UUID
    duplicate: bool


class ErrorFrame(Frame, frozen=True, tag="error", omit_defaults=True):
    """`fields`, `client_id` and `request_id` are left out when unknown (never sent as null). `request_id` is
    the socket's handshake request id (`X-Request-ID`), the one in the server's log lines of that socket."""

    code: str
    error: str
    fields: dict[str, str] | None = None
    client_id: str | None = None
    request_id: str | None = None


class PongFrame(Frame, frozen=True, tag="pong"):
    id: Any  # whatever JSON value the ping carried, echoed as is
    ts: int


class ResyncFrame(Frame, frozen=True, tag="resync"):
    event_id: int
    reason: str


class TypingFrame(Frame, frozen=True, tag="typing"):
    conversation_id: uuid.UUID
    user_id: uuid.UUID


class PresenceFrame(Frame, frozen=True, tag="presence"):
    user_id: uuid.UUID
    online: bool


class MessageNewFrame(Frame, Generic[Payload], frozen=True, tag="message.new"):
    conversation_id: uuid.UUID
    message: Payload


class MessageEditedFrame(Frame, Generic[Payload], frozen=True, tag="message.edited"):
    conversation_id: uuid.UUID
    message: Payload


class MessageDeletedFrame(Frame, frozen=True, tag="message.deleted"):
    conversation_id: uuid.UUID
    message_id: uuid.UUID


class ReadFrame(Frame, frozen=True, tag="read"):
    conversation_id: uuid.UUID
    user_id: uuid.UUID
    message_id: uuid.UUID


class NotificationFrame(Frame, Generic[Payload], frozen=True, tag="notification"):
    notification: Payload


class PostNewFrame(Frame, Generic[Payload], frozen=True, tag="post.new"):
    post: Payload


ServerFrame = (
    HelloFrame
    | AckFrame
    | ErrorFrame
    | PongFrame
    | ResyncFrame
    | TypingFrame
    | PresenceFrame
    | MessageNewFrame[Any]
    | MessageEditedFrame[Any]
    | MessageDeletedFrame
    | ReadFrame
    | NotificationFrame[Any]
    | PostNewFrame[Any]
)
"""Any frame the server sends (a tagged union: ``msgspec.json.decode(text, type=ServerFrame)`` reads one)."""


# ---- client -> server frames (what the socket accepts; documented in the AsyncAPI document) ----------------


class ClientFrame(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=False):
    """A client -> server JSON envelope; its ``type`` is the subclass's tag. A text frame that does not start
    with ``{`` or ``[`` is lobby text instead."""


class MessageSendFrame(ClientFrame, frozen=True, tag="message.send"):
    """Send a message; answered by ``ack`` once committed (or ``error`` with the same ``client_id``)."""

    conversation_id: uuid.UUID
    content: Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]
    client_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class TypingSendFrame(ClientFrame, frozen=True, tag="typing"):
    """The caller is typing in a conversation (throttled to one event a second)."""

    conversation_id: uuid.UUID


class ReadSendFrame(ClientFrame, frozen=True, tag="read"):
    """Move the caller's read marker (default: the latest message)."""

    conversation_id: uuid.UUID
    message_id: uuid.UUID | None = None


class PingFrame(ClientFrame, frozen=True, tag="ping"):
    """Answered by ``pong`` echoing ``id``."""

    id: Any = None


class ResumeFrame(ClientFrame, frozen=True, tag="resume"):
    """First frame only: resume delivery after this event id (as the ``last_event_id`` query parameter)."""

    last_event_id: Annotated[int, msgspec.Meta(ge=0)]


ClientFrames = (MessageSendFrame, TypingSendFrame, ReadSendFrame, PingFrame, ResumeFrame)
"""Every JSON frame a client may send."""
