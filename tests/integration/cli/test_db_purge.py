"""`nubo db purge`: deletes exactly the Mongo documents whose `last_use` is older than the retention.

Runs on its own fresh Mongo database (purge visits every collection, so other tests' documents in the run's
shared database would make exact counts unreliable). The tests of this module share that database and run in
file order: dry-run and --days first (nothing deleted), then the real purge, then checks on what is left.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from pymongo import MongoClient
from pymongo.database import Database

from nubo.root import open_root
from nubo.settings import load_settings
from nubo.stores.mongo import server_from_build_info
from nubo.stores.schema import purge_recent
from tests.helpers.databases import fresh_databases
from tests.helpers.harness import free_port, run_nubo

# A few collections of the spec, plus one created by nobody's spec: purge must visit every collection.
SEEDED = ("posts_recent", "messages_recent", "notifications", "custom_recent")
OLD_PER_COLLECTION = 2  # last_use 31 days ago
RECENT_PER_COLLECTION = 3  # last_use 29 days ago


def purge(env: Mapping[str, str], *args: str) -> dict[str, Any]:
    result = run_nubo(["db", "purge", "--json", *args], env)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def ages(db: Database[dict[str, Any]]) -> dict[str, list[int]]:
    """collection -> sorted ages in days (rounded) of its documents; -1 for a document without last_use."""
    now = datetime.now(UTC)
    found: dict[str, list[int]] = {}
    for name in SEEDED:
        found[name] = sorted(
            -1 if "last_use" not in d else round((now - d["last_use"]).total_seconds() / 86400) for d in db[name].find()
        )
    return found


@pytest.fixture(scope="module")
def seeded(process_env: dict[str, str], run_id: str) -> Iterator[tuple[dict[str, str], Database[Any]]]:
    """Fresh databases with `nubo db init` applied and documents 31 and 29 days old in a few collections."""
    with fresh_databases(process_env, run_id) as env:
        assert run_nubo(["db", "init"], env).returncode == 0
        with MongoClient(env["NUBO_MONGO_URL"], tz_aware=True, uuidRepresentation="standard") as client:
            db = client[env["NUBO_MONGO_DB"]]
            now = datetime.now(UTC)
            for name in SEEDED:
                counts = ((31, OLD_PER_COLLECTION), (29, RECENT_PER_COLLECTION))
                docs = [{"_id": uuid4(), "last_use": now - timedelta(days=age)} for age, n in counts for _ in range(n)]
                docs.append({"_id": uuid4(), "note": "no last_use: never purged"})
                db[name].insert_many(docs)
            yield env, db


@pytest.fixture
def mongo_server(seeded: Any, record_property: Any) -> str:
    """The MongoDB-protocol server these tests ran on, for the JUnit report and the failure messages."""
    server = str(server_from_build_info(seeded[1].command("buildInfo")))
    record_property("mongo_server", server)
    return server


def test_dry_run_counts_and_deletes_nothing(seeded: Any, mongo_server: str) -> None:
    env, db = seeded
    before = ages(db)
    report = purge(env, "--dry-run")
    assert report["dry_run"] is True and report["days"] == 30
    for name in SEEDED:
        assert report["counts"][name] == OLD_PER_COLLECTION, (name, mongo_server)
    assert report["total"] == OLD_PER_COLLECTION * len(SEEDED)
    assert ages(db) == before, f"--dry-run deleted documents on {mongo_server}"


def test_days_option_is_respected(seeded: Any, mongo_server: str) -> None:
    env, db = seeded
    before = ages(db)
    report = purge(env, "--days", "32")  # the 31-day-old documents are younger than 32 days
    assert report["days"] == 32 and report["total"] == 0, mongo_server
    assert ages(db) == before
    dry = purge(env, "--days", "28", "--dry-run")  # 31- and 29-day-old documents are both older than 28 days
    assert dry["total"] == (OLD_PER_COLLECTION + RECENT_PER_COLLECTION) * len(SEEDED)


def test_purge_deletes_exactly_the_old_documents(seeded: Any, mongo_server: str) -> None:
    env, db = seeded
    report = purge(env)
    assert report["dry_run"] is False
    assert {name: report["counts"][name] for name in SEEDED} == dict.fromkeys(SEEDED, OLD_PER_COLLECTION)
    assert report["total"] == OLD_PER_COLLECTION * len(SEEDED), mongo_server
    assert report["media"] == {"pending": 0, "unattached": 0, "objects": 0}  # the media part ran too
    # What is left: the 29-day-old documents and the one without last_use, in every seeded collection.
    assert ages(db) == {name: [-1] + [29] * RECENT_PER_COLLECTION for name in SEEDED}, mongo_server
    # A second purge finds nothing; the human output (what cron mails) is one short summary.
    result = run_nubo(["db", "purge"], env)
    assert result.returncode == 0 and result.stderr == ""
    assert "deleted 0 document(s)" in " ".join(result.stdout.split())


def test_retention_setting_is_the_default(seeded: Any) -> None:
    env, _ = seeded
    report = purge({**env, "NUBO_RETENTION_DAYS": "28"}, "--dry-run")
    assert report["days"] == 28 and report["total"] == RECENT_PER_COLLECTION * len(SEEDED)


async def test_purge_recent_reports_progress(seeded: Any) -> None:
    env, _ = seeded
    stores = (await open_root(load_settings(env, env_file=None), wait_for_postgres=True)).stores
    try:
        seen: list[tuple[str, int, int]] = []
        counts = await purge_recent(stores, 28, dry_run=True, on_progress=lambda *a: seen.append(a))
    finally:
        await stores.close()
    assert [name for name, _, _ in seen] == sorted(counts) and set(SEEDED) <= set(counts)
    assert all(total == len(counts) for _, _, total in seen)
    assert counts["posts_recent"] == RECENT_PER_COLLECTION


def test_bad_days_is_a_usage_error(seeded: Any) -> None:
    result = run_nubo(["db", "purge", "--days", "0"], seeded[0])
    assert result.returncode == 2 and "--days" in result.stderr


def test_unreachable_mongo_exits_1_fast(process_env: dict[str, str]) -> None:
    env = {**process_env, "NUBO_MONGO_URL": f"mongodb://127.0.0.1:{free_port()}/"}
    started = time.monotonic()
    result = run_nubo(["db", "purge", "--json"], env)
    assert time.monotonic() - started < 15
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "MongoDB" in lines[0], result.stderr
