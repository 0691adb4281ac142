"""Routes for reports and moderation: `POST /reports`, `GET /admin/reports` and
`POST /admin/reports/{id}/resolve`.

Handlers return the shapes of :mod:`nubo.moderation` (:class:`~nubo.moderation.Report`,
:class:`~nubo.moderation.AdminReport`). Admin routes answer 403 `forbidden` unless the caller's grade reaches
`settings.moderator_grade`.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import msgspec
from litestar import get, post
from litestar.params import FromPath, JSONBody, Parameter, QueryParameter

from nubo import moderation
from nubo.ids import parse_id
from nubo.moderation import AdminReport, Report, StateName, TargetName
from nubo.pagination import Page
from nubo.server.contract import NOT_BLANK, errors
from nubo.server.users import AnyRequest, Before, Limit, StoresDep, caller_id

# `state` is a reserved Litestar kwarg name, hence the alias.
StateQuery = Annotated[StateName | None, QueryParameter(name="state", description="Only this state")]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=moderation.MAX_REASON_LENGTH, pattern=NOT_BLANK)]


class NewReport(msgspec.Struct, forbid_unknown_fields=True):
    """A report on a user, post, comment or message the caller can see."""

    target_type: TargetName
    target_id: uuid.UUID
    reason: Text


class Resolution(msgspec.Struct, forbid_unknown_fields=True):
    """How a moderator settles a report: `dismiss`, `remove_content` (post/comment/message) or `ban_user`
    (the reported user, or the author of the reported content)."""

    action: Literal["dismiss", "remove_content", "ban_user"]
    resolution: Text


@post("/reports", summary="Report a user, post, comment or message", tags=["moderation"], responses=errors(403, 404))
async def create_report(request: AnyRequest, stores: StoresDep, data: JSONBody[NewReport]) -> Report:
    reporter = caller_id(request)
    # Reports are cheap to send and costly to review: each user is capped (NUBO_RATE_REPORTS, 30/hour).
    await stores.rate_limits.limit("reports", str(reporter), stores.settings.rate_reports)
    return await moderation.create_report(stores, reporter, data.target_type, data.target_id, data.reason)


@get("/admin/reports", summary="Reports, newest first (moderators)", tags=["moderation"], responses=errors(403))
async def list_reports(
    request: AnyRequest, stores: StoresDep, limit: Limit = 20, before: Before = None, report_state: StateQuery = None
) -> Page[AdminReport]:
    await moderation.require_moderator(stores, caller_id(request))
    return await moderation.list_reports(stores, state=moderation.parse_state(report_state), limit=limit, before=before)


@post(
    "/admin/reports/{report_id:str}/resolve",
    summary="Resolve a report (moderators)",
    tags=["moderation"],
    status_code=200,
    responses=errors(403, 409),
)
async def resolve_report(
    request: AnyRequest,
    stores: StoresDep,
    data: JSONBody[Resolution],
    report_id: FromPath[Annotated[str, Parameter(description="A report id (UUID)", schema_extra={"format": "uuid"})]],
) -> AdminReport:
    moderator = caller_id(request)
    await moderation.require_moderator(stores, moderator)
    return await moderation.resolve_report(
        stores,
        moderator,
        parse_id(report_id, "report_id"),
        action=data.action,
        resolution=data.resolution,
        ip=request.client.host if request.client else None,
    )


ROUTES = [create_report, list_reports, resolve_report]
