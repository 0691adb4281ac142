"""The AsyncAPI document of /ws (nubo.server.asyncapi) and the frame check every test applies with it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from nubo.messaging.views import message_view
from nubo.realtime import frames
from nubo.server.asyncapi import SERVER_FRAMES, document
from nubo.stores.events import frame, to_json
from tests.helpers.frames import frame_problem

A, B = uuid.uuid4(), uuid.uuid4()
AT = datetime(2026, 12, 2, 1, 2, 3, 495439, tzinfo=UTC)


def test_the_document_names_every_frame_both_ways() -> None:
    doc = document()
    assert doc["asyncapi"] == "3.0.0" and doc["channels"]["ws"]["address"] == "/ws"
    sent = doc["operations"]["sendFrames"]["messages"]
    received = doc["operations"]["receiveFrames"]["messages"]
    assert len(sent) == len(SERVER_FRAMES) + 1  # and lobby text
    assert len(received) == len(frames.ClientFrames) + 1
    assert set(doc["channels"]["ws"]["bindings"]["ws"]["query"]["properties"]) == {"token", "last_event_id"}
    assert "invalid_json" in doc["components"]["schemas"]["ErrorFrame"]["properties"]["code"]["description"]


def test_frames_as_sent_fit_and_others_do_not() -> None:
    row = {"id": A, "conversation_id": B, "sender_id": A, "content": "hi", "state": 0, "message_type": 0}
    message = message_view(row | {"client_id": None, "created_at": AT, "edited_at": None})
    durable = frame(to_json(frames.MessageNewFrame(conversation_id=B, message=message)), 7)
    assert frame_problem(durable) is None
    assert frame_problem(to_json(frames.HelloFrame(user_id=A, last_event_id=0, instance="i"))) is None
    assert frame_problem("hello lobby") is None and frame_problem("42") is None  # lobby text
    assert frame_problem(to_json(frames.MessageNewFrame(conversation_id=B, message=message))) is not None  # event_id
    assert frame_problem('{"type": "hello", "user_id": "x", "last_event_id": 0, "instance": "i"}') is not None
    old_format = durable.replace(".495439Z", ".495439+00:00")
    assert frame_problem(old_format) is not None  # one timestamp format
    assert frame_problem('{"type": "nope"}') is not None
