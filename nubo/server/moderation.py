"""Routes for reports and moderation: `POST /reports`, `GET /admin/reports` and
`POST /admin/reports/{id}/resolve`.

Admin routes answer 403 `forbidden` unless the caller's grade reaches `settings.moderator_grade`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from litestar import get, post
from litestar.params import FromPath, JSONBody, Parameter, QueryParameter

from nubo import moderation
from nubo.ids import parse_id
from nubo.pagination import Page
from nubo.server.users import AnyRequest, Before, Limit, StoresDep, caller_id
from nubo.settings import RateLimit

# Reports are cheap to send and costly to review: cap each user at 30 an hour.
REPORT_RATE = RateLimit(30, 3600)

TargetType = Literal["user", "post", "comment", "message"]
ReportState = Literal["pending", "reviewed", "resolved"]
# `state` is a reserved Litestar kwarg name, hence the alias.
StateQuery = Annotated[ReportState | None, QueryParameter(name="state", description="Only this state")]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=moderation.MAX_REASON_LENGTH)]


class NewReport(msgspec.Struct, forbid_unknown_fields=True):
    """A report on a user, post, comment or message the caller can see."""

    target_type: TargetType
    target_id: uuid.UUID
    reason: Text


class Resolution(msgspec.Struct, forbid_unknown_fields=True):
    """How a moderator settles a report: `dismiss`, `remove_content` (post/comment/message) or `ban_user`
    (the reported user, or the author of the reported content)."""

    action: Literal["dismiss", "remove_content", "ban_user"]
    resolution: Text


@dataclass
class Report:
    """A report as its author sees it."""

    id: uuid.UUID
    target_type: TargetType
    target_id: uuid.UUID
    reason: str
    state: ReportState
    created_at: datetime


@dataclass
class AdminReport(Report):
    """A report as moderators see it: who filed it and how it was settled."""

    actor_id: uuid.UUID
    resolved_by: uuid.UUID | None
    resolved_at: datetime | None
    resolution: str | None


@post("/reports", summary="Report a user, post, comment or message", tags=["moderation"])
async def create_report(request: AnyRequest, stores: StoresDep, data: JSONBody[NewReport]) -> Report:
    reporter = caller_id(request)
    await stores.rate_limits.limit("reports", str(reporter), REPORT_RATE)
    row = await moderation.create_report(stores, reporter, data.target_type, data.target_id, data.reason)
    return Report(**moderation.report_view(row))


@get("/admin/reports", summary="Reports, newest first (moderators)", tags=["moderation"])
async def list_reports(
    request: AnyRequest, stores: StoresDep, limit: Limit = 20, before: Before = None, report_state: StateQuery = None
) -> Page[AdminReport]:
    await moderation.require_moderator(stores, caller_id(request))
    page = await moderation.list_reports(stores, state=moderation.parse_state(report_state), limit=limit, before=before)
    return Page(items=[AdminReport(**moderation.report_view(row, admin=True)) for row in page.items], next=page.next)


@post(
    "/admin/reports/{report_id:str}/resolve",
    summary="Resolve a report (moderators)",
    tags=["moderation"],
    status_code=200,
)
async def resolve_report(
    request: AnyRequest,
    stores: StoresDep,
    data: JSONBody[Resolution],
    report_id: FromPath[Annotated[str, Parameter(description="A report id (UUID)", schema_extra={"format": "uuid"})]],
) -> AdminReport:
    moderator = caller_id(request)
    await moderation.require_moderator(stores, moderator)
    row = await moderation.resolve_report(
        stores,
        moderator,
        parse_id(report_id, "report_id"),
        action=data.action,
        resolution=data.resolution,
        ip=request.client.host if request.client else None,
    )
    return AdminReport(**moderation.report_view(row, admin=True))


ROUTES = [create_report, list_reports, resolve_report]
