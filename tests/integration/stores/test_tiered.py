"""The three tiers are real for posts: PostgreSQL row, Mongo `posts_recent` document, Redis hash.

Reads go Redis -> Mongo -> PostgreSQL and refill the tiers above; deletes reach all three; visibility is the
same whichever tier answers; with Redis or Mongo stopped posts are still written and read, and the copies
converge once the store is back (the outbox worker re-projects what was written meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from pymongo import AsyncMongoClient
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from nubo.settings import Settings
from nubo.stores import Stores
from nubo.stores.mongo import server_info
from tests.helpers.harness import DedicatedFerret, DedicatedRedis, ServerProcess, run_nubo, with_database
from tests.helpers.social import (
    Client,
    Member,
    assert_error,
    mongo_doc,
    new_member,
    pg_one,
    redis_hash,
)


async def create_post(client: Any, author: Member, content: str = "tiers", **extra: object) -> dict[str, Any]:
    response = await client.post("/posts", json={"content": content, **extra}, headers=author.headers)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


async def drop_from_redis(db: Stores, post_id: uuid.UUID) -> None:
    await db.cache.collection("posts").delete_by_id(post_id)
    assert await redis_hash(db, "posts", post_id) == {}


async def drop_from_mongo(db: Stores, post_id: uuid.UUID) -> None:
    await db.mongo["posts_recent"].delete_one({"_id": post_id})
    assert await mongo_doc(db, "posts_recent", post_id) is None


# ---- the tiers are real ------------------------------------------------------------------------------------


async def test_write_reaches_all_three_tiers(client: Client, db: Stores) -> None:
    alice = await new_member(client)
    post = await create_post(client, alice, "three tiers #t")
    post_id = uuid.UUID(post["id"])
    row = await pg_one(db, "SELECT * FROM content.posts WHERE id = %s", post_id)
    assert row is not None and row["content"] == "three tiers #t" and row["meta"]["hashtags"] == ["t"]
    doc = await mongo_doc(db, "posts_recent", post_id)
    assert doc is not None and doc["content"] == "three tiers #t" and isinstance(doc["last_use"], datetime)
    assert doc["user_id"] == alice.id
    cached = await redis_hash(db, "posts", post_id)
    assert cached.get("content") == "=three tiers #t" and cached.get("user_id") == f"={alice.id}"
    assert db.keys("cache", "posts", post_id).startswith(db.settings.redis_prefix)
    mongo = await server_info(db.mongo)
    print(f"tiers checked on {mongo}")


async def test_edits_replace_the_mongo_copy(client: Client, db: Stores, record_property: Any) -> None:
    """An edit replaces the existing document (MongoDB: ReplaceOne; FerretDB: one delete, then an insert, since
    it scans the collection for each write by `_id`): one document, the new content, the old `_id`."""
    alice = await new_member(client)
    posts = [await create_post(client, alice, f"draft {i}") for i in range(3)]
    for i, post in enumerate(posts):
        response = await client.patch(f"/posts/{post['id']}", json={"content": f"final {i}"}, headers=alice.headers)
        assert response.status_code == 200, response.text
    for i, post in enumerate(posts):
        post_id = uuid.UUID(post["id"])
        assert await db.mongo["posts_recent"].count_documents({"_id": post_id}) == 1
        doc = await mongo_doc(db, "posts_recent", post_id)
        assert doc is not None and doc["content"] == f"final {i}" and doc["user_id"] == alice.id
    mongo = await server_info(db.mongo)
    record_property("mongo_server", str(mongo))
    print(f"replaced on {mongo} ({'delete + insert' if mongo.scans_for_writes_by_id else 'ReplaceOne'})")


async def test_cache_flush_then_mongo_then_postgres_refill(
    client: Client, db: Stores, process_env: dict[str, str]
) -> None:
    alice = await new_member(client)
    post = await create_post(client, alice, "refill me")
    post_id = uuid.UUID(post["id"])

    # `nubo cache flush` (the real CLI) empties Redis; the next read is served by Mongo and refills Redis.
    # The Mongo copy is marked so the answer shows which tier served it.
    flushed = await asyncio.to_thread(run_nubo, ["cache", "flush", "--yes"], process_env)
    assert flushed.returncode == 0, flushed.stderr
    assert await redis_hash(db, "posts", post_id) == {}
    await db.mongo["posts_recent"].update_one({"_id": post_id}, {"$set": {"content": "marked in mongo"}})
    before = (await mongo_doc(db, "posts_recent", post_id) or {})["last_use"]
    got = await client.get(f"/posts/{post_id}", headers=alice.headers)
    assert got.status_code == 200 and got.json()["content"] == "marked in mongo"
    assert (await redis_hash(db, "posts", post_id)).get("content") == "=marked in mongo"
    assert (await mongo_doc(db, "posts_recent", post_id) or {})["last_use"] >= before

    # Without the Mongo document (and the hash), the read comes from PostgreSQL and refills both.
    await drop_from_mongo(db, post_id)
    await drop_from_redis(db, post_id)
    got = await client.get(f"/posts/{post_id}", headers=alice.headers)
    assert got.status_code == 200 and got.json()["content"] == "refill me"
    doc = await mongo_doc(db, "posts_recent", post_id)
    assert doc is not None and doc["content"] == "refill me" and isinstance(doc["last_use"], datetime)
    assert (await redis_hash(db, "posts", post_id)).get("content") == "=refill me"


async def test_delete_removes_every_copy(client: Client, db: Stores) -> None:
    alice, bob = await new_member(client), await new_member(client)
    post = await create_post(client, alice, "short lived")
    post_id = uuid.UUID(post["id"])
    comment = (await client.post(f"/posts/{post_id}/comments", json={"content": "c"}, headers=bob.headers)).json()
    comment_id = uuid.UUID(comment["id"])
    assert (await client.post(f"/posts/{post_id}/like", headers=bob.headers)).status_code == 200
    like = await pg_one(db, "SELECT id FROM content.likes WHERE target_id = %s", post_id)
    assert like is not None
    assert await redis_hash(db, "comments", comment_id) and await mongo_doc(db, "likes_recent", like["id"])

    assert (await client.delete(f"/posts/{post_id}", headers=alice.headers)).status_code == 204
    assert await pg_one(db, "SELECT 1 FROM content.posts WHERE id = %s", post_id) is None
    assert await mongo_doc(db, "posts_recent", post_id) is None
    assert await redis_hash(db, "posts", post_id) == {}
    for collection, cache, entity_id in (
        ("comments_recent", "comments", comment_id),
        ("likes_recent", "likes", like["id"]),
    ):
        assert await mongo_doc(db, collection, entity_id) is None
        assert await redis_hash(db, cache, entity_id) == {}
    assert_error(await client.get(f"/posts/{post_id}", headers=alice.headers), 404)


async def test_followers_only_same_answer_cold_warm_hot(client: Client, db: Stores) -> None:
    alice, fan, stranger = await new_member(client), await new_member(client), await new_member(client)
    assert (await client.post(f"/users/{alice.id}/follow", headers=fan.headers)).status_code == 200
    post = await create_post(client, alice, "followers only", visibility="followers")
    post_id = uuid.UUID(post["id"])

    async def answers() -> tuple[int, int, int]:
        results = []
        for member in (stranger, fan, alice):
            results.append((await client.get(f"/posts/{post_id}", headers=member.headers)).status_code)
        return results[0], results[1], results[2]

    # Cold: neither Redis nor Mongo holds it, PostgreSQL answers.
    await drop_from_redis(db, post_id)
    await drop_from_mongo(db, post_id)
    assert await answers() == (404, 200, 200)
    assert await redis_hash(db, "posts", post_id) and await mongo_doc(db, "posts_recent", post_id)
    # Warm: only Mongo holds it.
    await drop_from_redis(db, post_id)
    assert await answers() == (404, 200, 200)
    # Hot: Redis holds it.
    assert await redis_hash(db, "posts", post_id)
    assert await answers() == (404, 200, 200)
    # The decision is never cached: once the stranger follows, the hot copy is visible; after unfollowing
    # it is hidden again.
    assert (await client.post(f"/users/{alice.id}/follow", headers=stranger.headers)).status_code == 200
    assert await answers() == (200, 200, 200)
    assert (await client.delete(f"/users/{alice.id}/follow", headers=stranger.headers)).status_code == 200
    assert await answers() == (404, 200, 200)


# ---- outages -----------------------------------------------------------------------------------------------


@pytest.fixture
def own_database(process_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A PostgreSQL database (with `nubo db init`) for one outage test alone.

    Every nubo process on a database drains its outbox; a server of another test on the run's database
    would project this test's rows into the shared Redis/Mongo and hide what the test checks.
    """
    base = process_env["NUBO_POSTGRES_URL"]
    name = f"{base.rsplit('/', 1)[1]}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    env = {"NUBO_POSTGRES_URL": with_database(base, name), "NUBO_MONGO_DB": name}
    try:
        yield env
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def dedicated_redis() -> Iterator[DedicatedRedis]:
    redis = DedicatedRedis()
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture
def dedicated_ferret() -> Iterator[DedicatedFerret]:
    with tempfile.TemporaryDirectory(prefix="nubo-ferret-") as data_dir:
        ferret = DedicatedFerret(Path(data_dir))
        ferret.start()
        yield ferret
        ferret.stop()


