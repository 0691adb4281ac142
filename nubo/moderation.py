"""Reports and moderation: users report what they can see; moderators list and resolve reports.

Reports, admin_actions and audit_logs live in PostgreSQL only (`moderation.*`). Resolving a report, its
effect (removing content, banning a user), the admin_actions row and the audit_logs row commit in one
transaction, so there is never an action without its trail, nor a trail without its action. Content and
users changed by an action go through the tiered write path, so their cached copies follow.
"""

from __future__ import annotations

import ipaddress
import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from enum import IntEnum
from typing import Any, Literal, Self

import msgspec

from nubo import accounts, social
from nubo.errors import Conflict, Forbidden, NotFound, ValidationFailed
from nubo.ids import new_id
from nubo.model import MessageState, ReportTarget, UserState
from nubo.pagination import Page, make_page
from nubo.stores import Stores
from nubo.stores.entities import Row
from nubo.stores.postgres import Jsonb
from nubo.stores.transaction import Transaction


class ReportState(IntEnum):
    """`moderation.reports.state` (only this module reads or writes reports)."""

    PENDING = 0
    REVIEWED = 1
    RESOLVED = 2


TargetName = Literal["user", "post", "comment", "message"]
StateName = Literal["pending", "reviewed", "resolved"]

TARGET_NAMES: dict[int, TargetName] = {
    ReportTarget.USER: "user",
    ReportTarget.POST: "post",
    ReportTarget.COMMENT: "comment",
    ReportTarget.MESSAGE: "message",
}
TARGET_TYPES = {name: ReportTarget(number) for number, name in TARGET_NAMES.items()}
STATE_NAMES: dict[int, StateName] = {
    ReportState.PENDING: "pending",
    ReportState.REVIEWED: "reviewed",
    ReportState.RESOLVED: "resolved",
}
REPORT_STATES = {name: ReportState(number) for number, name in STATE_NAMES.items()}
ACTIONS = ("dismiss", "remove_content", "ban_user")
MAX_REASON_LENGTH = 1000


class Report(msgspec.Struct):
    """A report as its author sees it: target type and state by name."""

    id: uuid.UUID
    target_type: TargetName
    target_id: uuid.UUID
    reason: str
    state: StateName
    created_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return cls(*_report_fields(row))


class AdminReport(Report):
    """A report as moderators see it: also who filed it and how it was settled."""

    actor_id: uuid.UUID
    resolved_by: uuid.UUID | None
    resolved_at: datetime | None
    resolution: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return cls(
            *_report_fields(row),
            actor_id=row["actor_id"],
            resolved_by=row["resolved_by"],
            resolved_at=row["resolved_at"],
            resolution=row["resolution"],
        )


def _report_fields(row: Mapping[str, Any]) -> tuple[uuid.UUID, TargetName, uuid.UUID, str, StateName, datetime]:
    """The fields of :class:`Report`, in order, from a `moderation.reports` row."""
    return (
        row["id"],
        TARGET_NAMES[row["target_type"]],
        row["target_id"],
        row["reason"],
        STATE_NAMES[row["state"]],
        row["created_at"],
    )


# ---- reporting -------------------------------------------------------------------------------------------


def _absent(target_type: str) -> NotFound:
    return NotFound(f"No such {target_type}", code=f"{target_type}_not_found")


async def _check_user_target(stores: Stores, reporter_id: uuid.UUID, user_id: uuid.UUID) -> None:
    """A user may be reported when active and not blocking the reporter; the reporter's own block is
    allowed on purpose (block-and-report is the usual way to deal with harassment)."""
    if user_id == reporter_id:  # 403: a well-formed request that no schema can refuse
        raise Forbidden("You cannot report yourself", code="cannot_report_self", fields={"target_id": "is the caller"})
    row = await stores.tiered.get("users", user_id)
    if row is None or row.get("state") != UserState.ACTIVE:
        raise _absent("user")
    async with stores.pg.connection() as conn:
        blocked_by = await (
            await conn.execute(
                "SELECT 1 FROM auth.blocks WHERE blocker_id = %s AND blocked_id = %s", (user_id, reporter_id)
            )
        ).fetchone()
    if blocked_by is not None:
        raise _absent("user")


async def _check_post_target(stores: Stores, reporter_id: uuid.UUID, post_id: uuid.UUID) -> None:
    post = await stores.tiered.get("posts", post_id)
    if post is None or not await social.can_see_post(stores, reporter_id, post):
        raise _absent("post")


