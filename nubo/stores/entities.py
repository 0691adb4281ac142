"""The rows nubo mirrors: which PostgreSQL tables have Mongo and Redis copies, and one in-app shape for a row
whichever tier answered (dates as ISO strings, addresses as strings, datetimes aware and cut to milliseconds,
since BSON dates hold milliseconds)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from psycopg import sql

from nubo.stores.mongo import keep_micros, restore_micros

Row = dict[str, Any]


class _Reread:
    """Marks a touched row whose projection must re-read PostgreSQL (`Transaction.touch(..., row=None)`)."""


REREAD: Any = _Reread()


@dataclass(frozen=True)
class Entity:
    """A table mirrored in Mongo (`mongo_collection`) and Redis (`cache_collection`)."""

    name: str
    table: str
    mongo_collection: str
    cache_collection: str
    json_columns: frozenset[str] = frozenset()
    private_columns: frozenset[str] = frozenset()  # never leave PostgreSQL (credentials)
    near: bool = False  # hot rows read by id on most requests: copies kept in-process (nubo.stores.near)

    def row(self, raw: Mapping[str, Any]) -> Row:
        """The in-app row: normalized values, private columns left out, whichever tier it came from."""
        return {k: _normalize_value(v) for k, v in raw.items() if k not in self.private_columns}

    @property
    def table_sql(self) -> sql.Composed:
        schema, table = self.table.split(".")
        return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


ENTITIES: dict[str, Entity] = {
    entity.name: entity
    for entity in (
        Entity("users", "auth.users", "users_recent", "users", private_columns=frozenset({"password_hash"}), near=True),
        Entity(
            "user_settings",
            "auth.user_settings",
            "user_settings_recent",
            "user_settings",
            frozenset({"privacy", "notifications"}),
        ),
        Entity("follows", "auth.follows", "relations_recent", "relations"),
        Entity("posts", "content.posts", "posts_recent", "posts", frozenset({"meta"}), near=True),
        Entity("comments", "content.comments", "comments_recent", "comments"),
        Entity("likes", "content.likes", "likes_recent", "likes"),
        Entity("media", "content.media", "media_recent", "media", frozenset({"variants"})),
        Entity("conversations", "messaging.conversations_meta", "conversations_recent", "conversations_meta"),
        Entity(
            "conversation_members",
            "messaging.conversation_members",
            "conversation_members_recent",
            "conversation_members",
        ),
        Entity("messages", "messaging.message_index", "messages_recent", "messages", frozenset({"attachments"})),
    )
}


def normalize_row(row: Mapping[str, Any]) -> Row:
    """One in-app shape for a row whichever tier answered: dates as ISO strings, addresses as strings,
    datetimes aware in UTC with their microseconds (Mongo copies carry them, :func:`nubo.stores.mongo.keep_micros`)."""
    return {key: _normalize_value(value) for key, value in row.items()}


def _normalize_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, list):
        return [_normalize_value(item) for item in value]
    return value


def to_document(row: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    doc = {("_id" if key == "id" else key): value for key, value in row.items()}
    doc["last_use"] = now
    return keep_micros(doc)


def from_document(doc: Mapping[str, Any]) -> Row:
    row = {
        ("id" if key == "_id" else key): value for key, value in restore_micros(dict(doc)).items() if key != "last_use"
    }
    return normalize_row(row)
