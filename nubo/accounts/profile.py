"""The owner's own account: their profile, their settings, and deactivation.

User and settings rows are written through the tiered path, so their Mongo and Redis copies follow. Only an
active account can be read or changed here; deactivating revokes every session at once. A profile picture is
one's own ready image (422 `media_not_owned` otherwise); the one it replaces is deleted unless used elsewhere.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from nubo.accounts.mirrors import mark_revoked
from nubo.accounts.sessions import revoke_user_sessions
from nubo.accounts.users import get_active_user, with_picture
from nubo.accounts.views import SETTINGS_FIELDS, MeView, SettingsView
from nubo.errors import NotFound, ValidationFailed
from nubo.ids import new_id, parse_id
from nubo.logs import get_logger
from nubo.media import check_attachable, release_media
from nubo.model import UserState
from nubo.stores import Stores
from nubo.stores.entities import Row
from nubo.stores.postgres import PgConnection
from nubo.stores.transaction import Transaction

log = get_logger(__name__)

PROFILE_FIELDS = (
    "first_name",
    "last_name",
    "bio",
    "birthdate",
    "sex",
    "location",
    "school",
    "works",
    "profile_picture_id",
)


def profile_problems(values: Mapping[str, Any]) -> dict[str, str]:
    """What is wrong with these profile values, by field (empty when nothing is)."""
    problems: dict[str, str] = {}
    birthdate = values.get("birthdate")
    if isinstance(birthdate, date) and not date(1900, 1, 1) <= birthdate <= datetime.now(UTC).date():
        problems["birthdate"] = "must be between 1900-01-01 and today"
    sex = values.get("sex")
    if sex is not None and not (isinstance(sex, int) and 0 <= sex <= 9):
        problems["sex"] = "an integer code between 0 and 9"
    for name in ("first_name", "last_name"):
        if name in values and not str(values[name] or "").strip():
            problems[name] = "must not be blank"
    return problems


async def get_me(stores: Stores, user_id: uuid.UUID) -> MeView:
    """The caller's own account; 404 unless it is active."""
    row = await get_active_user(stores, user_id)
    if row is None:
        raise NotFound("No such user", code="user_not_found")
    return await with_picture(stores, MeView.from_row(row))


async def update_profile(stores: Stores, user_id: uuid.UUID, changes: Mapping[str, Any]) -> MeView:
    """Change profile fields (see PROFILE_FIELDS); unknown fields are a 422."""
    unknown = sorted(set(changes) - set(PROFILE_FIELDS))
    problems = {name: "not a profile field" for name in unknown} | profile_problems(changes)
    if problems:
        raise ValidationFailed("Some fields are invalid", fields=problems)
    values = {
        k: (v.strip() if k in ("first_name", "last_name") and isinstance(v, str) else v) for k, v in changes.items()
    }
    async with stores.transaction() as tx:
        before = await _picture_of(tx, user_id)
        if values.get("profile_picture_id") is not None:  # one's own ready image only
            picture = values["profile_picture_id"] = parse_id(values["profile_picture_id"], "profile_picture_id")
            await check_attachable(tx.conn, user_id, [picture], field="profile_picture_id", kinds=(0,))
        row = await tx.update("users", user_id, values)
        if before is not None and row is not None and row.get("profile_picture_id") != before:
            await release_media(tx, stores, user_id, [before])  # the replaced picture, unless used elsewhere
    if row is None or row.get("state") != UserState.ACTIVE:
        raise NotFound("No such user", code="user_not_found")
    return await with_picture(stores, MeView.from_row(row))


async def _picture_of(tx: Transaction, user_id: uuid.UUID) -> uuid.UUID | None:
    row = await (
        await tx.conn.execute("SELECT profile_picture_id FROM auth.users WHERE id = %s FOR UPDATE", (user_id,))
    ).fetchone()
    return row["profile_picture_id"] if row else None


async def _settings_row(conn: PgConnection, user_id: uuid.UUID) -> Row | None:
    row = await (await conn.execute("SELECT * FROM auth.user_settings WHERE user_id = %s", (user_id,))).fetchone()
    return dict(row) if row else None


async def get_settings(stores: Stores, user_id: uuid.UUID) -> SettingsView:
    """The caller's settings (the defaults when an old account has no settings row)."""
    async with stores.pg.connection() as conn:
        row = await _settings_row(conn, user_id)
    return SettingsView.from_row(row) if row else SettingsView.defaults()


async def put_settings(stores: Stores, user_id: uuid.UUID, values: Mapping[str, Any]) -> SettingsView:
    """Replace the caller's settings (creating the row if an old account has none)."""
    clean = {k: values[k] for k in SETTINGS_FIELDS}
    async with stores.transaction() as tx:
        row = await _settings_row(tx.conn, user_id)
        if row is None:
            updated = await tx.insert("user_settings", {"id": new_id(), "user_id": user_id, **clean})
        else:
            updated = await tx.update("user_settings", row["id"], clean) or row
    return SettingsView.from_row(updated)


async def deactivate(stores: Stores, user_id: uuid.UUID) -> None:
    """Deactivated: every session revoked now, login refused like a wrong password, content hidden by readers."""
    async with stores.transaction() as tx:
        row = await tx.update("users", user_id, {"state": UserState.DEACTIVATED})
        revoked = await revoke_user_sessions(stores, user_id, "deactivated", conn=tx.conn)
    await mark_revoked(stores, revoked)
    if row is not None:
        log.info("user_deactivated", extra={"user_id": str(user_id), "sessions_revoked": len(revoked)})
