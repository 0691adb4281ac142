"""What `/ws` refuses: lobby text that is blank, too long or a bare JSON value (an `error` frame, nothing
broadcast), and refused handshakes that leave no ERROR in the server log."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from websockets.exceptions import InvalidStatus

from nubo.realtime.lobby import MAX_LOBBY_CHARS
from nubo.stores import Stores
from tests.helpers.harness import ServerProcess
from tests.helpers.messaging import WsClient, make_users

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(db: Stores, start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server({"NUBO_RATE_MESSAGES": "10000/minute"})


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("   ", "empty_lobby_text"),
        ("\n\t", "empty_lobby_text"),
        ("42", "invalid_envelope"),
        ("null", "invalid_envelope"),
        ('"x"', "invalid_envelope"),
        (" true ", "invalid_envelope"),
        ("x" * (MAX_LOBBY_CHARS + 1), "too_long"),
    ],
    ids=["spaces", "blank", "number", "null", "string", "bool", "too-long"],
)
async def test_bad_lobby_text_gets_an_error_frame_and_is_not_broadcast(
    db: Stores, server: ServerProcess, text: str, code: str
) -> None:
    alice, bob = await make_users(db, "alice", "bob")
    sender = await WsClient.connect(server.ws_url, alice.token)
    other = await WsClient.connect(server.ws_url, bob.token)
    await sender.hello()
    await other.hello()
    await sender.send(text)
    await sender.wait_for(lambda c: bool(c.events("error")))
    error = sender.events("error")[0]
    assert error["code"] == code and error["error"], error
    marker = "fine lobby text"
    await sender.send(marker)  # the lobby still works, and the bad text came before it
    await other.wait_for(lambda c: marker in c.frames)
    assert all(frame == marker or isinstance(frame, dict) for frame in other.frames), other.frames[-3:]
    await sender.close()
    await other.close()


async def test_lobby_text_up_to_the_limit_is_broadcast(db: Stores, server: ServerProcess) -> None:
    (alice,) = await make_users(db, "alice")
    client = await WsClient.connect(server.ws_url, alice.token)
    await client.hello()
    text = "é" * MAX_LOBBY_CHARS
    await client.send(text)
    await client.wait_for(lambda c: text in c.frames)
    assert client.events("error") == []
    await client.close()


async def test_refused_handshakes_log_no_error(db: Stores, server: ServerProcess) -> None:
    for query in ("", "?token=not-a-jwt", "?last_event_id=x"):
        with pytest.raises(InvalidStatus):
            await WsClient.connect(server.ws_url, query=query)
    (alice,) = await make_users(db, "alice")
    with pytest.raises(InvalidStatus) as info:
        await WsClient.connect(server.ws_url, alice.token, query="?last_event_id=-1")
    assert info.value.response.status_code == 422
    await asyncio.sleep(0.3)  # the log line, if any, is written after the response
    logs = server.logs()
    assert "without completing handshake" not in logs and '"level": "error"' not in logs, logs[-2000:]
