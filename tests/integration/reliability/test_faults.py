"""Faults under load on two instances, each test with its own PostgreSQL, Redis and FerretDB processes
(tests/helpers/reliability.py): what the members received and what the stores hold afterwards."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx

from tests.helpers.reliability import check_after_fault, load, open_cluster, open_group, tracebacks


async def _watch_exit(process: object, within: float) -> float | None:
    """When `process` (a Popen) exited, polled every 10 ms; None if it did not within `within` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:  # type: ignore[attr-defined]
            return time.monotonic()
        await asyncio.sleep(0.01)
    return None


async def test_an_instance_killed_between_commit_and_publish_loses_no_event(tmp_path: Path) -> None:
    fault = {"NUBO_TEST_FAULT": "exit_before_publish:message.new"}
    async with open_cluster(tmp_path, env_a=fault) as cluster:
        members = await open_group(cluster)
        killed = cluster.servers[0].process
        watch = asyncio.create_task(_watch_exit(killed, 30))
        await load(members, count=10, rate=5)
        died_at = await watch
        assert died_at is not None and killed is not None and killed.returncode == 70
        await asyncio.sleep(1.5)
        # The message committed by the killed instance reached every member within 5 s of its death.
        first_after = {
            member.user.username: min((t for t in member.received_at.values() if t >= died_at), default=None)
            for member in members
        }
        for name, at in first_after.items():
            resynced = any(t >= died_at for member in members for t in member.resyncs if member.user.username == name)
            assert resynced or (at is not None and at - died_at <= 5.0), (name, at, died_at)
        await check_after_fault(cluster, members)
        for member in members:
            await member.close()


async def test_redis_restarted_empty_every_member_gets_every_message(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        members = await open_group(cluster)

        async def restart_redis() -> None:
            await asyncio.sleep(1.0)
            cluster.redis.process.kill()  # type: ignore[union-attr]
            cluster.redis.process.wait()  # type: ignore[union-attr]
            await asyncio.sleep(0.5)
            await asyncio.to_thread(cluster.redis.start)

        await asyncio.gather(load(members, count=20, rate=5), restart_redis())
        await asyncio.sleep(3.0)  # heartbeat checks and the relay
        await check_after_fault(cluster, members)
        for member in members:
            await member.close()


async def test_postgres_down_refuses_sends_at_once_and_acks_resume_when_back(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        members = await open_group(cluster)
        marks: dict[str, float] = {}
        rest: list[tuple[int, dict[str, object], float]] = []

        async def outage() -> None:
            await asyncio.sleep(1.5)
            marks["stopped"] = time.monotonic()
            await asyncio.to_thread(cluster.pg.stop)
            await asyncio.sleep(2.0)
            started = time.monotonic()
            async with httpx.AsyncClient(base_url=cluster.servers[1].url, timeout=10) as client:
                response = await client.post(
                    f"/conversations/{members[1].conversation_id}/messages",
                    json={"content": "during the outage", "client_id": "rest-1"},
                    headers=members[1].user.headers,
                )
            rest.append((response.status_code, response.json(), time.monotonic() - started))
            await asyncio.sleep(max(0.0, marks["stopped"] + 5.0 - time.monotonic()))
            await asyncio.to_thread(cluster.pg.start)
            marks["back"] = time.monotonic()

        await asyncio.gather(load(members, count=45, rate=5), outage())
        refusals = [r for m in members for r in m.refusals]
        assert refusals, "no send was refused while PostgreSQL was down"
        assert {code for _, code, _ in refusals} == {"store_unavailable"}, refusals
        assert max(seconds for _, _, seconds in refusals) <= 1.5, sorted(s for _, _, s in refusals)[-5:]
        assert (
            rest
            and rest[0][0] == 503
            and rest[0][1]
            == {
                "error": rest[0][1]["error"],
                "code": "store_unavailable",
                "store": "postgres",
            }
        )
        assert rest[0][2] <= 1.5
        first_ack_after = min(t + s for m in members for t, s in m.latencies if t + s >= marks["back"])
        assert first_ack_after - marks["back"] <= 1.0, first_ack_after - marks["back"]
        await check_after_fault(cluster, members)
        for server in cluster.servers:
            assert tracebacks(server) == 0, server.logs()[-3000:]
        for member in members:
            await member.close()


async def test_a_stalled_redis_costs_a_send_a_bounded_wait(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        members = await open_group(cluster)
        window: dict[str, float] = {}

        async def stall() -> None:
            await asyncio.sleep(1.5)
            pid = cluster.redis.process.pid  # type: ignore[union-attr]
            os.kill(pid, signal.SIGSTOP)
            window["from"] = time.monotonic()
            try:
                await asyncio.sleep(5.0)
            finally:
                os.kill(pid, signal.SIGCONT)
                window["to"] = time.monotonic()

        await asyncio.gather(load(members, count=40, rate=5), stall())
        during = sorted(s for m in members for t, s in m.latencies if window["from"] <= t <= window["to"])
        assert len(during) >= 20, len(during)
        p99 = during[min(len(during) - 1, int(len(during) * 0.99))]
        assert p99 <= 0.5, during[-5:]
        assert not [r for m in members for r in m.refusals], [r for m in members for r in m.refusals][:5]
        await asyncio.sleep(2.0)  # the relay publishes what the stall held back
        await check_after_fault(cluster, members)
        for member in members:
            await member.close()


async def test_sigterm_under_load_acks_in_flight_closes_1012_and_exits_0(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        members = await open_group(cluster)
        stopping = cluster.servers[0]
        exit_codes: list[int] = []

        async def terminate() -> None:
            await asyncio.sleep(1.5)
            started = time.monotonic()
            exit_codes.append(await asyncio.to_thread(stopping.stop, 15.0))
            exit_codes.append(int(time.monotonic() - started))

        await asyncio.gather(load(members, count=25, rate=5), terminate())
        assert exit_codes[0] == 0, stopping.logs()[-3000:]
        assert exit_codes[1] < 12  # within the grace period
        on_stopped = [m for m in members if m.home == 0]
        assert all(1012 in m.close_codes for m in on_stopped), [m.close_codes for m in on_stopped]
        assert not [r for m in members for r in m.refusals if r[1] not in ("lost", "server_restarting")]
        await check_after_fault(cluster, members)
        assert tracebacks(stopping) == 0, stopping.logs()[-3000:]
        for member in members:
            await member.close()


async def test_mongo_down_under_load_every_copy_arrives_within_30_s(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        members = await open_group(cluster)

        async def outage() -> None:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(cluster.ferret.stop)
            await asyncio.sleep(3.0)
            await asyncio.to_thread(cluster.ferret.start)

        await asyncio.gather(load(members, count=20, rate=5), outage())
        assert not [r for m in members for r in m.refusals], [r for m in members for r in m.refusals][:5]
        await check_after_fault(cluster, members)
        for member in members:
            await member.close()