async def eventually(check: Callable[[], Any], pg_url: str, within: float = 40.0) -> None:
    deadline = time.monotonic() + within
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            pending = await pg_rows(pg_url, "SELECT * FROM logic.outbox ORDER BY id")
            raise AssertionError(f"did not converge in time; outbox: {pending}")
        await asyncio.sleep(0.25)


async def pg_rows(pg_url: str, query: str, *params: Any) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(pg_url, row_factory=dict_row) as conn:
        return list(await (await conn.execute(query, params)).fetchall())


async def outbox_pending(pg_url: str, ids: list[uuid.UUID]) -> int:
    rows = await pg_rows(pg_url, "SELECT count(*) AS n FROM logic.outbox WHERE entity_id = ANY(%s)", ids)
    return int(rows[0]["n"])


async def write_during_outage(http: httpx.AsyncClient, author: Member, before: dict[str, Any]) -> dict[str, str]:
    """Create two posts and edit an older one while a store is down; every read still answers."""
    written: dict[str, str] = {}
    for n in range(2):
        post = await create_post(http, author, f"during outage {n}")
        written[post["id"]] = post["content"]
    edited = await http.patch(
        f"/posts/{before['id']}", json={"content": "edited during outage"}, headers=author.headers
    )
    assert edited.status_code == 200, edited.text
    written[before["id"]] = "edited during outage"
    for post_id, content in written.items():
        got = await http.get(f"/posts/{post_id}", headers=author.headers)
        assert got.status_code == 200 and got.json()["content"] == content, got.text
    listed = await http.get("/posts", params={"user": str(author.id)}, headers=author.headers)
    assert {p["id"] for p in listed.json()["items"]} == set(written)
    return written


