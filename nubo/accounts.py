"""Accounts: signup, login, rotating refresh tokens, sessions, profile, settings and deactivation.

Plain async functions over :class:`~nubo.stores.Stores` (no HTTP here). PostgreSQL holds users and sessions;
user and settings rows are written through the tiered path so their Mongo/Redis copies follow. Each live
session is mirrored in Redis at ``{prefix}session:{sid}`` so the per-request check costs one GET; a revoked
session is marked there at once (plain SET), while live mirrors are only ever written with NX, so a late
"live" write can never overwrite a revocation. When Redis is down or the mirror is missing, PostgreSQL
answers and the mirror is rebuilt.

Never log a password, a hash or a refresh token.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

import msgspec
import psycopg
from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb
from redis.exceptions import RedisError

from nubo import security, users
from nubo.errors import Conflict, NotFound, Unauthorized, ValidationFailed
from nubo.ids import new_id, parse_id
from nubo.logs import get_logger
from nubo.pagination import Page, make_page
from nubo.ratelimit import RateStatus, guarded_hit, leases_for, raise_if_limited, rate_limit
from nubo.settings import RateLimit
from nubo.stores import Stores
from nubo.stores.entities import Row, normalize_row
from nubo.stores.events import Channels
from nubo.stores.near import MISSING

log = get_logger(__name__)

STATE_DEACTIVATED, STATE_ACTIVE, STATE_BANNED = 0, 1, 2
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.]{3,30}$")
EMAIL_RE = re.compile(r"^[^@\s\x00-\x1f]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})+$")
PASSWORD_MIN, PASSWORD_MAX = 8, 128
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
SETTINGS_FIELDS = ("privacy", "notifications", "language", "theme")
MIRROR_TTL = 60  # seconds a live-session mirror is trusted before PostgreSQL is asked again (safety net)
MIRROR_REFRESH_BELOW = MIRROR_TTL // 4  # an active session's mirror is re-checked in the background then
MAX_SESSION_IPS = 10
INVALID_CREDENTIALS = "Invalid username, email or password"


@dataclass(frozen=True)
class AuthUser:
    """The authenticated caller (``request.user``): who, through which session."""

    id: uuid.UUID
    session_id: uuid.UUID
    username: str
    grade: int


@dataclass(frozen=True)
class ClientInfo:
    """Where a request comes from, recorded on the session (never trusted for authorization)."""

    ip: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True)
class NewUser:
    """Signup input, already shaped by the HTTP layer (validated again here for other callers)."""

    username: str
    email: str
    password: str
    first_name: str
    last_name: str
    birthdate: date | None = None
    sex: int | None = None
    bio: str | None = None
    location: str | None = None
    school: str | None = None
    works: str | None = None


@dataclass(frozen=True)
class IssuedTokens:
    """What a login or a refresh hands out. `refresh_token` is shown once and stored only as a hash."""

    access_token: str
    expires_in: int
    refresh_token: str
    session_id: uuid.UUID
    user: dict[str, Any]

    def body(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "user": self.user,
        }


# ---------------------------------------------------------------- user shapes


def public_user(row: Mapping[str, Any]) -> dict[str, Any]:
    """What any other user may see (one definition, shared with `nubo.users`)."""
    return users.public_user(dict(row))


def me_user(row: Mapping[str, Any]) -> dict[str, Any]:
    """The owner's own view: the public fields plus email, birthdate, sex and grade. Never the hash."""
    return {
        **public_user(row),
        "email": row.get("email"),
        "email_verified": bool(row.get("email_verified")),
        "birthdate": _iso_date(row.get("birthdate")),
        "sex": row.get("sex"),
        "grade": row.get("grade", 1),
    }


def _iso_date(value: object) -> str | None:
    return value.isoformat() if isinstance(value, date) else (str(value) if value else None)


# ---------------------------------------------------------------- signup


