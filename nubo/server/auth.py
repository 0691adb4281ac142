"""Account routes and the authentication guard (Litestar JWT auth, docs/architecture.md §9, §10, §11).

Public: POST /signup, /login, /token/refresh (plus /ping, /healthz, /readyz, /schema*). Everything else needs
`Authorization: Bearer <access token>`; WebSocket handshakes may pass `?token=` instead (browsers cannot set
headers there). The guard verifies the JWT (HS256 pinned), checks the session is live (Redis mirror, then
PostgreSQL), sets ``request.user`` (:class:`~nubo.accounts.AuthUser`) and ``request.auth`` (the token), and
counts the per-user default rate limit. A route can opt out with ``opt={"exclude_from_auth": True}``.
Failures answer 401 `missing_token` / `invalid_token` / `expired_token`; a refused WebSocket upgrade gets
that HTTP 401 before any frame (or a 403 where the server lacks ASGI denial responses).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Annotated, Any, ClassVar

import msgspec
from litestar import Request, Response, delete, get, patch, post, put
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.middleware._utils import should_bypass_middleware
from litestar.middleware.authentication import AuthenticationResult
from litestar.params import FromPath, JSONBody, Parameter
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token
from litestar.types import Receive, Scope, Send
from msgspec import UNSET, Meta, UnsetType

from nubo import accounts
from nubo.accounts import AuthUser, ClientInfo, MeView, SessionView, SettingsView, TokenView, security
from nubo.errors import NuboError, Unauthorized, ValidationFailed
from nubo.ids import parse_id
from nubo.pagination import Page
from nubo.server.contract import errors
from nubo.server.errors import ErrorBody
from nubo.server.ratelimit import client_ip, with_raw_headers
from nubo.server.users import Before, Limit
from nubo.settings import Settings
from nubo.stores import Stores
from nubo.stores.ratelimit import RateStatus

StoresDep = NamedDependency[Stores]
PUBLIC_PATHS = [
    r"^/ping$",
    r"^/healthz$",
    r"^/readyz$",
    r"^/schema(/.*)?$",
    r"^/signup$",
    r"^/login$",
    r"^/token/refresh$",
    r"^/metrics$",  # its own bearer token (nubo.server.metrics)
]
NO_AUTH: list[dict[str, list[str]]] = [{}]  # OpenAPI: this route needs no bearer token
NO_STORE = {"Cache-Control": "no-store"}  # token responses must never be cached (RFC 6749 §5.1)


# ---------------------------------------------------------------- the guard


@dataclass
class AccessToken(Token):
    """A verified access token (``request.auth``): Litestar's token plus our session id claim."""

    sid: str = ""

    @classmethod
    def decode(
        cls,
        encoded_token: str,
        secret: str,
        algorithm: str,
        audience: Any = None,
        issuer: Any = None,
        require_claims: Sequence[str] | None = None,
        verify_exp: bool = True,
        verify_nbf: bool = True,
        strict_audience: bool = False,
    ) -> AccessToken:
        """Verify with :func:`nubo.accounts.security.verify_access_token` (HS256 only, every claim required), raising
        our 401 codes instead of Litestar's generic one."""
        claims = security.verify_access_token(
            encoded_token, secret=secret, issuer=_one(issuer), audience=_one(audience)
        )
        return _access_token(claims)


@lru_cache(maxsize=8192)
def _access_token(claims: security.AccessClaims) -> AccessToken:
    """One token object per verified token (the claims are already cached and `exp` is re-checked on each
    request by :func:`nubo.accounts.security.verify_access_token`): skips the datetime building on the hot path."""
    try:
        return AccessToken(
            exp=datetime.fromtimestamp(claims.exp, UTC),
            sub=str(claims.sub),
            iat=datetime.fromtimestamp(min(claims.iat, claims.exp), UTC),
            iss=claims.iss,
            aud=claims.aud,
            jti=claims.jti,
            sid=str(claims.sid),
        )
    except Exception:  # Token.__post_init__ rejects an exp that lapsed within this very second
        raise Unauthorized("The access token has expired", code="expired_token") from None


def _one(value: Any) -> str:
    return str(value[0] if isinstance(value, list | tuple) else value)


