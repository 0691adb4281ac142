"""`nubo db init`: seed tables, Mongo collections and indexes exist, a second run does nothing, drift shows.

Each test that needs a *fresh* database gets its own PostgreSQL database and Mongo database (the run's shared
ones may already have been initialised by the `db` fixture of other tests), created and dropped here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pymongo import MongoClient

from nubo.stores.mongo import MongoServer, server_from_build_info
from nubo.stores.schema import IndexSpec, init_databases
from tests.helpers.databases import fresh_databases
from tests.helpers.harness import ROOT, free_port, run_nubo

SQL_DIR = ROOT / "sql"

# The seed's tables (notes §IX.2-3) with the seed's columns, in the schemas the notes propose (§IX.4).
# Documented renames/fixes (see the sql/ file headers): sessions.refresh_token -> refresh_token_hash,
# follows gets its missing follower_id, media/conversations_meta get the summary's columns, no users.salt.
SEED_COLUMNS: dict[str, set[str]] = {
    "auth.users": {
        "id",
        "username",
        "email",
        "email_verified",
        "phone",
        "phone_verified",
        "password_hash",
        "first_name",
        "last_name",
        "birthdate",
        "sex",
        "bio",
        "profile_picture_id",
        "grade",
        "location",
        "school",
        "works",
        "badges",
        "state",
        "created_at",
        "updated_at",
    },
    "auth.user_settings": {"id", "user_id", "privacy", "notifications", "language", "theme"},
    "auth.sessions": {
        "id",
        "user_id",
        "refresh_token_hash",
        "device_info",
        "ip",
        "created_at",
        "expires_at",
        "revoked",
    },
    "auth.follows": {"id", "follower_id", "followed_id", "state", "created_at"},
    "auth.blocks": {"id", "blocker_id", "blocked_id", "created_at"},
    "content.posts": {
        "id",
        "user_id",
        "content",
        "media_ids",
        "meta",
        "visibility",
        "location",
        "created_at",
        "updated_at",
    },
    "content.comments": {"id", "post_id", "user_id", "content", "created_at"},
    "content.likes": {"id", "target_type", "target_id", "user_id", "created_at"},
    "content.media": {
        "id",
        "owner_id",
        "storage_path",
        "mime",
        "size",
        "width",
        "height",
        "processing_state",
        "created_at",
    },
    "messaging.conversations_meta": {
        "id",
        "type",
        "title",
        "last_message_id",
        "last_message_text",
        "last_message_time",
        "state",
        "created_at",
    },
    "messaging.conversation_members": {"id", "conversation_id", "user_id", "role", "joined_at", "unread_count"},
    "messaging.message_index": {
        "id",
        "conversation_id",
        "sender_id",
        "message_type",
        "content",
        "attachments",
        "created_at",
    },
    "moderation.reports": {"id", "actor_id", "target_type", "target_id", "reason", "state", "created_at"},
    # The seed names admin_actions and audit_logs without DDL: who did what to what, and when.
    "moderation.admin_actions": {"id", "admin_id", "action", "target_type", "target_id", "created_at"},
    "moderation.audit_logs": {"id", "actor_id", "action", "entity", "entity_id", "created_at"},
}

# Seed constraints and indexes that must exist (notes §IX.3), as (table, columns) of a unique or plain index.
SEED_UNIQUE = [
    ("auth.user_settings", ["user_id"]),
    ("auth.follows", ["follower_id", "followed_id"]),
    ("content.likes", ["target_type", "target_id", "user_id"]),
    ("messaging.conversation_members", ["conversation_id", "user_id"]),
    ("messaging.conversations_meta", ["last_message_id"]),
    ("auth.users", ["phone"]),
]
SEED_INDEXES = [
    ("auth.sessions", ["user_id", "revoked"]),
    ("auth.follows", ["followed_id"]),
    ("content.posts", ["user_id", "created_at"]),
    ("content.comments", ["post_id", "created_at"]),
    ("content.likes", ["target_type", "target_id"]),
    ("content.media", ["owner_id"]),
    ("content.media", ["created_at"]),
    ("messaging.message_index", ["conversation_id", "created_at"]),
    ("moderation.reports", ["actor_id"]),
    ("moderation.reports", ["created_at"]),
]

# Mongo `nubo_recent` (notes §IX.5) + notifications: the unique indexes the seed script creates.
# relations_recent uses the PostgreSQL follows column names (primary/secondary -> follower/followed).
SEED_MONGO_UNIQUE: dict[str, list[list[tuple[str, int]]]] = {
    "users_recent": [[("username", 1)], [("email", 1)]],
    "user_settings_recent": [[("user_id", 1)]],
    "sessions_recent": [],
    "relations_recent": [[("followed_id", 1), ("follower_id", 1)]],
    "posts_recent": [],
    "comments_recent": [],
    "likes_recent": [[("target_type", 1), ("target_id", 1), ("user_id", 1)]],
    "media_recent": [],
    "conversations_recent": [],
    "conversation_members_recent": [[("conversation_id", 1), ("user_id", 1)]],
    "messages_recent": [],
    "feed_cache": [],
    "notifications": [],
}


# ----------------------------------------------------------------------------------------------- helpers


def init_json(env: Mapping[str, str], expect_code: int = 0) -> dict[str, Any]:
    result = run_nubo(["db", "init", "--json"], env)
    assert result.returncode == expect_code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    report: dict[str, Any] = json.loads(result.stdout)  # --json output is valid JSON, nothing else on stdout
    return report


def pg_columns(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """table -> column -> data type, from information_schema."""
    with psycopg.connect(env["NUBO_POSTGRES_URL"], connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns"
        ).fetchall()
    tables: dict[str, dict[str, str]] = {}
    for schema, table, column, data_type in rows:
        tables.setdefault(f"{schema}.{table}", {})[column] = data_type
    return tables


def pg_indexes(env: Mapping[str, str]) -> list[tuple[str, bool, list[str]]]:
    """(table, unique, columns in order) for every index of the database."""
    sql = """
        SELECT n.nspname || '.' || t.relname, ix.indisunique,
               array_agg(a.attname ORDER BY k.ord)
        FROM pg_index ix
        JOIN pg_class t ON t.oid = ix.indrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace
        CROSS JOIN LATERAL unnest(ix.indkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
        GROUP BY ix.indexrelid, n.nspname, t.relname, ix.indisunique"""
    with psycopg.connect(env["NUBO_POSTGRES_URL"], connect_timeout=5) as conn:
        return [(table, unique, list(cols)) for table, unique, cols in conn.execute(sql).fetchall()]


def mongo_indexes(env: Mapping[str, str]) -> tuple[MongoServer, dict[str, dict[str, IndexSpec]]]:
    with MongoClient(env["NUBO_MONGO_URL"], serverSelectionTimeoutMS=5000) as client:
        db = client[env["NUBO_MONGO_DB"]]
        server = server_from_build_info(db.command("buildInfo"))
        found = {
            name: {ix["name"]: IndexSpec.from_server(ix) for ix in db[name].list_indexes()}
            for name in db.list_collection_names()
        }
    return server, found


def collections_spec() -> dict[str, list[dict[str, Any]]]:
    spec = json.loads((ROOT / "mongo" / "collections.json").read_text())
    return {c["name"]: c["indexes"] for c in spec["collections"]}


# ------------------------------------------------------------------------------------------ init twice


@pytest.fixture(scope="module")
def twice(process_env: dict[str, str], run_id: str) -> Iterator[tuple[dict[str, str], dict[str, Any], dict[str, Any]]]:
    """`nubo db init --json` run twice on fresh databases: (env, first report, second report)."""
    with fresh_databases(process_env, run_id) as env:
        first = init_json(env)
        second = init_json(env)
        yield env, first, second


def test_first_run_applies_every_sql_file_and_creates_every_collection(twice: Any) -> None:
    _, first, _ = twice
    files = sorted(p.name for p in SQL_DIR.glob("*.sql"))
    assert first["postgres"]["applied"] == files
    assert first["nothing_to_do"] is False and first["ok"] is True
    assert set(first["mongo"]["created_collections"]) == set(collections_spec())
    assert set(SEED_COLUMNS) <= set(first["postgres"]["created_tables"])


def test_second_run_reports_nothing_to_do(twice: Any) -> None:
    env, _, second = twice
    assert second["nothing_to_do"] is True, second
    assert second["ok"] is True and second["problems"] == []
    assert second["postgres"]["applied"] == [] and second["postgres"]["changed"] == []
    assert second["postgres"]["skipped"] == sorted(p.name for p in SQL_DIR.glob("*.sql"))
    assert second["postgres"]["created_tables"] == [] and second["postgres"]["created_indexes"] == []
    assert second["mongo"]["created_collections"] == [] and second["mongo"]["created_indexes"] == []
    # The human output says so too.
    result = run_nubo(["db", "init"], env)
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout


@pytest.mark.parametrize("table", sorted(SEED_COLUMNS))
def test_seed_table_exists_with_seed_columns(twice: Any, table: str) -> None:
    columns = pg_columns(twice[0])
    assert table in columns, f"{table} missing"
    missing = SEED_COLUMNS[table] - set(columns[table])
    assert not missing, f"{table} lacks seed columns {sorted(missing)}"
    assert columns[table]["id"] == "uuid"  # UUIDv7 from the app (docs/architecture.md §1)
    # The seed: "Datetime en timestamptz".
    stamps = {c: t for c, t in columns[table].items() if c.endswith("_at")}
    assert stamps and set(stamps.values()) == {"timestamp with time zone"}, stamps


def test_seed_constraints_and_indexes_exist(twice: Any) -> None:
    indexes = pg_indexes(twice[0])
    for table, cols in SEED_UNIQUE:
        assert (table, True, cols) in indexes, f"unique ({', '.join(cols)}) missing on {table}"
    for table, cols in SEED_INDEXES:
        found = any(t == table and c == cols for t, _, c in indexes)
        assert found, f"index ({', '.join(cols)}) missing on {table}"
    # Case-insensitive uniqueness of usernames and emails (expression indexes on lower()).
    with psycopg.connect(twice[0]["NUBO_POSTGRES_URL"]) as conn:
        defs = [
            row[0]
            for row in conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = 'auth' AND tablename = 'users'"
            ).fetchall()
        ]
    for column in ("username", "email"):
        assert any("UNIQUE" in d and f"lower({column})" in d for d in defs), defs


def test_migrations_are_recorded_with_checksums(twice: Any) -> None:
    with psycopg.connect(twice[0]["NUBO_POSTGRES_URL"]) as conn:
        rows = dict(conn.execute("SELECT filename, checksum FROM public.nubo_migrations").fetchall())
    assert rows == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in SQL_DIR.glob("*.sql")}


def test_every_mongo_collection_and_index_exists(twice: Any, record_property: Any) -> None:
    env, first, _ = twice
    server, found = mongo_indexes(env)
    record_property("mongo_server", str(server))
    assert first["mongo"]["server"] == str(server)
    assert set(SEED_MONGO_UNIQUE) <= set(found), f"missing collections on {server}"
    for collection, indexes in collections_spec().items():
        existing = found[collection]
        for wanted in map(IndexSpec.from_spec, indexes):
            assert wanted.name in existing, f"{collection}.{wanted.name} missing on {server}"
            assert existing[wanted.name].keys == wanted.keys, f"{collection}.{wanted.name} keys"
            assert existing[wanted.name].unique == wanted.unique, f"{collection}.{wanted.name} unique flag"
    for collection, uniques in SEED_MONGO_UNIQUE.items():
        unique_keys = [ix.keys for ix in found[collection].values() if ix.unique]
        for keys in uniques:
            assert keys in unique_keys, f"{collection}: no unique index on {keys} ({server})"


def test_last_use_index_is_ttl_where_supported_else_warned(twice: Any, settings: Any) -> None:
    env, first, second = twice
    server, found = mongo_indexes(env)
    for collection in collections_spec():
        last_use = found[collection].get("last_use")
        assert last_use is not None, f"{collection}.last_use missing on {server}"
        assert last_use.keys == [("last_use", 1)]
        expected = settings.retention_days * 86400 if server.supports_ttl else None
        assert last_use.expire_after_seconds == expected, f"{collection}.last_use TTL on {server}"
    for report in (first, second):
        assert report["mongo"]["ttl"] is server.supports_ttl
        warnings = report["mongo"]["warnings"]
        if server.supports_ttl:
            assert warnings == []
        else:  # exactly one clear warning, naming the server and the cron purge
            assert len(warnings) == 1 and "nubo db purge" in warnings[0] and "cron" in warnings[0]
            assert str(server) in warnings[0]


def test_human_output_lists_what_was_created(process_env: dict[str, str], run_id: str) -> None:
    with fresh_databases(process_env, run_id) as env:
        result = run_nubo(["db", "init"], {**env, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    for text in ("010_auth.sql", "applied", "auth", "users", "message_index", "users_recent", "created"):
        assert text in result.stdout
    assert "nothing to do" not in result.stdout


def test_run_databases_init_is_idempotent(process_env: dict[str, str]) -> None:
    """On the run's own databases (maybe initialised already by the `db` fixture): a second run is a no-op."""
    init_json(process_env)
    assert init_json(process_env)["nothing_to_do"] is True


# ------------------------------------------------------------------------------------------------ drift


@pytest.fixture
def sql_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "sql"
    shutil.copytree(SQL_DIR, copy)
    return copy


def test_changed_applied_file_is_reported_not_rerun(process_env: dict[str, str], run_id: str, sql_copy: Path) -> None:
    with fresh_databases(process_env, run_id) as env:
        env = {**env, "NUBO_SQL_DIR": str(sql_copy)}
        init_json(env)
        # Edit an applied file (against the rules) and add a new one.
        with (sql_copy / "050_logic.sql").open("a") as f:
            f.write("\nCREATE TABLE public.drift_probe (id int);\n")
        (sql_copy / "070_extra.sql").write_text("CREATE TABLE public.extra_probe (id int);\n")
        report = init_json(env, expect_code=3)
        assert report["ok"] is False
        assert [c["filename"] for c in report["postgres"]["changed"]] == ["050_logic.sql"]
        assert any("050_logic.sql" in p and "not re-run" in p for p in report["problems"])
        assert report["postgres"]["applied"] == ["070_extra.sql"]  # new files still apply
        with psycopg.connect(env["NUBO_POSTGRES_URL"]) as conn:
            assert conn.execute("SELECT to_regclass('public.drift_probe')").fetchone() == (None,)
            assert conn.execute("SELECT to_regclass('public.extra_probe')").fetchone() != (None,)
        # The human output names the file on stderr; the exit code stays non-zero on every run.
        result = run_nubo(["db", "init"], env)
        assert result.returncode == 3
        assert "050_logic.sql" in result.stderr and "nothing to do" not in result.stdout


def test_failing_sql_file_is_rolled_back_and_not_recorded(
    process_env: dict[str, str], run_id: str, sql_copy: Path
) -> None:
    (sql_copy / "070_bad.sql").write_text("CREATE TABLE public.bad_probe (id int);\nSELECT no_such_column;\n")
    with fresh_databases(process_env, run_id) as env:
        env = {**env, "NUBO_SQL_DIR": str(sql_copy)}
        result = run_nubo(["db", "init"], env)
        assert result.returncode == 1
        assert "070_bad.sql" in result.stderr and "no_such_column" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        with psycopg.connect(env["NUBO_POSTGRES_URL"]) as conn:
            assert conn.execute("SELECT to_regclass('public.bad_probe')").fetchone() == (None,)
            recorded = {r[0] for r in conn.execute("SELECT filename FROM public.nubo_migrations").fetchall()}
        assert "070_bad.sql" not in recorded and "060_views.sql" in recorded


def test_conflicting_mongo_index_is_reported_not_dropped(process_env: dict[str, str], run_id: str) -> None:
    with fresh_databases(process_env, run_id) as env:
        init_json(env)
        with MongoClient(env["NUBO_MONGO_URL"]) as client:
            users = client[env["NUBO_MONGO_DB"]]["users_recent"]
            users.drop_index("email_unique")
            users.create_index([("email", 1), ("username", 1)], name="email_unique")  # same name, other keys
        report = init_json(env, expect_code=3)
        assert any("users_recent" in p and "email_unique" in p for p in report["mongo"]["conflicts"])
        _, found = mongo_indexes(env)
        assert found["users_recent"]["email_unique"].keys == [("email", 1), ("username", 1)]  # untouched


def test_concurrent_inits_do_not_race(process_env: dict[str, str], run_id: str) -> None:
    """Two `nubo db init` at once (two api containers starting): both succeed, each file is applied once."""
    with fresh_databases(process_env, run_id) as env:
        cmd = [sys.executable, "-m", "nubo", "db", "init", "--json"]
        procs = [
            subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=120) for p in procs]
        for proc, (_, err) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, err
        reports = [json.loads(out) for out, _ in outputs]
        applied = sorted(f for r in reports for f in r["postgres"]["applied"])
        assert applied == sorted(p.name for p in SQL_DIR.glob("*.sql"))
        created = sorted(c for r in reports for c in r["mongo"]["created_collections"])
        assert created == sorted(collections_spec())


