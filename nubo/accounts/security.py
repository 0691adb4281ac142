"""Credentials: argon2id password hashing (off the event loop), opaque refresh tokens, and HS256 access JWTs.

Access tokens follow RFC 8725: one algorithm (HS256) pinned when verifying, every claim required
(`sub`, `sid`, `iat`, `exp`, `jti`, `iss`, `aud`), issuer and audience checked. Refresh tokens are random
and only their SHA-256 is ever stored. Nothing here logs a secret.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import anyio.to_thread
import jwt
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from nubo.errors import Unauthorized
from nubo.settings import Settings

JWT_ALGORITHM = "HS256"
REQUIRED_CLAIMS = ("sub", "sid", "iat", "exp", "jti", "iss", "aud")

# OWASP's minimum for argon2id (m=19 MiB, t=2, p=1): about 20 ms per hash here, so logins stay usable
# on a small machine while an offline attack on a leaked hash stays expensive.
ARGON2_MEMORY_KIB = 19456
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1

_hasher = PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_KIB,
    parallelism=ARGON2_PARALLELISM,
    hash_len=32,
    salt_len=16,
    type=Type.ID,
)


# ---------------------------------------------------------------- passwords


def hash_password_sync(password: str) -> str:
    """The argon2id PHC string of `password` (blocking: call :func:`hash_password` from async code)."""
    return _hasher.hash(password)


def verify_password_sync(password_hash: str, password: str) -> bool:
    """True when `password` matches; a malformed stored hash counts as a mismatch."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def hash_password(password: str) -> str:
    """Hash in a worker thread: argon2 is CPU and memory bound and would stall the event loop."""
    return await anyio.to_thread.run_sync(hash_password_sync, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """Verify in a worker thread. With no hash (unknown user) verify against a dummy hash anyway, so the
    answer takes the same time whether or not the account exists (no enumeration oracle)."""
    if password_hash is None:
        await anyio.to_thread.run_sync(verify_password_sync, _dummy_hash(), password)
        return False
    return await anyio.to_thread.run_sync(verify_password_sync, password_hash, password)


def needs_rehash(password_hash: str) -> bool:
    """True when the stored hash uses weaker parameters than today's (upgrade it at the next login)."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


@cache
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


def argon2_parameters(password_hash: str) -> dict[str, Any]:
    """Type and cost parameters of a PHC argon2 string, e.g. ``{"type": "argon2id", "m": 19456, ...}``."""
    kind, _, rest = password_hash.lstrip("$").partition("$")
    params: dict[str, Any] = {"type": kind}
    for part in rest.split("$"):
        if part.startswith("v="):
            params["v"] = int(part[2:])
        elif "m=" in part:
            params.update({k: int(v) for k, v in (item.split("=") for item in part.split(","))})
    return params


# ---------------------------------------------------------------- refresh tokens


def new_refresh_token() -> str:
    """An opaque, URL-safe token with 256 bits of entropy."""
    return secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> str:
    """SHA-256 hex digest: the token is random and long, so a fast hash is enough (no salt, no argon2)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


# ---------------------------------------------------------------- access tokens


@dataclass(frozen=True)
class AccessClaims:
    """The verified claims of an access token."""

    sub: uuid.UUID
    sid: uuid.UUID
    iat: int
    exp: int
    jti: str
    iss: str
    aud: str


def encode_access_token(
    settings: Settings,
    user_id: uuid.UUID,
    session_id: uuid.UUID,
    ttl: int | None = None,
    now: int | None = None,
) -> tuple[str, int]:
    """A signed HS256 JWT for (user, session) and its lifetime in seconds."""
    issued = int(time.time()) if now is None else now
    lifetime = settings.access_token_ttl if ttl is None else ttl
    claims = {
        "sub": str(user_id),
        "sid": str(session_id),
        "iat": issued,
        "exp": issued + lifetime,
        "jti": uuid.uuid4().hex,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm=JWT_ALGORITHM), lifetime


def decode_access_token(settings: Settings, token: str) -> AccessClaims:
    """Verify an access token against `settings` (see :func:`verify_access_token`)."""
    return verify_access_token(
        token, secret=settings.jwt_secret, issuer=settings.jwt_issuer, audience=settings.jwt_audience
    )


def verify_access_token(token: str, *, secret: str, issuer: str, audience: str) -> AccessClaims:
    """Verify signature (HS256 only), expiry, issuer, audience and required claims.

    Raises :class:`Unauthorized` with code `expired_token` for a genuine but expired token (the signature is
    checked first, so a forged token never learns it is expired), else `invalid_token`. A token that once
    verified is remembered (bounded LRU; only successes are cached, so forgeries cannot fill it): later
    requests with it skip the JSON/HMAC work and only re-check `exp`.
    """
    claims = _verified(token, secret, issuer, audience)
    if claims.exp <= time.time():
        raise Unauthorized("The access token has expired", code="expired_token")
    return claims


@lru_cache(maxsize=8192)
def _verified(token: str, secret: str, issuer: str, audience: str) -> AccessClaims:
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=[JWT_ALGORITHM],
            audience=audience,
            issuer=issuer,
            options={"require": list(REQUIRED_CLAIMS), "strict_aud": True},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("The access token has expired", code="expired_token") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"The access token is invalid ({_reason(exc)})", code="invalid_token") from None
    return _claims(payload)


def _claims(payload: dict[str, Any]) -> AccessClaims:
    try:
        return AccessClaims(
            sub=uuid.UUID(str(payload["sub"])),
            sid=uuid.UUID(str(payload["sid"])),
            iat=int(payload["iat"]),
            exp=int(payload["exp"]),
            jti=str(payload["jti"]),
            iss=str(payload["iss"]),
            aud=str(payload["aud"]),
        )
    except (ValueError, TypeError, KeyError):
        raise Unauthorized("The access token is invalid (malformed claims)", code="invalid_token") from None


def _reason(exc: jwt.InvalidTokenError) -> str:
    """A short, non-sensitive reason for the client (never echoes the token)."""
    reasons: list[tuple[type[Exception], str]] = [
        (jwt.InvalidAlgorithmError, "algorithm not allowed"),
        (jwt.InvalidSignatureError, "bad signature"),
        (jwt.InvalidAudienceError, "wrong audience"),
        (jwt.InvalidIssuerError, "wrong issuer"),
        (jwt.MissingRequiredClaimError, "missing claim"),
        (jwt.ImmatureSignatureError, "not yet valid"),
        (jwt.DecodeError, "malformed"),
    ]
    return next((text for kind, text in reasons if isinstance(exc, kind)), "rejected")