async def _check_comment_target(stores: Stores, reporter_id: uuid.UUID, comment_id: uuid.UUID) -> None:
    comment = await stores.tiered.get("comments", comment_id)
    if comment is None or await social.hidden_authors(stores, reporter_id, [comment["user_id"]]):
        raise _absent("comment")
    post = await stores.tiered.get("posts", comment["post_id"])
    if post is None or not await social.can_see_post(stores, reporter_id, post):
        raise _absent("comment")


async def _check_message_target(stores: Stores, reporter_id: uuid.UUID, message_id: uuid.UUID) -> None:
    """Only members of the conversation see a message (a blocked sender's messages stay reportable)."""
    message = await stores.tiered.get("messages", message_id)
    if message is None or message.get("state") == MessageState.DELETED:
        raise _absent("message")
    async with stores.pg.connection() as conn:
        member = await (
            await conn.execute(
                "SELECT 1 FROM messaging.conversation_members WHERE conversation_id = %s AND user_id = %s",
                (message["conversation_id"], reporter_id),
            )
        ).fetchone()
    if member is None:
        raise _absent("message")


_TARGET_CHECKS = {
    "user": _check_user_target,
    "post": _check_post_target,
    "comment": _check_comment_target,
    "message": _check_message_target,
}


def _clean_reason(reason: str) -> str:
    text = reason.strip()
    if not text or len(text) > MAX_REASON_LENGTH or "\x00" in text:
        raise ValidationFailed(
            f"reason must be 1 to {MAX_REASON_LENGTH} characters",
            fields={"reason": f"1..{MAX_REASON_LENGTH} characters"},
        )
    return text


async def create_report(
    stores: Stores, reporter_id: uuid.UUID, target_type: str, target_id: uuid.UUID, reason: str
) -> Report:
    """File a report on something the reporter can see (404 otherwise); one pending report per target."""
    if target_type not in TARGET_TYPES:
        raise ValidationFailed("unknown target_type", fields={"target_type": f"one of {', '.join(TARGET_TYPES)}"})
    text = _clean_reason(reason)
    await _TARGET_CHECKS[target_type](stores, reporter_id, target_id)
    kind = TARGET_TYPES[target_type]
    async with stores.pg.connection() as conn, conn.transaction():
        # Serialize on (reporter, target) so two concurrent reports cannot both pass the duplicate check.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"report:{reporter_id}:{target_id}",)
        )
        duplicate = await (
            await conn.execute(
                "SELECT id FROM moderation.reports WHERE actor_id = %s AND target_type = %s AND target_id = %s "
                f"AND state <> {ReportState.RESOLVED:d}",
                (reporter_id, kind, target_id),
            )
        ).fetchone()
        if duplicate is not None:
            raise Conflict("You already reported this; it is being reviewed", code="already_reported")
        row = await (
            await conn.execute(
                "INSERT INTO moderation.reports (id, actor_id, target_type, target_id, reason) "
                "VALUES (%s, %s, %s, %s, %s) RETURNING *",
                (new_id(), reporter_id, kind, target_id, text),
            )
        ).fetchone()
    assert row is not None
    return Report.from_row(row)


# ---- moderators ------------------------------------------------------------------------------------------


async def require_moderator(stores: Stores, user_id: uuid.UUID) -> Row:
    """The caller's current user row when their grade reaches `settings.moderator_grade`, else 403.

    The grade is read from the user row (through the tiers), not from the token, so a demotion applies
    at once.
    """
    row = await stores.tiered.get("users", user_id)
    active = row is not None and row.get("state") == UserState.ACTIVE
    if row is None or not active or row.get("grade", 0) < stores.settings.moderator_grade:
        raise Forbidden("Moderators only", code="forbidden")
    return row


def parse_state(raw: str | None) -> int | None:
    """`?state=` filter: a state name or absent."""
    if raw is None or raw == "":
        return None
    if raw not in REPORT_STATES:
        raise ValidationFailed("unknown state", fields={"state": f"one of {', '.join(REPORT_STATES)}"})
    return REPORT_STATES[raw]


async def list_reports(stores: Stores, *, state: int | None, limit: int, before: uuid.UUID | None) -> Page[AdminReport]:
    """Reports newest first, optionally of one state; cursor is the report id."""
    async with stores.pg.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT * FROM moderation.reports WHERE (%(state)s::smallint IS NULL OR state = %(state)s) "
                "AND (%(before)s::uuid IS NULL OR id < %(before)s) ORDER BY id DESC LIMIT %(n)s",
                {"state": state, "before": before, "n": limit + 1},
            )
        ).fetchall()
    page = make_page(rows, limit)
    return Page(items=[AdminReport.from_row(row) for row in page.items], next=page.next)


