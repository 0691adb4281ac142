"""The import format: one typed shape per kind of row, and the checks of one row on its own.

Each line of a JSON Lines file is one object, decoded straight into its Struct (unknown fields, wrong types
and missing fields are rejected with msgspec's message, which names the field). Then :func:`check_user` and
the others check what a shape cannot say (the username rule, blank names, lengths) and return the row as the
tuple COPY writes, in the column order of :mod:`nubo.stores.bulk`. A row that fails raises :class:`RowError`
with the reason the report prints.

Ids are optional: a missing id is minted as a UUIDv7 *at the row's `created_at`*, so ids keep sorting by
creation time (feeds and cursors order by id). A missing `created_at` is taken from a given UUIDv7 id, else
it is the time of the import.

Passwords: `password_hash` is an argon2 hash in PHC form (``$argon2id$v=19$m=...,t=...,p=...$salt$hash``,
what nubo itself stores; weaker parameters are upgraded at the first login). Without it the account gets
:data:`NO_PASSWORD`, which no password matches: the user must set a new password (reset) before logging in.
Plain-text passwords are not accepted.
"""

from __future__ import annotations

import random
import secrets
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from argon2 import extract_parameters
from argon2.exceptions import InvalidHashError

from nubo.accounts import EMAIL_RE, USERNAME_RE
from nubo.model import FollowState, LikeTarget, UserState, Visibility
from nubo.posts import MAX_COMMENT_CHARS, MAX_CONTENT_CHARS, MAX_LOCATION_CHARS

NO_PASSWORD = "!imported-without-password"  # not a valid hash: never verifies, the user must reset
MAX_NAME_CHARS = 100
MAX_BIO_CHARS = 1000

Aware = Annotated[datetime, msgspec.Meta(tz=True)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_CONTENT_CHARS)]


class RowError(ValueError):
    """A row that cannot be imported; the message is the reason the report gives."""


class UserIn(msgspec.Struct, forbid_unknown_fields=True):
    """A user: `state` active (default), deactivated or banned; see the module for `password_hash`."""

    username: str
    email: str
    first_name: str
    last_name: str
    id: uuid.UUID | None = None
    password_hash: str | None = None
    email_verified: bool = False
    bio: str | None = None
    state: Literal["active", "deactivated", "banned"] = "active"
    created_at: Aware | None = None


class FollowIn(msgspec.Struct, forbid_unknown_fields=True):
    """`follower_id` follows `followed_id` (`pending`: a request not yet accepted)."""

    follower_id: uuid.UUID
    followed_id: uuid.UUID
    id: uuid.UUID | None = None
    state: Literal["active", "pending"] = "active"
    created_at: Aware | None = None


class PostIn(msgspec.Struct, forbid_unknown_fields=True):
    """A text post (media are not imported)."""

    user_id: uuid.UUID
    content: Text
    id: uuid.UUID | None = None
    visibility: Literal["public", "followers"] = "public"
    location: str | None = None
    created_at: Aware | None = None


class CommentIn(msgspec.Struct, forbid_unknown_fields=True):
    """A comment by `user_id` on `post_id`."""

    post_id: uuid.UUID
    user_id: uuid.UUID
    content: str
    id: uuid.UUID | None = None
    created_at: Aware | None = None


class LikeIn(msgspec.Struct, forbid_unknown_fields=True):
    """A like by `user_id` of a post (default) or a comment."""

    user_id: uuid.UUID
    target_id: uuid.UUID
    target: Literal["post", "comment"] = "post"
    id: uuid.UUID | None = None
    created_at: Aware | None = None


RowIn = UserIn | FollowIn | PostIn | CommentIn | LikeIn
SHAPES: dict[str, type[Any]] = {
    "users": UserIn,
    "follows": FollowIn,
    "posts": PostIn,
    "comments": CommentIn,
    "likes": LikeIn,
}
USER_STATES = {"active": UserState.ACTIVE, "deactivated": UserState.DEACTIVATED, "banned": UserState.BANNED}
LIKE_TARGETS = {"post": LikeTarget.POST, "comment": LikeTarget.COMMENT}


def id_at(when: datetime) -> uuid.UUID:
    """A fresh UUIDv7 whose time is `when` (millisecond precision), random otherwise (74 bits from the
    process's generator: ids must be unique, not secret, and one system call per id was a tenth of the
    import's time)."""
    millis = int(when.timestamp() * 1000)
    bits = _random_bits(74)
    return uuid.UUID(int=(millis << 80) | (0x7 << 76) | ((bits >> 62) << 64) | (0b10 << 62) | (bits & _LOW_62))


