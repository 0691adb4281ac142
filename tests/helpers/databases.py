"""Databases of a test's own: a fresh, empty PostgreSQL database and Mongo database beside the run's shared
ones (which the `db` fixture may already have initialised), for the `nubo db init|purge` tests."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from uuid import uuid4

import psycopg
from pymongo import MongoClient

from tests.helpers.harness import service_env, with_database


@contextmanager
def fresh_databases(process_env: Mapping[str, str], run_id: str) -> Iterator[dict[str, str]]:
    """A new, empty PostgreSQL database and Mongo database; yields the subprocess env pointing at them."""
    base = service_env()
    name = f"nubo_{run_id}_{uuid4().hex[:6]}"
    with psycopg.connect(base["NUBO_POSTGRES_URL"], autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {
            **process_env,
            "NUBO_POSTGRES_URL": with_database(base["NUBO_POSTGRES_URL"], name),
            "NUBO_MONGO_DB": name,
        }
    finally:
        with psycopg.connect(base["NUBO_POSTGRES_URL"], autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        with MongoClient(base["NUBO_MONGO_URL"], serverSelectionTimeoutMS=5000) as client:
            client.drop_database(name)