def _inet(ip: str | None) -> str | None:
    """The client address when it is one (test clients and proxies may pass names)."""
    try:
        return str(ipaddress.ip_address(ip)) if ip else None
    except ValueError:
        return None


async def _target_author(tx: Transaction, target_type: str, target_id: uuid.UUID) -> uuid.UUID | None:
    """Who is responsible for a reported target: the user itself, or the author of the content."""
    if target_type == "user":
        return target_id
    query = {
        "post": "SELECT user_id AS author FROM content.posts WHERE id = %s",
        "comment": "SELECT user_id AS author FROM content.comments WHERE id = %s",
        "message": "SELECT sender_id AS author FROM messaging.message_index WHERE id = %s",
    }[target_type]
    row = await (await tx.conn.execute(query, (target_id,))).fetchone()
    return row["author"] if row else None


async def _remove_content(tx: Transaction, target_type: str, target_id: uuid.UUID) -> dict[str, Any]:
    if target_type == "user":
        raise ValidationFailed(
            "a user report cannot remove content; use ban_user",
            code="invalid_action",
            fields={"action": "not for user reports"},
        )
    if target_type == "message":  # messages are soft-deleted: the conversation keeps its ordering
        changed = await tx.update("messages", target_id, {"state": MessageState.DELETED, "content": None})
        return {"removed": changed is not None}
    removed = await tx.delete("posts" if target_type == "post" else "comments", target_id)
    return {"removed": removed is not None}


async def _ban_user(
    stores: Stores, tx: Transaction, moderator_id: uuid.UUID, user_id: uuid.UUID | None
) -> dict[str, Any]:
    if user_id is None:
        return {"banned": None}
    if user_id == moderator_id:
        raise ValidationFailed("You cannot ban yourself", code="cannot_ban_self", fields={"action": "self"})
    changed = await tx.update("users", user_id, {"state": UserState.BANNED})
    # A banned user's sessions end with the ban (same transaction); Redis learns it after the commit.
    revoked = await accounts.revoke_user_sessions(stores, user_id, "banned", conn=tx.conn)
    return {"banned": user_id if changed is not None else None, "revoked_sessions": revoked}


async def resolve_report(
    stores: Stores,
    moderator_id: uuid.UUID,
    report_id: uuid.UUID,
    *,
    action: str,
    resolution: str,
    ip: str | None = None,
) -> AdminReport:
    """Resolve a report with `action`, writing admin_actions and audit_logs in the same transaction.

    404 for an unknown report, 409 `already_resolved` when it was resolved before (also under a race: the
    conditional UPDATE lets exactly one moderator win).
    """
    if action not in ACTIONS:
        raise ValidationFailed("unknown action", fields={"action": f"one of {', '.join(ACTIONS)}"})
    text = _clean_reason(resolution)
    async with stores.transaction() as tx:
        report = await (
            await tx.conn.execute(
                f"UPDATE moderation.reports SET state = {ReportState.RESOLVED:d}, resolved_by = %s, "
                "resolved_at = now(), resolution = %s "
                f"WHERE id = %s AND state <> {ReportState.RESOLVED:d} RETURNING *",
                (moderator_id, text, report_id),
            )
        ).fetchone()
        if report is None:
            await _raise_unresolvable(tx, report_id)
        assert report is not None
        details = await _apply_action(stores, tx, moderator_id, dict(report), action)
        await _write_trail(tx, moderator_id, dict(report), action, details, _inet(ip))
    await accounts.mark_revoked(stores, details.get("revoked_sessions", []))
    return AdminReport.from_row(report)


async def _raise_unresolvable(tx: Transaction, report_id: uuid.UUID) -> None:
    exists = await (await tx.conn.execute("SELECT 1 FROM moderation.reports WHERE id = %s", (report_id,))).fetchone()
    if exists is None:
        raise NotFound("No such report", code="report_not_found")
    raise Conflict("This report is already resolved", code="already_resolved")


async def _apply_action(
    stores: Stores, tx: Transaction, moderator_id: uuid.UUID, report: Row, action: str
) -> dict[str, Any]:
    target_type = TARGET_NAMES[report["target_type"]]
    if action == "remove_content":
        return await _remove_content(tx, target_type, report["target_id"])
    if action == "ban_user":
        author = await _target_author(tx, target_type, report["target_id"])
        return await _ban_user(stores, tx, moderator_id, author)
    return {}


