"""`nubo db init` and `nubo db purge` as library code: apply `sql/` and `mongo/`, purge old Mongo documents.

PostgreSQL: the files of `sql/` are applied in filename order, each in its own transaction, and recorded in
`public.nubo_migrations` with their SHA-256. An applied file that changed since is reported, never re-run.
A session advisory lock serialises concurrent inits (two api containers starting at once).

MongoDB: every collection of `mongo/collections.json` with its indexes, plus a `last_use` index on each: a TTL
index where the server deletes expired documents (MongoDB), else a plain one and a warning that
`nubo db purge` must run from cron (FerretDB v1 rejects `expireAfterSeconds` with NotImplemented).
Existing indexes are compared, never dropped: a same-named index with other keys/options is a conflict.

Nothing here prints; the CLI renders the returned reports.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import CollectionInvalid, OperationFailure

import nubo
from nubo.logs import get_logger
from nubo.stores import Stores
from nubo.stores.mongo import MongoDoc, MongoServer, server_info

log = get_logger(__name__)

SQL_DIR_VAR = "NUBO_SQL_DIR"
MONGO_DIR_VAR = "NUBO_MONGO_DIR"
MIGRATIONS_TABLE = "public.nubo_migrations"
LAST_USE_INDEX = "last_use"
# Arbitrary but fixed: "nubo" + "db" + 1. Every `nubo db init` of any version must use the same key.
_ADVISORY_LOCK_KEY = 0x6E75626F_64620001
_NOT_IMPLEMENTED = 238  # MongoDB error code FerretDB returns for unsupported index options
_NAMESPACE_EXISTS = 48
_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")


class SchemaError(RuntimeError):
    """`nubo db init` cannot proceed: a missing directory, a bad spec file, or an SQL file that fails."""


# ----------------------------------------------------------------------------------------------- locations


def _locate(variable: str, name: str) -> Path:
    """`$variable` if set, else `<repo>/<name>` (editable install), else `./<name>` (a Docker WORKDIR)."""
    if raw := os.environ.get(variable):
        path = Path(raw)
        if not path.is_dir():
            raise SchemaError(f"{variable}={raw} is not a directory")
        return path
    candidates = [Path(nubo.__file__).resolve().parent.parent / name, Path.cwd() / name]
    for path in candidates:
        if path.is_dir():
            return path
    raise SchemaError(
        f"cannot find the {name}/ directory (looked in {', '.join(map(str, candidates))}); set {variable}"
    )


def sql_dir() -> Path:
    """Where the `NNN_*.sql` files live (`NUBO_SQL_DIR` overrides)."""
    return _locate(SQL_DIR_VAR, "sql")


def mongo_dir() -> Path:
    """Where `collections.json` lives (`NUBO_MONGO_DIR` overrides)."""
    return _locate(MONGO_DIR_VAR, "mongo")


# ------------------------------------------------------------------------------------------------- reports


@dataclass
class ChangedFile:
    """An applied SQL file whose content no longer matches what was applied."""

    filename: str
    applied_checksum: str
    current_checksum: str
    applied_at: str


@dataclass
class PostgresReport:
    """What `init_postgres` did and what now exists, per schema."""

    sql_dir: str
    applied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    changed: list[ChangedFile] = field(default_factory=list)
    created_tables: list[str] = field(default_factory=list)
    created_indexes: list[str] = field(default_factory=list)
    # schema -> {"tables": [...], "views": [...], "indexes": [...]}
    schemas: dict[str, dict[str, list[str]]] = field(default_factory=dict)


@dataclass
class IndexSpec:
    """One Mongo index, comparable with what `list_indexes` returns."""

    name: str
    keys: list[tuple[str, int]]
    unique: bool = False
    expire_after_seconds: int | None = None

    @classmethod
    def from_spec(cls, raw: dict[str, Any]) -> IndexSpec:
        return cls(
            name=str(raw["name"]),
            keys=[(str(k), int(d)) for k, d in raw["keys"]],
            unique=bool(raw.get("unique", False)),
        )

    @classmethod
    def from_server(cls, raw: Mapping[str, Any]) -> IndexSpec:
        expire = raw.get("expireAfterSeconds")
        return cls(
            name=str(raw["name"]),
            keys=[(str(k), int(d)) for k, d in raw["key"].items()],
            unique=bool(raw.get("unique", False)),
            expire_after_seconds=None if expire is None else int(expire),
        )

    def describe(self) -> str:
        keys = ", ".join(f"{k}: {d}" for k, d in self.keys)
        options = ", unique" if self.unique else ""
        if self.expire_after_seconds is not None:
            options += f", expireAfterSeconds: {self.expire_after_seconds}"
        return f"{{{keys}}}{options}"


@dataclass
class MongoReport:
    """What `init_mongo` did: created collections/indexes, conflicts, warnings, and what now exists."""

    database: str
    server: str
    ttl: bool
    created_collections: list[str] = field(default_factory=list)
    created_indexes: list[str] = field(default_factory=list)  # "collection.index"
    conflicts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # collection -> its index names as they exist now
    collections: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class InitReport:
    """The result of `nubo db init`."""

    postgres: PostgresReport
    mongo: MongoReport

    @property
    def nothing_to_do(self) -> bool:
        return not (self.postgres.applied or self.mongo.created_collections or self.mongo.created_indexes)

    @property
    def problems(self) -> list[str]:
        """Drift that needs a human: changed SQL files and conflicting indexes."""
        changed = [
            f"sql/{c.filename} changed since it was applied on {c.applied_at} "
            f"(checksum {c.applied_checksum[:12]} -> {c.current_checksum[:12]}); it was not re-run: "
            "restore it and put the change in a new file"
            for c in self.postgres.changed
        ]
        return changed + self.mongo.conflicts

    def as_dict(self) -> dict[str, Any]:
        return {
            "nothing_to_do": self.nothing_to_do,
            "ok": not self.problems,
            "problems": self.problems,
            "postgres": asdict(self.postgres),
            "mongo": asdict(self.mongo),
        }


# ---------------------------------------------------------------------------------------------- PostgreSQL


def sql_files(directory: Path) -> list[tuple[str, str, str]]:
    """`(filename, sql, sha256)` of every `*.sql` file, in filename order."""
    files = []
    for path in sorted(directory.glob("*.sql"), key=lambda p: p.name):
        data = path.read_bytes()
        try:
            files.append((path.name, data.decode("utf-8"), hashlib.sha256(data).hexdigest()))
        except UnicodeDecodeError as exc:
            raise SchemaError(f"{path} is not UTF-8 text: {exc}") from exc
    return files


async def _snapshot(conn: psycopg.AsyncConnection[DictRow]) -> dict[str, dict[str, list[str]]]:
    """Tables, views and indexes of every non-system schema."""
    schemas: dict[str, dict[str, list[str]]] = {}

    def add(schema: str, kind: str, name: str) -> None:
        schemas.setdefault(schema, {"tables": [], "views": [], "indexes": []})[kind].append(name)

    system = [list(_SYSTEM_SCHEMAS)]
    tables = await conn.execute(
        "SELECT table_schema AS schema, table_name AS name, table_type AS type FROM information_schema.tables"
        " WHERE table_schema <> ALL(%s) AND table_schema NOT LIKE 'pg\\_%%' ORDER BY 1, 2",
        system,
    )
    for row in await tables.fetchall():
        add(row["schema"], "views" if row["type"] == "VIEW" else "tables", row["name"])
    indexes = await conn.execute(
        "SELECT schemaname AS schema, indexname AS name FROM pg_indexes"
        " WHERE schemaname <> ALL(%s) AND schemaname NOT LIKE 'pg\\_%%' ORDER BY 1, 2",
        system,
    )
    for row in await indexes.fetchall():
        add(row["schema"], "indexes", row["name"])
    return schemas


def _qualified(snapshot: dict[str, dict[str, list[str]]], kind: str) -> set[str]:
    return {f"{schema}.{name}" for schema, objects in snapshot.items() for name in objects[kind]}


async def _applied(conn: psycopg.AsyncConnection[DictRow]) -> dict[str, dict[str, Any]]:
    await conn.execute(
        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (filename TEXT PRIMARY KEY, checksum TEXT NOT NULL, "
        "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    cursor = await conn.execute(f"SELECT filename, checksum, applied_at FROM {MIGRATIONS_TABLE}")
    rows = await cursor.fetchall()
    return {row["filename"]: row for row in rows}


async def _apply_file(conn: psycopg.AsyncConnection[DictRow], filename: str, sql: str, checksum: str) -> None:
    """Run one file and record it in the same transaction: either both happen or neither."""
    try:
        async with conn.transaction():
            # No parameters: psycopg sends the file as one simple query, so it may hold many statements.
            await conn.execute(sql.encode(), prepare=False)
            await conn.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (filename, checksum) VALUES (%s, %s)", [filename, checksum]
            )
    except psycopg.errors.Error as exc:
        if isinstance(exc, psycopg.OperationalError) and conn.closed:
            raise  # the server went away: an unreachable store, not a bad file
        reason = exc.diag.message_primary or str(exc).splitlines()[0]
        raise SchemaError(f"sql/{filename} failed and was rolled back: {reason}") from exc


@asynccontextmanager
async def _init_lock(postgres_url: str) -> AsyncIterator[psycopg.AsyncConnection[DictRow]]:
    """A dedicated autocommit connection holding the init advisory lock (released when it closes).

    Held across PostgreSQL *and* Mongo, so two inits never race on CREATE TABLE or create_collection.
    A dedicated connection, not the pool's: a session lock must never leak into a pooled connection.
    """
    async with await psycopg.AsyncConnection.connect(
        postgres_url, autocommit=True, row_factory=dict_row, connect_timeout=5
    ) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", [_ADVISORY_LOCK_KEY])
        yield conn


async def _init_postgres(conn: psycopg.AsyncConnection[DictRow], directory: Path) -> PostgresReport:
    report = PostgresReport(sql_dir=str(directory))
    files = sql_files(directory)
    before = await _snapshot(conn)
    applied = await _applied(conn)
    for filename, sql, checksum in files:
        done = applied.get(filename)
        if done is None:
            await _apply_file(conn, filename, sql, checksum)
            report.applied.append(filename)
            log.info("sql_file_applied", extra={"file": filename})
        elif done["checksum"] != checksum:
            report.changed.append(
                ChangedFile(filename, done["checksum"], checksum, done["applied_at"].isoformat(timespec="seconds"))
            )
            log.info("sql_file_changed", extra={"file": filename})  # reported; the CLI prints it
        else:
            report.skipped.append(filename)
    report.schemas = await _snapshot(conn)
    report.created_tables = sorted(_qualified(report.schemas, "tables") - _qualified(before, "tables"))
    report.created_indexes = sorted(_qualified(report.schemas, "indexes") - _qualified(before, "indexes"))
    return report


async def init_postgres(postgres_url: str, directory: Path | None = None) -> PostgresReport:
    """Apply the pending files of `directory` (default :func:`sql_dir`) under the init lock.

    Files not yet applied are applied even when an earlier one changed: the change is reported (drift),
    new files are additive by convention.
    """
    directory = directory or sql_dir()
    async with _init_lock(postgres_url) as conn:
        return await _init_postgres(conn, directory)


# ------------------------------------------------------------------------------------------------- MongoDB


def load_collections(directory: Path | None = None) -> dict[str, list[IndexSpec]]:
    """Collection name -> wanted indexes, from `collections.json` (default :func:`mongo_dir`)."""
    path = (directory or mongo_dir()) / "collections.json"
    try:
        spec = json.loads(path.read_text())
        return {str(c["name"]): [IndexSpec.from_spec(ix) for ix in c.get("indexes", [])] for c in spec["collections"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SchemaError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc


def last_use_index(server: MongoServer, retention_days: int) -> IndexSpec:
    """The `last_use` index: TTL where the server enforces it, plain otherwise (purged by cron)."""
    ttl = retention_days * 86400 if server.supports_ttl else None
    return IndexSpec(LAST_USE_INDEX, [("last_use", 1)], expire_after_seconds=ttl)


def index_conflict(collection: str, wanted: IndexSpec, existing: dict[str, IndexSpec]) -> str | None:
    """Why `wanted` cannot be created next to `existing` (by name, or same keys under another name)."""
    same_name = existing.get(wanted.name)
    if same_name is not None and same_name != wanted:
        hint = ""
        if wanted.name == LAST_USE_INDEX and same_name.keys == wanted.keys:
            hint = " (retention or TTL support changed: update it with collMod, or drop it and re-run `nubo db init`)"
        return (
            f"{collection}: index {wanted.name!r} exists as {same_name.describe()}, "
            f"expected {wanted.describe()}; left unchanged{hint}"
        )
    for other in existing.values():
        if other.name != wanted.name and other.keys == wanted.keys:
            return (
                f"{collection}: index {wanted.name!r} {wanted.describe()} has the same keys as existing "
                f"index {other.name!r} {other.describe()}; left unchanged"
            )
    return None


async def _existing_indexes(db: AsyncDatabase[MongoDoc], collection: str) -> dict[str, IndexSpec]:
    cursor = await db[collection].list_indexes()
    return {doc["name"]: IndexSpec.from_server(doc) async for doc in cursor}


async def _create_index(db: AsyncDatabase[MongoDoc], collection: str, index: IndexSpec) -> None:
    options: dict[str, Any] = {"name": index.name}
    if index.unique:
        options["unique"] = True
    if index.expire_after_seconds is not None:
        options["expireAfterSeconds"] = index.expire_after_seconds
    await db[collection].create_index(index.keys, **options)


def _no_ttl_warning(server: MongoServer, retention_days: int) -> str:
    return (
        f"{server} does not delete expired documents (no TTL index support): created plain `last_use` "
        f"indexes instead. Run `nubo db purge` from cron (e.g. daily) to delete documents unused for "
        f"{retention_days} days."
    )


async def _ensure_index(
    db: AsyncDatabase[MongoDoc], collection: str, wanted: IndexSpec, existing: dict[str, IndexSpec], report: MongoReport
) -> None:
    if (problem := index_conflict(collection, wanted, existing)) is not None:
        report.conflicts.append(problem)
        return
    if wanted.name in existing:
        return
    try:
        await _create_index(db, collection, wanted)
    except OperationFailure as exc:
        # A server claiming to be MongoDB but without TTL (a proxy, a fork): degrade exactly like FerretDB.
        if exc.code != _NOT_IMPLEMENTED or wanted.expire_after_seconds is None:
            raise
        report.ttl = False
        wanted = IndexSpec(wanted.name, wanted.keys, wanted.unique)
        if (problem := index_conflict(collection, wanted, existing)) is not None:
            report.conflicts.append(problem)
            return
        if wanted.name in existing:
            return
        await _create_index(db, collection, wanted)
    existing[wanted.name] = wanted
    report.created_indexes.append(f"{collection}.{wanted.name}")


async def _create_collection(db: AsyncDatabase[MongoDoc], collection: str) -> bool:
    """Create `collection`; False if something else (an app insert) created it meanwhile."""
    try:
        await db.create_collection(collection)
    except CollectionInvalid:
        return False
    except OperationFailure as exc:
        if exc.code != _NAMESPACE_EXISTS:
            raise
        return False
    return True


async def init_mongo(stores: Stores, directory: Path | None = None) -> MongoReport:
    """Create the missing collections and indexes of `collections.json` in `stores.settings.mongo_db`."""
    db = stores.mongo
    retention = stores.settings.retention_days
    server = await server_info(db)
    report = MongoReport(database=db.name, server=str(server), ttl=server.supports_ttl)
    wanted = load_collections(directory)
    existing_collections = set(await db.list_collection_names())
    for collection, indexes in wanted.items():
        if collection not in existing_collections and await _create_collection(db, collection):
            report.created_collections.append(collection)
        existing = await _existing_indexes(db, collection)
        for index in [*indexes, last_use_index(server, retention)]:
            if not report.ttl and index.expire_after_seconds is not None:
                index = IndexSpec(index.name, index.keys, index.unique)
            await _ensure_index(db, collection, index, existing, report)
        report.collections[collection] = sorted(existing)
    if not report.ttl:
        report.warnings.append(_no_ttl_warning(server, retention))
    if report.created_collections or report.created_indexes:
        log.info(
            "mongo_initialised",
            extra={
                "database": db.name,
                "indexes": len(report.created_indexes),
                "collections": len(report.created_collections),
            },
        )
    return report


async def init_databases(
    stores: Stores,
    *,
    sql_directory: Path | None = None,
    mongo_directory: Path | None = None,
    on_step: Callable[[str], None] | None = None,
) -> InitReport:
    """`nubo db init`: PostgreSQL first (the source of truth), then Mongo. `on_step` is told each step's name
    as it starts (``postgres``, ``mongo``)."""
    sql_directory = sql_directory or sql_dir()
    step = on_step or (lambda _name: None)
    async with _init_lock(stores.settings.postgres_url) as conn:
        step("postgres")
        postgres = await _init_postgres(conn, sql_directory)
        step("mongo")
        mongo = await init_mongo(stores, mongo_directory)
    return InitReport(postgres=postgres, mongo=mongo)


# --------------------------------------------------------------------------------------------------- purge

ProgressCallback = Callable[[str, int, int], None]


def purge_cutoff(days: int, now: datetime | None = None) -> datetime:
    if days < 0:
        raise ValueError("days must be >= 0")
    return (now or datetime.now(UTC)) - timedelta(days=days)


async def purge_recent(
    stores: Stores, days: int, dry_run: bool, on_progress: ProgressCallback | None = None
) -> dict[str, int]:
    """Delete (or, with `dry_run`, count) documents whose `last_use` is older than `days`, per collection.

    Every collection of the database is visited, not only the known ones, so a collection added later is
    purged too. `on_progress(collection, count, total_collections)` is called after each collection.
    """
    db = stores.mongo
    query = {"last_use": {"$lt": purge_cutoff(days)}}
    names = sorted(n for n in await db.list_collection_names() if not n.startswith("system."))
    counts: dict[str, int] = {}
    for name in names:
        if dry_run:
            counts[name] = await db[name].count_documents(query)
        else:
            counts[name] = (await db[name].delete_many(query)).deleted_count
        if on_progress is not None:
            on_progress(name, counts[name], len(names))
    log.info(
        "mongo_purged", extra={"database": db.name, "days": days, "dry_run": dry_run, "documents": sum(counts.values())}
    )
    return counts
