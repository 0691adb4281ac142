"""Derived values (a post's context for a viewer) cached in Redis and invalidated by tags, on real stores."""

from __future__ import annotations

import uuid
from typing import Any

from nubo.ids import new_id
from nubo.stores import Stores
from nubo.stores.derived import post_tag, user_tag
from tests.helpers.social import Client, assert_error, new_member


async def _likes_seen_by(client: Client, post_id: str, headers: dict[str, str]) -> int:
    response = await client.get(f"/posts/{post_id}", headers=headers)
    assert response.status_code == 200, response.text
    count: int = response.json()["like_count"]
    return count


async def test_a_post_context_is_served_from_redis_until_a_write_changes_it(client: Client, db: Stores) -> None:
    alice, bob, carol = await new_member(client), await new_member(client), await new_member(client)
    post = (await client.post("/posts", json={"content": "hot"}, headers=alice.headers)).json()
    assert await _likes_seen_by(client, post["id"], bob.headers) == 0
    # A like written behind the app's back (no tag change): the cached context still answers.
    async with db.pg.connection() as conn:
        await conn.execute(
            "INSERT INTO content.likes (id, target_type, target_id, user_id) VALUES (%s, 0, %s, %s)",
            (new_id(), uuid.UUID(post["id"]), alice.id),
        )
    assert await _likes_seen_by(client, post["id"], bob.headers) == 0
    # A like through the app changes the post's tag: the next read recomputes (both likes counted).
    assert (await client.post(f"/posts/{post['id']}/like", headers=carol.headers)).status_code == 200
    assert await _likes_seen_by(client, post["id"], bob.headers) == 2
    # Relations and the author's state invalidate it at once too.
    assert (await client.post(f"/users/{bob.id}/block", headers=alice.headers)).status_code == 200
    assert_error(await client.get(f"/posts/{post['id']}", headers=bob.headers), 404, "post_not_found")
    assert (await client.delete(f"/users/{bob.id}/block", headers=alice.headers)).status_code == 200
    assert await _likes_seen_by(client, post["id"], bob.headers) == 2
    assert (await client.delete("/me", headers=alice.headers)).status_code == 204
    assert_error(await client.get(f"/posts/{post['id']}", headers=bob.headers), 404, "post_not_found")


async def test_followers_only_visibility_follows_each_change_on_hot_reads(client: Client) -> None:
    alice, fan = await new_member(client), await new_member(client)
    post = (
        await client.post("/posts", json={"content": "fans", "visibility": "followers"}, headers=alice.headers)
    ).json()
    for _ in range(2):  # the second read of each state is the cached one
        assert_error(await client.get(f"/posts/{post['id']}", headers=fan.headers), 404)
    assert (await client.post(f"/users/{alice.id}/follow", headers=fan.headers)).status_code == 200
    for _ in range(2):
        assert (await client.get(f"/posts/{post['id']}", headers=fan.headers)).status_code == 200
    assert (await client.delete(f"/users/{alice.id}/follow", headers=fan.headers)).status_code == 200
    for _ in range(2):
        assert_error(await client.get(f"/posts/{post['id']}", headers=fan.headers), 404)


async def test_a_write_committed_during_the_computation_is_never_served_stale(db: Stores) -> None:
    tag = post_tag(new_id())
    computed: list[str] = []

    async def compute_racing_a_writer() -> dict[str, Any]:
        # The reader has read the tag's version; a writer commits and changes the tag before the reader
        # stores what it read from PostgreSQL (the old state).
        await db.derived.invalidate([tag])
        computed.append("old")
        return {"state": "old"}

    async def compute_now() -> dict[str, Any]:
        computed.append("new")
        return {"state": "new"}

    name = f"race:{uuid.uuid4()}"
    assert await db.derived.get(name, [tag], compute_racing_a_writer) == {"state": "old"}
    assert await db.derived.get(name, [tag], compute_now) == {"state": "new"}  # the old one was not served
    assert await db.derived.get(name, [tag], compute_now) == {"state": "new"}
    assert computed == ["old", "new"]  # ...and the new one was cached
    await db.derived.invalidate([tag, user_tag(new_id())])
    assert await db.derived.get(name, [tag], compute_now) == {"state": "new"}
    assert computed == ["old", "new", "new"]