def validate_new_user(new: NewUser) -> None:
    """Raise one 422 listing every bad field (the HTTP layer checks shapes; this checks meaning too)."""
    problems: dict[str, str] = {}
    if not USERNAME_RE.fullmatch(new.username):
        problems["username"] = "3 to 30 letters, digits, '_' or '.'"
    if len(new.email) > 254 or not EMAIL_RE.fullmatch(new.email):
        problems["email"] = "not a valid email address"
    if not PASSWORD_MIN <= len(new.password) <= PASSWORD_MAX:
        problems["password"] = f"{PASSWORD_MIN} to {PASSWORD_MAX} characters"
    for name in ("first_name", "last_name"):
        if not getattr(new, name).strip():
            problems[name] = "must not be blank"
    problems.update(_profile_problems({"birthdate": new.birthdate, "sex": new.sex}))
    if problems:
        raise ValidationFailed("Some fields are invalid", fields=problems)


def _profile_problems(values: Mapping[str, Any]) -> dict[str, str]:
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


async def signup(stores: Stores, new: NewUser, *, ip: str | None = None) -> Row:
    """Create an active user and their default settings; 409 naming `username` or `email` on a duplicate.

    With `ip` (HTTP callers), the signup rate limit of that address is counted first. A peer without an IP
    address (the in-process test client, a unix socket) has no per-IP limit.
    """
    if _inet(ip) is not None:
        await rate_limit(stores, "signup_ip", str(ip), stores.settings.rate_signup)
    validate_new_user(new)
    password_hash = await security.hash_password(new.password)
    values = {k: v for k, v in asdict(new).items() if k != "password"}
    values.update(
        id=new_id(),
        password_hash=password_hash,
        email=new.email.strip(),
        first_name=new.first_name.strip(),
        last_name=new.last_name.strip(),
    )
    try:
        async with stores.transaction() as tx:
            row = await tx.insert("users", values)
            await tx.insert("user_settings", {"id": new_id(), "user_id": values["id"]})
    except UniqueViolation as exc:
        field = "email" if "email" in (exc.diag.constraint_name or "") else "username"
        raise Conflict(
            f"This {field} is already taken", code=f"{field}_taken", fields={field: "already taken"}
        ) from None
    log.info("user_signed_up", extra={"user_id": str(row["id"])})
    return row


# ---------------------------------------------------------------- login and sessions


async def _user_for_login(stores: Stores, identifier: str) -> Row | None:
    """The user row (with its hash) by username, or by email when the identifier has an '@'."""
    column = "email" if "@" in identifier else "username"
    async with stores.pg.connection() as conn:
        row = await (
            await conn.execute(f"SELECT * FROM auth.users WHERE lower({column}) = lower(%s)", (identifier.strip(),))
        ).fetchone()
    return normalize_row(row) if row else None


async def login(
    stores: Stores, identifier: str, password: str, client: ClientInfo, *, rate_limited: bool = True
) -> IssuedTokens:
    """Check credentials and open a session. Unknown user, wrong password and an inactive account all get
    the same 401 after the same argon2 work. Counts the login limit per IP and per account first."""
    settings = stores.settings
    if rate_limited and _inet(client.ip) is not None:  # peers without an address have no per-IP limit
        await rate_limit(stores, "login_ip", str(client.ip), settings.rate_login)
    row = await _user_for_login(stores, identifier)
    if rate_limited:
        account = str(row["id"]) if row else "name:" + identifier.strip().lower()
        await rate_limit(stores, "login_account", account, settings.rate_login)
    ok = await security.verify_password(row["password_hash"] if row else None, password)
    if row is None or not ok or row.get("state") != STATE_ACTIVE:
        log.info("login_failed", extra={"known_user": row is not None, "ip": client.ip})
        raise Unauthorized(INVALID_CREDENTIALS, code="invalid_credentials")
    if security.needs_rehash(row["password_hash"]):
        await _rehash(stores, row["id"], password)
    tokens = await open_session(stores, row, client)
    log.info("login_succeeded", extra={"user_id": str(row["id"]), "session_id": str(tokens.session_id)})
    return tokens