_random_bits = random.Random(secrets.randbits(128)).getrandbits
_LOW_62 = (1 << 62) - 1


def _time_of(value: uuid.UUID) -> datetime | None:
    """The time a UUIDv7 encodes, else None."""
    if value.version != 7:
        return None
    return datetime.fromtimestamp((value.int >> 80) / 1000, tz=UTC)


def identity(row_id: uuid.UUID | None, created_at: datetime | None, now: datetime) -> tuple[uuid.UUID, datetime]:
    """The row's id and creation time, each derived from the other when absent (see the module)."""
    if created_at is None:
        created_at = (_time_of(row_id) if row_id is not None else None) or now
    return (row_id if row_id is not None else id_at(created_at)), created_at


def _text(value: str | None, field: str, maximum: int, *, required: bool) -> str | None:
    if value is None or (not value.strip() and not required):
        if required:
            raise RowError(f"{field} is required")
        return None
    if "\x00" in value:
        raise RowError(f"{field} contains a NUL character")
    if len(value) > maximum:
        raise RowError(f"{field} is longer than {maximum} characters")
    if required and not value.strip():
        raise RowError(f"{field} is blank")
    return value


def check_password_hash(value: str | None) -> str:
    """The stored hash: an argon2 PHC string as given, or :data:`NO_PASSWORD`."""
    if value is None:
        return NO_PASSWORD
    try:
        extract_parameters(value)
    except (InvalidHashError, ValueError, IndexError):
        raise RowError(
            "password_hash is not an argon2 hash in PHC form ($argon2id$v=19$m=...); "
            "leave it out and the user must reset their password"
        ) from None
    return value


def check_user(row: UserIn, now: datetime) -> tuple[Any, ...]:
    if not USERNAME_RE.fullmatch(row.username):
        raise RowError("username must be 3 to 30 letters, digits, '_' or '.'")
    if len(row.email) > 254 or not EMAIL_RE.fullmatch(row.email):
        raise RowError("email is not a valid e-mail address")
    first = _text(row.first_name, "first_name", MAX_NAME_CHARS, required=True)
    last = _text(row.last_name, "last_name", MAX_NAME_CHARS, required=True)
    bio = _text(row.bio, "bio", MAX_BIO_CHARS, required=False)
    user_id, created = identity(row.id, row.created_at, now)
    password = check_password_hash(row.password_hash)
    state = USER_STATES[row.state]
    return (user_id, row.username, row.email, row.email_verified, password, first, last, bio, state, created, created)


def check_follow(row: FollowIn, now: datetime) -> tuple[Any, ...]:
    if row.follower_id == row.followed_id:
        raise RowError("a user cannot follow themselves")
    follow_id, created = identity(row.id, row.created_at, now)
    state = FollowState.ACTIVE if row.state == "active" else FollowState.PENDING
    return (follow_id, row.follower_id, row.followed_id, state, created)


def check_post(row: PostIn, now: datetime) -> tuple[Any, ...]:
    content = _text(row.content, "content", MAX_CONTENT_CHARS, required=True)
    location = _text(row.location, "location", MAX_LOCATION_CHARS, required=False)
    post_id, created = identity(row.id, row.created_at, now)
    visibility = Visibility.PUBLIC if row.visibility == "public" else Visibility.FOLLOWERS
    # `meta` is filled by the loader (mentions are resolved against the users it knows).
    return (post_id, row.user_id, content, None, visibility, location, created, created)


def check_comment(row: CommentIn, now: datetime) -> tuple[Any, ...]:
    content = _text(row.content, "content", MAX_COMMENT_CHARS, required=True)
    comment_id, created = identity(row.id, row.created_at, now)
    return (comment_id, row.post_id, row.user_id, content, created, created)


def check_like(row: LikeIn, now: datetime) -> tuple[Any, ...]:
    like_id, created = identity(row.id, row.created_at, now)
    return (like_id, LIKE_TARGETS[row.target], row.target_id, row.user_id, created)


CHECKS: dict[str, Any] = {
    "users": check_user,
    "follows": check_follow,
    "posts": check_post,
    "comments": check_comment,
    "likes": check_like,
}