@pytest.mark.e2e
async def test_redis_outage_loses_nothing_and_converges(
    settings: Settings,
    process_env: dict[str, str],
    own_database: dict[str, str],
    dedicated_redis: DedicatedRedis,
    start_server: Callable[..., ServerProcess],
) -> None:
    env = {**own_database, "NUBO_REDIS_URL": dedicated_redis.url}
    init = await asyncio.to_thread(run_nubo, ["db", "init"], {**process_env, **env})
    assert init.returncode == 0, init.stdout + init.stderr
    pg_url = env["NUBO_POSTGRES_URL"]
    server = start_server(env)
    redis = Redis.from_url(dedicated_redis.url, decode_responses=True)
    prefix = settings.redis_prefix
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            author = await new_member(http)
            before = await create_post(http, author, "before the outage")
            assert await redis.hgetall(f"{prefix}cache:posts:{before['id']}")
            dedicated_redis.stop()
            written = await write_during_outage(http, author, before)
            ids = [uuid.UUID(i) for i in written]
            assert await outbox_pending(pg_url, ids) > 0  # the projections wait in the outbox
            dedicated_redis.start()  # same port, empty (no persistence)

            async def converged() -> bool:
                if await outbox_pending(pg_url, ids):
                    return False
                for post_id, content in written.items():
                    try:
                        cached = await redis.hgetall(f"{prefix}cache:posts:{post_id}")
                    except RedisConnectionError:  # this test's own pooled connection died with the server
                        return False
                    if cached.get("content") != f"={content}":
                        return False
                return True

            await eventually(converged, pg_url)
            for post_id, content in written.items():
                rows = await pg_rows(pg_url, "SELECT content FROM content.posts WHERE id = %s", uuid.UUID(post_id))
                assert rows == [{"content": content}]
                got = await http.get(f"/posts/{post_id}", headers=author.headers)
                assert got.json()["content"] == content
    finally:
        await redis.aclose()
        server.stop()


