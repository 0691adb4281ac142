"""Realtime messaging on two `nubo serve` instances sharing Redis, beside Redis's raw PUBLISH rate.

    .venv/bin/python -m bench.bench_realtime [--duration 10]        (also: bench/run realtime)

Measured, in this order, on a fresh database / Mongo database / Redis prefix:

* raw Redis: ``redis-benchmark -q -n 100000 PUBLISH`` and a pipelined PUBLISH loop from Python (messages/s);
* send -> ack over the WebSocket at fixed offered rates (100, 250, 400, 500 messages/s, open loop, 50 senders in
  direct conversations split across both instances): achieved rate, p50, p99 (target p99 < 25 ms at 500/s);
* one message to a 1,000-member group (members spread over both instances, 5 messages): delivery latency from
  send to receipt by each member, p50 and p99 over all deliveries (target p99 < 250 ms);
* cross-instance cost: one sender on A, one receiver on A and one on B in the same group, 300 messages; p50
  delivery to B minus p50 delivery to A (target < 5 ms);
* idle connections: RSS of a fresh instance holding 5,000 idle sockets (1,000 users x 5), target < 300 MB;
  measured twice, each time on a new instance: clients that do not offer permessage-deflate, and clients that
  do (uvicorn then keeps a zlib compressor and decompressor per socket, about 38 KB more each).

Everything runs on one machine: the load generator, both servers, PostgreSQL, Redis and FerretDB share its
CPUs (2 here), so latency figures include that contention; the report says what was offered and what was
achieved. Users are created in bulk with one precomputed password hash (argon2 per user would dominate the
setup time).
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import uvloop  # noqa: E402
import websockets  # noqa: E402

from bench.common import (  # noqa: E402
    BenchOptions,
    BenchOutput,
    Metric,
    bench_main,
    init_db,
    isolated_env,
    nubo_server,
)
from nubo import accounts, messaging  # noqa: E402
from nubo.accounts import security  # noqa: E402
from nubo.ids import new_id  # noqa: E402
from nubo.root import open_root  # noqa: E402
from nubo.settings import load_settings  # noqa: E402
from nubo.stores import Stores  # noqa: E402

RATES = (100, 250, 400, 500)  # 400: where the p99 knee lies on a 2-core machine
SENDERS = 50
FANOUT_MEMBERS = 1000
FANOUT_MESSAGES = 5
CROSS_MESSAGES = 300
IDLE_PER_USER = 5
SERVER_ENV = {
    "NUBO_RATE_MESSAGES": "1000000/minute",
    "NUBO_RATE_DEFAULT": "1000000/minute",
    "NUBO_LOG_LEVEL": "warning",
}


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


# ---- raw Redis --------------------------------------------------------------------------------------------


def redis_benchmark_publish(redis_url: str) -> float | None:
    """`redis-benchmark` PUBLISH requests/s (None when the tool is missing)."""
    tool = shutil.which("redis-benchmark")
    if tool is None:
        return None
    parts = urlsplit(redis_url)
    done = subprocess.run(
        [
            tool,
            "-h",
            parts.hostname or "127.0.0.1",
            "-p",
            str(parts.port or 6379),
            "-q",
            "-n",
            "100000",
            "PUBLISH",
            "bench:realtime:raw",
            "hello",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"([\d.]+) requests per second", done.stdout)
    return float(match.group(1)) if match else None


def python_publish_rate(redis_url: str, seconds: float = 2.0) -> float:
    """PUBLISH messages/s from redis-py, pipelined 500 at a time (what one Python process can push)."""
    from redis import Redis

    client = Redis.from_url(redis_url)
    sent, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        pipe = client.pipeline(transaction=False)
        for _ in range(500):
            pipe.publish("bench:realtime:raw", "x" * 200)
        pipe.execute()
        sent += 500
    client.close()
    return sent / (time.perf_counter() - started)


# ---- users and sockets ------------------------------------------------------------------------------------


async def bulk_users(stores: Stores, count: int, prefix: str) -> list[tuple[uuid.UUID, str]]:
    """`count` active users with open sessions: (user id, access token)."""
    password_hash = await security.hash_password("bench password 1234")
    rows = [{"id": new_id(), "username": f"{prefix}{i}_{uuid.uuid4().hex[:6]}"} for i in range(count)]
    async with stores.pg.connection() as conn, conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO auth.users (id, username, email, password_hash, first_name, last_name) "
            "VALUES (%s, %s, %s, %s, 'Bench', 'User')",
            [(r["id"], r["username"], f"{r['username']}@bench.test", password_hash) for r in rows],
        )
    users = []
    for start in range(0, count, 100):
        batch = rows[start : start + 100]
        tokens = await asyncio.gather(
            *(
                accounts.open_session(
                    stores,
                    {**r, "grade": 1, "email": "", "first_name": "B", "last_name": "U"},
                    accounts.ClientInfo(ip="127.0.0.1"),
                )
                for r in batch
            )
        )
        users += [(r["id"], t.access_token) for r, t in zip(batch, tokens, strict=True)]
    return users


class Socket:
    """A WebSocket client that timestamps each frame on arrival."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.acks: dict[str, float] = {}
        self.acked_ids: dict[str, str] = {}  # client id -> message id
        self.arrivals: dict[str, float] = {}  # message id -> arrival time
        self.ready = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, token: str, compression: str | None = "deflate") -> Socket:
        ws = await websockets.connect(
            url,
            compression=compression,
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=60,
            max_size=2**20,
            ping_interval=None,
        )
        socket = cls(ws)
        await asyncio.wait_for(socket.ready.wait(), 60)
        return socket

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                now = time.perf_counter()
                event = json.loads(raw)
                kind = event.get("type")
                if kind == "message.new":
                    self.arrivals[event["message"]["id"]] = now
                elif kind == "ack":
                    self.acks[event["client_id"]] = now
                    self.acked_ids[event["client_id"]] = event["message_id"]
                elif kind == "hello":
                    self.ready.set()
        except websockets.ConnectionClosed:
            pass

    async def send(self, frame: Mapping[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self.task, return_exceptions=True)


async def open_many(
    pairs: list[tuple[str, str]], concurrency: int = 50, compression: str | None = "deflate"
) -> list[Socket]:
    gate = asyncio.Semaphore(concurrency)

    async def one(url: str, token: str) -> Socket:
        async with gate:
            return await Socket.open(url, token, compression)

    return list(await asyncio.gather(*(one(url, token) for url, token in pairs)))


# ---- measurements -----------------------------------------------------------------------------------------


async def send_ack_at(rate: int, seconds: float, senders: list[tuple[Socket, str]]) -> dict[str, float]:
    """Offer `rate` messages/s for `seconds` (round robin over senders, open loop); ack latency stats."""
    sent_at: dict[str, tuple[Socket, float]] = {}
    total = int(rate * seconds)
    started = time.perf_counter()
    for i in range(total):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        socket, conversation = senders[i % len(senders)]
        client_id = f"r{rate}-{i}"
        sent_at[client_id] = (socket, time.perf_counter())
        await socket.send(
            {
                "type": "message.send",
                "conversation_id": conversation,
                "content": f"m{i}",
                "client_id": client_id,
            }
        )
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline and any(cid not in s.acks for cid, (s, _) in sent_at.items()):  # noqa: ASYNC110 - acks are recorded by the reader tasks
        await asyncio.sleep(0.05)
    latencies = [(s.acks[cid] - t) * 1000 for cid, (s, t) in sent_at.items() if cid in s.acks]
    last_ack = max((s.acks[cid] for cid, (s, _) in sent_at.items() if cid in s.acks), default=started)
    return {
        "offered_per_s": rate,
        "achieved_per_s": len(latencies) / max(last_ack - started, 1e-9),
        "acked": len(latencies),
        "sent": total,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


async def _send_and_wait(
    sender: Socket, receivers: list[Socket], conversation: str, client_id: str, wait: float = 30.0
) -> tuple[float, str]:
    """Send one message; wait for its ack and for every receiver to get it. (start time, message id)."""
    started = time.perf_counter()
    await sender.send(
        {
            "type": "message.send",
            "conversation_id": conversation,
            "content": client_id,
            "client_id": client_id,
        }
    )
    deadline = started + wait
    while client_id not in sender.acked_ids and time.perf_counter() < deadline:  # noqa: ASYNC110 - polled: set by the reader task
        await asyncio.sleep(0.001)
    message_id = sender.acked_ids[client_id]
    while time.perf_counter() < deadline and not all(message_id in r.arrivals for r in receivers):  # noqa: ASYNC110 - polled: set by the reader tasks
        await asyncio.sleep(0.001)
    return started, message_id


async def fan_out(sender: Socket, members: list[Socket], conversation: str) -> dict[str, float]:
    latencies: list[float] = []
    per_message: list[dict[str, float]] = []
    for i in range(FANOUT_MESSAGES):
        started, message_id = await _send_and_wait(sender, members, conversation, f"fan-{i}")
        these = [(m.arrivals[message_id] - started) * 1000 for m in members if message_id in m.arrivals]
        per_message.append({"p50_ms": percentile(these, 50), "max_ms": max(these, default=float("nan"))})
        latencies += these
        await asyncio.sleep(0.3)
    return {
        "deliveries": len(latencies),
        "expected": FANOUT_MESSAGES * len(members),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "per_message": per_message,
    }


async def cross_instance(sender: Socket, local: Socket, remote: Socket, conversation: str) -> dict[str, float]:
    """Same message, two receivers: one on the sender's instance, one on the other."""
    same, other = [], []
    for i in range(CROSS_MESSAGES):
        started, message_id = await _send_and_wait(sender, [local, remote], conversation, f"x-{i}", wait=10)
        if message_id in local.arrivals and message_id in remote.arrivals:
            same.append((local.arrivals[message_id] - started) * 1000)
            other.append((remote.arrivals[message_id] - started) * 1000)
        await asyncio.sleep(0.01)
    return {
        "same_instance_p50_ms": statistics.median(same),
        "other_instance_p50_ms": statistics.median(other),
        "added_p50_ms": statistics.median(other) - statistics.median(same),
        "samples": len(same),
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---- orchestration ----------------------------------------------------------------------------------------


async def idle_sockets(env: Mapping[str, str], compression: str | None) -> dict[str, Any]:
    """A fresh instance, then 5,000 idle sockets (1,000 users x 5): its RSS before and after."""
    settings = load_settings(dict(env), env_file=None)
    stores = (await open_root(settings, wait_for_postgres=True)).stores
    try:
        users = await bulk_users(stores, FANOUT_MEMBERS, f"idle{compression or 'plain'}")
    finally:
        await stores.close()
    with nubo_server(env, pin=False) as server:
        await asyncio.sleep(1)
        before = rss_mb(server.process.pid)
        sockets = await open_many(
            [(server.ws_url, token) for _, token in users for _ in range(IDLE_PER_USER)],
            concurrency=100,
            compression=compression,
        )
        await asyncio.sleep(3)
        after = rss_mb(server.process.pid)
        for socket in sockets:
            await socket.close()
    return {
        "connections": len(sockets),
        "rss_before_mb": before,
        "rss_after_mb": after,
        "per_connection_kb": (after - before) * 1024 / max(1, len(sockets)),
        "compression": compression or "none",
    }


async def scenario(env: Mapping[str, str], a: Any, b: Any, seconds: float) -> dict[str, Any]:
    settings = load_settings(dict(env), env_file=None)
    stores = (await open_root(settings, wait_for_postgres=True)).stores
    results: dict[str, Any] = {}
    try:
        users = await bulk_users(stores, FANOUT_MEMBERS + 2 * SENDERS, "b")
        # -- send -> ack: 50 direct conversations, sender on one instance, peer on the other.
        pairs = [(users[i], users[i + SENDERS]) for i in range(SENDERS)]
        convs = []
        for (left, _), (right, _) in pairs:
            view, _ = await messaging.create_conversation(stores, left, kind="direct", user_ids=[right])
            convs.append(str(view.id))
        sockets = await open_many(
            [((a if i % 2 else b).ws_url, pairs[i][0][1]) for i in range(SENDERS)]
            + [((b if i % 2 else a).ws_url, pairs[i][1][1]) for i in range(SENDERS)]
        )
        senders = list(zip(sockets[:SENDERS], convs, strict=True))
        await send_ack_at(50, 2, senders)  # warm-up
        results["send_ack"] = [await send_ack_at(rate, seconds, senders) for rate in RATES]
        for socket in sockets:
            await socket.close()
        # -- fan-out to a 1,000-member group, members split over both instances.
        members = users[2 * SENDERS :]
        group, _ = await messaging.create_conversation(
            stores, members[0][0], kind="group", user_ids=[uid for uid, _ in members[1:]], title="big"
        )
        group_id = str(group.id)
        member_sockets = await open_many(
            [((a if i % 2 == 0 else b).ws_url, token) for i, (_, token) in enumerate(members)]
        )
        results["fan_out"] = await fan_out(member_sockets[0], member_sockets, group_id)
        # -- cross-instance: member 0 (A) sends, member 2 (A) and member 1 (B) receive; tiny group.
        trio, _ = await messaging.create_conversation(
            stores, members[0][0], kind="group", user_ids=[members[1][0], members[2][0]], title="trio"
        )
        results["cross_instance"] = await cross_instance(
            member_sockets[0], member_sockets[2], member_sockets[1], str(trio.id)
        )
        for socket in member_sockets:
            await socket.close()
        await stores.messaging_projector.drain(60)
    finally:
        await stores.close()
    return results


def measure(options: BenchOptions) -> BenchOutput:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))  # 5,000+ client sockets
    with isolated_env(SERVER_ENV) as env:
        init_db(env)
        raw_cli = redis_benchmark_publish(env["NUBO_REDIS_URL"])
        raw_py = python_publish_rate(env["NUBO_REDIS_URL"])
        with nubo_server(env, pin=False) as a, nubo_server(env, pin=False) as b:
            # The load generator runs on uvloop, as the servers do: its own scheduling delay is part of every
            # latency it measures (on asyncio's loop it used 15% more CPU per message, on the same 2 cores).
            results = uvloop.run(scenario(env, a, b, float(options.duration)))
        results["idle"] = asyncio.run(idle_sockets(env, None))
        results["idle_deflate"] = asyncio.run(idle_sockets(env, "deflate"))
    at_500 = next(r for r in results["send_ack"] if r["offered_per_s"] == 500)
    metrics = [
        Metric("redis-benchmark PUBLISH", raw_cli or float("nan"), "msg/s"),
        Metric("redis-py pipelined PUBLISH", raw_py, "msg/s"),
    ]
    for run in results["send_ack"]:
        metrics += [
            Metric(f"send->ack achieved at {run['offered_per_s']}/s offered", run["achieved_per_s"], "msg/s"),
            Metric(f"send->ack p50 at {run['offered_per_s']}/s", run["p50_ms"], "ms"),
        ]
        target = ("<", 25.0) if run["offered_per_s"] == 500 else None
        metrics.append(Metric(f"send->ack p99 at {run['offered_per_s']}/s", run["p99_ms"], "ms", target))
    fan = results["fan_out"]
    cross = results["cross_instance"]
    idle, deflate = results["idle"], results["idle_deflate"]
    metrics += [
        Metric("1,000-member fan-out p50", fan["p50_ms"], "ms"),
        Metric("1,000-member fan-out p99", fan["p99_ms"], "ms", ("<", 250.0)),
        Metric("fan-out deliveries missing", fan["expected"] - fan["deliveries"], "count", ("<=", 0)),
        Metric("delivery p50, same instance", cross["same_instance_p50_ms"], "ms"),
        Metric("delivery p50, other instance", cross["other_instance_p50_ms"], "ms"),
        Metric("cross-instance added latency p50", cross["added_p50_ms"], "ms", ("<", 5.0)),
        Metric(f"RSS, {idle['connections']:,} idle sockets, no deflate", idle["rss_after_mb"], "MB", ("<", 300.0)),
        Metric("RSS per idle socket, no deflate", idle["per_connection_kb"], "KB"),
        Metric(
            f"RSS, {deflate['connections']:,} idle sockets, deflate",
            deflate["rss_after_mb"],
            "MB",
            ("<", 300.0),
        ),
        Metric("RSS per idle socket, deflate", deflate["per_connection_kb"], "KB"),
    ]
    details = {
        **results,
        "sent_at_500": at_500,
        "note": "one machine; load generator, 2 servers, PostgreSQL, Redis and FerretDB share the CPUs",
    }
    return BenchOutput(metrics, details)


if __name__ == "__main__":
    bench_main("realtime", "Realtime: send->ack, 1,000-member fan-out, cross-instance cost, idle sockets", measure)
