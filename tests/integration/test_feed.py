"""`GET /feed`: followed users' posts and one's own, newest first, with blocks and visibility respected;
fan-out on write into Mongo `feed_cache`, pull on read for big authors, and PostgreSQL as the safety net."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from nubo import feed
from nubo.server.app import create_app
from nubo.settings import Settings
from nubo.stores import Stores, feed_cache
from tests.helpers.social import Client, Member, new_member


async def follow(client: Client, fan: Member, idol: Member) -> None:
    assert (await client.post(f"/users/{idol.id}/follow", headers=fan.headers)).status_code == 200


async def post(client: Client, author: Member, content: str, visibility: str = "public") -> str:
    response = await client.post("/posts", json={"content": content, "visibility": visibility}, headers=author.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def feed_ids(client: Client, reader: Member, **params: Any) -> list[str]:
    response = await client.get("/feed", params=params, headers=reader.headers)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


async def feed_doc(db: Stores, user: Member) -> dict[str, Any] | None:
    doc: dict[str, Any] | None = await db.mongo[feed_cache.COLLECTION].find_one({"_id": user.id})
    return doc


def doc_ids(doc: dict[str, Any] | None) -> set[str]:
    return {str(feed.unpack(item)[0]) for item in (doc or {}).get("items", [])}


async def test_feed_holds_followed_and_own_posts_newest_first(client: Client) -> None:
    reader, friend, stranger = await new_member(client), await new_member(client), await new_member(client)
    await follow(client, reader, friend)
    own = await post(client, reader, "mine")
    public = await post(client, friend, "public")
    private = await post(client, friend, "followers only", "followers")
    other = await post(client, stranger, "not followed")
    ids = await feed_ids(client, reader)
    assert ids == [private, public, own]
    assert other not in ids
    # The stranger's feed has only the stranger's post.
    assert await feed_ids(client, stranger) == [other]


async def test_unfollow_and_block_remove_posts_at_once(client: Client) -> None:
    reader, friend, foe = await new_member(client), await new_member(client), await new_member(client)
    await follow(client, reader, friend)
    await follow(client, reader, foe)
    kept = await post(client, friend, "kept")
    hidden = await post(client, foe, "soon hidden", "followers")
    assert await feed_ids(client, reader) == [hidden, kept]  # the document now exists (cached feed)
    assert (await client.post(f"/users/{reader.id}/block", headers=foe.headers)).status_code == 200
    assert await feed_ids(client, reader) == [kept]
    assert (await client.delete(f"/users/{friend.id}/follow", headers=reader.headers)).status_code == 200
    assert await feed_ids(client, reader) == []


async def test_fan_out_reaches_followers_within_a_second(client: Client, db: Stores) -> None:
    author = await new_member(client)
    fans = [await new_member(client) for _ in range(3)]
    for fan in fans:
        await follow(client, fan, author)
        assert await feed_ids(client, fan) == []  # first read: the fan becomes "recently active"
        assert await feed_doc(db, fan) is not None
    started = time.monotonic()
    post_id = await post(client, author, "fresh")
    waiting = list(fans)
    while waiting:
        waiting = [fan for fan in waiting if post_id not in doc_ids(await feed_doc(db, fan))]
        assert time.monotonic() - started < 1.0, "fan-out took more than a second"
        await asyncio.sleep(0.02)
    for fan in fans:  # the Redis copy (read first) got it too
        assert uuid.UUID(post_id).hex in str(await db.redis.smembers(db.keys("feed", fan.id, "items")))
        assert await feed_ids(client, fan) == [post_id]


async def test_big_authors_are_pulled_at_read_time(db: Stores, settings: Settings) -> None:
    # A fan-out threshold of one follower, and no catch-up: only the pull can find the post.
    pulling = dataclasses.replace(settings, feed_fanout_max_followers=1, feed_catchup_seconds=3600)
    async with AsyncTestClient(create_app(pulling)) as client:
        star = await new_member(client)
        fans = [await new_member(client), await new_member(client)]
        for fan in fans:
            await follow(client, fan, star)
        for fan in fans:
            assert await feed_ids(client, fan) == []
            assert [str(a) for a in (await feed_doc(db, fan) or {}).get("big", [])] == [str(star.id)]
        post_id = await post(client, star, "to my many fans")
        await asyncio.sleep(0.3)  # give a (wrong) fan-out time to happen
        for fan in fans:
            assert post_id not in doc_ids(await feed_doc(db, fan))  # not written to followers' documents
            assert await feed_ids(client, fan) == [post_id]  # but pulled from PostgreSQL when reading


async def test_a_failed_fan_out_is_caught_up(
    client: Client, db: Stores, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def lost(*_: object) -> int:
        return 0  # as if the process died before fanning out

    author, fan = await new_member(client), await new_member(client)
    await follow(client, fan, author)
    assert await feed_ids(client, fan) == []
    monkeypatch.setattr(feed, "fan_out", lost)
    post_id = await post(client, author, "fan-out lost")
    assert post_id not in doc_ids(await feed_doc(db, fan))
    assert uuid.UUID(post_id).hex not in str(await db.redis.smembers(db.keys("feed", fan.id, "items")))
    started = time.monotonic()
    while post_id not in await feed_ids(client, fan):
        assert time.monotonic() - started < settings.feed_catchup_seconds + 2, "the catch-up never found the post"
        await asyncio.sleep(0.2)
    assert post_id in doc_ids(await feed_doc(db, fan))  # merged into the document for next time


async def test_inactive_user_reads_from_postgres_then_gets_a_document(client: Client, db: Stores) -> None:
    author, fan = await new_member(client), await new_member(client)
    await follow(client, fan, author)
    first = await post(client, author, "before the fan was active")
    assert await feed_doc(db, fan) is None  # fan-out skips users without a feed document
    assert await feed_ids(client, fan) == [first]
    doc = await feed_doc(db, fan)
    assert doc is not None and doc_ids(doc) == {first} and "last_use" in doc
    # A deleted post leaves the feed even though the document still lists it.
    assert (await client.delete(f"/posts/{first}", headers=author.headers)).status_code == 204
    assert await feed_ids(client, fan) == []


async def test_feed_without_cached_document_pages_from_postgres(client: Client, db: Stores) -> None:
    author, fan = await new_member(client), await new_member(client)
    await follow(client, fan, author)
    made = [await post(client, author, f"p{i}") for i in range(5)]
    assert await feed_ids(client, fan, limit=2) == [made[4], made[3]]
    assert await db.redis.exists(db.keys("feed", fan.id, "meta"))  # the hot copy
    await db.mongo[feed_cache.COLLECTION].delete_one({"_id": fan.id})
    await db.redis.delete(db.keys("feed", fan.id, "items"), db.keys("feed", fan.id, "meta"))
    page = (await client.get("/feed", params={"limit": 3}, headers=fan.headers)).json()
    assert [p["id"] for p in page["items"]] == [made[4], made[3], made[2]]
    rest = await feed_ids(client, fan, before=page["next"])
    assert rest == [made[1], made[0]]