class NuboJWTMiddleware(JWTAuthenticationMiddleware):
    """Litestar's JWT middleware, plus `?token=` on WebSocket handshakes, a denial response for refused
    upgrades, and the per-user default rate limit with `X-RateLimit-*` headers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if should_bypass_middleware(
            exclude_http_methods=self.exclude_http_methods,
            exclude_opt_key=self.exclude_opt_key,
            exclude_path_pattern=self.exclude,
            scope=scope,
            scopes=self.scopes,
        ):
            await self.app(scope, receive, send)
            return
        try:
            scope["user"], scope["auth"], status = await self._authenticate(scope)
        except (NuboError, HTTPException) as exc:
            if scope["type"] != ScopeType.WEBSOCKET:
                raise
            await deny_websocket(scope, receive, send, _as_nubo_error(exc))
            return
        if status is not None and scope["type"] == ScopeType.HTTP:
            send = with_raw_headers(send, status.raw_headers())
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope) -> tuple[AuthUser, AccessToken, RateStatus | None]:
        """Token, session check and per-user rate limit hit. This runs on every authenticated request, so it
        skips Litestar's generic path (connection and header objects) and needs one Redis round trip."""
        claims = security.verify_access_token(
            self._encoded_token(scope),
            secret=self.token_secret,
            issuer=_one(self.token_issuer),
            audience=_one(self.token_audience),
        )
        stores: Stores = scope["litestar_app"].state.root.stores
        user, status = await accounts.authenticate_and_limit(
            stores, claims.sub, claims.sid, stores.settings.rate_default
        )
        return user, _access_token(claims), status

    def _encoded_token(self, scope: Scope) -> str:
        name = self.auth_header.lower().encode("latin-1")
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == name), None)
        token = _bearer(header) if header else None
        if header and not token:
            raise Unauthorized("The Authorization header must be 'Bearer <token>'", code="invalid_token")
        if token is None and scope["type"] == ScopeType.WEBSOCKET:
            token = ASGIConnection(scope).query_params.get("token") or None
        if not token:
            raise Unauthorized("An access token is required (Authorization: Bearer <token>)", code="missing_token")
        return token

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        """Litestar's interface (unused by :meth:`__call__`): token and session check, no rate limit."""
        token = self._encoded_token(connection.scope)
        return await self.authenticate_token(encoded_token=token, connection=connection)


def _bearer(header: str) -> str | None:
    scheme, _, token = header.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _as_nubo_error(exc: Exception) -> NuboError:
    if isinstance(exc, NuboError):
        return exc
    return Unauthorized(str(getattr(exc, "detail", "") or "Unauthorized"), code="invalid_token")


