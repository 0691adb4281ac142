"""The rules of session mirrors: how long a Redis mirror of a live session is trusted, how a revocation reaches
every instance, and how an active session's mirror is checked again before it lapses.

Each live session is mirrored in Redis (:mod:`nubo.stores.session_mirrors`) so the per-request check costs one
GET; a revoked session is marked there at once, and a live mirror never overwrites that mark. PostgreSQL stays
the truth: a mirror lives at most :data:`MIRROR_TTL` seconds before PostgreSQL is asked again, and a Redis
failure only costs PostgreSQL reads.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from nubo.logs import get_logger
from nubo.model import UserState
from nubo.stores import Stores, session_mirrors
from nubo.stores.entities import Row
from nubo.stores.postgres import PgError
from nubo.stores.redis import REDIS_FAILURES
from nubo.stores.session_mirrors import LiveMirror, Refreshed

log = get_logger(__name__)

MIRROR_TTL = 60  # seconds a live-session mirror is trusted before PostgreSQL is asked again (safety net)
MIRROR_REFRESH_BELOW = MIRROR_TTL // 4  # an active session's mirror is re-checked in the background then
_REFRESH_FAILURES: tuple[type[Exception], ...] = (*REDIS_FAILURES, PgError)

# A session with its user, as the session check needs it (add a WHERE on `s.id`).
_SESSIONS_SQL = (
    "SELECT s.id AS session_id, s.user_id, s.revoked, s.expires_at <= now() AS expired, "
    "GREATEST(1, EXTRACT(EPOCH FROM s.expires_at - now()))::int AS seconds_left, "
    "u.username, u.grade, u.state "
    "FROM auth.sessions s JOIN auth.users u ON u.id = s.user_id "
)


def live_mirror(user_id: uuid.UUID, user_row: Mapping[str, Any]) -> LiveMirror:
    """The mirror of a live session of `user_id`, from their user row (or a session row with its user)."""
    return LiveMirror(user_id=str(user_id), username=user_row["username"], grade=int(user_row.get("grade") or 1))


def mirror_ttl() -> int:
    """MIRROR_TTL less up to a quarter: sessions opened together (a deploy, a reconnect wave) must not all
    go back to PostgreSQL in the same second."""
    return MIRROR_TTL - secrets.randbelow(MIRROR_TTL // 4 + 1)


async def mirror_live(stores: Stores, session_id: uuid.UUID, user_row: Mapping[str, Any], seconds: int) -> None:
    """Mirror a live session (NX: never overwrites a revocation marker). A failure only costs PG reads."""
    try:
        mirror = live_mirror(user_row["id"], user_row)
        await session_mirrors.write_live(stores, session_id, mirror, max(1, min(mirror_ttl(), seconds)))
    except REDIS_FAILURES as exc:
        stores.count_failure("redis_session")
        log.warning("session_mirror_failed", extra={"error": type(exc).__name__})


async def mark_revoked(stores: Stores, session_ids: Sequence[uuid.UUID]) -> None:
    """Mark sessions revoked in Redis (plain SET, beats any live mirror) so every instance refuses them now.

    Call after the PostgreSQL commit that revoked them. The marker outlives the longest access token.
    """
    if not session_ids:
        return
    try:
        # Open WebSockets of these sessions, on every instance, are closed too (nubo.realtime.hub).
        await session_mirrors.mark_revoked(
            stores, session_ids, ttl=stores.settings.access_token_ttl + 60, channel=stores.events.channels.revoked
        )
    except REDIS_FAILURES as exc:
        # PostgreSQL already says revoked; a live mirror (if any) lapses within MIRROR_TTL seconds.
        stores.count_failure("redis_session")
        log.warning("session_revoke_mirror_failed", extra={"sessions": len(session_ids), "error": type(exc).__name__})


async def revoked_among(stores: Stores, session_ids: Sequence[uuid.UUID | str]) -> set[str]:
    """Which of these sessions carry the Redis revocation marker (for long-lived sockets, checked
    periodically; a Redis failure answers "none", as the next check will tell)."""
    try:
        return await session_mirrors.revoked_among(stores, [str(sid) for sid in session_ids])
    except REDIS_FAILURES:
        return set()


def is_live(row: Mapping[str, Any]) -> bool:
    """A session row of :func:`session_state`: neither revoked nor expired, and its user is active."""
    return not row["revoked"] and not row["expired"] and row["state"] == UserState.ACTIVE


async def session_state(stores: Stores, session_id: uuid.UUID) -> Row | None:
    """The session with its user (revoked, expired, seconds left, username, grade, state) from PostgreSQL."""
    async with stores.pg.connection() as conn:
        row = await (await conn.execute(_SESSIONS_SQL + "WHERE s.id = %s", (session_id,))).fetchone()
    return dict(row) if row else None


async def refresh_mirrors(stores: Stores, sessions: Mapping[uuid.UUID, uuid.UUID]) -> None:
    """Ask PostgreSQL again about live mirrors (`{session id: user id}`) before they lapse, in one query: a
    revoked or expired session gets its marker, a live one a new mirror lifetime (never over a revocation
    marker written meanwhile). Background work: through :attr:`Stores.background_pg`."""
    try:
        async with stores.background_pg, stores.pg.connection() as conn:
            rows = await (await conn.execute(_SESSIONS_SQL + "WHERE s.id = ANY(%s)", (list(sessions),))).fetchall()
        rows = [row for row in rows if sessions.get(row["session_id"]) == row["user_id"]]
        live = [row for row in rows if is_live(row)]
        live_ids = {row["session_id"] for row in live}
        gone = [row["session_id"] for row in rows if row["session_id"] not in live_ids]
        if gone:
            await mark_revoked(stores, gone)
        await session_mirrors.extend_unless_revoked(
            stores,
            [
                Refreshed(
                    row["session_id"], live_mirror(row["user_id"], row), min(mirror_ttl(), int(row["seconds_left"]))
                )
                for row in live
            ],
        )
    except _REFRESH_FAILURES as exc:
        stores.count_failure("redis_session")
        log.warning("session_mirror_refresh_failed", extra={"error": type(exc).__name__})


async def refresh_user_mirrors(stores: Stores, user_id: uuid.UUID) -> int:
    """Rewrite the mirrors of a user's live sessions from PostgreSQL now (after a change of grade, say), so
    every instance sees the change at its next request; returns how many sessions were refreshed."""
    async with stores.pg.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT id FROM auth.sessions WHERE user_id = %s AND NOT revoked AND expires_at > now()", (user_id,)
            )
        ).fetchall()
    sessions = {row["id"]: user_id for row in rows}
    if sessions:
        await refresh_mirrors(stores, sessions)
    return len(sessions)
