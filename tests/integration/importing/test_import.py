"""`nubo db import`: a generated community loads with the same counts in PostgreSQL; malformed rows are rejected
with their file and line; a failing load leaves nothing; the command's --dry-run, --json and --strict.

Runs on databases of its own (the imported rows would crowd the run's shared database).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import psycopg
import pytest

from nubo.importing import NO_PASSWORD, find_sources, import_community
from nubo.root import open_root
from nubo.settings import load_settings
from nubo.stores import Stores
from nubo.stores.bulk import table_counts
from nubo.stores.schema import init_databases
from tests.helpers.community import CommunitySize, write_community
from tests.helpers.databases import fresh_databases
from tests.helpers.harness import run_nubo

# The size (10k users, 200k follows, 100k posts) imports in 20-36 s on the shared 2-core machine (see
# docs/write-pipeline.md), under a minute: the test runs the full size, once. Rows are spread over 3 years,
# so few get Mongo copies.
LARGE = CommunitySize(users=10_000, follows=200_000, posts=100_000, comments=5_000, likes=10_000)
SMALL = CommunitySize(users=40, follows=120, posts=60, comments=30, likes=40)


@pytest.fixture(scope="module")
def import_env(process_env: dict[str, str], run_id: str) -> Iterator[dict[str, str]]:
    with fresh_databases(process_env, run_id) as env:
        yield env


@pytest.fixture(scope="module")
async def own(import_env: Mapping[str, str]) -> AsyncIterator[Stores]:
    root = await open_root(load_settings(import_env, env_file=None), wait_for_postgres=True)
    await init_databases(root.stores)
    yield root.stores
    await root.close()


def _lines(path: Path, rows: list[object]) -> None:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))


async def test_generated_community_loads_with_the_same_counts(own: Stores, tmp_path: Path) -> None:
    files = write_community(tmp_path, LARGE, seed=1, days=3 * 365)
    before = await table_counts(own)
    started = time.perf_counter()
    report = await import_community(own, find_sources([tmp_path]))
    seconds = time.perf_counter() - started
    after = await table_counts(own)
    expected = {"users": LARGE.users, "follows": LARGE.follows, "posts": LARGE.posts}
    expected |= {"comments": LARGE.comments, "likes": LARGE.likes}
    assert report.rejected == []
    assert report.loaded == expected
    assert {kind: after[kind] - before[kind] for kind in after} == expected
    assert set(files) == set(expected)
    # Only rows of the last 30 days are copied to Mongo.
    recent = await own.mongo["posts_recent"].count_documents({})
    assert 0 < recent == report.mongo_copies["posts"] < LARGE.posts // 10
    print(f"imported {LARGE.rows} rows in {seconds:.1f} s ({LARGE.rows / seconds:,.0f} rows/s)")


async def test_malformed_rows_are_rejected_with_their_lines(own: Stores, tmp_path: Path) -> None:
    write_community(tmp_path, SMALL, seed=2)
    users = (tmp_path / "users.jsonl").read_text().splitlines()
    first = json.loads(users[0])
    bad_user = {**json.loads(users[1]), "username": "no spaces allowed"}
    ghost = str(uuid.UUID(int=7))
    _lines(
        tmp_path / "users.jsonl",
        [
            *users[2:],
            first,  # line 39: fine (moved)
            "{not json",  # 40
            {**first, "id": str(uuid.UUID(int=1)), "email": "other@example.org"},  # 41: username repeats line 39
            {"username": "nameless", "email": "x@example.org"},  # 42: fields missing
            {**bad_user},  # 43: bad username (its id is known: rows that refer to it say so)
            {
                **bad_user,
                "id": str(uuid.UUID(int=2)),
                "username": "hashy",
                "email": "h@example.org",
                "password_hash": "plain",
            },
        ],
    )
    follows = (tmp_path / "follows.jsonl").read_text().splitlines()
    _lines(
        tmp_path / "follows.jsonl",
        [
            *follows,
            {"follower_id": first["id"], "followed_id": first["id"]},  # 121: oneself
            {"follower_id": first["id"], "followed_id": ghost},  # 122: unknown user
            {"follower_id": first["id"], "followed_id": bad_user["id"]},  # 123: a rejected user
            {"follower_id": first["id"], "followed_id": 42},  # 124: wrong type
        ],
    )
    before = await table_counts(own)
    report = await import_community(own, find_sources([tmp_path]))
    reasons = {r.where: r.reason for r in report.rejected}
    added = {f"users.jsonl:{n}" for n in range(40, 45)} | {f"follows.jsonl:{n}" for n in range(121, 125)}
    assert added <= set(reasons)
    # The generated rows rejected are those that refer to the rejected user (or to its rejected posts).
    others = [reason for where, reason in reasons.items() if where not in added]
    assert others and all(" was rejected (users.jsonl:43)" in r or " was rejected (posts.jsonl:" in r for r in others)
    assert "JSON" in reasons["users.jsonl:40"]
    assert "repeats users line 39" in reasons["users.jsonl:41"]
    assert "first_name" in reasons["users.jsonl:42"]
    assert "username" in reasons["users.jsonl:43"]
    assert "argon2" in reasons["users.jsonl:44"]
    assert "themselves" in reasons["follows.jsonl:121"]
    assert "not in the files nor in the database" in reasons["follows.jsonl:122"]
    assert "rejected (users.jsonl:43)" in reasons["follows.jsonl:123"]
    assert "$.followed_id" in reasons["follows.jsonl:124"]
    after = await table_counts(own)
    assert after["users"] - before["users"] == SMALL.users - 1  # the bad user's rows refer to nobody else
    assert after["follows"] - before["follows"] == report.loaded["follows"]
    # Without a password hash the account cannot log in until its password is reset.
    async with own.pg.connection() as conn:
        row = await (
            await conn.execute("SELECT password_hash FROM auth.users WHERE id = %s", (first["id"],))
        ).fetchone()
    assert row is not None and row["password_hash"] == NO_PASSWORD


async def test_a_failing_load_leaves_nothing(own: Stores, tmp_path: Path, import_env: Mapping[str, str]) -> None:
    write_community(tmp_path, SMALL, seed=3)
    before = await table_counts(own)
    with psycopg.connect(import_env["NUBO_POSTGRES_URL"], autocommit=True) as conn:
        # The last table refuses its rows: users, follows, posts and comments were already copied.
        conn.execute(
            "CREATE FUNCTION test_refuse_rows() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON content.likes FOR EACH ROW EXECUTE FUNCTION test_refuse_rows()"
        )
    try:
        with pytest.raises(psycopg.Error, match="refused by the test"):
            await import_community(own, find_sources([tmp_path]))
    finally:
        with psycopg.connect(import_env["NUBO_POSTGRES_URL"], autocommit=True) as conn:
            conn.execute("DROP TRIGGER refuse ON content.likes")
            conn.execute("DROP FUNCTION test_refuse_rows()")
    assert await table_counts(own) == before


def test_command_dry_run_json_and_strict(own: Stores, tmp_path: Path, import_env: Mapping[str, str]) -> None:
    write_community(tmp_path, SMALL, seed=4)
    posts = tmp_path / "posts.jsonl"
    posts.write_text(posts.read_text() + '{"user_id": "nope", "content": "x"}\n')
    dry = run_nubo(["db", "import", "--dry-run", "--json", str(tmp_path)], import_env)
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True
    assert report["loaded"]["users"] == SMALL.users
    assert [r["where"] for r in report["rejected"]] == [f"posts.jsonl:{SMALL.posts + 1}"]
    strict = run_nubo(["db", "import", "--strict", "--json", str(tmp_path)], import_env)
    assert strict.returncode == 4, strict.stderr
    loaded = run_nubo(["db", "import", str(tmp_path / "users.jsonl"), str(tmp_path / "posts.jsonl")], import_env)
    assert loaded.returncode == 0, loaded.stderr
    assert f"posts.jsonl:{SMALL.posts + 1}" in loaded.stdout
    again = run_nubo(["db", "import", "--json", str(tmp_path / "users.jsonl")], import_env)
    assert all("exists in the database" in r["reason"] for r in json.loads(again.stdout)["rejected"])
    missing = run_nubo(["db", "import", str(tmp_path / "nothing.jsonl")], import_env)
    assert missing.returncode == 2 and "no such file" in missing.stderr
