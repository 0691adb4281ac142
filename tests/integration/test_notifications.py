"""Notifications of likes, comments, replies and @mentions on a real server: stored, listed and pushed live
over /ws, grouped per subject, never from a blocked user, and only the kinds the user keeps on."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from nubo.stores import Stores
from tests.helpers.harness import ServerProcess
from tests.helpers.messaging import ChatUser, WsClient, make_users

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(db: Stores, start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server()


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


async def call(http: httpx.AsyncClient, user: ChatUser, method: str, path: str, **kwargs: Any) -> Any:
    response = await http.request(method, path, headers=user.headers, **kwargs)
    assert response.status_code < 300, (method, path, response.status_code, response.text)
    return response.json() if response.content else None


async def listed(http: httpx.AsyncClient, user: ChatUser) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await call(http, user, "GET", "/notifications"))["items"]
    return items


async def live(server: ServerProcess, user: ChatUser) -> WsClient:
    client = await WsClient.connect(server.ws_url, user.token)
    await client.hello()
    return client


def pushed(client: WsClient, kind: str) -> list[dict[str, Any]]:
    return [e["notification"] for e in client.events("notification") if e["notification"]["kind"] == kind]


async def test_each_kind_is_stored_listed_and_pushed_live(
    db: Stores, server: ServerProcess, http: httpx.AsyncClient
) -> None:
    alice, bob, carol = await make_users(db, "alice", "bob", "carol")
    ws_alice, ws_bob = await live(server, alice), await live(server, bob)

    post = await call(http, alice, "POST", "/posts", json={"content": f"hello @{bob.username}"})
    await ws_bob.wait_for(lambda c: bool(pushed(c, "mention")))
    mention = pushed(ws_bob, "mention")[0]
    assert mention["actor_id"] == str(alice.id) and mention["data"] == {"post_id": post["id"]}

    comment = await call(http, bob, "POST", f"/posts/{post['id']}/comments", json={"content": "nice"})
    await ws_alice.wait_for(lambda c: bool(pushed(c, "comment")))
    assert pushed(ws_alice, "comment")[0]["data"] == {"post_id": post["id"], "comment_id": comment["id"]}

    await call(http, carol, "POST", f"/posts/{post['id']}/comments", json={"content": "me too"})
    await ws_bob.wait_for(lambda c: bool(pushed(c, "reply")))  # Bob commented before Carol
    assert pushed(ws_bob, "reply")[0]["actor_id"] == str(carol.id)

    await call(http, bob, "POST", f"/posts/{post['id']}/like")
    await ws_alice.wait_for(lambda c: bool(pushed(c, "like")))
    assert pushed(ws_alice, "like")[0]["data"] == {"target_type": "post", "post_id": post["id"]}

    await call(http, alice, "POST", f"/comments/{comment['id']}/like")
    await ws_bob.wait_for(lambda c: bool(pushed(c, "like")))
    assert pushed(ws_bob, "like")[0]["data"]["comment_id"] == comment["id"]

    # Carol @mentions Alice in a comment on Alice's own post: Alice is told once (the mention wins).
    await call(http, carol, "POST", f"/posts/{post['id']}/comments", json={"content": f"@{alice.username} hi"})
    await ws_alice.wait_for(lambda c: bool(pushed(c, "mention")))

    kinds_alice = {n["kind"]: n for n in await listed(http, alice)}
    assert set(kinds_alice) == {"comment", "like", "mention"}
    assert kinds_alice["comment"]["count"] == 2  # Bob then Carol, one notification
    kinds_bob = [n["kind"] for n in await listed(http, bob)]
    assert sorted(kinds_bob) == ["like", "mention", "reply"]
    assert await listed(http, carol) == []  # nobody acted on Carol's content
    for client in (ws_alice, ws_bob):
        await client.close()


async def test_likes_are_grouped_per_subject(db: Stores, server: ServerProcess, http: httpx.AsyncClient) -> None:
    author, *fans = await make_users(db, "author", "fan1", "fan2", "fan3", "fan4")
    ws_author = await live(server, author)
    post = await call(http, author, "POST", "/posts", json={"content": "like me"})
    other = await call(http, author, "POST", "/posts", json={"content": "me too"})
    for fan in fans:
        await call(http, fan, "POST", f"/posts/{post['id']}/like")
    # Unliking and liking again is not news: not counted, not pushed again.
    await call(http, fans[0], "DELETE", f"/posts/{post['id']}/like")
    await call(http, fans[0], "POST", f"/posts/{post['id']}/like")
    await call(http, fans[1], "POST", f"/posts/{other['id']}/like")

    notes = await listed(http, author)
    assert [(n["kind"], n["data"]["post_id"], n["count"]) for n in notes] == [
        ("like", other["id"], 1),
        ("like", post["id"], 4),
    ]
    grouped = notes[1]
    assert grouped["actors"] == [str(fans[3].id), str(fans[2].id), str(fans[1].id)]  # the latest three
    assert grouped["actor_id"] == str(fans[3].id) and grouped["read"] is False
    await ws_author.wait_for(lambda c: len(pushed(c, "like")) == 5)
    assert [n["count"] for n in pushed(ws_author, "like")] == [1, 2, 3, 4, 1]
    # Marking read, then new activity: the group is unread again, on top, with a new id.
    await call(http, author, "POST", "/notifications/read", json={})
    late = (await make_users(db, "late"))[0]
    await call(http, late, "POST", f"/posts/{post['id']}/like")
    top = (await listed(http, author))[0]
    assert (top["data"]["post_id"], top["count"], top["read"]) == (post["id"], 5, False)
    assert uuid.UUID(top["id"]) > uuid.UUID(grouped["id"])
    await ws_author.close()


async def test_no_notification_from_a_blocked_user(db: Stores, server: ServerProcess, http: httpx.AsyncClient) -> None:
    alice, bob, carol = await make_users(db, "alice", "bob", "carol")
    ws_alice = await live(server, alice)
    post = await call(http, alice, "POST", "/posts", json={"content": "before the block"})
    await call(http, bob, "POST", f"/posts/{post['id']}/like")
    await call(http, carol, "POST", f"/posts/{post['id']}/like")
    await ws_alice.wait_for(lambda c: len(pushed(c, "like")) == 2)
    # Alice blocks Bob: his like already stored is no longer shown, Carol's still is.
    await call(http, alice, "POST", f"/users/{bob.id}/block")
    (like,) = await listed(http, alice)
    assert (like["actors"], like["count"]) == ([str(carol.id)], 1)

    # Neither way: Bob mentions Alice, and comments after her on Carol's post (no reply for Alice)...
    await call(http, bob, "POST", "/posts", json={"content": f"hey @{alice.username}"})
    carols = await call(http, carol, "POST", "/posts", json={"content": "thread"})
    await call(http, alice, "POST", f"/posts/{carols['id']}/comments", json={"content": "first"})
    await call(http, bob, "POST", f"/posts/{carols['id']}/comments", json={"content": "second"})
    # ... and when Bob blocks Carol, her mention of him is dropped too.
    await call(http, bob, "POST", f"/users/{carol.id}/block")
    ws_bob = await live(server, bob)
    await call(http, carol, "POST", "/posts", json={"content": f"hi @{bob.username} and @{alice.username}"})
    await ws_alice.wait_for(lambda c: bool(pushed(c, "mention")))  # Carol's mention of Alice arrives...
    assert [n["actor_id"] for n in pushed(ws_alice, "mention")] == [str(carol.id)]  # ... Bob's never did
    assert pushed(ws_alice, "reply") == []
    kinds = sorted(n["kind"] for n in await listed(http, alice))
    assert kinds == ["like", "mention"]
    assert pushed(ws_bob, "mention") == [] and [n["kind"] for n in await listed(http, bob)] == []
    for client in (ws_alice, ws_bob):
        await client.close()


async def test_notification_settings_are_respected(db: Stores, server: ServerProcess, http: httpx.AsyncClient) -> None:
    alice, bob = await make_users(db, "alice", "bob")
    everything = {"follow": True, "like": True, "comment": True, "reply": True, "mention": True}
    assert await call(http, alice, "GET", "/me/settings/notifications") == everything
    changed = await call(http, alice, "PATCH", "/me/settings/notifications", json={"like": False, "follow": False})
    assert changed == everything | {"like": False, "follow": False}
    refused = await http.patch("/me/settings/notifications", json={"likes": False}, headers=alice.headers)
    assert refused.status_code == 422
    assert (await http.patch("/me/settings/notifications", json={}, headers=alice.headers)).status_code == 422

    ws_alice = await live(server, alice)
    post = await call(http, alice, "POST", "/posts", json={"content": "quiet please"})
    await call(http, bob, "POST", f"/posts/{post['id']}/like")
    await call(http, bob, "POST", f"/users/{alice.id}/follow")
    await call(http, bob, "POST", f"/posts/{post['id']}/comments", json={"content": "still on"})
    await ws_alice.wait_for(lambda c: bool(pushed(c, "comment")))
    assert [n["kind"] for n in await listed(http, alice)] == ["comment"]
    assert [e["notification"]["kind"] for e in ws_alice.events("notification")] == ["comment"]
    # The general settings document shows the same map.
    assert (await call(http, alice, "GET", "/me/settings"))["notifications"] == {"like": False, "follow": False}

    await call(http, alice, "PATCH", "/me/settings/notifications", json={"like": True})
    other = await call(http, alice, "POST", "/posts", json={"content": "loud again"})
    await call(http, bob, "POST", f"/posts/{other['id']}/like")
    await ws_alice.wait_for(lambda c: bool(pushed(c, "like")))
    await ws_alice.close()
