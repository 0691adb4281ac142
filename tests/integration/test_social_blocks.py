"""Blocks: `POST|DELETE /users/{id}/block` remove follows both ways and hide the two users from each other."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from nubo import social
from nubo.errors import NotFound
from nubo.ids import new_id
from nubo.model import Visibility
from nubo.stores import Stores
from tests.helpers.social import (
    Client,
    Member,
    assert_error,
    mongo_doc,
    new_member,
    pg_all,
    redis_hash,
)


@pytest.fixture
async def pair(client: Client) -> tuple[Member, Member]:
    return await new_member(client), await new_member(client)


async def follows_between(db: Stores, a: uuid.UUID, b: uuid.UUID) -> list[dict[str, object]]:
    return await pg_all(
        db,
        "SELECT * FROM auth.follows WHERE (follower_id = %s AND followed_id = %s) "
        "OR (follower_id = %s AND followed_id = %s)",
        a,
        b,
        b,
        a,
    )


async def test_block_removes_follows_both_ways_from_every_tier(
    client: Client, pair: tuple[Member, Member], db: Stores
) -> None:
    alice, bob = pair
    assert (await client.post(f"/users/{bob.id}/follow", headers=alice.headers)).status_code == 200
    assert (await client.post(f"/users/{alice.id}/follow", headers=bob.headers)).status_code == 200
    follow_ids = [row["id"] for row in await follows_between(db, alice.id, bob.id)]
    assert len(follow_ids) == 2

    response = await client.post(f"/users/{bob.id}/block", headers=alice.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "id": str(bob.id),
        "following": False,
        "followed_by": False,
        "blocking": True,
    }
    assert await follows_between(db, alice.id, bob.id) == []
    for follow_id in follow_ids:
        assert isinstance(follow_id, uuid.UUID)
        assert await mongo_doc(db, "relations_recent", follow_id) is None
        assert await redis_hash(db, "relations", follow_id) == {}
    blocks = await pg_all(db, "SELECT * FROM auth.blocks WHERE blocker_id = %s", alice.id)
    assert [row["blocked_id"] for row in blocks] == [bob.id]
    # Idempotent.
    assert (await client.post(f"/users/{bob.id}/block", headers=alice.headers)).status_code == 200
    assert len(await pg_all(db, "SELECT * FROM auth.blocks WHERE blocker_id = %s", alice.id)) == 1
    # Bob is told nothing: Alice is absent to him, as on every other route (no `blocked_by` leak).
    seen_by_bob = await client.get("/relationships", params={"ids": str(alice.id)}, headers=bob.headers)
    assert seen_by_bob.status_code == 200 and seen_by_bob.json()["items"] == []
    assert (await client.get(f"/users/{alice.id}", headers=bob.headers)).status_code == 404


async def test_blocked_users_are_absent_to_each_other(client: Client, pair: tuple[Member, Member]) -> None:
    alice, bob = pair
    carol = await new_member(client)
    for fan in (alice, bob):
        assert (await client.post(f"/users/{carol.id}/follow", headers=fan.headers)).status_code == 200
    assert (await client.post(f"/users/{bob.id}/block", headers=alice.headers)).status_code == 200

    for viewer, other in ((alice, bob), (bob, alice)):
        assert_error(await client.get(f"/users/{other.id}", headers=viewer.headers), 404, "user_not_found")
        assert_error(await client.post(f"/users/{other.id}/follow", headers=viewer.headers), 404)
        assert_error(await client.get(f"/users/{other.id}/followers", headers=viewer.headers), 404)
        found = await client.get("/users", params={"q": other.username}, headers=viewer.headers)
        assert found.status_code == 200 and found.json()["items"] == []
        followers_of_carol = await client.get(f"/users/{carol.id}/followers", headers=viewer.headers)
        assert [item["id"] for item in followers_of_carol.json()["items"]] == [str(viewer.id)]
    # Blocking back is refused as for any user one cannot see.
    assert_error(await client.post(f"/users/{alice.id}/block", headers=bob.headers), 404, "user_not_found")


async def test_unblock_shows_the_user_again_without_restoring_follows(
    client: Client, pair: tuple[Member, Member], db: Stores
) -> None:
    alice, bob = pair
    assert (await client.post(f"/users/{bob.id}/follow", headers=alice.headers)).status_code == 200
    assert (await client.post(f"/users/{bob.id}/block", headers=alice.headers)).status_code == 200
    for _ in range(2):
        response = await client.delete(f"/users/{bob.id}/block", headers=alice.headers)
        assert response.status_code == 200, response.text
        assert response.json()["blocking"] is False and response.json()["following"] is False
    assert (await client.get(f"/users/{alice.id}", headers=bob.headers)).status_code == 200
    assert await follows_between(db, alice.id, bob.id) == []


async def test_hidden_authors_covers_blocks_either_way(client: Client, pair: tuple[Member, Member], db: Stores) -> None:
    alice, bob = pair
    carol = await new_member(client)
    assert (await client.post(f"/users/{alice.id}/block", headers=bob.headers)).status_code == 200
    assert await social.hidden_authors(db, alice.id, [bob.id, carol.id, alice.id]) == {bob.id}
    assert await social.hidden_authors(db, bob.id, [alice.id, carol.id]) == {alice.id}
    post = {"id": new_id(), "user_id": bob.id, "visibility": Visibility.PUBLIC}
    assert not await social.can_see_post(db, alice.id, post)
    assert await social.can_see_post(db, carol.id, post)


async def test_a_follow_racing_a_block_never_survives_it(client: Client, db: Stores) -> None:
    """The pair lock: whichever commits first, no follow remains between users who block each other."""
    for _ in range(5):
        alice, bob = await new_member(client), await new_member(client)
        results = await asyncio.gather(
            social.follow(db, bob.id, alice.id), social.block(db, alice.id, bob.id), return_exceptions=True
        )
        # The follow may lose (404: Alice is now hidden from Bob); nothing else may fail.
        assert all(not isinstance(r, Exception) or isinstance(r, NotFound) for r in results), results
        assert await follows_between(db, alice.id, bob.id) == []


async def test_block_rejects_self_bad_ids_and_unknown_users(client: Client, pair: tuple[Member, Member]) -> None:
    alice, _ = pair
    for method in ("POST", "DELETE"):
        assert_error(await client.request(method, f"/users/{alice.id}/block", headers=alice.headers), 403)
        assert_error(await client.request(method, "/users/x/block", headers=alice.headers), 422, "validation_error")
        assert_error(await client.request(method, f"/users/{uuid.uuid4()}/block", headers=alice.headers), 404)
        assert_error(await client.request(method, f"/users/{alice.id}/block"), 401)


async def test_block_hides_the_profile_on_cold_warm_and_hot_reads(
    client: Client, pair: tuple[Member, Member], db: Stores
) -> None:
    """The block is checked against PostgreSQL whichever tier holds the user row."""
    alice, bob = pair
    assert (await client.get(f"/users/{alice.id}", headers=bob.headers)).status_code == 200  # now hot
    assert (await client.post(f"/users/{bob.id}/block", headers=alice.headers)).status_code == 200
    assert_error(await client.get(f"/users/{alice.id}", headers=bob.headers), 404)  # hot: Redis
    await db.cache.collection("users").delete_by_id(alice.id)
    assert_error(await client.get(f"/users/{alice.id}", headers=bob.headers), 404)  # warm: Mongo
    await db.cache.collection("users").delete_by_id(alice.id)
    await db.mongo["users_recent"].delete_one({"_id": alice.id})
    assert_error(await client.get(f"/users/{alice.id}", headers=bob.headers), 404)  # cold: PostgreSQL
    assert await mongo_doc(db, "users_recent", alice.id) is not None  # and the tiers were refilled
    assert await redis_hash(db, "users", alice.id) != {}
