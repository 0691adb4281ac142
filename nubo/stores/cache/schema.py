"""Schemas of the Redis cache collections and the typed encoding of their values.

Each collection mirrors one PostgreSQL table (sql/*.sql): `id` is the primary key, every other column is a
:class:`Field` with a type. Field types:

``uuid``, ``str``, ``int``, ``bool``   indexed by default (one Redis set per value)
``float``, ``datetime``, ``date``      filterable and sortable, not indexed unless the schema says so
``text``                               long free text: filterable, never indexed
``json``                               any JSON value (dict, list...): stored, not filterable
``uuid_list``                          list of UUIDs: stored, not filterable

Encoding in the element hash: ``~`` is null, ``=<payload>`` is a value; a missing hash field is a missing
value (kept distinct from null and from the empty string ``=``). The payload is canonical (one spelling per
value) so equality is a string comparison, and for every type but numbers its string order is the value order
(UUIDs as lowercase hex, datetimes as fixed-width UTC ISO 8601 with microseconds, ``false`` < ``true``), which
is what MongoDB does too. The payload of an indexed field is also the ``{value}`` part of its index key.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any, Literal

FieldType = Literal["uuid", "str", "text", "int", "float", "bool", "datetime", "date", "json", "uuid_list"]

NULL = "~"
VALUE = "="
REV_FIELD = "_rev"  # per-element revision counter kept in the hash (compare-and-set for filtered writes)
MAX_INDEXED_CHARS = 512  # longer values are stored but not indexed (an index key name that long helps nobody)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

INDEXED_BY_DEFAULT: frozenset[str] = frozenset({"uuid", "str", "int", "bool"})
FILTERABLE: frozenset[str] = frozenset({"uuid", "str", "text", "int", "float", "bool", "datetime", "date"})
NUMERIC: frozenset[str] = frozenset({"int", "float"})
_EXPECTED = {
    "uuid": "a UUID",
    "str": "a string",
    "text": "a string",
    "int": "an integer (64-bit)",
    "float": "a finite number",
    "bool": "a boolean",
    "datetime": "a timezone-aware datetime",
    "date": "a date (or YYYY-MM-DD)",
    "json": "a JSON value",
    "uuid_list": "a list of UUIDs",
}
_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


class CacheError(ValueError):
    """Base of the cache engine's own errors (bad documents, bad filters)."""


class CacheValidationError(CacheError):
    """A document or update does not match the collection schema; names the field and the expected type."""

    def __init__(self, collection: str, field: str, problem: str) -> None:
        super().__init__(f"{collection}.{field}: {problem}")
        self.collection = collection
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class Field:
    """One column of a cached collection."""

    name: str
    type: FieldType
    nullable: bool = False
    indexed: bool = False

    @property
    def expected(self) -> str:
        """Human description of accepted values, for error messages."""
        return _EXPECTED[self.type] + (" or null" if self.nullable else "")

    @property
    def filterable(self) -> bool:
        return self.type in FILTERABLE


@dataclass(frozen=True)
class Schema:
    """The fields of one cache collection; `id` (a UUID) is always the primary key."""

    name: str
    fields: Mapping[str, Field]

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"bad collection name {self.name!r}")
        for name in self.fields:
            if not _NAME.fullmatch(name):
                raise ValueError(f"bad field name {self.name}.{name!r}")
        if self.fields.get("id") != Field("id", "uuid"):
            raise ValueError(f"{self.name}: `id` must be a non-null, non-indexed uuid field")

    @property
    def indexed(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields.values() if f.indexed)

    def field(self, name: str) -> Field | None:
        return self.fields.get(name)


def schema(name: str, *, index: tuple[str, ...] = (), no_index: tuple[str, ...] = (), **columns: str) -> Schema:
    """Build a schema from ``column="type"`` (``"?type"`` when nullable), with index overrides."""
    fields: dict[str, Field] = {"id": Field("id", "uuid")}
    for column, spec in columns.items():
        nullable = spec.startswith("?")
        ftype = spec.lstrip("?")
        if ftype not in _EXPECTED:
            raise ValueError(f"{name}.{column}: unknown field type {ftype!r}")
        indexed = (ftype in INDEXED_BY_DEFAULT or column in index) and column not in no_index
        if column in index and ftype not in FILTERABLE - {"text"}:
            raise ValueError(f"{name}.{column}: a {ftype} field cannot be indexed")
        fields[column] = Field(column, ftype, nullable, indexed)  # type: ignore[arg-type]
    return Schema(name, fields)


# ---- encoding ----------------------------------------------------------------------------------------------


def _enc_uuid(value: Any) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        return str(uuid.UUID(value))
    raise TypeError


def _enc_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    value.encode()  # lone surrogates cannot reach Redis: fail here, naming the field
    return value


