"""Follows: `POST|DELETE /users/{id}/follow`, followers/following lists with cursors, `GET /relationships`."""

from __future__ import annotations

import uuid

import pytest

from nubo.stores import Stores
from tests.helpers.social import (
    Client,
    Member,
    assert_error,
    hash_holds,
    is_recent,
    mongo_doc,
    new_member,
    pg_all,
    redis_hash,
    set_user_fields,
)


@pytest.fixture
async def pair(client: Client) -> tuple[Member, Member]:
    return await new_member(client), await new_member(client)


async def follow_rows(db: Stores, follower: uuid.UUID, followed: uuid.UUID) -> list[dict[str, object]]:
    return await pg_all(
        db, "SELECT * FROM auth.follows WHERE follower_id = %s AND followed_id = %s", follower, followed
    )


async def test_follow_is_idempotent_and_reaches_every_tier(
    client: Client, pair: tuple[Member, Member], db: Stores
) -> None:
    alice, bob = pair
    for _ in range(2):
        response = await client.post(f"/users/{bob.id}/follow", headers=alice.headers)
        assert response.status_code == 200, response.text
        assert response.json() == {
            "id": str(bob.id),
            "following": True,
            "followed_by": False,
            "blocking": False,
        }
    rows = await follow_rows(db, alice.id, bob.id)
    assert len(rows) == 1 and rows[0]["state"] == 1
    follow_id = rows[0]["id"]
    assert isinstance(follow_id, uuid.UUID)
    doc = await mongo_doc(db, "relations_recent", follow_id)
    assert doc is not None and doc["follower_id"] == alice.id and doc["followed_id"] == bob.id
    assert is_recent(doc["last_use"])
    cached = await redis_hash(db, "relations", follow_id)
    assert hash_holds(cached, alice.id) and hash_holds(cached, bob.id)

    profile = (await client.get(f"/users/{bob.id}", headers=alice.headers)).json()
    assert profile["followers_count"] == 1
    # Bob is told once, although Alice followed twice.
    notes = (await client.get("/notifications", headers=bob.headers)).json()["items"]
    assert [(n["kind"], n["actor_id"]) for n in notes] == [("follow", str(alice.id))]

    for _ in range(2):
        response = await client.delete(f"/users/{bob.id}/follow", headers=alice.headers)
        assert response.status_code == 200, response.text
        assert response.json()["following"] is False
    assert await follow_rows(db, alice.id, bob.id) == []
    assert await mongo_doc(db, "relations_recent", follow_id) is None
    assert await redis_hash(db, "relations", follow_id) == {}


async def test_relationships_from_both_sides(client: Client, pair: tuple[Member, Member]) -> None:
    alice, bob = pair
    carol = await new_member(client)
    assert (await client.post(f"/users/{bob.id}/follow", headers=alice.headers)).status_code == 200
    unknown = uuid.uuid4()
    response = await client.get(
        "/relationships", params={"ids": f"{bob.id},{unknown},{carol.id},{bob.id}"}, headers=alice.headers
    )
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [item["id"] for item in items] == [str(bob.id), str(carol.id)]  # unknown left out, order kept
    assert items[0]["following"] is True and items[0]["followed_by"] is False
    assert not any(items[1][key] for key in ("following", "followed_by", "blocking"))
    seen_by_bob = (await client.get("/relationships", params={"ids": str(alice.id)}, headers=bob.headers)).json()
    assert seen_by_bob["items"][0]["followed_by"] is True and seen_by_bob["items"][0]["following"] is False


async def test_following_oneself_or_the_invisible_is_refused(
    client: Client, pair: tuple[Member, Member], db: Stores
) -> None:
    alice, bob = pair
    response = await client.post(f"/users/{alice.id}/follow", headers=alice.headers)
    assert_error(response, 403, "cannot_follow_self")
    response = await client.post(f"/users/{uuid.uuid4()}/follow", headers=alice.headers)
    assert_error(response, 404, "user_not_found")
    await set_user_fields(db, bob.id, state=0)
    assert_error(await client.post(f"/users/{bob.id}/follow", headers=alice.headers), 404, "user_not_found")
    assert await follow_rows(db, alice.id, bob.id) == []
    await set_user_fields(db, bob.id, state=1)


