"""Feeds kept ready: the precompute rebuilds the backlog's feeds while the loop is idle, pauses while it is
loaded (a synthetic load: the loop blocked 60 ms at a time) and resumes after; a connected user's feed is
built on connect and kept current; `nubo cache inspect` shows the backlog."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import httpx
import pytest

from nubo import feed
from nubo.precompute import ConnectedFeeds, FeedPrecompute, LoadMonitor
from nubo.stores import Stores, feed_cache
from nubo.stores.feed_backlog import FeedBacklog
from tests.helpers.harness import ServerProcess, run_nubo
from tests.helpers.messaging import WsClient, make_users
from tests.helpers.social import Client, Member, new_member


async def feed_doc(db: Stores, user: Member) -> dict[str, object] | None:
    doc: dict[str, object] | None = await db.mongo[feed_cache.COLLECTION].find_one({"_id": user.id})
    return doc


@contextlib.asynccontextmanager
async def running(*coroutines: object) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(c) for c in coroutines]  # type: ignore[arg-type]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def synthetic_load(stop: asyncio.Event) -> None:
    """Block the event loop 150 ms out of every 155 (a CPU-bound handler would do the same): every load sample
    then sees a lag far above the bound, even on a machine whose other work delays timers too."""
    while not stop.is_set():
        time.sleep(0.15)  # noqa: ASYNC251 - blocking on purpose: this is the load
        await asyncio.sleep(0.005)


async def wait_for(condition: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_precompute_pauses_under_load_and_resumes_after(
    client: Client, db: Stores, process_env: Mapping[str, str]
) -> None:
    users = [await new_member(client) for _ in range(3)]
    backlog = FeedBacklog(db.redis, db.keys)
    # A generous CPU bound: the test machine's other work must not be what pauses it; the loop lag does.
    monitor = LoadMonitor(max_lag_ms=20, max_cpu_percent=100)
    job = FeedPrecompute(db, monitor, set)
    await backlog.claim_sweep(600)  # no sweep of every recent test user: only the backlog below
    async with running(monitor.run(), job.run()):
        stop = asyncio.Event()
        loader = asyncio.create_task(synthetic_load(stop))
        await wait_for(lambda: job.state == "paused", 5)
        await backlog.add(u.id for u in users)
        await asyncio.sleep(1.0)
        assert job.state == "paused" and job.rebuilt == 0  # nothing done while loaded
        assert await asyncio.gather(*(feed_doc(db, u) for u in users)) == [None] * 3
        inspect = run_nubo(["cache", "inspect", "--json"], process_env)
        assert json.loads(inspect.stdout)["write_pipeline"]["feed_backlog_users"] >= 3
        stop.set()
        await loader
        await wait_for(lambda: job.rebuilt >= 3, 15)  # resumed once the loop is free
    await db.redis.delete(backlog.sweep_key)
    assert job.pauses >= 1
    assert all(doc is not None for doc in await asyncio.gather(*(feed_doc(db, u) for u in users)))


async def test_a_connected_users_feed_is_built_and_kept_current(client: Client, db: Stores) -> None:
    author, reader = await new_member(client), await new_member(client)
    assert (await client.post(f"/users/{author.id}/follow", headers=reader.headers)).status_code == 200
    connected: list[uuid.UUID] = [reader.id]
    keeper = ConnectedFeeds(db, lambda: connected)
    await keeper.tick()  # connects: built at once
    doc = await feed_cache.FeedCache(db).load(reader.id)
    assert doc is not None and doc.items == []
    response = await client.post("/posts", json={"content": "fresh"}, headers=author.headers)
    post_id = uuid.UUID(response.json()["id"])
    item = feed.pack(post_id, author.id)

    async def fanned_out() -> bool:  # by the app's own fan-out queue
        doc = await feed_cache.FeedCache(db).load(reader.id)
        return doc is not None and item in doc.items

    deadline = time.monotonic() + 5
    while not await fanned_out():  # fan-out reached the connected user's document
        assert time.monotonic() < deadline, "the post never reached the connected user's feed document"
        await asyncio.sleep(0.05)
    connected.clear()
    await keeper.tick()  # left: queued for the precompute
    assert reader.id in {u async for u in _drain(FeedBacklog(db.redis, db.keys))}


async def _drain(backlog: FeedBacklog) -> AsyncIterator[uuid.UUID]:
    while (user := await backlog.pop()) is not None:
        yield user


@pytest.mark.e2e
async def test_a_socket_on_a_real_server_keeps_the_feed_ready(
    db: Stores, start_server: Callable[..., ServerProcess]
) -> None:
    server = start_server()
    reader, author = await make_users(db, "reader", "author")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        (await http.post(f"/users/{author.id}/follow", headers=reader.headers)).raise_for_status()
        socket = await WsClient.connect(server.ws_url, reader.token)
        try:
            await wait_until_async(lambda: feed_cache.FeedCache(db).load(reader.id), within=10)  # built on connect
            posted = await http.post("/posts", json={"content": "live"}, headers=author.headers)
            item = feed.pack(uuid.UUID(posted.json()["id"]), author.id)

            async def has_item() -> bool:
                doc = await feed_cache.FeedCache(db).load(reader.id)
                return doc is not None and item in doc.items

            await wait_until_async(has_item, within=10)  # fan-out reached the connected reader
        finally:
            await socket.close()
    backlog = FeedBacklog(db.redis, db.keys)

    async def queued() -> bool:
        return await db.redis.zscore(backlog.key, str(reader.id)) is not None

    await wait_until_async(queued, within=10)  # left: queued for the precompute


async def wait_until_async(condition: Callable[[], Awaitable[object]], within: float) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)
