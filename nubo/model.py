"""The shared vocabulary of every domain package: the states, kinds and roles stored as SMALLINT columns, and
the SQL predicates several domains ask (is this user active, is there a block between these two).

Each value is defined here once, with the same number as the CHECK constraints in `sql/`. They are IntEnums:
they compare equal to the integers PostgreSQL returns and psycopg sends them as integers.
"""

from __future__ import annotations

from enum import IntEnum


class UserState(IntEnum):
    DEACTIVATED = 0
    ACTIVE = 1
    BANNED = 2


class FollowState(IntEnum):
    PENDING = 0  # waiting for a private account's approval
    ACTIVE = 1


class Visibility(IntEnum):
    PUBLIC = 0
    FOLLOWERS = 1


class LikeTarget(IntEnum):
    """`content.likes.target_type`, as in the seed."""

    POST = 0
    MESSAGE = 1
    COMMENT = 2


class ConversationKind(IntEnum):
    DIRECT = 0
    GROUP = 1
    COMMUNITY = 2
    ANNOUNCEMENT = 3


class ConversationState(IntEnum):
    ACTIVE = 0
    ARCHIVED = 1
    DELETED = 2


class MemberRole(IntEnum):
    MEMBER = 0
    ADMIN = 1
    CREATOR = 2


class MessageState(IntEnum):
    SENT = 0
    EDITED = 1
    DELETED = 2


class ReportTarget(IntEnum):
    """`moderation.reports.target_type`."""

    USER = 0
    POST = 1
    COMMENT = 2
    MESSAGE = 3


def blocked_either_way(a: str, b: str, *, alias: str = "bl") -> str:
    """SQL that is true when a block exists between users `a` and `b`, in either direction.

    `a` and `b` are SQL expressions (a column, a placeholder such as ``%(viewer)s``, or ``ANY(%(ids)s)``).
    """
    return (
        f"EXISTS (SELECT 1 FROM auth.blocks {alias} "
        f"WHERE ({alias}.blocker_id = {a} AND {alias}.blocked_id = {b}) "
        f"OR ({alias}.blocker_id = {b} AND {alias}.blocked_id = {a}))"
    )


def active_user(alias: str) -> str:
    """SQL: the `auth.users` row named `alias` is an active account."""
    return f"{alias}.state = {int(UserState.ACTIVE)}"