async def collect(
    client: Client, member: Member, path: str, limit: int, between_pages: list[Member] | None = None
) -> tuple[list[str], int]:
    """Walk every page of a list; returns the ids in order and the number of pages."""
    ids: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": str(limit), **({"before": cursor} if cursor else {})}
        response = await client.get(path, params=params, headers=member.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"items", "next"}
        assert len(body["items"]) <= limit
        ids += [item["id"] for item in body["items"]]
        pages += 1
        if pages == 1 and between_pages:  # new follows arrive while the client is paging
            for extra in between_pages:
                assert (await client.post(path.rsplit("/", 1)[0] + "/follow", headers=extra.headers)).status_code == 200
        cursor = body["next"]
        if cursor is None:
            return ids, pages


async def test_followers_pages_return_each_follower_once_newest_first(client: Client) -> None:
    star = await new_member(client)
    fans = [await new_member(client) for _ in range(8)]
    for fan in fans:
        assert (await client.post(f"/users/{star.id}/follow", headers=fan.headers)).status_code == 200
    latecomers = [await new_member(client) for _ in range(2)]

    ids, pages = await collect(client, star, f"/users/{star.id}/followers", 3, between_pages=latecomers)
    assert pages == 3
    # Latecomers are newer than the cursor, so later pages do not repeat or shift anyone.
    assert ids == [str(fan.id) for fan in reversed(fans)]
    first_page = (await client.get(f"/users/{star.id}/followers", params={"limit": "2"}, headers=star.headers)).json()
    assert [item["id"] for item in first_page["items"]] == [str(m.id) for m in reversed(latecomers)]


async def test_following_list_pages_too(client: Client) -> None:
    fan = await new_member(client)
    stars = [await new_member(client) for _ in range(5)]
    for star in stars:
        assert (await client.post(f"/users/{star.id}/follow", headers=fan.headers)).status_code == 200
    viewer = await new_member(client)
    ids, pages = await collect(client, viewer, f"/users/{fan.id}/following", 2)
    assert ids == [str(star.id) for star in reversed(stars)] and pages == 3


async def test_lists_leave_out_deactivated_users(client: Client, db: Stores) -> None:
    star, gone, stays = await new_member(client), await new_member(client), await new_member(client)
    for fan in (gone, stays):
        assert (await client.post(f"/users/{star.id}/follow", headers=fan.headers)).status_code == 200
    await set_user_fields(db, gone.id, state=0)
    ids, _ = await collect(client, star, f"/users/{star.id}/followers", 20)
    assert ids == [str(stays.id)]
    await set_user_fields(db, gone.id, state=1)


@pytest.mark.parametrize(
    "params",
    [
        {"ids": ""},
        {"ids": "nope"},
        {"ids": f"{uuid.uuid4()},x"},
        {},
        {"ids": ",".join(str(uuid.uuid4()) for _ in range(51))},
    ],
)
async def test_relationships_reject_bad_ids(
    client: Client, pair: tuple[Member, Member], params: dict[str, str]
) -> None:
    alice, _ = pair
    response = await client.get("/relationships", params=params, headers=alice.headers)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["code"] in ("validation_error", "too_many_ids", "bad_request")


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "before=zz", "before=1"])
@pytest.mark.parametrize("which", ["followers", "following"])
async def test_lists_reject_bad_cursors_and_limits(
    client: Client, pair: tuple[Member, Member], query: str, which: str
) -> None:
    alice, bob = pair
    assert_error(await client.get(f"/users/{bob.id}/{which}?{query}", headers=alice.headers), 422, "validation_error")


@pytest.mark.parametrize("method", ["POST", "DELETE"])
async def test_follow_routes_reject_bad_ids_and_missing_tokens(
    client: Client, pair: tuple[Member, Member], method: str
) -> None:
    alice, bob = pair
    assert_error(await client.request(method, "/users/12345/follow", headers=alice.headers), 422, "validation_error")
    assert_error(await client.request(method, f"/users/{bob.id}/follow"), 401)
