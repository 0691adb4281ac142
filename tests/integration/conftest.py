"""Fixtures of the integration tests: each test run gets its own PostgreSQL database, Mongo database and Redis
prefix (docs/architecture.md §8).

A service that cannot be reached makes the tests fail, never skip. These fixtures live here, not in the root
conftest, so that `tests/unit` cannot reach a service even by mistake.
"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient
from pymongo import MongoClient
from redis import Redis

from nubo.root import open_root
from nubo.server.app import create_app
from nubo.settings import Settings, load_settings
from nubo.stores import Stores
from tests.helpers.buckets import remove_bucket
from tests.helpers.harness import ROOT, DedicatedRedis, ServerProcess, new_run_id, service_env, with_database


@pytest.fixture
def own_redis() -> Iterator[DedicatedRedis]:
    """A Redis server of the test's own (on a free port), for tests that stop, freeze or flush it."""
    server = DedicatedRedis()
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)  # a test may have left it stopped
        server.stop()


@pytest.fixture(scope="session")
def run_id() -> str:
    return new_run_id()


@pytest.fixture(scope="session")
def settings_env(run_id: str) -> Iterator[dict[str, str]]:
    """Environment variables that point nubo at this run's own database, Mongo database and Redis prefix."""
    base = service_env()
    dbname = f"nubo_{run_id}"
    with psycopg.connect(base["NUBO_POSTGRES_URL"], autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    env = {
        "NUBO_POSTGRES_URL": with_database(base["NUBO_POSTGRES_URL"], dbname),
        "NUBO_MONGO_URL": base["NUBO_MONGO_URL"],
        "NUBO_MONGO_DB": dbname,
        "NUBO_REDIS_URL": base["NUBO_REDIS_URL"],
        "NUBO_REDIS_PREFIX": f"nubo_{run_id}:",
        "NUBO_ENV": "test",
        "JWT_SECRET": secrets.token_urlsafe(48),
        "NUBO_LOG_LEVEL": "info",
        # The S3 server of scripts/services, with a bucket of this run's own.
        "NUBO_S3_ENDPOINT": base["NUBO_S3_ENDPOINT"],
        "NUBO_S3_ACCESS_KEY": base["NUBO_S3_ACCESS_KEY"],
        "NUBO_S3_SECRET_KEY": base["NUBO_S3_SECRET_KEY"],
        "NUBO_S3_BUCKET": f"nubo-{run_id}",
        # The feed precompute would build documents of test users at moments no test chooses; its own tests
        # run it explicitly (tests/integration/test_precompute.py).
        "NUBO_PRECOMPUTE": "off",
    }
    yield env
    remove_bucket(load_settings(env, env_file=None))
    with psycopg.connect(base["NUBO_POSTGRES_URL"], autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    with MongoClient(base["NUBO_MONGO_URL"], serverSelectionTimeoutMS=5000) as client:
        client.drop_database(dbname)
    with Redis.from_url(base["NUBO_REDIS_URL"]) as redis:
        keys = list(redis.scan_iter(match=f"nubo_{run_id}:*", count=1000))
        for start in range(0, len(keys), 500):
            redis.unlink(*keys[start : start + 500])


@pytest.fixture(scope="session")
def process_env(settings_env: dict[str, str]) -> dict[str, str]:
    """A full environment for subprocesses (`nubo serve`, `nubo db ...`) of this run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUBO_")}
    env.update(settings_env)
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture(scope="session")
def settings(settings_env: dict[str, str]) -> Settings:
    return load_settings(settings_env, env_file=None)


@pytest.fixture(scope="session")
async def stores(settings: Settings) -> AsyncIterator[Stores]:
    root = await open_root(settings, wait_for_postgres=True)
    yield root.stores
    await root.close()


@pytest.fixture(scope="session")
def start_server(process_env: dict[str, str]) -> Iterator[Callable[..., ServerProcess]]:
    """Start real `nubo serve` processes; all are stopped (SIGTERM) at the end of the run."""
    started: list[ServerProcess] = []

    def start(
        env_overrides: dict[str, str] | None = None, *, wait_ready: bool = True, args: tuple[str, ...] = ()
    ) -> ServerProcess:
        server = ServerProcess(env={**process_env, **(env_overrides or {})})
        started.append(server)
        return server.start(wait_ready=wait_ready, args=args)

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
async def db(stores: Stores) -> Stores:
    """The run's stores with `nubo db init` applied (PostgreSQL tables, Mongo collections and indexes)."""
    from nubo.stores.schema import init_databases

    await init_databases(stores)
    return stores


@pytest.fixture(scope="module")
async def client(db: Stores, settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    """The real app in-process, one per test module (its lifespan opens its own connections to the run's
    stores)."""
    async with AsyncTestClient(create_app(settings)) as test_client:
        yield test_client
