"""The wire bytes of every WebSocket frame, and of the messaging views on both paths (no service needed).

A frame is a Struct; these bytes are what clients have always received: tag first, fields in order, UUIDs as
strings, timestamps in RFC 3339 with microseconds and "Z", the same text over HTTP (Litestar) and WebSocket.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from litestar.serialization import encode_json

from nubo.messaging.views import MessageView, conversation_view, message_view
from nubo.model import MessageState
from nubo.realtime import frames
from nubo.stores.events import event_type, frame, to_json

A = uuid.UUID("0190a0b0-0000-7000-8000-00000000000a")
B = uuid.UUID("0190a0b0-0000-7000-8000-00000000000b")
C = uuid.UUID("0190a0b0-0000-7000-8000-00000000000c")
AT = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)


def _message(**changes: Any) -> MessageView:
    row = {"id": A, "conversation_id": B, "sender_id": C, "content": 'héllo "you"', "state": 0}
    row |= {"message_type": 0, "client_id": "c-1", "created_at": AT, "edited_at": None} | changes
    return message_view(row)


MESSAGE_JSON = (
    '{"id":"0190a0b0-0000-7000-8000-00000000000a","conversation_id":"0190a0b0-0000-7000-8000-00000000000b",'
    '"sender_id":"0190a0b0-0000-7000-8000-00000000000c","content":"héllo \\"you\\"","state":0,"message_type":0,'
    '"client_id":"c-1","created_at":"2024-05-01T12:00:00.123000Z","edited_at":null,"attachments":[]}'
)

CASES: list[tuple[frames.Frame, str]] = [
    (
        frames.HelloFrame(user_id=A, last_event_id=7, instance="host:1:ab12cd"),
        '{"type":"hello","user_id":"0190a0b0-0000-7000-8000-00000000000a","last_event_id":7,"instance":"host:1:ab12cd"}',
    ),
    (
        frames.AckFrame(client_id=None, message_id=A, conversation_id=B, duplicate=True),
        '{"type":"ack","client_id":null,"message_id":"0190a0b0-0000-7000-8000-00000000000a",'
        '"conversation_id":"0190a0b0-0000-7000-8000-00000000000b","duplicate":true}',
    ),
    (frames.ErrorFrame(code="invalid_json", error="bad"), '{"type":"error","code":"invalid_json","error":"bad"}'),
    (
        frames.ErrorFrame(code="validation_failed", error="bad", fields={"content": "required"}, client_id=""),
        '{"type":"error","code":"validation_failed","error":"bad","fields":{"content":"required"},"client_id":""}',
    ),
    (frames.PongFrame(id=None, ts=1714564800123), '{"type":"pong","id":null,"ts":1714564800123}'),
    (frames.PongFrame(id={"n": [1, "x"]}, ts=1), '{"type":"pong","id":{"n":[1,"x"]},"ts":1}'),
    (frames.ResyncFrame(event_id=5, reason="history_gap"), '{"type":"resync","event_id":5,"reason":"history_gap"}'),
    (
        frames.TypingFrame(conversation_id=A, user_id=B),
        '{"type":"typing","conversation_id":"0190a0b0-0000-7000-8000-00000000000a",'
        '"user_id":"0190a0b0-0000-7000-8000-00000000000b"}',
    ),
    (
        frames.PresenceFrame(user_id=A, online=False),
        '{"type":"presence","user_id":"0190a0b0-0000-7000-8000-00000000000a","online":false}',
    ),
    (
        frames.MessageNewFrame(conversation_id=B, message=_message()),
        '{"type":"message.new","conversation_id":"0190a0b0-0000-7000-8000-00000000000b","message":'
        + MESSAGE_JSON
        + "}",
    ),
    (
        frames.MessageDeletedFrame(conversation_id=B, message_id=A),
        '{"type":"message.deleted","conversation_id":"0190a0b0-0000-7000-8000-00000000000b",'
        '"message_id":"0190a0b0-0000-7000-8000-00000000000a"}',
    ),
    (
        frames.ReadFrame(conversation_id=B, user_id=C, message_id=A),
        '{"type":"read","conversation_id":"0190a0b0-0000-7000-8000-00000000000b",'
        '"user_id":"0190a0b0-0000-7000-8000-00000000000c","message_id":"0190a0b0-0000-7000-8000-00000000000a"}',
    ),
    (
        frames.NotificationFrame(notification={"id": A, "kind": "follow", "created_at": AT}),
        '{"type":"notification","notification":{"id":"0190a0b0-0000-7000-8000-00000000000a","kind":"follow",'
        '"created_at":"2024-05-01T12:00:00.123000Z"}}',
    ),
]


@pytest.mark.parametrize(("event", "wire"), CASES, ids=[type(event).__name__ for event, _ in CASES])
def test_frame_wire_bytes(event: frames.Frame, wire: str) -> None:
    assert to_json(event) == wire
    assert event_type(event) == msgspec.json.decode(wire)["type"]
    decoded = msgspec.json.decode(frame(wire, 3), type=frames.ServerFrame)  # the durable form reads back
    assert type(decoded) is type(event)


def test_a_deleted_message_keeps_its_place_without_content() -> None:
    deleted = _message(state=MessageState.DELETED, edited_at=AT)
    assert deleted.content is None and deleted.state == MessageState.DELETED
    edited = frames.MessageEditedFrame(conversation_id=B, message=deleted)
    assert '"content":null,"state":2,' in to_json(edited)


def test_http_and_websocket_write_the_same_timestamps() -> None:
    assert encode_json(_message()).decode() == MESSAGE_JSON
    precise = _message(created_at=datetime(2026, 12, 2, 1, 2, 3, 495439, tzinfo=UTC))
    assert '"created_at":"2026-12-02T01:02:03.495439Z"' in to_json(
        frames.MessageNewFrame(conversation_id=B, message=precise)
    )
    assert encode_json(precise).decode() in to_json(frames.MessageNewFrame(conversation_id=B, message=precise))


def test_a_conversation_list_item_has_null_members() -> None:
    row = {"id": A, "type": 2, "title": "t", "created_by": B, "created_at": AT, "last_message_id": None}
    body = encode_json(conversation_view(row)).decode()
    assert body.endswith('"last_message":null,"unread_count":0,"role":"member","peer_id":null,"members":null}')