@pytest.mark.e2e
async def test_mongo_outage_loses_nothing_and_converges(
    process_env: dict[str, str],
    own_database: dict[str, str],
    dedicated_ferret: DedicatedFerret,
    start_server: Callable[..., ServerProcess],
) -> None:
    env = {**own_database, "NUBO_MONGO_URL": dedicated_ferret.url}
    init = await asyncio.to_thread(run_nubo, ["db", "init"], {**process_env, **env})
    assert init.returncode == 0, init.stdout + init.stderr
    pg_url = env["NUBO_POSTGRES_URL"]
    server = start_server(env)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        dedicated_ferret.url, uuidRepresentation="standard", serverSelectionTimeoutMS=2000
    )
    posts = mongo[env["NUBO_MONGO_DB"]]["posts_recent"]
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            author = await new_member(http)
            before = await create_post(http, author, "before the outage")
            assert await posts.find_one({"_id": uuid.UUID(before["id"])})
            dedicated_ferret.stop()
            written = await write_during_outage(http, author, before)
            ids = [uuid.UUID(i) for i in written]
            assert await outbox_pending(pg_url, ids) > 0
            dedicated_ferret.start()  # same port, same SQLite files

            async def converged() -> bool:
                if await outbox_pending(pg_url, ids):
                    return False
                for post_id, content in written.items():
                    doc = await posts.find_one({"_id": uuid.UUID(post_id)})
                    if doc is None or doc.get("content") != content or "last_use" not in doc:
                        return False
                return True

            await eventually(converged, pg_url)
            for post_id, content in written.items():
                got = await http.get(f"/posts/{post_id}", headers=author.headers)
                assert got.json()["content"] == content
    finally:
        await mongo.close()
        server.stop()


def test_outage_binaries_present() -> None:
    """The outage tests need real binaries: say so loudly rather than skip."""
    assert shutil.which("redis-server")
    assert shutil.which("ferretdb") or (Path.home() / "go" / "bin" / "ferretdb").exists()
    assert os.access(shutil.which("redis-server") or "", os.X_OK)


async def test_single_statement_commits_in_one_go_and_never_lends_an_autocommit_connection(db: Stores) -> None:
    from nubo.stores.postgres import single_statement

    async with db.pg.connection() as conn:
        row = await single_statement(conn, "SELECT 1 AS one", {})
        assert row == {"one": 1}
        assert conn.info.transaction_status == TransactionStatus.IDLE  # committed, nothing left open
        assert not conn.autocommit

    async def stuck() -> None:
        async with db.pg.connection() as conn:
            await single_statement(conn, "SELECT pg_sleep(5)", {})

    task = asyncio.create_task(stuck())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Every connection the pool lends now (all of them at once) is transactional again.
    async with contextlib.AsyncExitStack() as stack:
        held = [await stack.enter_async_context(db.pg.connection()) for _ in range(db.pg.max_size)]
        assert not any(conn.autocommit for conn in held)
