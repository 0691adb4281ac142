"""Faults under load on two instances, each test with its own PostgreSQL, Redis and FerretDB processes
(tests/helpers/reliability.py): what the members received and what the stores hold afterwards."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.helpers.reliability import check_after_fault, load, open_cluster, open_group


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
