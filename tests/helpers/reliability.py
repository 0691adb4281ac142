"""Fault-test harness (no tests here): a private PostgreSQL, Redis and FerretDB, two `nubo serve` instances on
them, a group of members on WebSockets sending a bounded load, and the checks every fault test makes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets

from nubo import messaging
from nubo.root import Root, open_root
from nubo.settings import load_settings
from nubo.stores import Stores
from nubo.stores.schema import init_databases
from tests.helpers.harness import (
    ROOT,
    DedicatedFerret,
    DedicatedPostgres,
    DedicatedRedis,
    ServerProcess,
)
from tests.helpers.messaging import ChatUser, make_users

ACK_TIMEOUT = 3.0


@dataclass
class Cluster:
    """Private stores, two server instances and an in-process root (setup and checks) on the same stores."""

    pg: DedicatedPostgres
    redis: DedicatedRedis
    ferret: DedicatedFerret
    env: dict[str, str]
    servers: list[ServerProcess]
    root: Root

    @property
    def stores(self) -> Stores:
        return self.root.stores

    def alive(self) -> list[ServerProcess]:
        return [s for s in self.servers if s.process is not None and s.process.poll() is None]


@asynccontextmanager
async def open_cluster(tmp: Path, *, env_a: dict[str, str] | None = None) -> AsyncIterator[Cluster]:
    """Start the private stores, initialise them, start two instances (`env_a`: extra settings of the first)."""
    pg, redis, ferret = DedicatedPostgres(), DedicatedRedis(), DedicatedFerret(tmp / "ferret")
    (tmp / "ferret").mkdir(exist_ok=True)
    servers: list[ServerProcess] = []
    root: Root | None = None
    try:
        for service in (pg, redis, ferret):
            service.start()
        await asyncio.to_thread(pg.create_database)
        env = {k: v for k, v in os.environ.items() if not k.startswith("NUBO_")}
        env.update(
            {
                "NUBO_POSTGRES_URL": pg.url,
                "NUBO_REDIS_URL": redis.url,
                "NUBO_MONGO_URL": ferret.url,
                "NUBO_MONGO_DB": "nubo_fault",
                "NUBO_REDIS_PREFIX": "nubo:",
                "NUBO_ENV": "test",
                "JWT_SECRET": secrets.token_urlsafe(48),
                "NUBO_LOG_LEVEL": "info",
                "NUBO_RATE_MESSAGES": "600/10s",
                "PYTHONPATH": str(ROOT),
            }
        )
        root = await open_root(load_settings(env, env_file=None), wait_for_postgres=True, pg_max_size=8)
        await init_databases(root.stores)
        for extra in (env_a or {}, {}):
            servers.append(ServerProcess(env={**env, **extra}))
        await asyncio.gather(*(asyncio.to_thread(server.start) for server in servers))
        yield Cluster(pg, redis, ferret, env, servers, root)
    finally:
        for server in servers:
            if server.process is not None and server.process.poll() is None:
                server.process.kill()
                server.process.wait()
        if root is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(root.close(), 10)
        for service in (ferret, redis):
            if service.process is not None and service.process.poll() is None:
                service.process.kill()
                service.process.wait()
        pg.remove()


@dataclass
class Member:
    """A group member on one WebSocket (reconnecting to a live instance when it closes) that sends a bounded
    load and records what it received."""

    user: ChatUser
    cluster: Cluster
    home: int  # index of the instance it connects to first
    conversation_id: uuid.UUID = field(default_factory=uuid.uuid4)
    ws: Any = None
    socket_no: int = 0
    last_event_id: int | None = None
    live: Counter[tuple[int, str]] = field(default_factory=Counter)  # (socket no, message id) -> deliveries
    resyncs: list[float] = field(default_factory=list)  # when each resync arrived
    received_at: dict[str, float] = field(default_factory=dict)  # message id -> first live delivery
    acked: dict[str, str] = field(default_factory=dict)  # client id -> message id
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (sent at, send->ack seconds)
    refusals: list[tuple[float, str, float]] = field(default_factory=list)  # (sent at, code, seconds)
    close_codes: list[int | None] = field(default_factory=list)
    _keeper: asyncio.Future[None] | None = None
    _waiting: dict[str, asyncio.Future[tuple[str, str]]] = field(default_factory=dict)
    _reader: asyncio.Task[None] | None = None
    _closing: bool = False
    _server: ServerProcess | None = None
    _connecting: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def connect(self) -> None:
        """Connect (resuming from the last event id), to its home instance, else to another live one; an
        instance whose socket just closed abnormally is avoided while another is alive."""
        async with self._connecting:
            if self.ws is not None and self.ws.close_code is None:
                return
            deadline = time.monotonic() + 15
            while True:
                servers = self.cluster.alive()
                assert servers, "no instance alive"
                others = [s for s in servers if s is not self._server] or servers
                server = next((s for s in others if s is self.cluster.servers[self.home]), others[0])
                query = f"?last_event_id={self.last_event_id}" if self.last_event_id is not None else ""
                headers = {"Authorization": f"Bearer {self.user.token}"}
                try:
                    self.ws = await websockets.connect(
                        server.ws_url + query, additional_headers=headers, open_timeout=5
                    )
                    break
                except (OSError, websockets.WebSocketException, TimeoutError):
                    self._server = server
                    assert time.monotonic() < deadline, "could not reconnect"
                    await asyncio.sleep(0.2)
            self._server = server
            self.socket_no += 1
            self._reader = asyncio.create_task(self._read(self.ws, self.socket_no))

    async def _reconnect_soon(self) -> None:
        await asyncio.sleep(0.1)
        if not self._closing:
            with contextlib.suppress(Exception):
                await self.connect()

    async def _read(self, ws: Any, socket_no: int) -> None:
        try:
            async for raw in ws:
                self._on_frame(json.loads(raw), socket_no)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_codes.append(ws.close_code)
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_result(("lost", ""))
            if not self._closing:  # a member stays connected: resume on a live instance
                self._keeper = asyncio.ensure_future(self._reconnect_soon())

    def _on_frame(self, frame: dict[str, Any], socket_no: int) -> None:
        kind = frame.get("type")
        if "event_id" in frame and kind != "resync":
            self.last_event_id = frame["event_id"]
        if kind == "hello" and self.last_event_id is None:
            self.last_event_id = frame["last_event_id"]  # the position to resume from, before any event
        if kind == "message.new":
            message_id = frame["message"]["id"]
            self.live[(socket_no, message_id)] += 1
            self.received_at.setdefault(message_id, time.monotonic())
        elif kind == "resync":
            self.resyncs.append(time.monotonic())
            self.last_event_id = frame["event_id"]
        elif kind in ("ack", "error") and frame.get("client_id") in self._waiting:
            waiter = self._waiting[frame["client_id"]]
            if not waiter.done():
                result = ("ack", frame["message_id"]) if kind == "ack" else ("error", frame["code"])
                waiter.set_result(result)

    async def send_once(self, client_id: str, content: str) -> tuple[str, str]:
        """("ack", message id), ("error", code) or ("lost", "") (socket closed or no answer in time)."""
        if self.ws is None or self.ws.close_code is not None:
            await self.connect()
        waiter: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()
        self._waiting[client_id] = waiter
        frame = {"type": "message.send", "conversation_id": str(self.conversation_id), "content": content}
        try:
            await self.ws.send(json.dumps({**frame, "client_id": client_id}))
            return await asyncio.wait_for(waiter, ACK_TIMEOUT)
        except (TimeoutError, websockets.ConnectionClosed):
            return ("lost", "")
        finally:
            self._waiting.pop(client_id, None)

    async def send(self, client_id: str, content: str, *, give_up_after: float = 20.0) -> str | None:
        """Send until acknowledged (retrying the same client id after a refusal or a lost socket)."""
        deadline = time.monotonic() + give_up_after
        while time.monotonic() < deadline:
            started = time.monotonic()
            outcome, value = await self.send_once(client_id, content)
            elapsed = time.monotonic() - started
            if outcome == "ack":
                self.acked[client_id] = value
                self.latencies.append((started, elapsed))
                return value
            self.refusals.append((started, value or outcome, elapsed))
            await asyncio.sleep(0.1)
        return None

    async def run_load(self, count: int, rate: float) -> None:
        for n in range(count):
            started = time.monotonic()
            await self.send(f"{self.user.username}-{n}", f"m{n} from {self.user.username}")
            await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))

    async def close(self) -> None:
        self._closing = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    def live_ids(self) -> set[str]:
        return {message_id for _, message_id in self.live}


async def open_group(cluster: Cluster, size: int = 4) -> list[Member]:
    """`size` members of one group, spread over the two instances, each connected (hello received)."""
    users = await make_users(cluster.stores, *(f"m{i}" for i in range(size)))
    conv, _ = await messaging.create_conversation(
        cluster.stores, users[0].id, kind="group", user_ids=[u.id for u in users[1:]], title="fault"
    )
    members = [Member(user, cluster, i % 2, conversation_id=conv.id) for i, user in enumerate(users)]
    for member in members:
        await member.connect()
    await asyncio.sleep(0.3)  # hellos
    return members


async def load(members: list[Member], count: int, rate: float) -> None:
    await asyncio.gather(*(member.run_load(count, rate) for member in members))


def all_acked(members: list[Member]) -> set[str]:
    return {message_id for member in members for message_id in member.acked.values()}


async def history(server: ServerProcess, member: Member) -> set[str]:
    """Every message id of the member's REST history."""
    found: set[str] = set()
    before: str | None = None
    async with httpx.AsyncClient(base_url=server.url, headers=member.user.headers, timeout=10) as client:
        while True:
            params = {"limit": "100", **({"before": before} if before else {})}
            response = await client.get(f"/conversations/{member.conversation_id}/messages", params=params)
            response.raise_for_status()
            page = response.json()
            found |= {item["id"] for item in page["items"]}
            if not page["next"]:
                return found
            before = page["items"][-1]["id"]


