"""A photo sent over the WebSocket reaches the other member with its URLs (a real `nubo serve`)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from nubo import media, messaging
from nubo.stores import Stores
from tests.helpers.harness import ServerProcess
from tests.helpers.media import download, jpeg_with_exif
from tests.helpers.messaging import WsClient, make_users

pytestmark = pytest.mark.e2e


async def test_a_websocket_send_carries_the_attachment(db: Stores, start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    alice, bob = await make_users(db, "alice", "bob")
    conv, _ = await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id])
    data = jpeg_with_exif(50, 40)
    grant = await media.start_upload(db, alice.id, "image", "image/jpeg", len(data))
    async with httpx.AsyncClient(timeout=30) as http:
        sent = await http.put(grant.upload.url, content=data, headers=grant.upload.headers)
    assert sent.status_code == 200, sent.text
    photo = await media.complete_upload(db, alice.id, grant.media.id)
    ws_alice = await WsClient.connect(server.ws_url, alice.token)
    ws_bob = await WsClient.connect(server.ws_url, bob.token)
    for client in (ws_alice, ws_bob):
        await client.hello()
    frame = {"type": "message.send", "conversation_id": str(conv.id), "media_ids": [str(photo.id)], "client_id": "p1"}
    await ws_alice.send(frame)
    await ws_bob.wait_for(lambda c: bool(c.events("message.new")))
    message = ws_bob.events("message.new")[0]["message"]
    assert message["content"] == "" and [a["id"] for a in message["attachments"]] == [str(photo.id)]
    variant = message["attachments"][0]["variants"]["320"]
    assert len(await download(variant["url"])) == variant["size"]
    for client in (ws_alice, ws_bob):
        await client.close()
