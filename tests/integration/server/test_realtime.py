"""End to end: two real `nubo serve` processes sharing Redis (plus one with tight limits), real WS clients.

Covers the issue's "must show" list: cross-instance delivery only to members, 1,000 messages from three
senders exactly once in per-sender order with matching unread counters, recovery after a cut with
`last_event_id`, refused handshakes, the seed's plain-text lobby across instances, and the bounded send queue.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from nubo import accounts, messaging, notifications, social
from nubo.accounts import security
from nubo.stores import Stores
from tests.helpers.harness import ServerProcess
from tests.helpers.messaging import ChatUser, WsClient, make_users

pytestmark = pytest.mark.e2e

ALLOWED_ORIGIN = "https://app.nubo.test"


@pytest.fixture(scope="module")
def pair(db: Stores, start_server: Callable[..., ServerProcess]) -> tuple[ServerProcess, ServerProcess]:
    """Instances A and B: same database, same Redis prefix; a generous send limit for the load test."""
    env = {"NUBO_RATE_MESSAGES": "100000/minute", "NUBO_ALLOWED_ORIGINS": ALLOWED_ORIGIN}
    return start_server(env), start_server(env)


@pytest.fixture(scope="module")
def tight(db: Stores, start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """An instance with a 4-event send queue and 3 messages a minute per user."""
    return start_server({"NUBO_WS_QUEUE_SIZE": "4", "NUBO_RATE_MESSAGES": "3/minute"})


async def _group(db: Stores, owner: ChatUser, *others: ChatUser) -> uuid.UUID:
    view, _ = await messaging.create_conversation(
        db, owner.id, kind="group", user_ids=[o.id for o in others], title="e2e"
    )
    return view.id


def _new_messages(client: WsClient) -> list[dict[str, Any]]:
    return client.events("message.new")


async def test_message_reaches_member_on_other_instance_once_and_never_a_non_member(
    db: Stores, pair: tuple[ServerProcess, ServerProcess]
) -> None:
    a, b = pair
    alice, bob, carol = await make_users(db, "alice", "bob", "carol")
    conv, _ = await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id])
    ws_alice = await WsClient.connect(a.ws_url, alice.token)
    ws_bob = await WsClient.connect(b.ws_url, bob.token)
    carols = [await WsClient.connect(a.ws_url, carol.token), await WsClient.connect(b.ws_url, carol.token)]
    for client in (ws_alice, ws_bob, *carols):
        await client.hello()
    await ws_alice.send(
        {"type": "message.send", "conversation_id": str(conv.id), "content": "hi Bob", "client_id": "x1"}
    )
    await ws_alice.wait_for(lambda c: bool(c.events("ack")))
    ack = ws_alice.events("ack")[0]
    await ws_bob.wait_for(lambda c: bool(_new_messages(c)))
    await asyncio.sleep(1.0)  # room for a duplicate or a leak to show up
    received = _new_messages(ws_bob)
    assert len(received) == 1
    assert received[0]["message"]["id"] == ack["message_id"] and received[0]["message"]["content"] == "hi Bob"
    assert isinstance(received[0]["event_id"], int)
    async with db.pg.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT content, sender_id FROM messaging.message_index WHERE id = %s",
                (uuid.UUID(ack["message_id"]),),
            )
        ).fetchone()
    assert row is not None and row["content"] == "hi Bob" and row["sender_id"] == alice.id
    for client in carols:
        assert _new_messages(client) == [] and not any(isinstance(f, str) for f in client.frames)
    for client in (ws_alice, ws_bob, *carols):
        await client.close()


async def test_thousand_messages_three_senders_exactly_once_in_order(
    db: Stores, pair: tuple[ServerProcess, ServerProcess]
) -> None:
    a, b = pair
    alice, bob, dave, erin = await make_users(db, "alice", "bob", "dave", "erin")
    cid = await _group(db, alice, bob, dave, erin)
    for user in (alice, bob, dave, erin):
        await messaging.unread_counts(db, user.id)  # Redis hashes exist: later changes are deltas
    senders = {alice.id: (alice, a), bob.id: (bob, b), dave.id: (dave, b)}
    clients = {uid: await WsClient.connect(server.ws_url, user.token) for uid, (user, server) in senders.items()}
    clients[erin.id] = await WsClient.connect(a.ws_url, erin.token)
    for client in clients.values():
        await client.hello()
    counts = {alice.id: 334, bob.id: 333, dave.id: 333}
    total = sum(counts.values())
    started = time.monotonic()

    async def send_all(user: ChatUser) -> None:
        client = clients[user.id]
        for i in range(counts[user.id]):  # pipelined: the server handles one socket's frames in order
            await client.send(
                {
                    "type": "message.send",
                    "conversation_id": str(cid),
                    "content": f"{i}",
                    "client_id": f"{user.username}-{i}",
                }
            )

    await asyncio.gather(*(send_all(user) for user, _ in senders.values()))
    for client in clients.values():
        await client.wait_for(lambda c: len(_new_messages(c)) >= total, within=60)
    for uid, client in clients.items():
        if uid in counts:  # an ack and the sender's own echo travel separately: either may come first
            await client.wait_for(lambda c, n=counts[uid]: len(c.events("ack")) >= n, within=30)
    elapsed = time.monotonic() - started
    for client in clients.values():
        events = _new_messages(client)
        ids = [e["message"]["id"] for e in events]
        assert len(ids) == total and len(set(ids)) == total, "every message exactly once"
        event_ids = [e["event_id"] for e in events]
        assert event_ids == sorted(event_ids) and len(set(event_ids)) == total
        for sender_id in counts:
            seq = [int(e["message"]["content"]) for e in events if e["message"]["sender_id"] == str(sender_id)]
            assert seq == list(range(counts[sender_id])), "per-sender order"
    for uid, client in clients.items():
        if uid in counts:
            assert len(client.events("ack")) == counts[uid] and not client.events("error")
    # Bob reads up to the 500th message he received; everyone else reads nothing.
    bob_events = _new_messages(clients[bob.id])
    marker = bob_events[499]["message"]["id"]
    await clients[bob.id].send({"type": "read", "conversation_id": str(cid), "message_id": marker})
    await clients[alice.id].wait_for(lambda c: bool(c.events("read")))
    by_sender = {uid: 0 for uid in (alice.id, bob.id, dave.id, erin.id)}
    for event in bob_events:
        by_sender[uuid.UUID(event["message"]["sender_id"])] += 1
    expected = {uid: total - by_sender[uid] for uid in by_sender}
    # Read = every message up to the marker's id (ids follow commit order in a conversation; delivery follows
    # it per sender, while two senders' publishes may interleave either way).
    expected[bob.id] = sum(
        1
        for e in bob_events
        if uuid.UUID(e["message"]["id"]) > uuid.UUID(marker) and e["message"]["sender_id"] != str(bob.id)
    )
    for uid, want in expected.items():
        assert (await messaging.unread_counts_from_postgres(db, uid))[cid] == want
        assert (await messaging.unread_counts(db, uid)).get(cid, 0) == want
    async with httpx.AsyncClient(base_url=b.url, timeout=30) as http:
        unread = (await http.get("/unread", headers=bob.headers)).json()
    assert unread["conversations"][str(cid)] == expected[bob.id]
    for client in clients.values():
        await client.close()
    assert elapsed < 60, f"1,000 messages took {elapsed:.1f} s"


async def test_reconnect_with_last_event_id_gets_exactly_the_missed_ones(
    db: Stores, pair: tuple[ServerProcess, ServerProcess]
) -> None:
    a, b = pair
    alice, bob = await make_users(db, "alice", "bob")
    conv, _ = await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id])
    sender = await WsClient.connect(a.ws_url, alice.token)
    ws_bob = await WsClient.connect(b.ws_url, bob.token)
    await sender.hello()
    await ws_bob.hello()

    async def send(n: int, prefix: str) -> list[str]:
        before = len(sender.events("ack"))
        for i in range(n):
            await sender.send(
                {
                    "type": "message.send",
                    "conversation_id": str(conv.id),
                    "content": f"{prefix}{i}",
                    "client_id": f"{prefix}{i}",
                }
            )
        await sender.wait_for(lambda c: len(c.events("ack")) >= before + n, within=30)
        return [ack["message_id"] for ack in sender.events("ack")[before:]]

    await send(5, "before-")
    await ws_bob.wait_for(lambda c: len(_new_messages(c)) == 5)
    last_seen = _new_messages(ws_bob)[-1]["event_id"]
    ws_bob.ws.transport.abort()  # the socket is cut, no close handshake
    await ws_bob.close()
    missed = await send(50, "missed-")
    again = await WsClient.connect(b.ws_url, bob.token, query=f"?last_event_id={last_seen}")
    hello = await again.hello()
    assert hello["last_event_id"] == last_seen
    await again.wait_for(lambda c: len(_new_messages(c)) >= 50)
    await asyncio.sleep(1.0)
    replayed = _new_messages(again)
    assert [e["message"]["id"] for e in replayed] == missed
    assert [e["event_id"] for e in replayed] == list(range(last_seen + 1, last_seen + 51))
    assert not again.events("resync")
    # Resuming through the first frame instead of the query parameter works the same way.
    third = await WsClient.connect(a.ws_url, bob.token)
    await third.send({"type": "resume", "last_event_id": last_seen + 45})
    await third.wait_for(lambda c: len(_new_messages(c)) >= 5)
    await asyncio.sleep(0.5)
    assert [e["message"]["id"] for e in _new_messages(third)] == missed[45:]
    for client in (sender, again, third):
        await client.close()


async def _refused(url: str, **kwargs: Any) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(url, open_timeout=10, **kwargs):
            pass
    return info.value


async def test_handshake_refusals(db: Stores, settings: Any, pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, _ = pair
    (alice,) = await make_users(db, "alice")
    refused = await _refused(a.ws_url)
    assert refused.response.status_code == 401 and b"missing_token" in refused.response.body
    expired, _ = security.encode_access_token(settings, alice.id, alice.session_id, ttl=60, now=int(time.time()) - 3600)
    refused = await _refused(a.ws_url, additional_headers={"Authorization": f"Bearer {expired}"})
    assert refused.response.status_code == 401 and b"expired_token" in refused.response.body
    refused = await _refused(a.ws_url + "?token=not-a-jwt")
    assert refused.response.status_code == 401
    refused = await _refused(a.ws_url, additional_headers=alice.headers, origin="https://evil.example")
    assert refused.response.status_code == 403 and b"origin_not_allowed" in refused.response.body
    refused = await _refused(a.ws_url + "?last_event_id=-3", additional_headers=alice.headers)
    assert refused.response.status_code == 422
    ok = await WsClient.connect(a.ws_url + f"?token={alice.token}", origin=ALLOWED_ORIGIN)
    await ok.hello()
    await ok.close()
    await accounts.revoke_session(db, alice.id, alice.session_id)
    refused = await _refused(a.ws_url, additional_headers=alice.headers)
    assert refused.response.status_code == 401


async def test_bad_frames_get_errors_and_the_socket_survives(
    db: Stores, pair: tuple[ServerProcess, ServerProcess]
) -> None:
    a, _ = pair
    alice, bob = await make_users(db, "alice", "bob")
    client = await WsClient.connect(a.ws_url, alice.token)
    await client.hello()
    stranger_conv = (await messaging.create_conversation(db, bob.id, kind="group", user_ids=[], title="x"))[0]
    bad: list[Any] = [
        "{not json",
        "[1, 2]",
        {"type": 5},
        {"type": "teleport"},
        {"type": "message.send", "conversation_id": "nope", "content": "x", "client_id": "c"},
        {
            "type": "message.send",
            "conversation_id": str(stranger_conv.id),
            "content": "x",
            "client_id": "c2",
        },
        {"type": "message.send", "conversation_id": str(stranger_conv.id), "content": ""},
        {"type": "resume", "last_event_id": 1},
    ]
    for frame in bad:
        await client.send(frame)
    await client.ws.send(b"\x00binary")
    await client.wait_for(lambda c: len(c.events("error")) >= len(bad) + 1)
    codes = [e["code"] for e in client.events("error")]
    assert codes == [
        "invalid_json",
        "invalid_envelope",
        "invalid_envelope",
        "unknown_type",
        "validation_error",
        "conversation_not_found",
        "validation_error",
        "resume_too_late",
        "binary_not_supported",
    ]
    assert client.events("error")[5]["client_id"] == "c2"
    await client.send({"type": "ping", "id": 7})
    await client.wait_for(lambda c: bool(c.events("pong")))
    assert client.events("pong")[0]["id"] == 7
    await client.send("x" * (70 * 1024))  # over the 64 KiB frame limit: uvicorn closes with 1009
    await client.wait_for(lambda c: c.closed_code is not None)
    assert client.closed_code == 1009
    again = await WsClient.connect(a.ws_url, alice.token)
    await again.hello()
    await again.close()


async def test_plain_text_lobby_crosses_instances(db: Stores, pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    alice, bob = await make_users(db, "alice", "bob")
    on_a = await WsClient.connect(a.ws_url, alice.token)
    on_b = await WsClient.connect(b.ws_url, bob.token)
    await on_a.hello()
    await on_b.hello()
    text = f"Salut à tous ! {uuid.uuid4().hex[:6]}"
    await on_a.send(text)
    await on_b.wait_for(lambda c: text in c.frames)
    await on_a.wait_for(lambda c: text in c.frames)  # the seed's broadcast includes the sender
    await on_a.close()
    await on_b.close()


async def test_typing_and_presence_across_instances(db: Stores, pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    alice, bob = await make_users(db, "alice", "bob")
    conv, _ = await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id])
    ws_bob = await WsClient.connect(b.ws_url, bob.token)
    await ws_bob.hello()
    ws_alice = await WsClient.connect(a.ws_url, alice.token)
    await ws_alice.hello()
    await ws_bob.wait_for(lambda c: any(e["user_id"] == str(alice.id) and e["online"] for e in c.events("presence")))
    async with httpx.AsyncClient(base_url=b.url, timeout=30) as http:
        view = (await http.get(f"/conversations/{conv.id}", headers=bob.headers)).json()
    assert {m["username"]: m["online"] for m in view["members"]} == {alice.username: True, bob.username: True}
    await ws_alice.send({"type": "typing", "conversation_id": str(conv.id)})
    await ws_bob.wait_for(lambda c: bool(c.events("typing")))
    typing = ws_bob.events("typing")[0]
    assert typing["user_id"] == str(alice.id) and "event_id" not in typing
    assert not ws_alice.events("typing")  # not echoed to the typist
    await ws_alice.close()
    await ws_bob.wait_for(
        lambda c: any(e["user_id"] == str(alice.id) and not e["online"] for e in c.events("presence"))
    )
    await ws_bob.close()


async def test_full_send_queue_closes_with_4008(db: Stores, tight: ServerProcess) -> None:
    (slow,) = await make_users(db, "slow")
    client = await WsClient.connect(tight.ws_url, slow.token, max_queue=1, max_size=None)
    await client.hello()
    client._task.cancel() if client._task else None  # stop reading: frames pile up on the server
    bus = db.events
    payload = "y" * 50_000
    for i in range(400):  # ~20 MB: more than the kernel socket buffers, so the server's queue must fill
        await bus.publish([slow.id], {"type": "notification", "i": i, "pad": payload})
    code = None
    try:
        async for _ in client.ws:
            pass
    except websockets.ConnectionClosed:
        pass
    code = client.ws.close_code
    assert code == 4008
    healthy = await WsClient.connect(tight.ws_url, slow.token)  # the server itself is fine
    await healthy.hello()
    await healthy.close()


async def test_sends_over_the_socket_are_rate_limited(db: Stores, tight: ServerProcess) -> None:
    alice, bob = await make_users(db, "alice", "bob")
    conv, _ = await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id])
    client = await WsClient.connect(tight.ws_url, alice.token)
    await client.hello()
    for i in range(4):
        await client.send(
            {"type": "message.send", "conversation_id": str(conv.id), "content": "x", "client_id": f"r{i}"}
        )
    await client.wait_for(lambda c: len(c.events("ack")) + len(c.events("error")) >= 4)
    assert len(client.events("ack")) == 3
    error = client.events("error")[0]
    assert error["code"] == "rate_limited" and error["client_id"] == "r3"
    await client.close()


async def test_rest_routes_end_to_end(db: Stores, pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, _ = pair
    alice, bob = await make_users(db, "alice", "bob")
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as http:
        created = await http.post(
            "/conversations", json={"type": "direct", "user_ids": [str(bob.id)]}, headers=alice.headers
        )
        assert created.status_code == 201, created.text
        cid = created.json()["id"]
        again = await http.post(
            "/conversations", json={"type": "direct", "user_ids": [str(alice.id)]}, headers=bob.headers
        )
        assert again.status_code == 200 and again.json()["id"] == cid
        sent = await http.post(
            f"/conversations/{cid}/messages",
            json={"content": "rest", "client_id": "k"},
            headers=alice.headers,
        )
        assert sent.status_code == 201
        dup = await http.post(
            f"/conversations/{cid}/messages",
            json={"content": "rest", "client_id": "k"},
            headers=alice.headers,
        )
        assert dup.status_code == 200 and dup.json()["id"] == sent.json()["id"]
        listed = (await http.get("/conversations", headers=bob.headers)).json()
        mine = next(c for c in listed["items"] if c["id"] == cid)
        assert mine["unread_count"] == 1 and mine["last_message"]["text"] == "rest"
        page = (await http.get(f"/conversations/{cid}/messages?limit=10", headers=bob.headers)).json()
        assert [m["id"] for m in page["items"]] == [sent.json()["id"]] and page["next"] is None
        read = await http.post(
            f"/conversations/{cid}/read", json={"message_id": sent.json()["id"]}, headers=bob.headers
        )
        assert read.status_code == 200 and read.json()["unread_count"] == 0
        liked = await http.post(f"/messages/{sent.json()['id']}/like", headers=bob.headers)
        assert liked.json() == {"message_id": sent.json()["id"], "liked": True, "likes": 1}
        edit = await http.patch(f"/messages/{sent.json()['id']}", json={"content": "edited"}, headers=bob.headers)
        assert edit.status_code == 403 and edit.json()["code"] == "not_sender"
        for bad in (
            await http.get("/conversations/not-a-uuid", headers=alice.headers),
            await http.get("/conversations?limit=0", headers=alice.headers),
            await http.post(f"/conversations/{cid}/messages", json={"content": ""}, headers=alice.headers),
            await http.post(f"/conversations/{cid}/messages", content=b"{", headers=alice.headers),
            await http.post("/conversations", json={"type": "direct", "user_ids": ["x"]}, headers=alice.headers),
        ):
            assert 400 <= bad.status_code < 500 and "code" in bad.json(), bad.text
        hidden = await http.get(f"/conversations/{uuid.uuid4()}", headers=alice.headers)
        assert hidden.status_code == 404
        assert (await http.get("/conversations")).status_code == 401


async def test_notifications_are_stored_listed_and_pushed_to_their_target_only(
    db: Stores, pair: tuple[ServerProcess, ServerProcess]
) -> None:
    a, b = pair
    alice, bob, carol = await make_users(db, "alice", "bob", "carol")
    ws_bob = await WsClient.connect(b.ws_url, bob.token)
    ws_carol = await WsClient.connect(a.ws_url, carol.token)
    await ws_bob.hello()
    await ws_carol.hello()
    note = await notifications.notify(db, bob.id, "follow", actor_id=alice.id)
    assert note is not None
    assert await notifications.notify(db, bob.id, "like", actor_id=bob.id) is None  # never about oneself
    await ws_bob.wait_for(lambda c: bool(c.events("notification")))
    pushed = ws_bob.events("notification")[0]
    assert pushed["notification"]["id"] == str(note.id) and isinstance(pushed["event_id"], int)
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as http:
        listed = (await http.get("/notifications", headers=bob.headers)).json()
        assert [n["id"] for n in listed["items"]] == [str(note.id)] and not listed["items"][0]["read"]
        assert (await http.get("/notifications", headers=carol.headers)).json()["items"] == []
        marked = await http.post("/notifications/read", json={}, headers=bob.headers)
        assert marked.json() == {"updated": 1}
    await asyncio.sleep(0.5)
    assert ws_carol.events("notification") == []
    await ws_bob.close()
    await ws_carol.close()


async def test_post_new_reaches_online_followers_only(db: Stores, pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    author, fan, stranger = await make_users(db, "author", "fan", "stranger")
    await social.follow(db, fan.id, author.id)
    ws_fan = await WsClient.connect(b.ws_url, fan.token)
    ws_stranger = await WsClient.connect(a.ws_url, stranger.token)
    await ws_fan.hello()
    await ws_stranger.hello()
    post = {"id": uuid.uuid4(), "user_id": author.id, "content": "fresh post", "visibility": 0}
    assert await notifications.push_post_new(db, post) == 1
    await ws_fan.wait_for(lambda c: bool(c.events("post.new")))
    assert ws_fan.events("post.new")[0]["post"]["content"] == "fresh post"
    await asyncio.sleep(0.5)
    assert ws_stranger.events("post.new") == []
    await ws_fan.close()
    await ws_stranger.close()


async def test_revoking_a_session_closes_its_open_sockets_on_every_instance(
    db: Stores, pair: tuple[ServerProcess, ServerProcess]
) -> None:
    a, b = pair
    (alice,) = await make_users(db, "alice")
    row = await accounts.find_user(db, str(alice.id))
    assert row is not None
    other = await accounts.open_session(db, row, accounts.ClientInfo(ip="127.0.0.1"))  # a second device
    on_a = await WsClient.connect(a.ws_url, alice.token)
    on_b = await WsClient.connect(b.ws_url, alice.token)
    other_device = await WsClient.connect(b.ws_url, other.access_token)
    for client in (on_a, on_b, other_device):
        await client.hello()
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as http:
        response = await http.post("/logout", headers=alice.headers)
    assert response.status_code == 204, response.text
    for client in (on_a, on_b):
        await client.wait_for(lambda c: c.closed_code is not None, within=5)
        assert client.closed_code == 4401
    await other_device.send({"type": "ping"})
    await other_device.wait_for(lambda c: bool(c.events("pong")))
    assert other_device.closed_code is None
