"""`nubo chat` driven through scripted stdin against a real `nubo serve`: sends, receives, quits cleanly."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import pytest

from nubo import messaging
from nubo.cli.chat import ChatClient
from nubo.stores import Stores
from tests.helpers.harness import ROOT, ServerProcess
from tests.helpers.messaging import PASSWORD, WsClient, make_users

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(db: Stores, start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server()


async def _read_until(stream: asyncio.StreamReader, needle: str, seen: list[str], within: float = 20.0) -> None:
    async def read() -> None:
        while not any(needle in line for line in seen):
            line = await stream.readline()
            if not line:
                raise EOFError(f"chat exited before printing {needle!r}: {seen}")
            seen.append(line.decode(errors="replace"))

    await asyncio.wait_for(read(), within)


async def test_chat_sends_a_message_another_client_receives(
    db: Stores, server: ServerProcess, process_env: dict[str, str]
) -> None:
    alice, bob = await make_users(db, "alice", "bob")
    conv, _ = await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id])
    await messaging.send_message(db, bob.id, conv.id, "earlier message from bob")
    ws_bob = await WsClient.connect(server.ws_url, bob.token)
    await ws_bob.hello()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nubo",
        "chat",
        "--url",
        server.url,
        "--username",
        alice.username,
        "--password",
        PASSWORD,
        "--conversation",
        str(conv.id),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**process_env, "COLUMNS": "200"},
        cwd=ROOT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    seen: list[str] = []
    try:
        await _read_until(proc.stdout, "earlier message from bob", seen)  # history shown
        await _read_until(proc.stdout, "connected", seen)
        proc.stdin.write(b"hello from the terminal\n")
        await proc.stdin.drain()
        await ws_bob.wait_for(
            lambda c: any(e["message"]["content"] == "hello from the terminal" for e in c.events("message.new")),
            within=20,
        )
        received = [e for e in ws_bob.events("message.new") if e["message"]["content"] == "hello from the terminal"]
        assert len(received) == 1 and received[0]["message"]["sender_id"] == str(alice.id)
        await _read_until(proc.stdout, "✓ sent", seen)
        # Live events reach the terminal too.
        await ws_bob.send(
            {
                "type": "message.send",
                "conversation_id": str(conv.id),
                "content": "bob answers",
                "client_id": "b1",
            }
        )
        await _read_until(proc.stdout, "bob answers", seen)
        await ws_bob.send("lobby hello from bob")
        await _read_until(proc.stdout, "[lobby] lobby hello from bob", seen)
        proc.stdin.write(b"/quit\n")
        await proc.stdin.drain()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await ws_bob.close()
    output = "".join(seen)
    assert f"{bob.username}: bob answers" in output


async def test_chat_refuses_bad_credentials(db: Stores, server: ServerProcess, process_env: dict[str, str]) -> None:
    (alice,) = await make_users(db, "alice")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nubo",
        "chat",
        "--url",
        server.url,
        "--username",
        alice.username,
        "--password",
        "wrong password!",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=process_env,
        cwd=ROOT,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert b"login failed" in err and b"invalid_credentials" in err


async def test_chat_lists_by_username_explains_bad_commands_and_follows_port(
    db: Stores, server: ServerProcess, process_env: dict[str, str]
) -> None:
    alice, bob = await make_users(db, "alice", "bob")
    conv, _ = await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id])
    env = {**process_env, "COLUMNS": "200", "PORT": str(server.port)}  # no --url: PORT says where
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "nubo", "chat", "--username", alice.username, "--password", PASSWORD),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    seen: list[str] = []
    try:
        await _read_until(proc.stdout, "connected", seen)
        listing = "".join(seen)
        assert f"1. direct with {bob.username}" in listing and str(conv.id) not in listing
        proc.stdin.write(b"/open 99\n/frobnicate now\n/open 1\n/quit\n")
        await proc.stdin.drain()
        await _read_until(proc.stdout, "no conversation number 99: /list shows 1 to 1", seen)
        await _read_until(proc.stdout, "unknown command /frobnicate", seen)
        await _read_until(proc.stdout, "== direct conversation", seen)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("text", ["42", "null", '"x"', '{"no": "type"}'])
async def test_chat_shows_lobby_text_that_parses_as_json(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    client = ChatClient("http://127.0.0.1:1", "token", None, None)
    try:
        await client.on_frame(text)
    finally:
        await client.http.aclose()
    assert f"[lobby] {text}" in capsys.readouterr().out
