"""Users as others see them: `GET /users/{id}` and `GET /users?q=`, public fields, hidden users, the tiers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from nubo.stores import Stores
from tests.helpers.social import (
    Client,
    Member,
    assert_error,
    hash_holds,
    mongo_doc,
    new_member,
    pg_one,
    redis_hash,
    set_user_fields,
    unique,
)

PUBLIC = {
    "id",
    "username",
    "first_name",
    "last_name",
    "bio",
    "profile_picture_id",
    "location",
    "school",
    "works",
    "badges",
    "created_at",
}


@pytest.fixture
async def pair(client: Client) -> tuple[Member, Member]:
    return await new_member(client), await new_member(client)


async def test_profile_shows_public_fields_only(client: Client, pair: tuple[Member, Member]) -> None:
    alice, bob = pair
    response = await client.get(f"/users/{alice.id}", headers=bob.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == PUBLIC | {"followers_count", "following_count", "profile_picture"}
    assert body["id"] == str(alice.id) and body["username"] == alice.username
    assert body["followers_count"] == 0 and body["following_count"] == 0
    for secret in ("email", "password_hash", "phone", "grade", "state", "birthdate"):
        assert secret not in body


async def test_profile_read_goes_through_the_tiers(client: Client, pair: tuple[Member, Member], db: Stores) -> None:
    alice, bob = pair
    assert await pg_one(db, "SELECT id FROM auth.users WHERE id = %s", alice.id) is not None
    # Cold start for Alice's copies: no Redis hash, an old Mongo `last_use`.
    await db.cache.collection("users").delete_by_id(alice.id)
    old = datetime.now(UTC) - timedelta(days=10)
    await db.mongo["users_recent"].update_one({"_id": alice.id}, {"$set": {"last_use": old}})
    assert await redis_hash(db, "users", alice.id) == {}

    response = await client.get(f"/users/{alice.id}", headers=bob.headers)
    assert response.status_code == 200, response.text

    cached = await redis_hash(db, "users", alice.id)
    assert cached, "the read must refill the Redis hash"
    assert hash_holds(cached, alice.username)
    doc = await mongo_doc(db, "users_recent", alice.id)
    assert doc is not None and doc["username"] == alice.username
    last_use = doc["last_use"].replace(tzinfo=doc["last_use"].tzinfo or UTC)
    assert last_use > old + timedelta(days=9), "the Mongo read must refresh last_use"


async def test_profile_of_unknown_or_malformed_id(client: Client, pair: tuple[Member, Member]) -> None:
    _, bob = pair
    assert_error(await client.get(f"/users/{uuid.uuid4()}", headers=bob.headers), 404, "user_not_found")
    body = assert_error(await client.get("/users/not-a-uuid", headers=bob.headers), 422, "validation_error")
    assert "user_id" in body["fields"]


async def test_deactivated_and_banned_users_are_404_to_others_but_not_to_themselves(
    client: Client, pair: tuple[Member, Member], db: Stores
) -> None:
    alice, bob = pair
    for state in (0, 2):
        await set_user_fields(db, alice.id, state=state)
        assert_error(await client.get(f"/users/{alice.id}", headers=bob.headers), 404, "user_not_found")
        found = await client.get("/users", params={"q": alice.username}, headers=bob.headers)
        assert found.status_code == 200 and found.json()["items"] == []
    await set_user_fields(db, alice.id, state=0)
    own = await client.get(f"/users/{alice.id}", headers=alice.headers)
    if own.status_code != 401:  # the auth layer may refuse a deactivated account's token outright
        assert own.status_code == 200, own.text
    await set_user_fields(db, alice.id, state=1)
    assert (await client.get(f"/users/{alice.id}", headers=bob.headers)).status_code == 200


async def test_search_is_a_case_insensitive_prefix_on_username_and_names(client: Client) -> None:
    token = unique("Zq")
    by_first = await new_member(client, first_name=token.capitalize() + "ette")
    by_last = await new_member(client, last_name=token.upper() + "son")
    by_name = await new_member(client, username=token.lower() + "_x")
    await new_member(client, first_name="x" + token)  # contains the token, but not as a prefix
    viewer = await new_member(client)

    response = await client.get("/users", params={"q": token.upper()}, headers=viewer.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"items", "next"} and body["next"] is None
    # Newest first: ids are UUIDv7.
    assert [item["id"] for item in body["items"]] == [str(m.id) for m in (by_name, by_last, by_first)]
    assert all(set(item) == PUBLIC for item in body["items"])


async def test_search_pages_with_a_cursor(client: Client) -> None:
    token = unique("Pg")
    members = [await new_member(client, first_name=token) for _ in range(5)]
    viewer = await new_member(client)
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(4):
        params = {"q": token, "limit": "2", **({"before": cursor} if cursor else {})}
        page = (await client.get("/users", params=params, headers=viewer.headers)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == [str(m.id) for m in reversed(members)]


async def test_search_treats_like_wildcards_literally(client: Client, pair: tuple[Member, Member]) -> None:
    _, bob = pair
    for query in ("%", "_", "\\"):
        response = await client.get("/users", params={"q": query}, headers=bob.headers)
        assert response.status_code == 200, response.text
        assert response.json()["items"] == []


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"q": ""},
        {"q": "x" * 65},
        {"q": "a", "limit": "0"},
        {"q": "a", "limit": "101"},
        {"q": "a", "limit": "ten"},
        {"q": "a", "before": "nope"},
    ],
)
async def test_search_rejects_bad_input(client: Client, pair: tuple[Member, Member], params: dict[str, str]) -> None:
    _, bob = pair
    response = await client.get("/users", params=params, headers=bob.headers)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["code"] in ("validation_error", "bad_request")


@pytest.mark.parametrize(
    "path", ["/users/{id}", "/users?q=ab", "/users/{id}/followers", "/users/{id}/following", "/relationships?ids={id}"]
)
async def test_reads_need_a_token(client: Client, pair: tuple[Member, Member], path: str) -> None:
    alice, _ = pair
    response = await client.get(path.format(id=alice.id))
    assert_error(response, 401)


async def test_openapi_documents_the_routes_and_their_constraints(client: Client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    for path in (
        "/users",
        "/users/{user_id}",
        "/users/{user_id}/follow",
        "/users/{user_id}/followers",
        "/users/{user_id}/following",
        "/users/{user_id}/block",
        "/relationships",
        "/reports",
        "/admin/reports",
        "/admin/reports/{report_id}/resolve",
    ):
        assert path in schema["paths"], path
    components = schema["components"]["schemas"]
    assert components["NewReport"]["properties"]["reason"]["maxLength"] == 1000
    assert set(components["NewReport"]["properties"]["target_type"]["enum"]) == {"user", "post", "comment", "message"}
    limit = next(p for p in schema["paths"]["/users"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 100 and limit["schema"]["minimum"] == 1
