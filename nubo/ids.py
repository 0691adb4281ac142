"""Time-ordered UUIDv7 ids, generated once in the app and used unchanged in every store (docs/architecture.md §1)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import uuid_utils

from nubo.errors import ValidationFailed


def new_id() -> uuid.UUID:
    """A fresh UUIDv7: sorts by creation time, so ids double as cursors."""
    return uuid.UUID(bytes=uuid_utils.uuid7().bytes)


def parse_id(raw: object, field: str = "id") -> uuid.UUID:
    """Parse a client-supplied id, raising a 422 naming `field` when it is not a UUID."""
    if isinstance(raw, uuid.UUID):
        return raw
    try:
        return uuid.UUID(str(raw))
    except (ValueError, TypeError, AttributeError):
        raise ValidationFailed(f"{field} must be a UUID", fields={field: "not a UUID"}) from None


def id_time(value: uuid.UUID) -> datetime:
    """The creation time encoded in a UUIDv7 (millisecond precision)."""
    return datetime.fromtimestamp((value.int >> 80) / 1000, tz=UTC)
