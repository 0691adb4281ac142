"""Sessions and their tokens: opening a session, rotating its refresh token, listing and revoking sessions,
and operator tokens (`nubo token`).

A session row in PostgreSQL stores only the SHA-256 of its refresh token; each refresh replaces the token, and
presenting an already rotated one revokes the whole session (reuse detection). Every open or rotation mirrors
the session for the per-request check (:mod:`nubo.accounts.mirrors`); every revocation marks it there after
the commit. Never log a refresh token.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nubo.accounts import security
from nubo.accounts.mirrors import mark_revoked, mirror_live
from nubo.accounts.users import find_user, get_active_user
from nubo.accounts.views import MeView, SessionView, TokenView
from nubo.errors import Conflict, NotFound, Unauthorized
from nubo.ids import new_id
from nubo.logs import get_logger
from nubo.model import UserState
from nubo.pagination import Page, make_page
from nubo.stores import Stores
from nubo.stores.entities import Row
from nubo.stores.postgres import Jsonb, PgConnection

log = get_logger(__name__)

MAX_SESSION_IPS = 10


@dataclass(frozen=True)
class ClientInfo:
    """Where a request comes from, recorded on the session (never trusted for authorization)."""

    ip: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True)
class IssuedTokens:
    """What a login or a refresh hands out. `refresh_token` is shown once and stored only as a hash."""

    access_token: str
    expires_in: int
    refresh_token: str
    session_id: uuid.UUID
    user: MeView

    def view(self) -> TokenView:
        """What the client receives (the session id is not part of it)."""
        return TokenView(self.access_token, "bearer", self.expires_in, self.refresh_token, self.user)


def inet(ip: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's address, or None for a peer without one (test clients and odd proxies pass names)."""
    try:
        return ipaddress.ip_address(ip) if ip else None
    except ValueError:
        return None


def _device(client: ClientInfo) -> dict[str, str]:
    agent = (client.user_agent or "").replace("\x00", "")[:300]
    return {"user_agent": agent} if agent else {}


# ---------------------------------------------------------------- opening and rotating


async def open_session(
    stores: Stores,
    user_row: Mapping[str, Any],
    client: ClientInfo,
    *,
    lifetime: int | None = None,
    access_ttl: int | None = None,
) -> IssuedTokens:
    """Insert a session (only the refresh token's hash is stored), mirror it, and sign an access token."""
    settings = stores.settings
    session_id, refresh_token = new_id(), security.new_refresh_token()
    seconds = lifetime or settings.refresh_token_ttl
    ip = inet(client.ip)
    async with stores.pg.connection() as conn:
        await conn.execute(
            "INSERT INTO auth.sessions (id, user_id, refresh_token_hash, device_info, ip, expires_at) "
            "VALUES (%s, %s, %s, %s, %s, now() + make_interval(secs => %s))",
            (
                session_id,
                user_row["id"],
                security.hash_refresh_token(refresh_token),
                Jsonb(_device(client)),
                [ip] if ip else [],
                seconds,
            ),
        )
    await mirror_live(stores, session_id, user_row, seconds)
    access, expires_in = security.encode_access_token(settings, user_row["id"], session_id, ttl=access_ttl)
    return IssuedTokens(access, expires_in, refresh_token, session_id, MeView.from_row(user_row))


async def refresh(stores: Stores, refresh_token: str, client: ClientInfo) -> IssuedTokens:
    """Rotate a refresh token: the new one replaces the old in one transaction (row locked FOR UPDATE), so
    two concurrent refreshes with one token cannot both succeed. Presenting an already rotated token
    revokes the whole session (reuse detection, RFC 9700 §4.14)."""
    old_hash = security.hash_refresh_token(refresh_token)
    new_token = security.new_refresh_token()
    async with stores.pg.connection() as conn, conn.transaction():
        outcome, session = await _rotate(
            conn, old_hash, security.hash_refresh_token(new_token), client, stores.settings.refresh_token_ttl
        )
    if outcome == "reused" and session is not None:
        await mark_revoked(stores, [session["id"]])
        log.warning(
            "refresh_token_reused",
            extra={"session_id": str(session["id"]), "user_id": str(session["user_id"]), "ip": client.ip},
        )
        raise Unauthorized("This refresh token was already used; the session is revoked", code="refresh_token_reused")
    if outcome != "rotated" or session is None:
        code = "expired_token" if outcome == "expired" else "invalid_token"
        raise Unauthorized(f"The refresh token is {outcome}", code=code)
    user_row = await get_active_user(stores, session["user_id"])
    if user_row is None:
        await revoke_user_sessions(stores, session["user_id"], "inactive_user")
        raise Unauthorized("The refresh token is revoked", code="invalid_token")
    await mirror_live(stores, session["id"], user_row, stores.settings.refresh_token_ttl)
    access, expires_in = security.encode_access_token(stores.settings, user_row["id"], session["id"])
    return IssuedTokens(access, expires_in, new_token, session["id"], MeView.from_row(user_row))


