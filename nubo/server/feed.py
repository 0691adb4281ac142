"""`GET /feed`: the caller's home feed (see :mod:`nubo.feed` for how it is kept)."""

from __future__ import annotations

from litestar import get

from nubo import feed
from nubo.pagination import Page
from nubo.posts import PostView
from nubo.server.users import AnyRequest, Before, Limit, StoresDep, caller_id


@get("/feed", summary="Posts of followed users and one's own, newest first", tags=["feed"])
async def get_feed(request: AnyRequest, stores: StoresDep, limit: Limit = 20, before: Before = None) -> Page[PostView]:
    return await feed.feed_page(stores, caller_id(request), limit=limit, before=before)


ROUTES = [get_feed]