async def _write_trail(
    tx: Transaction, moderator_id: uuid.UUID, report: Row, action: str, details: dict[str, Any], ip: str | None
) -> None:
    # UUIDs (also inside lists) become strings for the JSONB columns.
    trail = {"action": action, "resolution": report["resolution"], **details}
    data = json.loads(json.dumps(trail, default=str))
    await tx.conn.execute(
        "INSERT INTO moderation.admin_actions "
        "(id, admin_id, action, target_type, target_id, report_id, details) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (new_id(), moderator_id, action, report["target_type"], report["target_id"], report["id"], Jsonb(data)),
    )
    await tx.conn.execute(
        "INSERT INTO moderation.audit_logs (id, actor_id, action, entity, entity_id, data, ip) "
        "VALUES (%s, %s, 'report.resolve', 'report', %s, %s, %s)",
        (new_id(), moderator_id, report["id"], Jsonb(data), ip),
    )


# ---- operators (`nubo users ...`) --------------------------------------------------------------------------

ROLES = ("user", "moderator", "admin")
USER_GRADE = 1  # the default of auth.users.grade
ADMIN_GRADE = 10  # above the default moderator grade (NUBO_MODERATOR_GRADE, 5)


class UserRole(msgspec.Struct):
    """A user as an operator command leaves them: role (from the grade), grade, state, sessions revoked."""

    id: uuid.UUID
    username: str
    role: str
    grade: int
    state: str
    revoked_sessions: int = 0


def role_grade(stores: Stores, role: str) -> int:
    """The grade a role gives: moderators get NUBO_MODERATOR_GRADE, admins at least that."""
    moderator = stores.settings.moderator_grade
    grades = {"user": USER_GRADE, "moderator": moderator, "admin": max(ADMIN_GRADE, moderator)}
    if role not in grades:
        raise ValidationFailed(f"unknown role {role!r}", fields={"role": " | ".join(ROLES)})
    return grades[role]


def role_of(stores: Stores, grade: int) -> str:
    if grade >= role_grade(stores, "admin"):
        return "admin"
    return "moderator" if grade >= stores.settings.moderator_grade else "user"


def _user_role(stores: Stores, row: Mapping[str, Any], revoked: int = 0) -> UserRole:
    grade = int(row.get("grade") or USER_GRADE)
    state = UserState(row["state"]).name.lower()
    return UserRole(row["id"], row["username"], role_of(stores, grade), grade, state, revoked)


async def _operator_user(stores: Stores, ref: str) -> Row:
    row = await accounts.find_user(stores, ref)
    if row is None:
        raise NotFound(f"No user with id or username {ref!r}", code="user_not_found")
    return row


async def _audit(tx: Transaction, action: str, user_id: uuid.UUID, data: dict[str, Any]) -> None:
    """An audit_logs row without an actor: the change came from an operator's command line."""
    await tx.conn.execute(
        "INSERT INTO moderation.audit_logs (id, actor_id, action, entity, entity_id, data) "
        "VALUES (%s, NULL, %s, 'user', %s, %s)",
        (new_id(), action, user_id, Jsonb(data)),
    )


async def set_role(stores: Stores, ref: str, role: str) -> UserRole:
    """Give a user (id or username) a role: `user`, `moderator` or `admin` (its grade, see :func:`role_grade`).

    The row goes through the tiered write path (its Mongo and Redis copies, and the near copies of every
    instance, follow at once) and the mirrors of the user's live sessions are rewritten from PostgreSQL, so
    the change applies to the next request, without a new login.
    """
    grade = role_grade(stores, role)
    row = await _operator_user(stores, ref)
    async with stores.transaction() as tx:
        changed = await tx.update("users", row["id"], {"grade": grade})
        await _audit(tx, "operator.role", row["id"], {"role": role, "grade": grade, "was": row.get("grade")})
    await accounts.refresh_user_mirrors(stores, row["id"])
    return _user_role(stores, changed or row)


async def set_banned(stores: Stores, ref: str, banned: bool) -> UserRole:
    """Ban a user (every session revoked at once, on every instance; content hidden by every reader) or lift
    the ban (the account is active again; the user logs in again). Deactivated accounts are left alone."""
    row = await _operator_user(stores, ref)
    current = UserState(row["state"])
    if current == UserState.DEACTIVATED:
        raise Conflict(f"User {row['username']} deactivated their account", code="user_inactive")
    target = UserState.BANNED if banned else UserState.ACTIVE
    revoked: list[uuid.UUID] = []
    async with stores.transaction() as tx:
        changed = await tx.update("users", row["id"], {"state": target})
        if banned:
            revoked = await accounts.revoke_user_sessions(stores, row["id"], "banned", conn=tx.conn)
        await _audit(tx, "operator.ban" if banned else "operator.unban", row["id"], {"was": current.name.lower()})
    await accounts.mark_revoked(stores, revoked)
    return _user_role(stores, changed or row, len(revoked))
