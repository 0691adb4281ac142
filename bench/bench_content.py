"""Content paths of one `nubo serve` worker on fresh databases, each next to `/ping` in the same run:

- `GET /posts/{id}` served from Redis: requests/s vs `/ping` requests/s (target >= 0.6 x), wrk, interleaved
  rounds, median;
- `POST /posts`: posts/s with all three stores written (target >= 800), wrk with a Lua body; afterwards the
  run checks every created post is in PostgreSQL, Mongo `posts_recent` and Redis, and the outbox is empty;
- `GET /feed`: p99 latency at a constant 200 requests/s (target < 30 ms). Debian's wrk has no `-R`
  (wrk2's constant-rate mode), so an asyncio + httpx open-loop generator sends one request every 5 ms on a
  fixed schedule, each latency measured from its scheduled send time (no coordinated omission), over 8
  connections; readers follow 20 authors with 30 posts each and have a feed document (warm feed).

The rate limits are raised for the run (one token would otherwise be throttled at 600/minute).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import psycopg
from pymongo import MongoClient
from redis import Redis

from bench.common import (
    BenchOptions,
    BenchOutput,
    Metric,
    WrkResult,
    bench_main,
    init_db,
    isolated_env,
    median,
    nubo_server,
    process_cpu_seconds,
    run_wrk,
    wrk_script,
)

READ_RATIO_TARGET = 0.6
POSTS_PER_S_TARGET = 800.0
FEED_P99_TARGET_MS = 30.0
FEED_RATE = 200
FEED_AUTHORS = 20
FEED_POSTS_PER_AUTHOR = 30
FEED_READERS = 10
PASSWORD = "bench password, long enough 42"


# ---- setup -------------------------------------------------------------------------------------------------


def member(http: httpx.Client, name: str) -> tuple[str, dict[str, str]]:
    """Sign up and log in; returns (user id, auth headers)."""
    username = f"{name}{uuid.uuid4().hex[:8]}"
    signup = http.post(
        "/signup",
        json={
            "username": username,
            "email": f"{username}@example.com",
            "password": PASSWORD,
            "first_name": "B",
            "last_name": "M",
        },
    )
    signup.raise_for_status()
    login = http.post("/login", json={"username": username, "password": PASSWORD})
    login.raise_for_status()
    body = login.json()
    user_id = str(body.get("user", {}).get("id") or signup.json()["id"])
    return user_id, {"Authorization": f"Bearer {body['access_token']}"}


def seed_feed(http: httpx.Client) -> list[dict[str, str]]:
    """Authors with posts, readers following all of them; returns the readers' headers."""
    authors = [member(http, "author") for _ in range(FEED_AUTHORS)]
    readers = [member(http, "reader") for _ in range(FEED_READERS)]
    for _, reader_headers in readers:
        for author_id, _ in authors:
            http.post(f"/users/{author_id}/follow", headers=reader_headers).raise_for_status()
    for _, author_headers in authors:
        for n in range(FEED_POSTS_PER_AUTHOR):
            body = {"content": f"seed {n} #bench"}
            http.post("/posts", json=body, headers=author_headers).raise_for_status()
    for _, reader_headers in readers:
        http.get("/feed", headers=reader_headers).raise_for_status()  # builds the reader's feed document
    return [headers for _, headers in readers]


# ---- GET /posts/{id} vs /ping ------------------------------------------------------------------------------


def read_rounds(
    url: str, post_id: str, headers: dict[str, str], options: BenchOptions, pid: int
) -> dict[str, list[WrkResult]]:
    targets = {"ping": (url + "/ping", {}), "post": (f"{url}/posts/{post_id}", headers)}
    for path, hdrs in targets.values():
        run_wrk(path, options, duration=options.warmup, headers=hdrs)
    runs: dict[str, list[WrkResult]] = {name: [] for name in targets}
    for index in range(options.rounds):
        order = list(targets) if index % 2 == 0 else list(reversed(targets))
        for name in order:
            path, hdrs = targets[name]
            runs[name].append(run_wrk(path, options, headers=hdrs, cpu_of=pid))
    return runs


