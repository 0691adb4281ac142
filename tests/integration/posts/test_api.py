"""Posts, comments, likes and media over HTTP: happy paths, authorization and visibility (real stores)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from nubo.stores import Stores
from tests.helpers.media import jpeg_with_exif, upload_media
from tests.helpers.social import Client, Member, assert_error, new_member, pg_one


async def follow(client: Client, fan: Member, idol: Member) -> None:
    response = await client.post(f"/users/{idol.id}/follow", headers=fan.headers)
    assert response.status_code == 200, response.text


async def new_post(client: Client, author: Member, **body: object) -> dict[str, Any]:
    response = await client.post("/posts", json={"content": "hello", **body}, headers=author.headers)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


async def new_media(client: Client, owner: Member) -> dict[str, Any]:
    """A ready image of `owner` (uploaded to the S3 server of scripts/services)."""
    return await upload_media(client, owner, jpeg_with_exif(64, 48))


# ---- posts -------------------------------------------------------------------------------------------------


async def test_create_and_read_post_with_meta(client: Client) -> None:
    alice, bob = await new_member(client), await new_member(client)
    post = await new_post(
        client,
        alice,
        content=f"hi @{bob.username}, @nobody_here_x #Python #python #fun mail a@b.com",
        location="Lyon",
    )
    assert post["user_id"] == str(alice.id) and post["location"] == "Lyon"
    assert post["meta"] == {
        "mentions": [{"username": bob.username.lower(), "user_id": str(bob.id)}],
        "hashtags": ["python", "fun"],
    }
    assert (post["like_count"], post["liked"], post["comment_count"], post["visibility"]) == (0, False, 0, "public")
    got = await client.get(f"/posts/{post['id']}", headers=bob.headers)
    assert got.status_code == 200, got.text
    assert got.json() == post


async def test_list_posts_newest_first_and_by_user(client: Client) -> None:
    alice, bob = await new_member(client), await new_member(client)
    mine = [await new_post(client, alice, content=f"post {i}") for i in range(3)]
    await new_post(client, bob, content="bob's")
    page = (await client.get("/posts", params={"user": str(alice.id), "limit": 2}, headers=bob.headers)).json()
    assert [p["id"] for p in page["items"]] == [mine[2]["id"], mine[1]["id"]]
    rest = (
        await client.get("/posts", params={"user": str(alice.id), "before": page["next"]}, headers=bob.headers)
    ).json()
    assert [p["id"] for p in rest["items"]] == [mine[0]["id"]] and rest["next"] is None
    everyone = (await client.get("/posts", params={"limit": 100}, headers=bob.headers)).json()["items"]
    ids = [p["id"] for p in everyone]
    assert ids == sorted(ids, reverse=True) and mine[0]["id"] in ids


async def test_only_the_author_edits_or_deletes(client: Client, db: Stores) -> None:
    alice, bob = await new_member(client), await new_member(client)
    post = await new_post(client, alice, content="first #one")
    assert_error(
        await client.patch(f"/posts/{post['id']}", json={"content": "hacked"}, headers=bob.headers),
        403,
        "not_author",
    )
    assert_error(await client.delete(f"/posts/{post['id']}", headers=bob.headers), 403, "not_author")

    edited = await client.patch(f"/posts/{post['id']}", json={"content": "second #two"}, headers=alice.headers)
    assert edited.status_code == 200, edited.text
    assert edited.json()["content"] == "second #two" and edited.json()["meta"]["hashtags"] == ["two"]
    assert (await client.get(f"/posts/{post['id']}", headers=bob.headers)).json()["content"] == "second #two"

    assert (await client.delete(f"/posts/{post['id']}", headers=alice.headers)).status_code == 204
    assert_error(await client.get(f"/posts/{post['id']}", headers=alice.headers), 404, "post_not_found")
    assert await pg_one(db, "SELECT 1 FROM content.posts WHERE id = %s", uuid.UUID(post["id"])) is None


async def test_followers_only_posts(client: Client) -> None:
    alice, fan, stranger = await new_member(client), await new_member(client), await new_member(client)
    await follow(client, fan, alice)
    post = await new_post(client, alice, content="for my followers", visibility="followers")
    assert post["visibility"] == "followers"
    assert (await client.get(f"/posts/{post['id']}", headers=fan.headers)).status_code == 200
    assert (await client.get(f"/posts/{post['id']}", headers=alice.headers)).status_code == 200
    assert_error(await client.get(f"/posts/{post['id']}", headers=stranger.headers), 404, "post_not_found")
    listed = (await client.get("/posts", params={"user": str(alice.id)}, headers=stranger.headers)).json()
    assert post["id"] not in [p["id"] for p in listed["items"]]
    listed = (await client.get("/posts", params={"user": str(alice.id)}, headers=fan.headers)).json()
    assert post["id"] in [p["id"] for p in listed["items"]]
    # Neither can a stranger comment on it, like it, or list its likes.
    for response in (
        await client.post(f"/posts/{post['id']}/comments", json={"content": "x"}, headers=stranger.headers),
        await client.post(f"/posts/{post['id']}/like", headers=stranger.headers),
        await client.get(f"/posts/{post['id']}/likes", headers=stranger.headers),
        await client.get(f"/posts/{post['id']}/comments", headers=stranger.headers),
    ):
        assert_error(response, 404, "post_not_found")
    # Unfollowing hides it again (relations are checked on every read).
    assert (await client.delete(f"/users/{alice.id}/follow", headers=fan.headers)).status_code == 200
    assert_error(await client.get(f"/posts/{post['id']}", headers=fan.headers), 404)


async def test_blocked_users_see_no_content(client: Client) -> None:
    alice, bob = await new_member(client), await new_member(client)
    post = await new_post(client, alice)
    comment = (await client.post(f"/posts/{post['id']}/comments", json={"content": "hey"}, headers=bob.headers)).json()
    media = await new_media(client, alice)
    assert (await client.post(f"/users/{bob.id}/block", headers=alice.headers)).status_code == 200
    for response in (
        await client.get(f"/posts/{post['id']}", headers=bob.headers),
        await client.get(f"/posts/{post['id']}/comments", headers=bob.headers),
        await client.post(f"/posts/{post['id']}/like", headers=bob.headers),
        await client.post(f"/comments/{comment['id']}/like", headers=alice.headers),
        await client.get(f"/media/{media['id']}", headers=bob.headers),
        await client.get("/posts", params={"user": str(alice.id)}, headers=bob.headers),
    ):
        assert_error(response, 404)
    listed = (await client.get("/posts", params={"limit": 100}, headers=bob.headers)).json()["items"]
    assert post["id"] not in [p["id"] for p in listed]
    # Alice's own view of her post leaves out the blocked commenter.
    comments = (await client.get(f"/posts/{post['id']}/comments", headers=alice.headers)).json()["items"]
    assert comments == []


# ---- comments ----------------------------------------------------------------------------------------------


async def test_comments_and_who_may_delete_them(client: Client) -> None:
    alice, bob, carol = await new_member(client), await new_member(client), await new_member(client)
    post = await new_post(client, alice)
    made = []
    for author, text in ((bob, "one"), (carol, "two"), (bob, "three")):
        response = await client.post(f"/posts/{post['id']}/comments", json={"content": text}, headers=author.headers)
        assert response.status_code == 201, response.text
        made.append(response.json())
    listed = (await client.get(f"/posts/{post['id']}/comments", params={"limit": 2}, headers=carol.headers)).json()
    assert [c["content"] for c in listed["items"]] == ["three", "two"] and listed["next"]
    assert (await client.get(f"/posts/{post['id']}", headers=bob.headers)).json()["comment_count"] == 3

    assert_error(await client.delete(f"/comments/{made[0]['id']}", headers=carol.headers), 403, "not_author")
    assert (await client.delete(f"/comments/{made[0]['id']}", headers=bob.headers)).status_code == 204
    assert (await client.delete(f"/comments/{made[1]['id']}", headers=alice.headers)).status_code == 204
    assert_error(await client.delete(f"/comments/{made[1]['id']}", headers=alice.headers), 404)
    left = (await client.get(f"/posts/{post['id']}/comments", headers=alice.headers)).json()["items"]
    assert [c["id"] for c in left] == [made[2]["id"]]


# ---- likes -------------------------------------------------------------------------------------------------


async def test_likes_are_idempotent_and_counted(client: Client) -> None:
    alice, bob = await new_member(client), await new_member(client)
    post = await new_post(client, alice)
    for _ in range(2):
        liked = await client.post(f"/posts/{post['id']}/like", headers=bob.headers)
        assert liked.status_code == 200, liked.text
        assert liked.json() == {"target_id": post["id"], "liked": True, "like_count": 1}
    seen = (await client.get(f"/posts/{post['id']}", headers=bob.headers)).json()
    assert (seen["like_count"], seen["liked"]) == (1, True)
    likers = (await client.get(f"/posts/{post['id']}/likes", headers=alice.headers)).json()
    assert [u["id"] for u in likers["items"]] == [str(bob.id)] and "email" not in likers["items"][0]
    for _ in range(2):
        unliked = await client.delete(f"/posts/{post['id']}/like", headers=bob.headers)
        assert unliked.json() == {"target_id": post["id"], "liked": False, "like_count": 0}

    comment = (await client.post(f"/posts/{post['id']}/comments", json={"content": "c"}, headers=alice.headers)).json()
    assert (await client.post(f"/comments/{comment['id']}/like", headers=bob.headers)).json()["like_count"] == 1
    listed = (await client.get(f"/posts/{post['id']}/comments", headers=bob.headers)).json()["items"]
    assert (listed[0]["like_count"], listed[0]["liked"]) == (1, True)
    assert (await client.delete(f"/comments/{comment['id']}/like", headers=bob.headers)).json()["liked"] is False


async def test_concurrent_likes_count_exactly(client: Client) -> None:
    author = await new_member(client)
    fans = [await new_member(client) for _ in range(12)]
    post = await new_post(client, author)
    # Every fan likes twice at once, concurrently with everyone else: exactly one like each.
    responses = await asyncio.gather(
        *(client.post(f"/posts/{post['id']}/like", headers=fan.headers) for fan in fans for _ in range(2))
    )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    assert (await client.get(f"/posts/{post['id']}", headers=author.headers)).json()["like_count"] == 12
    await asyncio.gather(*(client.delete(f"/posts/{post['id']}/like", headers=fan.headers) for fan in fans[:5]))
    assert (await client.get(f"/posts/{post['id']}", headers=author.headers)).json()["like_count"] == 7
    pages: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": 3, **({"before": cursor} if cursor else {})}
        page = (await client.get(f"/posts/{post['id']}/likes", params=params, headers=author.headers)).json()
        pages += [u["id"] for u in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert sorted(pages) == sorted(str(f.id) for f in fans[5:])


# ---- media -------------------------------------------------------------------------------------------------


async def test_media_and_post_media_ownership(client: Client) -> None:
    alice, bob = await new_member(client), await new_member(client)
    mine, theirs = await new_media(client, alice), await new_media(client, bob)
    assert mine["owner_id"] == str(alice.id) and mine["state"] == "ready"
    assert_error(await client.get(f"/media/{mine['id']}", headers=bob.headers), 404)  # not in use yet
    post = await new_post(client, alice, content="", media_ids=[mine["id"]])
    assert post["media_ids"] == [mine["id"]] and post["media"][0]["id"] == mine["id"]
    got = await client.get(f"/media/{mine['id']}", headers=bob.headers)  # now in a post bob may see
    assert got.status_code == 200 and got.json()["id"] == mine["id"]
    assert_error(
        await client.post("/posts", json={"content": "x", "media_ids": [theirs["id"]]}, headers=alice.headers),
        422,
        "media_not_owned",
    )
    assert_error(
        await client.post("/posts", json={"content": "x", "media_ids": [str(uuid.uuid4())]}, headers=alice.headers),
        422,
        "media_not_owned",
    )
    assert_error(
        await client.patch(
            f"/posts/{post['id']}", json={"media_ids": [mine["id"], theirs["id"]]}, headers=alice.headers
        ),
        422,
        "media_not_owned",
    )
    assert_error(await client.get(f"/media/{uuid.uuid4()}", headers=alice.headers), 404, "media_not_found")