async def check_after_fault(cluster: Cluster, members: list[Member], *, mongo_within: float = 30.0) -> None:
    """What every fault test asserts: each acknowledged message is in PostgreSQL, in Mongo `messages_recent`
    (within `mongo_within` s), in every member's history and seen by every member (live, or covered by a
    resync), and no socket got one message live twice."""
    acked = all_acked(members)
    assert acked, "no message was acknowledged"
    await cluster.stores.pg.check()  # drop connections a PostgreSQL restart broke
    async with cluster.stores.pg.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT id::text AS id FROM messaging.message_index WHERE conversation_id = %s",
                (members[0].conversation_id,),
            )
        ).fetchall()
    assert acked <= {row["id"] for row in rows}, "acknowledged messages missing from PostgreSQL"
    server = cluster.alive()[0]
    for member in members:
        missing = acked - await history(server, member)
        assert not missing, f"{member.user.username}: {len(missing)} acknowledged messages missing from history"
        unseen = acked - member.live_ids()
        assert not unseen or member.resyncs, (
            f"{member.user.username}: {len(unseen)} messages never seen, no resync",
            sorted(unseen),
            member.socket_no,
            member.close_codes,
            sorted(member.live_ids())[-5:],
        )
        twice = [key for key, times in member.live.items() if times > 1]
        assert not twice, f"{member.user.username}: delivered twice on one socket: {twice[:3]}"
    wanted = [uuid.UUID(message_id) for message_id in acked]
    deadline = time.monotonic() + mongo_within
    while True:
        copied = await cluster.stores.mongo["messages_recent"].count_documents({"_id": {"$in": wanted}})
        if copied == len(wanted):
            return
        assert time.monotonic() < deadline, f"only {copied} of {len(wanted)} messages in Mongo messages_recent"
        await asyncio.sleep(0.5)


def tracebacks(server: ServerProcess) -> int:
    return server.logs().count("Traceback")
