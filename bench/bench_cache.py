"""The Redis cache engine with 100,000 elements, beside redis-benchmark's GET rate measured in the same run.

    .venv/bin/python bench/bench_cache.py [--elements 100000] [--json out.json]    (also: bench/run cache)

Measures, on the `messages` collection under a throw-away key prefix (deleted afterwards):
* `set_many` elements/s from one process (pipelined; target >= 5,000), and plain one-at-a-time `set`;
* indexed equality `get` (a conversation id: 10 results) queries/s: one client; 16 concurrent clients in one
  process (target >= 3,000); and 16 clients in each of 2 processes (as two server workers), aggregated;
* a full-scan filter (no index narrows it) over a 10,000-element collection, median ms (target < 150);
* `redis-benchmark -t get -n 100000 -q` requests/s, the server's raw speed on this machine right now.

The event loop is uvloop when installed (uvicorn[standard] installs it, and `nubo serve` runs on it). The
client is nubo's (automatic pipelining), or redis-py's own under `bench/run --switch autopipeline`'s off run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runnable as `python bench/bench_cache.py` as well as `-m bench.bench_cache`
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    RESULTS_DIR,
    Metric,
    add_load_arguments,
    machine_info,
    now_iso,
    runner_server_env,
    switched_on,
    write_json,
)
from nubo.stores.cache.admin import used_memory  # noqa: E402
from nubo.stores.cache.collection import CacheCollection, RedisCache  # noqa: E402
from nubo.stores.redis import Keys, delete_prefix, open_redis  # noqa: E402
from tests.helpers.harness import service_env  # noqa: E402

PER_CONVERSATION = 10  # results of one indexed equality get (<= 20)
SCAN_ELEMENTS = 10_000
BASE = datetime(2024, 1, 1, tzinfo=UTC)


def message(index: int, conversations: list[uuid.UUID], senders: list[uuid.UUID]) -> dict[str, Any]:
    return {
        "id": uuid.UUID(int=(1 << 100) + index),
        "conversation_id": conversations[index // PER_CONVERSATION],
        "sender_id": senders[index % len(senders)],
        "message_type": index % 3,
        "state": 0,
        "content": f"message number {index} " + "lorem ipsum " * 4,
        "attachments": {},
        "client_id": None,
        "created_at": BASE + timedelta(seconds=index),
        "edited_at": None,
    }


async def measure_sets(coll: CacheCollection, docs: list[dict[str, Any]], single: int) -> dict[str, float]:
    started = time.perf_counter()
    for start in range(0, len(docs), 1000):
        await coll.set_many(docs[start : start + 1000])
    batched = len(docs) / (time.perf_counter() - started)
    started = time.perf_counter()
    for doc in docs[:single]:
        await coll.set(doc)
    return {"set_many": batched, "set": single / (time.perf_counter() - started)}


async def measure_gets(coll: CacheCollection, conversations: list[uuid.UUID], queries: int, clients: int) -> float:
    picks = [random.choice(conversations) for _ in range(queries)]
    assert len(await coll.get({"conversation_id": picks[0]})) == PER_CONVERSATION

    async def client(share: list[uuid.UUID]) -> None:
        for conversation in share:
            await coll.get({"conversation_id": conversation})

    started = time.perf_counter()
    await asyncio.gather(*(client(picks[i::clients]) for i in range(clients)))
    return queries / (time.perf_counter() - started)


def _get_worker(
    url: str, prefix: str, conversations: list[str], queries: int, clients: int, barrier: Any, rates: Any
) -> None:
    """One client process: waits for the others, runs `queries` gets with `clients` coroutines."""

    async def work() -> float:
        redis = open_redis(url, timeout=30.0, autopipeline=switched_on("NUBO_REDIS_AUTOPIPELINE"))
        coll = RedisCache(redis, Keys(prefix)).collection("messages")
        await coll.get({"conversation_id": conversations[0]})  # load the scripts, open a connection
        barrier.wait()
        rate = await measure_gets(coll, [uuid.UUID(c) for c in conversations], queries, clients)
        await redis.aclose()
        return rate

    rates.put(run_loop(work()))


def measure_gets_processes(
    url: str, prefix: str, conversations: list[uuid.UUID], processes: int, queries: int, clients: int
) -> float:
    """Aggregate queries/s of `processes` client processes started together."""
    context = multiprocessing.get_context("spawn")
    barrier, rates = context.Barrier(processes), context.Queue()
    names = [str(c) for c in conversations]
    args = (url, prefix, names, queries, clients, barrier, rates)
    workers = [context.Process(target=_get_worker, args=args) for _ in range(processes)]
    for worker in workers:
        worker.start()
    total = sum(rates.get(timeout=600) for _ in workers)
    for worker in workers:
        worker.join()
    return float(total)


def run_loop(coroutine: Any) -> Any:
    """Run on uvloop when installed (as `nubo serve` does under uvicorn[standard]), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


