"""Cursor pagination over 250 posts while new posts keep arriving: each older post exactly once, in order."""

from __future__ import annotations

import asyncio

from tests.helpers.social import Client, Member, new_member

TOTAL = 250


async def create_posts(client: Client, author: Member, count: int, label: str) -> list[str]:
    """`count` posts, created 25 at a time; returns their ids (creation order is id order: UUIDv7)."""
    ids: list[str] = []
    for start in range(0, count, 25):
        responses = await asyncio.gather(
            *(
                client.post("/posts", json={"content": f"{label} {n}"}, headers=author.headers)
                for n in range(start, min(count, start + 25))
            )
        )
        assert all(r.status_code == 201 for r in responses)
        ids += [r.json()["id"] for r in responses]
    return sorted(ids)


async def walk(
    client: Client, viewer: Member, path: str, params: dict[str, str], author: Member, limit: int
) -> list[str]:
    """Every page of `path`, inserting 3 new posts by `author` between pages."""
    seen: list[str] = []
    cursor: str | None = None
    while True:
        query = {**params, "limit": str(limit), **({"before": cursor} if cursor else {})}
        response = await client.get(path, params=query, headers=viewer.headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        seen += [item["id"] for item in page["items"]]
        cursor = page["next"]
        if cursor is None:
            return seen
        await create_posts(client, author, 3, "meanwhile")


async def test_posts_pages_with_concurrent_inserts(client: Client) -> None:
    author, reader = await new_member(client), await new_member(client)
    older = await create_posts(client, author, TOTAL, "old")
    seen = await walk(client, reader, "/posts", {"user": str(author.id)}, author, limit=17)
    assert seen == list(reversed(older))


async def test_feed_pages_with_concurrent_inserts(client: Client) -> None:
    author, reader = await new_member(client), await new_member(client)
    assert (await client.post(f"/users/{author.id}/follow", headers=reader.headers)).status_code == 200
    older = await create_posts(client, author, TOTAL, "old")
    seen = await walk(client, reader, "/feed", {}, author, limit=23)
    assert seen == list(reversed(older))
