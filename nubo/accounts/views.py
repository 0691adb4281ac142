"""The shapes accounts hand out: a user's public view, the owner's own view, a profile, a session, the settings
and the tokens of a login.

Each is defined once here, built from rows here, and returned as is by the HTTP routes (Litestar encodes and
documents Structs), so a field cannot differ between two routes that show the same thing. Field order is the
order clients have always received.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, Self

import msgspec

from nubo.media import MediaView

# What anyone may see of a user; never email, phone, password hash, birthdate, grade or state.
PUBLIC_FIELDS = (
    "id",
    "username",
    "first_name",
    "last_name",
    "bio",
    "profile_picture_id",
    "location",
    "school",
    "works",
    "badges",
    "created_at",
)
SETTINGS_FIELDS = ("privacy", "notifications", "language", "theme")

SettingValue = bool | int | str


class PublicUser(msgspec.Struct, gc=False):
    """What anyone may see of a user (from a row of any tier)."""

    id: uuid.UUID
    username: str
    first_name: str
    last_name: str
    bio: str | None
    profile_picture_id: uuid.UUID | None
    location: str | None
    school: str | None
    works: str | None
    badges: list[str]
    created_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return cls(**_public_fields(row))


class Profile(PublicUser):
    """A public user with their follower and following counts."""

    followers_count: int
    following_count: int
    profile_picture: MediaView | None = None  # the picture with a URL per variant

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        """A user row joined with its `followers_count` and `following_count`."""
        return cls(
            **_public_fields(row),
            followers_count=row["followers_count"],
            following_count=row["following_count"],
        )


class MeView(PublicUser):
    """The caller's own account: the public fields plus email, birthdate, sex and grade. Never the hash."""

    email: str
    email_verified: bool
    birthdate: date | None
    sex: int | None
    grade: int
    profile_picture: MediaView | None = None  # the picture with a URL per variant

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        own: dict[str, Any] = {  # .get: open_session accepts a partial row (id, username, grade)
            "email": row.get("email"),
            "email_verified": bool(row.get("email_verified")),
            "birthdate": _as_date(row.get("birthdate")),
            "sex": row.get("sex"),
            "grade": row.get("grade", 1),
        }
        return cls(**_public_fields(row), **own)


def _public_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """The public fields of a user row, by name (absent ones as None)."""
    return {name: row.get(name) for name in PUBLIC_FIELDS}


def _as_date(value: object) -> date | None:
    """A birthdate from any tier: rows carry it as an ISO string (:func:`nubo.stores.entities.normalize_row`)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)) if value else None


class TokenView(msgspec.Struct, gc=False):
    """Tokens from a login or a refresh. Keep `refresh_token` secret; it is shown only once."""

    access_token: str
    token_type: str
    expires_in: int
    refresh_token: str
    user: MeView


class SessionView(msgspec.Struct, gc=False):
    """One live session (a logged-in device)."""

    id: uuid.UUID
    current: bool
    device_info: dict[str, str]
    ip: list[str]
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any], current: uuid.UUID | None) -> Self:
        """A session row; `current` is the caller's own session id."""
        return cls(
            id=row["id"],
            current=row["id"] == current,
            device_info=row["device_info"] or {},
            ip=[str(ip) for ip in row["ip"] or []],
            created_at=row["created_at"],
            last_used_at=row["last_used_at"],
            expires_at=row["expires_at"],
        )


class SettingsView(msgspec.Struct, gc=False):
    """The caller's settings."""

    privacy: dict[str, SettingValue]
    notifications: dict[str, SettingValue]
    language: str
    theme: int

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return cls(
            privacy=row["privacy"], notifications=row["notifications"], language=row["language"], theme=row["theme"]
        )

    @classmethod
    def defaults(cls) -> Self:
        """The settings of an account whose settings row is missing (an old account)."""
        return cls(privacy={}, notifications={}, language="en", theme=0)
