"""Feed read p99 for a user connected to `/ws` (whose feed document the server keeps current) next to a user
who is not connected, in the same run, while authors keep posting.

One `nubo serve` worker on fresh databases. 20 authors with 30 posts each; 10 readers follow all of them and
have a feed document (a first read). Five readers hold a WebSocket open (connected), five do not. During
the run the authors post 5 times a second (fan-out and catch-ups have work to do), and `GET /feed` is sent
by two closed loops (each request after the previous one: the shared machine could not sustain a
constant rate without measuring its queue), alternating between a connected and a not-connected reader;
p99 is computed per group. A reader who is not connected pays a
catch-up against PostgreSQL every `NUBO_FEED_CATCHUP` on their read; a connected reader's document was caught
up in the background (nubo.precompute.ConnectedFeeds).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import websockets

from bench.bench_content import member, seed_feed
from bench.common import BenchOptions, BenchOutput, Metric, bench_main, init_db, isolated_env, median, nubo_server

CLIENTS = 2  # concurrent readers: a closed loop (an open loop at 200 and 40 req/s saturated one worker on the
# shared 2-core machine, p50 of seconds: it then measured the queue, not the read)
POST_RATE = 5
CONNECTED_P99_TARGET_MS = 30.0


async def _hold_sockets(ws_url: str, tokens: list[str], stop: asyncio.Event) -> None:
    sockets = [
        await websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {t}"}, ping_interval=None)
        for t in tokens
    ]

    async def drain(ws: Any) -> None:
        try:
            async for _ in ws:
                pass
        except websockets.ConnectionClosed:
            pass

    readers = [asyncio.create_task(drain(ws)) for ws in sockets]
    await stop.wait()
    for ws in sockets:
        await ws.close()
    await asyncio.gather(*readers, return_exceptions=True)


async def _keep_posting(http: httpx.AsyncClient, authors: list[dict[str, str]], stop: asyncio.Event) -> int:
    posted = 0
    while not stop.is_set():
        await http.post("/posts", json={"content": f"live {posted}"}, headers=authors[posted % len(authors)])
        posted += 1
        await asyncio.sleep(1 / POST_RATE)
    return posted


async def _read_closed_loop(
    http: httpx.AsyncClient, groups: dict[str, list[dict[str, str]]], seconds: float
) -> dict[str, list[float]]:
    """CLIENTS loops, each reading one reader's feed after another (groups alternating) for `seconds`."""
    latencies: dict[str, list[float]] = {name: [] for name in groups}
    errors = 0
    names = list(groups)
    deadline = time.perf_counter() + seconds

    async def client(index: int) -> None:
        nonlocal errors
        turn = index
        while time.perf_counter() < deadline:
            group = names[turn % len(names)]
            readers = groups[group]
            started = time.perf_counter()
            response = await http.get("/feed", headers=readers[(turn // len(names)) % len(readers)])
            latencies[group].append((time.perf_counter() - started) * 1000)
            errors += response.status_code != 200
            turn += 1

    await asyncio.gather(*(client(i) for i in range(CLIENTS)))
    latencies["errors"] = [float(errors)]
    return latencies


async def _run(
    url: str, readers: list[dict[str, str]], authors: list[dict[str, str]], seconds: float
) -> dict[str, Any]:
    connected, alone = readers[: len(readers) // 2], readers[len(readers) // 2 :]
    tokens = [h["Authorization"].removeprefix("Bearer ") for h in connected]
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=10.0, limits=limits) as http:
        holding = asyncio.create_task(_hold_sockets(url.replace("http", "ws", 1) + "/ws", tokens, stop))
        await asyncio.sleep(2.0)  # the connected readers' documents are caught up on connect
        posting = asyncio.create_task(_keep_posting(http, authors, stop))
        await asyncio.sleep(6.0)  # past one NUBO_FEED_CATCHUP: every document has aged once
        runs = await _read_closed_loop(http, {"connected": connected, "not connected": alone}, seconds)
        stop.set()
        posted = await posting
        await holding
    return {"latencies": runs, "posted": posted}


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(int(len(ordered) * q) - 1, 0)]


def measure(options: BenchOptions) -> BenchOutput:
    limits = ("NUBO_RATE_DEFAULT", "NUBO_RATE_SIGNUP", "NUBO_RATE_LOGIN")
    with isolated_env({name: "100000000/minute" for name in limits}) as env:
        init_db(env)
        with nubo_server(env) as server, httpx.Client(base_url=server.url, timeout=30.0) as http:
            readers = seed_feed(http)
            live = [member(http, "live") for _ in range(5)]
            for reader in readers:
                for author_id, _ in live:
                    http.post(f"/users/{author_id}/follow", headers=reader).raise_for_status()
            authors = [headers for _, headers in live]
            runs = [asyncio.run(_run(server.url, readers, authors, options.duration)) for _ in range(options.rounds)]
    connected = median([_p(r["latencies"]["connected"], 0.99) for r in runs])
    alone = median([_p(r["latencies"]["not connected"], 0.99) for r in runs])
    errors = sum(r["latencies"]["errors"][0] for r in runs)
    return BenchOutput(
        metrics=[
            Metric("GET /feed p99, connected reader", round(connected, 2), "ms", ("<", CONNECTED_P99_TARGET_MS)),
            Metric("GET /feed p99, reader not connected", round(alone, 2), "ms"),
            Metric(
                "GET /feed p50, connected reader",
                round(median([_p(r["latencies"]["connected"], 0.5) for r in runs]), 2),
                "ms",
            ),
            Metric("errors (non-200)", errors, "count", ("<=", 0)),
        ],
        details={"clients": CLIENTS, "post_rate": POST_RATE, "posted": [r["posted"] for r in runs]},
    )


if __name__ == "__main__":
    bench_main("feed_ready", "Feed read p99 for a connected reader vs one not connected", measure)