# ------------------------------------------------------------------------------------- unreachable / pure


def test_unreachable_postgres_fails_fast_naming_it(process_env: dict[str, str]) -> None:
    env = {**process_env, "NUBO_POSTGRES_URL": f"postgresql://nubo:secret@127.0.0.1:{free_port()}/nubo"}
    started = time.monotonic()
    result = run_nubo(["db", "init"], env)
    assert time.monotonic() - started < 15
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PostgreSQL" in lines[0] and "secret" not in lines[0], result.stderr


def test_unreachable_mongo_fails_fast_naming_it(process_env: dict[str, str]) -> None:
    env = {**process_env, "NUBO_MONGO_URL": f"mongodb://127.0.0.1:{free_port()}/"}
    started = time.monotonic()
    result = run_nubo(["db", "init", "--json"], env)
    assert time.monotonic() - started < 15
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "MongoDB" in lines[0], result.stderr


async def test_db_fixture_applies_the_schema_in_process(db: Any) -> None:
    """The conftest `db` fixture calls `init_databases` directly: the run's databases are ready to use."""
    async with db.pg.connection() as conn:
        row = await (await conn.execute("SELECT to_regclass('auth.users') IS NOT NULL AS ok")).fetchone()
    assert row["ok"] is True
    assert "users_recent" in await db.mongo.list_collection_names()
    report = await init_databases(db)  # and again, in process: nothing to do
    assert report.nothing_to_do and not report.problems