def _enc_int(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not INT64_MIN <= value <= INT64_MAX:
        raise TypeError
    return str(value)


def _enc_float(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError
    return repr(float(value) + 0.0)  # + 0.0 turns -0.0 into 0.0: one spelling per value


def _enc_bool(value: Any) -> str:
    if not isinstance(value, bool):
        raise TypeError
    return "true" if value else "false"


def _enc_datetime(value: Any) -> str:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise TypeError
    v = value.astimezone(UTC)
    return f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}.{v.microsecond:06d}Z"


def _enc_date(value: Any) -> str:
    if isinstance(value, str):
        value = date.fromisoformat(value)
    if isinstance(value, datetime) or not isinstance(value, date):
        raise TypeError
    return value.isoformat()


def _json_default(value: Any) -> str:
    if isinstance(value, uuid.UUID | datetime | date | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value.isoformat() if isinstance(value, datetime | date) else str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _enc_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default)


def _enc_uuid_list(value: Any) -> str:
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise TypeError
    return json.dumps([_enc_uuid(item) for item in value], separators=(",", ":"))


def _dec_datetime(payload: str) -> datetime:
    return datetime.fromisoformat(payload)


# Results repeat the same UUIDs (every message of a conversation carries its id); UUIDs are immutable, so
# parsing each text once and sharing the object is safe and several times cheaper than uuid.UUID().
_dec_uuid = lru_cache(maxsize=65536)(uuid.UUID)


def _dec_uuid_list(payload: str) -> list[uuid.UUID]:
    return [_dec_uuid(item) for item in json.loads(payload)]


ENCODERS: dict[str, Callable[[Any], str]] = {
    "uuid": _enc_uuid,
    "str": _enc_str,
    "text": _enc_str,
    "int": _enc_int,
    "float": _enc_float,
    "bool": _enc_bool,
    "datetime": _enc_datetime,
    "date": _enc_date,
    "json": _enc_json,
    "uuid_list": _enc_uuid_list,
}
DECODERS: dict[str, Callable[[str], Any]] = {
    "uuid": _dec_uuid,
    "str": str,
    "text": str,
    "int": int,
    "float": float,
    "bool": lambda p: p == "true",
    "datetime": _dec_datetime,
    "date": date.fromisoformat,
    "json": json.loads,
    "uuid_list": _dec_uuid_list,
}


def encode_payload(field: Field, value: Any) -> str:
    """The canonical payload of a non-null value; raises TypeError/ValueError when it has the wrong type."""
    return ENCODERS[field.type](value)


def encode_value(schema_: Schema, field: Field, value: Any) -> str:
    """The hash value of `value` for `field` (``~`` or ``=payload``), or CacheValidationError."""
    if value is None:
        if not field.nullable:
            problem = f"must not be null (expected {field.expected})"
            raise CacheValidationError(schema_.name, field.name, problem)
        return NULL
    try:
        return VALUE + encode_payload(field, value)
    except (TypeError, ValueError, UnicodeError, OverflowError):
        problem = f"expected {field.expected}, got {type(value).__name__}"
        raise CacheValidationError(schema_.name, field.name, problem) from None


def decode_value(field: Field, raw: str) -> Any:
    """The typed value of a hash value."""
    return None if raw == NULL else DECODERS[field.type](raw[1:])


def index_payload(field: Field, raw: str | None) -> str | None:
    """The `{value}` of the index key holding an element whose hash value is `raw`, or None (not indexed)."""
    if not field.indexed or raw is None or not raw.startswith(VALUE) or len(raw) > MAX_INDEXED_CHARS + 1:
        return None
    return raw[1:]


# ---- the collections (columns as in sql/*.sql) -------------------------------------------------------------

SCHEMAS: dict[str, Schema] = {
    s.name: s
    for s in (
        # No password_hash: credentials never leave PostgreSQL (tiered.Entity.private_columns).
        schema(
            "users",
            no_index=("first_name", "last_name", "location", "school", "works"),
            username="str",
            email="str",
            email_verified="bool",
            phone="?str",
            phone_verified="bool",
            first_name="str",
            last_name="str",
            birthdate="?date",
            sex="?int",
            bio="?text",
            profile_picture_id="?uuid",
            grade="int",
            location="?str",
            school="?str",
            works="?str",
            badges="json",
            state="int",
            created_at="datetime",
            updated_at="datetime",
        ),
        schema(
            "user_settings",
            user_id="uuid",
            privacy="json",
            notifications="json",
            language="str",
            theme="int",
            created_at="datetime",
            updated_at="datetime",
        ),
        schema(
            "sessions",
            no_index=("revoked_reason",),
            user_id="uuid",
            refresh_token_hash="str",
            device_info="json",
            ip="json",
            created_at="datetime",
            last_used_at="datetime",
            expires_at="datetime",
            revoked="bool",
            revoked_at="?datetime",
            revoked_reason="?text",
        ),
        # `relations` caches auth.follows (the seed's relations_recent).
        schema("relations", follower_id="uuid", followed_id="uuid", state="int", created_at="datetime"),
        schema(
            "posts",
            user_id="uuid",
            content="?text",
            media_ids="uuid_list",
            meta="json",
            visibility="int",
            location="?str",
            created_at="datetime",
            updated_at="datetime",
        ),
        schema(
            "comments", post_id="uuid", user_id="uuid", content="text", created_at="datetime", updated_at="datetime"
        ),
        schema("likes", target_type="int", target_id="uuid", user_id="uuid", created_at="datetime"),
        schema(
            "media",
            no_index=("storage_path", "size", "width", "height", "variants", "placeholder"),
            owner_id="uuid",
            storage_path="str",
            mime="str",
            size="int",
            width="?int",
            height="?int",
            processing_state="int",
            created_at="datetime",
            kind="int",
            variants="json",
            placeholder="?str",
        ),
        schema(
            "conversations_meta",
            type="int",
            title="?text",
            direct_key="?str",
            created_by="?uuid",
            last_message_id="?uuid",
            last_message_time="?datetime",
            last_message_text="?text",
            state="int",
            created_at="datetime",
        ),
        schema(
            "conversation_members",
            no_index=("unread_count", "last_read_message_id"),
            conversation_id="uuid",
            user_id="uuid",
            role="int",
            joined_at="datetime",
            unread_count="int",
            last_read_message_id="?uuid",
        ),
        # `messages` caches messaging.message_index.
        schema(
            "messages",
            conversation_id="uuid",
            sender_id="uuid",
            message_type="int",
            state="int",
            content="?text",
            attachments="json",
            client_id="?str",
            created_at="datetime",
            edited_at="?datetime",
        ),
    )
}