async def deny_websocket(scope: Scope, receive: Receive, send: Send, exc: NuboError) -> None:
    """Refuse a WebSocket upgrade before accepting it: an HTTP error response with our JSON body where the
    server supports the ASGI denial extension (uvicorn does), else a close, which servers turn into 403."""
    await receive()  # the websocket.connect event
    if "websocket.http.response" in (scope.get("extensions") or {}):
        # The bytes json.dumps has always written (", " and ": " separators, ASCII escapes).
        body = json.dumps(msgspec.to_builtins(ErrorBody.of(exc))).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *((k.lower().encode(), v.encode()) for k, v in exc.headers.items()),
        ]
        await send({"type": "websocket.http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
        return
    await send({"type": "websocket.close", "code": 1008, "reason": exc.code})


async def retrieve_user(token: AccessToken, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthUser:
    """The session check: one Redis GET (PostgreSQL when Redis is down or the mirror is missing). Revocation
    is decided here too, since the same lookup says whether the session is live."""
    stores: Stores = connection.app.state.root.stores
    return await accounts.authenticate_session(stores, uuid.UUID(token.sub), uuid.UUID(token.sid))


_TOKEN_IN_TEXT = re.compile(r"([?&](?:access_)?token=)[^&\s\"']+")


class RedactQueryTokens(logging.Filter):
    """Blanks `?token=` values in log records: uvicorn logs each WebSocket handshake with its full path."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(_TOKEN_IN_TEXT.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in args)
        if isinstance(record.msg, str) and "token=" in record.msg:
            record.msg = _TOKEN_IN_TEXT.sub(r"\1[redacted]", record.msg)
        return True


def install_log_redaction() -> None:
    """Attach :class:`RedactQueryTokens` to uvicorn's loggers once per process (idempotent)."""
    for name in ("uvicorn.error", "uvicorn.access", "uvicorn"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactQueryTokens) for f in logger.filters):
            logger.addFilter(RedactQueryTokens())


def jwt_auth(settings: Settings) -> JWTAuth[AuthUser, AccessToken]:
    """The app's auth config; register with ``Litestar(on_app_init=[jwt_auth(settings).on_app_init])``.

    Accepting `?token=` means the handshake path holds a credential, so its redaction is installed here.
    """
    install_log_redaction()
    return JWTAuth[AuthUser, AccessToken](
        token_secret=settings.jwt_secret,
        retrieve_user_handler=retrieve_user,
        algorithm=security.JWT_ALGORITHM,
        token_cls=AccessToken,
        accepted_issuers=[settings.jwt_issuer],
        accepted_audiences=[settings.jwt_audience],
        require_claims=list(security.REQUIRED_CLAIMS),
        exclude=PUBLIC_PATHS,
        exclude_http_methods=["OPTIONS"],  # HEAD must not bypass the guard
        authentication_middleware_class=NuboJWTMiddleware,
        description="Access token from POST /login or POST /token/refresh (HS256 JWT).",
    )


AuthRequest = Request[AuthUser, AccessToken, Any]


def client_info(request: Request[Any, Any, Any], settings: Settings) -> ClientInfo:
    return ClientInfo(
        ip=client_ip(request.scope, settings.trusted_proxies), user_agent=request.headers.get("user-agent")
    )


# ---------------------------------------------------------------- request bodies

Username = Annotated[
    str,
    Meta(
        min_length=3,
        max_length=30,
        pattern=r"^[A-Za-z0-9_.]+$",
        description="Letters, digits, '_' or '.'; unique ignoring case",
    ),
]
Email = Annotated[str, Meta(min_length=3, max_length=254, pattern=accounts.EMAIL_RE.pattern)]
Password = Annotated[str, Meta(min_length=accounts.PASSWORD_MIN, max_length=accounts.PASSWORD_MAX)]
Name = Annotated[str, Meta(min_length=1, max_length=100)]
Short = Annotated[str, Meta(max_length=100)]
Bio = Annotated[str, Meta(max_length=1000)]
Sex = Annotated[int, Meta(ge=0, le=9, description="Free code chosen by the client (0 = unspecified)")]
Login = Annotated[str, Meta(min_length=1, max_length=254)]
RefreshToken = Annotated[str, Meta(min_length=16, max_length=256)]
SettingKey = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
SettingValue = bool | int | Annotated[str, Meta(max_length=200)]
SettingMap = Annotated[dict[SettingKey, SettingValue], Meta(max_length=64)]
Language = Annotated[str, Meta(min_length=2, max_length=35, pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")]
Theme = Annotated[int, Meta(ge=0, le=9)]


class SignupBody(msgspec.Struct, forbid_unknown_fields=True):
    """A new account."""

    json_schema_extra: ClassVar[dict[str, object]] = {
        "examples": [
            {
                "username": "ada",
                "email": "ada@example.com",
                "password": "correct horse battery",
                "first_name": "Ada",
                "last_name": "Lovelace",
            }
        ]
    }

    username: Username
    email: Email
    password: Password
    first_name: Name
    last_name: Name
    birthdate: date | None = None
    sex: Sex | None = None
    bio: Bio | None = None
    location: Short | None = None
    school: Short | None = None
    works: Short | None = None


class LoginBody(msgspec.Struct, forbid_unknown_fields=True):
    """Credentials: `username` (a username or an email) or `email`, and the password. When both are given they
    must name the same account (else 401 `invalid_credentials`)."""

    json_schema_extra: ClassVar[dict[str, object]] = {
        "anyOf": [
            {"required": ["username"], "properties": {"username": {"type": "string"}}},
            {"required": ["email"], "properties": {"email": {"type": "string"}}},
        ],
        "examples": [{"username": "ada", "password": "correct horse battery"}],
    }

    password: Annotated[str, Meta(min_length=1, max_length=accounts.PASSWORD_MAX)]
    username: Login | None = None
    email: Login | None = None


class RefreshBody(msgspec.Struct, forbid_unknown_fields=True):
    """The refresh token of the last login or refresh."""

    refresh_token: RefreshToken


class ProfilePatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Profile fields to change (at least one); absent fields are kept, `null` clears an optional one."""

    json_schema_extra: ClassVar[dict[str, object]] = {"minProperties": 1}

    first_name: Name | UnsetType = UNSET
    last_name: Name | UnsetType = UNSET
    bio: Bio | UnsetType | None = UNSET
    birthdate: date | UnsetType | None = UNSET
    sex: Sex | UnsetType | None = UNSET
    location: Short | UnsetType | None = UNSET
    school: Short | UnsetType | None = UNSET
    works: Short | UnsetType | None = UNSET
    profile_picture_id: uuid.UUID | UnsetType | None = UNSET


class SettingsBody(msgspec.Struct, forbid_unknown_fields=True):
    """The whole settings document (PUT replaces it)."""

    privacy: SettingMap
    notifications: SettingMap
    language: Language
    theme: Theme


# ---------------------------------------------------------------- responses (the shapes of nubo.accounts.views)


def token_response(tokens: accounts.IssuedTokens, status: int = 200) -> Response[TokenView]:
    return Response(tokens.view(), status_code=status, headers=NO_STORE)


# ---------------------------------------------------------------- routes


@post(
    "/signup", summary="Create an account", tags=["auth"], status_code=201, security=NO_AUTH, responses=errors(409, 429)
)
async def signup(data: JSONBody[SignupBody], request: Request[Any, Any, Any], stores: StoresDep) -> MeView:
    new = accounts.NewUser(**msgspec.structs.asdict(data))
    row = await accounts.signup(stores, new, ip=client_info(request, stores.settings).ip)
    return MeView.from_row(row)


@post(
    "/login",
    summary="Log in: access token + refresh token",
    tags=["auth"],
    status_code=200,
    security=NO_AUTH,
    responses=errors(401, 409, 429),
)
async def login(data: JSONBody[LoginBody], request: Request[Any, Any, Any], stores: StoresDep) -> Response[TokenView]:
    identifier = data.username if data.username is not None else data.email
    if identifier is None:
        raise ValidationFailed("username or email is required", fields={"username": "required (or email)"})
    # Both given: the email must be the username's own (a mismatch is refused like a wrong password).
    email = data.email if data.username is not None else None
    tokens = await accounts.login(stores, identifier, data.password, client_info(request, stores.settings), email=email)
    return token_response(tokens)


@post(
    "/token/refresh",
    summary="Rotate the refresh token, get a new access token",
    tags=["auth"],
    status_code=200,
    security=NO_AUTH,
    responses=errors(401, 409),
)
async def refresh_token(
    data: JSONBody[RefreshBody], request: Request[Any, Any, Any], stores: StoresDep
) -> Response[TokenView]:
    tokens = await accounts.refresh(stores, data.refresh_token, client_info(request, stores.settings))
    return token_response(tokens)


@post("/logout", summary="Revoke the current session", tags=["auth"], status_code=204)
async def logout(request: AuthRequest, stores: StoresDep) -> None:
    await accounts.revoke_session(stores, request.user.id, request.user.session_id, "logout")


@get("/sessions", summary="The caller's live sessions, newest first", tags=["auth"])
async def list_sessions(
    request: AuthRequest,
    stores: StoresDep,
    limit: Limit = 20,
    before: Before = None,
) -> Page[SessionView]:
    return await accounts.list_sessions(stores, request.user.id, request.user.session_id, limit=limit, before=before)


@delete(
    "/sessions/{session_id:str}",
    summary="Revoke one of the caller's sessions",
    tags=["auth"],
    status_code=204,
)
async def delete_session(
    request: AuthRequest,
    stores: StoresDep,
    session_id: FromPath[Annotated[str, Parameter(description="A session id (UUID)")]],
) -> None:
    await accounts.revoke_session(stores, request.user.id, parse_id(session_id, "session_id"), "revoked")


@get("/me", summary="The caller's account", tags=["me"])
async def get_me(request: AuthRequest, stores: StoresDep) -> MeView:
    return await accounts.get_me(stores, request.user.id)


@patch("/me", summary="Change profile fields", tags=["me"])
async def patch_me(data: JSONBody[ProfilePatch], request: AuthRequest, stores: StoresDep) -> MeView:
    changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not UNSET}
    if not changes:
        raise ValidationFailed("Nothing to change", fields={"body": "at least one profile field"})
    return await accounts.update_profile(stores, request.user.id, changes)


@delete("/me", summary="Deactivate the account (sessions revoked, content hidden)", tags=["me"], status_code=204)
async def delete_me(request: AuthRequest, stores: StoresDep) -> None:
    await accounts.deactivate(stores, request.user.id)


@get("/me/settings", summary="The caller's settings", tags=["me"])
async def get_settings(request: AuthRequest, stores: StoresDep) -> SettingsView:
    return await accounts.get_settings(stores, request.user.id)


@put("/me/settings", summary="Replace the caller's settings", tags=["me"])
async def put_settings(data: JSONBody[SettingsBody], request: AuthRequest, stores: StoresDep) -> SettingsView:
    values = msgspec.structs.asdict(data)
    return await accounts.put_settings(stores, request.user.id, values)


ROUTES = [
    signup,
    login,
    refresh_token,
    logout,
    list_sessions,
    delete_session,
    get_me,
    patch_me,
    delete_me,
    get_settings,
    put_settings,
]
