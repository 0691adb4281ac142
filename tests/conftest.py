"""The report header: which PostgreSQL, Redis and MongoDB-protocol server the run uses.

The service fixtures live in `tests/integration/conftest.py`. A run of unit tests only (every path given is
under `tests/unit`) prints no header, so it never reaches, nor starts, a service.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from pymongo import MongoClient
from redis import Redis

from nubo.stores.mongo import server_from_build_info
from tests.helpers.harness import service_env

UNIT = Path(__file__).resolve().parent / "unit"


def unit_only(config: pytest.Config) -> bool:
    """True when every path of this run is under `tests/unit` (e.g. `pytest tests/unit/stores -k filter`)."""
    invoked_in = config.invocation_params.dir
    paths = [(invoked_in / arg.split("::")[0]).resolve() for arg in config.args]
    return bool(paths) and all(path == UNIT or UNIT in path.parents for path in paths)


def pytest_report_header(config: pytest.Config) -> list[str]:
    if unit_only(config):
        return []
    env = service_env()
    with MongoClient(env["NUBO_MONGO_URL"], serverSelectionTimeoutMS=5000) as client:
        mongo = server_from_build_info(client.admin.command("buildInfo"))
    with psycopg.connect(env["NUBO_POSTGRES_URL"], connect_timeout=5) as conn:
        pg_version = conn.execute("SHOW server_version").fetchone()
    with Redis.from_url(env["NUBO_REDIS_URL"], socket_timeout=5) as redis:
        redis_version = redis.info("server")["redis_version"]
    return [
        f"MongoDB-protocol server: {mongo} at {env['NUBO_MONGO_URL']}",
        f"PostgreSQL {pg_version[0] if pg_version else '?'}, Redis {redis_version}",
    ]
