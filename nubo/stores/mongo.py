"""MongoDB `nubo_recent`: the last 30 days of active data, as documents with a `last_use` date.

Also detects which MongoDB-protocol server answers (MongoDB or FerretDB) so features FerretDB lacks
(TTL indexes) degrade with a clear message instead of failing silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

MongoDoc = dict[str, Any]

MICROS_FIELD = "_us"
"""BSON dates hold milliseconds while PostgreSQL and the API keep microseconds: each document written carries
the sub-millisecond part of its top-level datetimes in this field, `{field: 0..999}`, so that a copy read
back gives the very value PostgreSQL holds (the API shows one timestamp per row, whichever tier answered)."""


def keep_micros(doc: MongoDoc) -> MongoDoc:
    """`doc` with :data:`MICROS_FIELD` set from its datetimes (call on every document written)."""
    micros = {key: value.microsecond % 1000 for key, value in doc.items() if isinstance(value, datetime)}
    doc[MICROS_FIELD] = {key: rest for key, rest in micros.items() if rest}
    return doc


def restore_micros(doc: MongoDoc) -> MongoDoc:
    """`doc` read back, its datetimes given their microseconds again (and :data:`MICROS_FIELD` removed)."""
    micros = doc.pop(MICROS_FIELD, None) or {}
    for key, rest in micros.items():
        value = doc.get(key)
        if isinstance(value, datetime) and isinstance(rest, int) and 0 < rest < 1000:
            doc[key] = value.replace(microsecond=value.microsecond // 1000 * 1000 + rest)
    return doc


def open_client(url: str, *, timeout_ms: int = 2000) -> AsyncMongoClient[MongoDoc]:
    """A lazily connecting client; nothing blocks if Mongo is down until a call is made."""
    return AsyncMongoClient(
        url,
        tz_aware=True,
        uuidRepresentation="standard",
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=max(timeout_ms * 5, 5000),
        appname="nubo",
    )


@dataclass(frozen=True)
class MongoServer:
    """Which MongoDB-protocol server answered, and what it can do."""

    name: str  # "mongodb" or "ferretdb"
    version: str

    @property
    def supports_ttl(self) -> bool:
        # FerretDB v1 accepts `expireAfterSeconds` but never deletes expired documents.
        return self.name == "mongodb"

    @property
    def scans_for_writes_by_id(self) -> bool:
        # FerretDB v1 (SQLite) looks a find by `_id` up, but scans the collection for an update or delete by it.
        return self.name == "ferretdb"

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


def server_from_build_info(info: MongoDoc) -> MongoServer:
    if "ferretdb" in info or "ferretdbVersion" in info:
        ferret = info.get("ferretdb") or {}
        version = ferret.get("version") if isinstance(ferret, dict) else None
        return MongoServer("ferretdb", str(version or info.get("ferretdbVersion") or info.get("version")))
    return MongoServer("mongodb", str(info.get("version", "unknown")))


async def server_info(db: AsyncDatabase[MongoDoc]) -> MongoServer:
    return server_from_build_info(await db.command("buildInfo"))


async def ping(db: AsyncDatabase[MongoDoc]) -> dict[str, Any]:
    await db.command("ping")
    return {"server": str(await server_info(db))}