# ---- POST /posts -------------------------------------------------------------------------------------------


def write_run(url: str, headers: dict[str, str], options: BenchOptions, pid: int) -> WrkResult:
    body = json.dumps({"content": "benchmark post with a #tag and some text"})
    script = wrk_script("POST", body, {**headers, "Content-Type": "application/json"})
    try:
        return run_wrk(url + "/posts", options, script=script, cpu_of=pid)
    finally:
        script.unlink(missing_ok=True)


def check_three_stores(env: dict[str, str], author_id: str, timeout: float = 60.0) -> dict[str, int]:
    """Counts of the author's posts in each store once the outbox is empty (they must all match)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(env["NUBO_POSTGRES_URL"]) as conn:
        while True:
            pending = conn.execute("SELECT count(*) FROM logic.outbox").fetchone()
            if (pending and pending[0] == 0) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        row = conn.execute("SELECT count(*) FROM content.posts WHERE user_id = %s", (author_id,)).fetchone()
        ids = [r[0] for r in conn.execute("SELECT id FROM content.posts WHERE user_id = %s", (author_id,))]
    with MongoClient(env["NUBO_MONGO_URL"], uuidRepresentation="standard") as mongo:
        posts = mongo[env["NUBO_MONGO_DB"]]["posts_recent"]
        in_mongo = posts.count_documents({"user_id": uuid.UUID(author_id)})
    with Redis.from_url(env["NUBO_REDIS_URL"]) as redis:
        prefix = env["NUBO_REDIS_PREFIX"]
        in_redis = 0
        for start in range(0, len(ids), 1000):
            pipe = redis.pipeline(transaction=False)
            for post_id in ids[start : start + 1000]:
                pipe.exists(f"{prefix}cache:posts:{post_id}")
            in_redis += sum(pipe.execute())
    return {
        "postgres": row[0] if row else 0,
        "mongo": in_mongo,
        "redis": in_redis,
        "outbox_left": pending[0] if pending else -1,
    }


# ---- GET /feed at a constant rate --------------------------------------------------------------------------


async def constant_rate(url: str, readers: list[dict[str, str]], rate: int, seconds: float) -> dict[str, Any]:
    """Open-loop load: request i is due at start + i/rate; latency counts from that due time."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=10.0, limits=limits) as http:
        for headers in readers:  # warm the connections and the feeds
            (await http.get("/feed", headers=headers)).raise_for_status()

        async def one(due: float, headers: dict[str, str]) -> None:
            nonlocal errors
            try:
                response = await http.get("/feed", headers=headers)
                if response.status_code != 200:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            latencies.append((time.perf_counter() - due) * 1000)

        tasks = []
        start = time.perf_counter() + 0.05
        total = int(rate * seconds)
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due, readers[i % len(readers)])))
        await asyncio.gather(*tasks)
        achieved = total / (time.perf_counter() - start)
    ordered = sorted(latencies)
    return {
        "p50_ms": ordered[len(ordered) // 2],
        "p99_ms": ordered[int(len(ordered) * 0.99) - 1],
        "max_ms": ordered[-1],
        "requests": total,
        "errors": errors,
        "achieved_rate": achieved,
    }


# ---- the run -----------------------------------------------------------------------------------------------


def feed_run(url: str, readers: list[dict[str, str]], options: BenchOptions, pid: int) -> dict[str, Any]:
    """One constant-rate feed run, with the server's CPU per request."""
    before = process_cpu_seconds(pid)
    run = asyncio.run(constant_rate(url, readers, FEED_RATE, options.duration))
    run["server_cpu_us_per_request"] = (process_cpu_seconds(pid) - before) * 1e6 / max(run["requests"], 1)
    return run


def cpu_per_request(results: list[WrkResult]) -> float:
    """Median server CPU per request (us): steadier than req/s when other processes share the machine."""
    return median([r.server_cpu_us_per_request or 0.0 for r in results])


def measure(options: BenchOptions) -> BenchOutput:
    limits = ("NUBO_RATE_DEFAULT", "NUBO_RATE_SIGNUP", "NUBO_RATE_LOGIN")
    overrides = {name: "100000000/minute" for name in limits}
    with isolated_env(overrides) as env:
        init_db(env)
        with nubo_server(env) as server:
            assert server.process is not None
            pid = server.process.pid
            with httpx.Client(base_url=server.url, timeout=30.0) as http:
                readers = seed_feed(http)
                author_id, author = member(http, "writer")
                post_id = http.post("/posts", json={"content": "hot post"}, headers=author).json()["id"]
                http.get(f"/posts/{post_id}", headers=author).raise_for_status()  # in Redis now
            # Feed and reads before the write run: thousands of new posts (and the Mongo copies FerretDB then
            # scans on a Redis miss) would otherwise weigh on the read phases.
            asyncio.run(constant_rate(server.url, readers, FEED_RATE, max(options.warmup, 1)))  # warm-up
            feed_runs = [feed_run(server.url, readers, options, pid) for _ in range(options.rounds)]
            reads = read_rounds(server.url, post_id, author, options, pid)
            writes = write_run(server.url, author, options, pid)
            stores = check_three_stores(env, author_id)
    ping_rps = median([r.requests_per_s for r in reads["ping"]])
    post_rps = median([r.requests_per_s for r in reads["post"]])
    ratios = [p.requests_per_s / g.requests_per_s for p, g in zip(reads["post"], reads["ping"], strict=True)]
    feed_p99 = median([run["p99_ms"] for run in feed_runs])
    all_written = stores["postgres"] == stores["mongo"] == stores["redis"] and stores["outbox_left"] == 0
    metrics = [
        Metric("/ping", ping_rps, "req/s"),
        Metric("GET /posts/{id} (Redis)", post_rps, "req/s"),
        Metric("GET /posts/{id} / ping (median of rounds)", median(ratios), "ratio", (">=", READ_RATIO_TARGET)),
        Metric("GET /posts/{id} p99", median([r.p99_ms for r in reads["post"]]), "ms"),
        Metric("/ping server CPU per request", cpu_per_request(reads["ping"]), "us"),
        Metric("GET /posts/{id} server CPU per request", cpu_per_request(reads["post"]), "us"),
        Metric("POST /posts", writes.requests_per_s, "posts/s", (">=", POSTS_PER_S_TARGET)),
        Metric("POST /posts p99", writes.p99_ms, "ms"),
        Metric("POST /posts server CPU per request", cpu_per_request([writes]), "us"),
        Metric("posts in all three stores", 1.0 if all_written else 0.0, "bool", (">=", 1.0)),
        Metric("GET /feed p99 @200 req/s", feed_p99, "ms", ("<", FEED_P99_TARGET_MS)),
        Metric("GET /feed p50 @200 req/s", median([run["p50_ms"] for run in feed_runs]), "ms"),
        Metric(
            "GET /feed server CPU per request", median([run["server_cpu_us_per_request"] for run in feed_runs]), "us"
        ),
        Metric(
            "errors (non-2xx, socket)",
            sum(r.errors for rs in reads.values() for r in rs)
            + writes.errors
            + sum(run["errors"] for run in feed_runs),
            "count",
            ("<=", 0),
        ),
    ]
    details = {
        "reads": {name: [r.summary() for r in runs] for name, runs in reads.items()},
        "read_ratios": ratios,
        "writes": writes.summary(),
        "stores_after_writes": stores,
        "feed_runs": feed_runs,
        "feed_load": "asyncio+httpx open loop at a fixed rate (Debian wrk has no -R)",
    }
    return BenchOutput(metrics, details)


if __name__ == "__main__":
    bench_main("content", "Posts and feed: Redis-served reads vs /ping, writes to three stores, feed p99", measure)
