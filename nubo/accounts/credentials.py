"""Signup and login: who may create an account, and who gets a session for a username (or email) and password.

Both count their rate limits before any work. Login answers an unknown user, a wrong password and an inactive
account with the same 401 after the same argon2 work, so it reveals nothing. Never log a password or a hash.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import asdict, dataclass
from datetime import date

from nubo.accounts import security
from nubo.accounts.profile import profile_problems
from nubo.accounts.sessions import ClientInfo, IssuedTokens, inet, open_session
from nubo.errors import Conflict, Unauthorized, ValidationFailed
from nubo.ids import new_id
from nubo.logs import get_logger
from nubo.model import UserState
from nubo.stores import Stores
from nubo.stores.entities import Row, normalize_row
from nubo.stores.postgres import UniqueViolation

log = get_logger(__name__)

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.]{3,30}$")
# The local part excludes C0/C1 controls and U+FEFF as well as whitespace, so that Python's `\s` and the
# ECMA-262 `\s` of JSON Schema (the published pattern) refuse the same characters.
EMAIL_RE = re.compile(
    r"^[^@\s\x00-\x1f\x7f-\x9f\ufeff]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})+$"
)
PASSWORD_MIN, PASSWORD_MAX = 8, 128
INVALID_CREDENTIALS = "Invalid username, email or password"


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
    problems.update(profile_problems({"birthdate": new.birthdate, "sex": new.sex}))
    if problems:
        raise ValidationFailed("Some fields are invalid", fields=problems)


async def signup(stores: Stores, new: NewUser, *, ip: str | None = None) -> Row:
    """Create an active user and their default settings; 409 naming `username` or `email` on a duplicate.

    With `ip` (HTTP callers), the signup rate limit of that address is counted first. A peer without an IP
    address (the in-process test client, a unix socket) has no per-IP limit.
    """
    if inet(ip) is not None:
        await stores.rate_limits.limit("signup_ip", str(ip), stores.settings.rate_signup)
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


# ---------------------------------------------------------------- login


async def _user_for_login(stores: Stores, identifier: str) -> Row | None:
    """The user row (with its hash) by username, or by email when the identifier has an '@'."""
    column = "email" if "@" in identifier else "username"
    async with stores.pg.connection() as conn:
        row = await (
            await conn.execute(f"SELECT * FROM auth.users WHERE lower({column}) = lower(%s)", (identifier.strip(),))
        ).fetchone()
    return normalize_row(row) if row else None


def _names_other_account(row: Row | None, email: str | None) -> bool:
    """True when an `email` given beside the username is not that account's email."""
    if email is None or row is None:
        return False
    return str(row.get("email") or "").lower() != email.strip().lower()


async def login(
    stores: Stores,
    identifier: str,
    password: str,
    client: ClientInfo,
    *,
    email: str | None = None,
    rate_limited: bool = True,
) -> IssuedTokens:
    """Check credentials and open a session. Unknown user, wrong password and an inactive account all get
    the same 401 after the same argon2 work. Counts the login limit per IP and per account first.

    `email`, when given beside a username `identifier`, must be that account's email: a username with another
    user's email is refused like a wrong password (which of the two is wrong is not said)."""
    settings = stores.settings
    if rate_limited and inet(client.ip) is not None:  # peers without an address have no per-IP limit
        await stores.rate_limits.limit("login_ip", str(client.ip), settings.rate_login)
    row = await _user_for_login(stores, identifier)
    if rate_limited:
        account = str(row["id"]) if row else "name:" + identifier.strip().lower()
        await stores.rate_limits.limit("login_account", account, settings.rate_login)
    ok = await security.verify_password(row["password_hash"] if row else None, password)
    if row is None or not ok or row.get("state") != UserState.ACTIVE or _names_other_account(row, email):
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
