"""Every frame the server sends on the WebSocket, as a msgspec Struct tagged by its ``type``.

The tag is encoded first, then the fields in the order written here: the wire shape of each frame is its
class. Frames are encoded by :func:`nubo.stores.events.to_json` (timestamps as ``isoformat()``, the format
the WebSocket has always used; HTTP responses use RFC 3339).

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
"""

from __future__ import annotations

import uuid
from typing import Any, Generic, TypeVar

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
    id: object  # whatever JSON value the ping carried, echoed as is
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
