"""The one list shape of the HTTP API (docs/architecture.md §9): newest first, `?limit=` and `?before=<id>` cursors.

Ids are UUIDv7, so "newest first" is `ORDER BY id DESC` and the cursor is the last id of a page:
the next page is `WHERE id < before`. Fetch `limit + 1` rows and hand them to `make_page`, which keeps
`limit` of them and sets `next` only when a further row exists (so the last page says `next: null`).

    limit = parse_limit(raw_limit); before = parse_before(raw_before)
    rows = ... WHERE (%(before)s IS NULL OR id < %(before)s) ORDER BY id DESC LIMIT limit + 1
    return make_page(rows, limit, key=lambda r: r["id"])
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from nubo.errors import ValidationFailed
from nubo.ids import parse_id

DEFAULT_LIMIT = 20
MAX_LIMIT = 100

T = TypeVar("T")


@dataclass(slots=True)
class Page(Generic[T]):
    """One page of a list: `items` newest first, `next` the cursor for `?before=` (None on the last page)."""

    items: list[T] = field(default_factory=list)
    next: uuid.UUID | None = None


def parse_limit(raw: object, *, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    """`?limit=`: an integer in 1..maximum (default when absent); anything else is a 422."""
    if raw is None or raw == "":
        return default
    message = f"limit must be an integer between 1 and {maximum}"
    bad = ValidationFailed(message, fields={"limit": f"1..{maximum}"})
    if isinstance(raw, bool):
        raise bad
    try:
        value = raw if isinstance(raw, int) else int(str(raw))
    except ValueError:
        raise bad from None
    if not 1 <= value <= maximum:
        raise bad
    return value


def parse_before(raw: object) -> uuid.UUID | None:
    """`?before=`: an id (UUID) or absent; anything else is a 422 on field `before`."""
    if raw is None or raw == "":
        return None
    return parse_id(raw, "before")


def make_page(rows: Sequence[T], limit: int, key: Callable[[T], Any] | None = None) -> Page[T]:
    """Cut `limit + 1` fetched rows to a page; `key(row)` gives the cursor id (default: `row["id"]`)."""
    items = list(rows[:limit])
    if len(rows) <= limit or not items:
        return Page(items=items, next=None)
    last = items[-1]
    cursor = key(last) if key is not None else last["id"]  # type: ignore[index]
    return Page(items=items, next=cursor)