async def _rotate(
    conn: PgConnection, old_hash: str, new_hash: str, client: ClientInfo, lifetime: int
) -> tuple[str, Row | None]:
    """Inside the caller's transaction: ('rotated'|'reused'|'revoked'|'expired'|'unknown', session)."""
    row = await (
        await conn.execute(
            "SELECT id, user_id, revoked, expires_at <= now() AS expired FROM auth.sessions "
            "WHERE refresh_token_hash = %s FOR UPDATE",
            (old_hash,),
        )
    ).fetchone()
    if row is None:
        return await _revoke_on_reuse(conn, old_hash)
    if row["revoked"]:
        return "revoked", dict(row)
    if row["expired"]:
        return "expired", dict(row)
    await conn.execute(
        "INSERT INTO auth.used_refresh_tokens (token_hash, session_id) VALUES (%s, %s)", (old_hash, row["id"])
    )
    ip = inet(client.ip)
    await conn.execute(
        "UPDATE auth.sessions SET refresh_token_hash = %s, last_used_at = now(), "
        "expires_at = now() + make_interval(secs => %s), "
        "ip = CASE WHEN %s::inet IS NULL OR %s::inet = ANY(ip) OR cardinality(ip) >= %s THEN ip "
        "ELSE ip || %s::inet END WHERE id = %s",
        (new_hash, lifetime, ip, ip, MAX_SESSION_IPS, ip, row["id"]),
    )
    return "rotated", dict(row)


async def _revoke_on_reuse(conn: PgConnection, old_hash: str) -> tuple[str, Row | None]:
    """A token that is no session's current one: 'reused' (and its session revoked) if it was rotated
    before, else 'unknown'."""
    used = await (
        await conn.execute(
            "SELECT s.id, s.user_id FROM auth.used_refresh_tokens u "
            "JOIN auth.sessions s ON s.id = u.session_id WHERE u.token_hash = %s FOR UPDATE OF s",
            (old_hash,),
        )
    ).fetchone()
    if used is None:
        return "unknown", None
    await conn.execute(
        "UPDATE auth.sessions SET revoked = TRUE, revoked_at = now(), "
        "revoked_reason = 'refresh_token_reuse' WHERE id = %s AND NOT revoked",
        (used["id"],),
    )
    return "reused", dict(used)


# ---------------------------------------------------------------- session management


async def list_sessions(
    stores: Stores, user_id: uuid.UUID, current: uuid.UUID | None, *, limit: int, before: uuid.UUID | None
) -> Page[SessionView]:
    """The caller's live sessions, newest first (cursor: session id)."""
    async with stores.pg.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT id, device_info, ip, created_at, last_used_at, expires_at FROM auth.sessions "
                "WHERE user_id = %(u)s AND NOT revoked AND expires_at > now() "
                "AND (%(b)s::uuid IS NULL OR id < %(b)s) ORDER BY id DESC LIMIT %(n)s",
                {"u": user_id, "b": before, "n": limit + 1},
            )
        ).fetchall()
    page = make_page([dict(r) for r in rows], limit)
    return Page(items=[SessionView.from_row(r, current) for r in page.items], next=page.next)


async def revoke_session(stores: Stores, user_id: uuid.UUID, session_id: uuid.UUID, reason: str = "logout") -> None:
    """Revoke one of the caller's own sessions; 404 for another user's, an unknown or a revoked one."""
    async with stores.pg.connection() as conn:
        row = await (
            await conn.execute(
                "UPDATE auth.sessions SET revoked = TRUE, revoked_at = now(), revoked_reason = %s "
                "WHERE id = %s AND user_id = %s AND NOT revoked RETURNING id",
                (reason, session_id, user_id),
            )
        ).fetchone()
    if row is None:
        raise NotFound("No such session", code="session_not_found")
    await mark_revoked(stores, [session_id])
    log.info("session_revoked", extra={"user_id": str(user_id), "session_id": str(session_id), "reason": reason})


async def revoke_user_sessions(
    stores: Stores, user_id: uuid.UUID, reason: str, conn: PgConnection | None = None
) -> list[uuid.UUID]:
    """Revoke every live session of a user (deactivation, ban, password change). With `conn`, runs in the
    caller's transaction and the caller must call :func:`mark_revoked` with the result after commit."""
    query = (
        "UPDATE auth.sessions SET revoked = TRUE, revoked_at = now(), revoked_reason = %s "
        "WHERE user_id = %s AND NOT revoked RETURNING id"
    )
    if conn is not None:
        rows = await (await conn.execute(query, (reason, user_id))).fetchall()
        return [r["id"] for r in rows]
    async with stores.pg.connection() as own:
        rows = await (await own.execute(query, (reason, user_id))).fetchall()
    ids = [r["id"] for r in rows]
    await mark_revoked(stores, ids)
    return ids


# ---------------------------------------------------------------- operator tokens (`nubo token`)


async def issue_operator_token(stores: Stores, ref: str, ttl: int) -> IssuedTokens:
    """An access token for an existing active user, backed by a new session living `ttl` seconds."""
    row = await find_user(stores, ref)
    if row is None:
        raise NotFound(f"No user with id or username {ref!r}", code="user_not_found")
    if row.get("state") != UserState.ACTIVE:
        raise Conflict(f"User {row['username']} is not active (state {row.get('state')})", code="user_inactive")
    return await open_session(stores, row, ClientInfo(user_agent="nubo token"), lifetime=ttl, access_ttl=ttl)