async def _rehash(stores: Stores, user_id: uuid.UUID, password: str) -> None:
    new_hash = await security.hash_password(password)
    async with stores.transaction() as tx:
        await tx.update("users", user_id, {"password_hash": new_hash})


def _inet(ip: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(ip) if ip else None
    except ValueError:  # test clients and odd proxies pass names
        return None


def _device(client: ClientInfo) -> dict[str, str]:
    agent = (client.user_agent or "").replace("\x00", "")[:300]
    return {"user_agent": agent} if agent else {}


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
    ip = _inet(client.ip)
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
    await _mirror_live(stores, session_id, user_row, seconds)
    access, expires_in = security.encode_access_token(settings, user_row["id"], session_id, ttl=access_ttl)
    return IssuedTokens(access, expires_in, refresh_token, session_id, me_user(user_row))


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
    user_row = await _active_user(stores, session["user_id"])
    if user_row is None:
        await revoke_user_sessions(stores, session["user_id"], "inactive_user")
        raise Unauthorized("The refresh token is revoked", code="invalid_token")
    await _mirror_live(stores, session["id"], user_row, stores.settings.refresh_token_ttl)
    access, expires_in = security.encode_access_token(stores.settings, user_row["id"], session["id"])
    return IssuedTokens(access, expires_in, new_token, session["id"], me_user(user_row))


async def _rotate(
    conn: AsyncConnection[DictRow], old_hash: str, new_hash: str, client: ClientInfo, lifetime: int
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
    if row["revoked"]:
        return "revoked", dict(row)
    if row["expired"]:
        return "expired", dict(row)
    await conn.execute(
        "INSERT INTO auth.used_refresh_tokens (token_hash, session_id) VALUES (%s, %s)", (old_hash, row["id"])
    )
    ip = _inet(client.ip)
    await conn.execute(
        "UPDATE auth.sessions SET refresh_token_hash = %s, last_used_at = now(), "
        "expires_at = now() + make_interval(secs => %s), "
        "ip = CASE WHEN %s::inet IS NULL OR %s::inet = ANY(ip) OR cardinality(ip) >= %s THEN ip "
        "ELSE ip || %s::inet END WHERE id = %s",
        (new_hash, lifetime, ip, ip, MAX_SESSION_IPS, ip, row["id"]),
    )
    return "rotated", dict(row)


async def _active_user(stores: Stores, user_id: uuid.UUID) -> Row | None:
    row = await stores.tiered.get("users", user_id)
    return row if row is not None and row.get("state") == STATE_ACTIVE else None


# ---------------------------------------------------------------- the per-request session check

REVOKED_MARKER = '{"revoked":true}'  # the session mirror of a revoked session
_MIRROR = msgspec.json.Decoder(dict[str, Any])  # the mirror is read on every request: msgspec is quicker


async def _mirror_live(stores: Stores, session_id: uuid.UUID, user_row: Mapping[str, Any], seconds: int) -> None:
    """Mirror a live session (NX: never overwrites a revocation marker). A failure only costs PG reads."""
    try:
        await stores.redis.set(
            stores.keys("session", session_id),
            _mirror_value(user_row),
            nx=True,
            ex=max(1, min(_mirror_ttl(), seconds)),
        )
    except (RedisError, OSError) as exc:
        stores.count_failure("redis_session")
        log.warning("session_mirror_failed", extra={"error": type(exc).__name__})


def _mirror_value(user_row: Mapping[str, Any]) -> str:
    return json.dumps(
        {"uid": str(user_row["id"]), "username": user_row["username"], "grade": int(user_row.get("grade") or 1)}
    )


def _mirror_ttl() -> int:
    """MIRROR_TTL less up to a quarter: sessions opened together (a deploy, a reconnect wave) must not all
    go back to PostgreSQL in the same second."""
    return MIRROR_TTL - secrets.randbelow(MIRROR_TTL // 4 + 1)


async def mark_revoked(stores: Stores, session_ids: Sequence[uuid.UUID]) -> None:
    """Mark sessions revoked in Redis (plain SET, beats any live mirror) so every instance refuses them now.

    Call after the PostgreSQL commit that revoked them. The marker outlives the longest access token.
    """
    if not session_ids:
        return
    ttl = stores.settings.access_token_ttl + 60
    try:
        async with stores.redis.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.set(stores.keys("session", session_id), REVOKED_MARKER, ex=ttl)
            # Open WebSockets of these sessions, on every instance, are closed too (nubo.realtime.hub).
            pipe.publish(Channels(stores.keys).revoked, json.dumps([str(sid) for sid in session_ids]))
            await pipe.execute()
    except (RedisError, OSError) as exc:
        # PostgreSQL already says revoked; a live mirror (if any) lapses within MIRROR_TTL seconds.
        stores.count_failure("redis_session")
        log.warning("session_revoke_mirror_failed", extra={"sessions": len(session_ids), "error": type(exc).__name__})
    finally:
        stores.near.drop([stores.keys("session", sid) for sid in session_ids])


async def revoked_among(stores: Stores, session_ids: Sequence[uuid.UUID | str]) -> set[str]:
    """Which of these sessions carry the Redis revocation marker (for long-lived sockets, checked
    periodically; a Redis failure answers "none", as the next check will tell)."""
    ids = [str(sid) for sid in session_ids]
    try:
        values = await stores.redis.mget([stores.keys("session", sid) for sid in ids]) if ids else []
    except (RedisError, OSError):
        return set()
    return {sid for sid, raw in zip(ids, values, strict=True) if raw == REVOKED_MARKER}


async def authenticate_session(
    stores: Stores, user_id: uuid.UUID, session_id: uuid.UUID, *, mirror_missing: bool = False
) -> AuthUser:
    """The caller behind a verified token, if its session is live; else 401 `invalid_token`.

    The Redis mirror first (unless the caller just found it `mirror_missing`), else PostgreSQL, which then
    mirrors the session again."""
    key = stores.keys("session", session_id)
    redis_up, raw = True, None
    if not mirror_missing:
        try:
            raw = await stores.redis.get(key)
        except (RedisError, OSError):
            redis_up = False
            stores.count_failure("redis_session")
    if raw is not None:
        return _principal_from_mirror(raw, user_id, session_id)
    row = await _session_from_postgres(stores, session_id)
    if row is None or row["user_id"] != user_id or row["revoked"] or row["expired"] or row["state"] != STATE_ACTIVE:
        if redis_up and row is not None and row["user_id"] == user_id:
            await mark_revoked(stores, [session_id])
        raise Unauthorized("The session of this token is revoked or expired", code="invalid_token")
    if redis_up:
        await _mirror_live(stores, session_id, {"id": user_id, **row}, int(row["seconds_left"]))
    return AuthUser(id=user_id, session_id=session_id, username=row["username"], grade=int(row["grade"]))


async def authenticate_and_limit(
    stores: Stores, user_id: uuid.UUID, session_id: uuid.UUID, rate: RateLimit, name: str = "user"
) -> tuple[AuthUser, RateStatus | None]:
    """:func:`authenticate_session` plus one hit of the caller's rate limit `name` (429 when over it).

    The hot path needs no Redis call: the session mirror is this process's copy (:mod:`nubo.stores.near`,
    dropped by Redis as soon as the session is revoked) and the hit comes from a lease of hits this process
    already counted in the shared window (:class:`nubo.ratelimit.HitLeases`). Otherwise one round trip: a
    script reads the mirror and, when it is live, takes the hit(s) atomically
    (:func:`nubo.ratelimit.guarded_hit`). A lapsed mirror: PostgreSQL decides, the session is mirrored again
    and the script runs again. Redis failing: :func:`authenticate_session` (PostgreSQL), then a separate hit
    (which fails open when Redis is down).
    """
    key = stores.keys("session", session_id)
    user_key = str(user_id)
    leases = leases_for(stores)
    held = stores.near.get_cached(key)
    if held is MISSING and leases.holds(name, user_key):
        held = await _mirror(stores, key)  # the session check alone: the lease pays the hit
    if held is not MISSING and held is not None:
        user = _principal_from_mirror(held, user_id, session_id)  # a revoked copy refuses at once
        status = await leases.take_or_wait(name, user_key, rate)
        if status is not None:
            return user, status
    # Leases only pay off while the session check needs no Redis call (near copies are live).
    want = leases.want(name, user_key, rate) if stores.near.live else 1
    try:
        return await _check_and_hit(stores, user_id, session_id, key, name, rate, want)
    finally:
        if want > 1:
            leases.settle(name, user_key)  # whatever happened, wake the requests waiting for this lease


async def _check_and_hit(
    stores: Stores, user_id: uuid.UUID, session_id: uuid.UUID, key: str, name: str, rate: RateLimit, want: int
) -> tuple[AuthUser, RateStatus | None]:
    """The Redis side of :func:`authenticate_and_limit`: the guarded script taking `want` hits."""
    user_key = str(user_id)
    try:
        raw, status = await _guarded_hit(stores, user_id, session_id, key, name, rate, want)
        if raw is None:  # no mirror (it lapsed): PostgreSQL decides and mirrors the session again
            await authenticate_session(stores, user_id, session_id, mirror_missing=True)
            raw, status = await _guarded_hit(stores, user_id, session_id, key, name, rate, want)
    except (RedisError, OSError):
        raw = None
    if raw is None:  # Redis is failing: authenticate_session retries it, counts the failure, asks PostgreSQL
        user = await authenticate_session(stores, user_id, session_id)
        return user, await rate_limit(stores, name, user_key, rate)
    user = _principal_from_mirror(raw, user_id, session_id)  # refuses a revoked mirror (no hit was taken)
    status = leases_for(stores).record(name, user_key, rate, status, want)
    raise_if_limited(status)
    return user, status


async def _mirror(stores: Stores, key: str) -> Any:
    """The session mirror through the near cache; MISSING when Redis fails (the caller's script retries)."""
    try:
        return await stores.near.get(key, lambda: stores.redis.get(key))
    except (RedisError, OSError):
        return MISSING


async def _guarded_hit(
    stores: Stores, user_id: uuid.UUID, session_id: uuid.UUID, key: str, name: str, rate: RateLimit, want: int
) -> tuple[str | bytes | None, RateStatus | None]:
    """:func:`nubo.ratelimit.guarded_hit` on the session mirror `key`, keeping the mirror as a near copy.
    A mirror close to its end is checked again against PostgreSQL in the background (see
    ``stores.mirror_refresh``, which batches them into :func:`refresh_mirrors`), so an active session never
    waits for that check."""
    with stores.near.reading([key]) as keep:
        raw, status, ttl_ms = await guarded_hit(stores, key, name, str(user_id), rate, want=want)
        keep([raw])
    if ttl_ms is not None and 0 <= ttl_ms < MIRROR_REFRESH_BELOW * 1000:
        stores.mirror_refresh.add(session_id, user_id)
    return raw, status


async def refresh_mirrors(stores: Stores, sessions: Mapping[uuid.UUID, uuid.UUID]) -> None:
    """Ask PostgreSQL again about live mirrors (`{session id: user id}`) before they lapse, in one query: a
    revoked or expired session gets its marker, a live one a new mirror lifetime (never over a revocation
    marker written meanwhile). Background work: through :attr:`Stores.background_pg`."""
    try:
        async with stores.background_pg, stores.pg.connection() as conn:
            rows = await (await conn.execute(_SESSIONS_SQL + "WHERE s.id = ANY(%s)", (list(sessions),))).fetchall()
        rows = [row for row in rows if sessions.get(row["session_id"]) == row["user_id"]]
        live = [row for row in rows if not row["revoked"] and not row["expired"] and row["state"] == STATE_ACTIVE]
        live_ids = {row["session_id"] for row in live}
        gone = [row["session_id"] for row in rows if row["session_id"] not in live_ids]
        if gone:
            await mark_revoked(stores, gone)
        script = stores.script(_EXTEND_UNLESS_REVOKED)
        await asyncio.gather(
            *(
                script(
                    keys=[stores.keys("session", row["session_id"])],
                    args=[_mirror_value({**row, "id": row["user_id"]}), min(_mirror_ttl(), int(row["seconds_left"]))],
                )
                for row in live
            )
        )
    except (RedisError, OSError, psycopg.Error) as exc:
        stores.count_failure("redis_session")
        log.warning("session_mirror_refresh_failed", extra={"error": type(exc).__name__})


# KEYS[1]: a session mirror; ARGV: the new mirror, its TTL. A revocation marker is never overwritten.
_EXTEND_UNLESS_REVOKED = """
local current = redis.call('get', KEYS[1])
if current and string.find(current, '"revoked"', 1, true) then return 0 end
redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


@lru_cache(maxsize=16384)  # the same mirror is read on every request of a session
def _principal_from_mirror(raw: str | bytes, user_id: uuid.UUID, session_id: uuid.UUID) -> AuthUser:
    data = _MIRROR.decode(raw)
    if data.get("revoked") or data.get("uid") != str(user_id):
        raise Unauthorized("The session of this token is revoked", code="invalid_token")
    return AuthUser(id=user_id, session_id=session_id, username=data["username"], grade=int(data["grade"]))


_SESSIONS_SQL = (
    "SELECT s.id AS session_id, s.user_id, s.revoked, s.expires_at <= now() AS expired, "
    "GREATEST(1, EXTRACT(EPOCH FROM s.expires_at - now()))::int AS seconds_left, "
    "u.username, u.grade, u.state "
    "FROM auth.sessions s JOIN auth.users u ON u.id = s.user_id "
)


async def _session_from_postgres(stores: Stores, session_id: uuid.UUID) -> Row | None:
    async with stores.pg.connection() as conn:
        row = await (await conn.execute(_SESSIONS_SQL + "WHERE s.id = %s", (session_id,))).fetchone()
    return dict(row) if row else None


# ---------------------------------------------------------------- session management


def _session_view(row: Mapping[str, Any], current: uuid.UUID | None) -> dict[str, Any]:
    return {
        "id": row["id"],
        "current": row["id"] == current,
        "device_info": row["device_info"] or {},
        "ip": [str(ip) for ip in row["ip"] or []],
        "created_at": row["created_at"],
        "last_used_at": row["last_used_at"],
        "expires_at": row["expires_at"],
    }


async def list_sessions(
    stores: Stores, user_id: uuid.UUID, current: uuid.UUID | None, *, limit: int, before: uuid.UUID | None
) -> Page[dict[str, Any]]:
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
    return Page(items=[_session_view(r, current) for r in page.items], next=page.next)


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
    stores: Stores, user_id: uuid.UUID, reason: str, conn: AsyncConnection[DictRow] | None = None
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


# ---------------------------------------------------------------- profile, settings, deactivation


async def get_me(stores: Stores, user_id: uuid.UUID) -> Row:
    row = await _active_user(stores, user_id)
    if row is None:
        raise NotFound("No such user", code="user_not_found")
    return row


async def update_profile(stores: Stores, user_id: uuid.UUID, changes: Mapping[str, Any]) -> Row:
    """Change profile fields (see PROFILE_FIELDS); unknown fields are a 422."""
    unknown = sorted(set(changes) - set(PROFILE_FIELDS))
    problems = {name: "not a profile field" for name in unknown} | _profile_problems(changes)
    if problems:
        raise ValidationFailed("Some fields are invalid", fields=problems)
    values = {
        k: (v.strip() if k in ("first_name", "last_name") and isinstance(v, str) else v) for k, v in changes.items()
    }
    async with stores.transaction() as tx:
        row = await tx.update("users", user_id, values)
    if row is None or row.get("state") != STATE_ACTIVE:
        raise NotFound("No such user", code="user_not_found")
    return row


def _settings_view(row: Mapping[str, Any]) -> dict[str, Any]:
    return {name: row.get(name) for name in SETTINGS_FIELDS}


async def _settings_row(conn: AsyncConnection[DictRow], user_id: uuid.UUID) -> Row | None:
    row = await (await conn.execute("SELECT * FROM auth.user_settings WHERE user_id = %s", (user_id,))).fetchone()
    return dict(row) if row else None


async def get_settings(stores: Stores, user_id: uuid.UUID) -> dict[str, Any]:
    async with stores.pg.connection() as conn:
        row = await _settings_row(conn, user_id)
    defaults = {"privacy": {}, "notifications": {}, "language": "en", "theme": 0}
    return _settings_view(row) if row else defaults


async def put_settings(stores: Stores, user_id: uuid.UUID, values: Mapping[str, Any]) -> dict[str, Any]:
    """Replace the caller's settings (creating the row if an old account has none)."""
    clean = {k: values[k] for k in SETTINGS_FIELDS}
    async with stores.transaction() as tx:
        row = await _settings_row(tx.conn, user_id)
        if row is None:
            updated = await tx.insert("user_settings", {"id": new_id(), "user_id": user_id, **clean})
        else:
            updated = await tx.update("user_settings", row["id"], clean) or row
    return _settings_view(updated)


async def deactivate(stores: Stores, user_id: uuid.UUID) -> None:
    """state=0: every session revoked now, login refused like a wrong password, content hidden by readers."""
    async with stores.transaction() as tx:
        row = await tx.update("users", user_id, {"state": STATE_DEACTIVATED})
        revoked = await revoke_user_sessions(stores, user_id, "deactivated", conn=tx.conn)
    await mark_revoked(stores, revoked)
    if row is not None:
        log.info("user_deactivated", extra={"user_id": str(user_id), "sessions_revoked": len(revoked)})


# ---------------------------------------------------------------- operator tokens (`nubo token`)


async def find_user(stores: Stores, ref: str) -> Row | None:
    """A user by id (UUID) or by username (case-insensitive)."""
    try:
        user_id: uuid.UUID | None = parse_id(ref.strip(), "sub")
    except ValidationFailed:
        user_id = None
    async with stores.pg.connection() as conn:
        if user_id is not None:
            row = await (await conn.execute("SELECT * FROM auth.users WHERE id = %s", (user_id,))).fetchone()
        else:
            row = await (
                await conn.execute("SELECT * FROM auth.users WHERE lower(username) = lower(%s)", (ref.strip(),))
            ).fetchone()
    return normalize_row(row) if row else None


async def issue_operator_token(stores: Stores, ref: str, ttl: int) -> IssuedTokens:
    """An access token for an existing active user, backed by a new session living `ttl` seconds."""
    row = await find_user(stores, ref)
    if row is None:
        raise NotFound(f"No user with id or username {ref!r}", code="user_not_found")
    if row.get("state") != STATE_ACTIVE:
        raise Conflict(f"User {row['username']} is not active (state {row.get('state')})", code="user_inactive")
    return await open_session(stores, row, ClientInfo(user_agent="nubo token"), lifetime=ttl, access_ttl=ttl)
