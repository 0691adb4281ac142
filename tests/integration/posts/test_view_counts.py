"""`POST /views/batch`: a view counts once per user, post and day; counts reach PostgreSQL in bulk (the
flusher, also at shutdown) and show as `view_count`; unknown, invisible and own posts are ignored; bad input
is a 4xx."""

from __future__ import annotations

import uuid

from litestar.testing import AsyncTestClient

from nubo.posts import MAX_VIEW_BATCH, flush_views
from nubo.server.app import create_app
from nubo.settings import Settings
from nubo.stores import Stores
from tests.helpers.social import Client, Member, assert_error, new_member, pg_one


async def make_post(client: Client, author: Member, visibility: str = "public") -> str:
    response = await client.post("/posts", json={"content": "seen?", "visibility": visibility}, headers=author.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def report(client: Client, viewer: Member, *ids: str) -> dict[str, object]:
    response = await client.post("/views/batch", json={"post_ids": list(ids)}, headers=viewer.headers)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def view_count(client: Client, viewer: Member, post_id: str) -> int:
    response = await client.get(f"/posts/{post_id}", headers=viewer.headers)
    assert response.status_code == 200, response.text
    return int(response.json()["view_count"])


async def test_a_view_counts_once_per_user_and_day(client: Client, db: Stores) -> None:
    author, alice, bob = await new_member(client), await new_member(client), await new_member(client)
    post_id = await make_post(client, author)
    assert await view_count(client, alice, post_id) == 0
    assert await report(client, alice, post_id, post_id) == {"counted": 1, "new": 1, "ignored": []}
    assert await report(client, alice, post_id) == {"counted": 1, "new": 0, "ignored": []}
    await flush_views(db)  # (the app's own flusher may have been first)
    assert await view_count(client, alice, post_id) == 1
    await report(client, bob, post_id)
    await report(client, alice, post_id)
    await flush_views(db)
    assert await view_count(client, author, post_id) == 2
    listed = (await client.get("/posts", params={"user": author.id}, headers=bob.headers)).json()["items"]
    assert [p["view_count"] for p in listed] == [2]
    row = await pg_one(db, "SELECT views FROM content.post_view_days WHERE post_id = %s", uuid.UUID(post_id))
    assert row == {"views": 2}


async def test_unknown_invisible_and_own_posts_are_ignored(client: Client, db: Stores) -> None:
    author, viewer = await new_member(client), await new_member(client)
    public = await make_post(client, author)
    private = await make_post(client, author, "followers")
    unknown = str(uuid.uuid4())
    own = await make_post(client, viewer)
    body = await report(client, viewer, public, private, unknown, own)
    assert body["counted"] == 1 and set(map(str, body["ignored"])) == {private, unknown, own}  # type: ignore[call-overload]


async def test_bad_reports_get_clear_errors(client: Client) -> None:
    viewer = await new_member(client)
    too_many = [str(uuid.uuid4()) for _ in range(MAX_VIEW_BATCH + 1)]
    cases = [
        ({"post_ids": too_many}, "post_ids", "length <= 100"),
        ({"post_ids": ["not-a-uuid"]}, "post_ids", "Invalid UUID"),
        ({"posts": []}, "posts", "unknown field"),
        ({"post_ids": "x"}, "post_ids", "Expected `array`"),
    ]
    for body, field, reason in cases:
        response = await client.post("/views/batch", json=body, headers=viewer.headers)
        error = assert_error(response, 422, "validation_error")
        assert reason in error["fields"][field]
    assert_error(await client.post("/views/batch", json={"post_ids": []}), 401)


async def test_a_post_deleted_before_the_flush_is_skipped(client: Client, db: Stores) -> None:
    author, viewer = await new_member(client), await new_member(client)
    kept, gone = await make_post(client, author), await make_post(client, author)
    await report(client, viewer, kept, gone)
    assert (await client.delete(f"/posts/{gone}", headers=author.headers)).status_code == 204
    await flush_views(db)
    assert await view_count(client, viewer, kept) == 1
    assert await pg_one(db, "SELECT 1 AS x FROM content.post_view_days WHERE post_id = %s", uuid.UUID(gone)) is None


async def test_counts_are_flushed_at_shutdown(client: Client, db: Stores, settings: Settings) -> None:
    author, viewer = await new_member(client), await new_member(client)
    post_id = await make_post(client, author)
    async with AsyncTestClient(create_app(settings)) as own_app:  # its own process: its flusher, its drain
        response = await own_app.post("/views/batch", json={"post_ids": [post_id]}, headers=viewer.headers)
        assert response.json()["new"] == 1
    assert await db.view_counts.pending() == 0
    assert await view_count(client, viewer, post_id) == 1