async def measure_scan(cache: RedisCache, rounds: int = 7) -> dict[str, float]:
    comments = cache.collection("comments")
    post = uuid.uuid4()
    await comments.set_many(
        [
            {
                "id": uuid.UUID(int=(1 << 90) + i),
                "post_id": post,
                "user_id": uuid.uuid4(),
                "content": f"comment {i}",
                "created_at": BASE + timedelta(minutes=i),
                "updated_at": BASE,
            }
            for i in range(SCAN_ELEMENTS)
        ]
    )
    cutoff = BASE + timedelta(minutes=SCAN_ELEMENTS * 0.9)
    filter = {"created_at": {"$gte": cutoff}, "content": {"$ne": "x"}}  # no index narrows either condition
    times, found = [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        found = len(await comments.get(filter))
        times.append((time.perf_counter() - started) * 1000)
    assert found == SCAN_ELEMENTS // 10, found
    return {"median_ms": statistics.median(times), "matches": found}


def redis_benchmark_get(url: str) -> float | None:
    """`redis-benchmark -t get -n 100000 -q` GET requests/s on the same server (None: not installed)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    parts = urlsplit(url)
    cmd = [
        binary,
        "-h",
        parts.hostname or "127.0.0.1",
        "-p",
        str(parts.port or 6379),
        "-t",
        "get",
        "-n",
        "100000",
        "-q",
    ]
    if parts.password:
        cmd += ["-a", parts.password]
    output = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout
    match = re.search(r"GET: ([\d.]+) requests per second", output)
    return float(match.group(1)) if match else None


async def run(elements: int) -> tuple[list[Metric], dict[str, Any]]:
    url = service_env()["NUBO_REDIS_URL"]
    redis = open_redis(url, timeout=30.0, autopipeline=switched_on("NUBO_REDIS_AUTOPIPELINE"))
    keys = Keys(f"nubo_bench_cache_{uuid.uuid4().hex[:8]}:")
    cache = RedisCache(redis, keys)
    coll = cache.collection("messages")
    conversations = [uuid.uuid4() for _ in range(elements // PER_CONVERSATION + 1)]
    senders = [uuid.uuid4() for _ in range(1000)]
    docs = [message(i, conversations, senders) for i in range(elements)]
    conversations = conversations[: elements // PER_CONVERSATION]
    try:
        before = await used_memory(redis)
        sets = await measure_sets(coll, docs, single=min(5000, elements))
        bytes_per_element = (await used_memory(redis) - before) / elements
        get_one = await measure_gets(coll, conversations, 5000, clients=1)
        get_many = await measure_gets(coll, conversations, 20000, clients=16)
        get_processes = await asyncio.to_thread(measure_gets_processes, url, keys.prefix, conversations, 2, 10000, 16)
        scan = await measure_scan(cache)
    finally:
        deleted = await delete_prefix(redis, keys)
        await redis.aclose()
    raw_get = redis_benchmark_get(url)
    metrics = [
        Metric("set_many elements/s (pipelined, 1 process)", sets["set_many"], "elements/s", (">=", 5000)),
        Metric("set elements/s (one at a time)", sets["set"], "elements/s"),
        Metric("indexed get queries/s (1 process, 16 concurrent)", get_many, "queries/s", (">=", 3000)),
        Metric("indexed get queries/s (2 processes x 16 concurrent)", get_processes, "queries/s"),
        Metric("indexed get queries/s (1 client)", get_one, "queries/s"),
        Metric(f"full-scan filter over {SCAN_ELEMENTS:,} elements", scan["median_ms"], "ms", ("<", 150)),
        Metric("redis-benchmark GET (same run)", raw_get or 0.0, "requests/s"),
        Metric("Redis memory per element (hash + indexes)", bytes_per_element, "bytes"),
    ]
    details = {
        "elements": elements,
        "results_per_get": PER_CONVERSATION,
        "scan_matches": scan["matches"],
        "keys_deleted_after": deleted,
        "redis_benchmark_available": raw_get is not None,
    }
    return metrics, details


def print_table(metrics: list[Metric], elements: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Redis cache engine, {elements:,} elements")
    for column in ("metric", "value", "unit", "target", ""):
        table.add_column(column, justify="right" if column == "value" else "left")
    marks = {True: "[green]ok[/]", False: "[red]MISSED[/]", None: ""}
    for metric in metrics:
        target = f"{metric.target[0]} {metric.target[1]:g}" if metric.target else ""
        table.add_row(metric.name, f"{metric.value:,.1f}", metric.unit, target, marks[metric.ok])
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench_cache", description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=100_000, help="elements in the collection")
    parser.add_argument(
        "--json",
        "--out",
        dest="json",
        type=Path,
        default=RESULTS_DIR / "cache.json",
        help="where to write the JSON result",
    )
    add_load_arguments(parser)  # accepted (and unused) so `bench/run cache` can pass its common flags
    args = parser.parse_args()
    started = now_iso()
    metrics, details = run_loop(run(args.elements))
    print_table(metrics, args.elements)
    write_json(
        args.json,
        {
            "name": "cache",
            "title": "Redis cache engine",
            "started_at": started,
            "finished_at": now_iso(),
            "options": {"elements": args.elements},
            "machine": machine_info(),
            "server_env": runner_server_env(),
            "metrics": [metric.as_json() for metric in metrics],
            "details": details,
        },
    )
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
