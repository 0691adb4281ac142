"""Accounts: signup and login, sessions and their tokens, the request guard, profile and settings.

Plain async functions over :class:`~nubo.stores.Stores` (no HTTP here), one module per concept:

- :mod:`~nubo.accounts.credentials`: signup and login.
- :mod:`~nubo.accounts.security`: password hashing, refresh tokens and access JWTs.
- :mod:`~nubo.accounts.sessions`: opening, rotating, listing and revoking sessions; operator tokens.
- :mod:`~nubo.accounts.mirrors`: the rules of the Redis session mirrors (lifetime, revocation, refresh).
- :mod:`~nubo.accounts.guard`: authenticating a request's token against its session (and rate limit).
- :mod:`~nubo.accounts.profile`: the owner's profile, settings and deactivation.
- :mod:`~nubo.accounts.users`: user lookups, public profiles, follow lists and search.
- :mod:`~nubo.accounts.views`: the shapes handed to clients (public and own user views, profile, session,
  settings, tokens), defined once.

PostgreSQL holds users and sessions. Each live session is mirrored in Redis so the per-request check costs one
GET; a revoked session is marked there at once and a late "live" write can never overwrite that mark. When
Redis is down or the mirror is missing, PostgreSQL answers and the mirror is rebuilt.

Never log a password, a hash or a refresh token.
"""

from nubo.accounts.credentials import (
    EMAIL_RE,
    INVALID_CREDENTIALS,
    PASSWORD_MAX,
    PASSWORD_MIN,
    USERNAME_RE,
    NewUser,
    login,
    signup,
    validate_new_user,
)
from nubo.accounts.guard import AuthUser, authenticate_and_limit, authenticate_session
from nubo.accounts.mirrors import (
    MIRROR_REFRESH_BELOW,
    MIRROR_TTL,
    mark_revoked,
    refresh_mirrors,
    refresh_user_mirrors,
    revoked_among,
)
from nubo.accounts.profile import (
    PROFILE_FIELDS,
    deactivate,
    get_me,
    get_settings,
    put_settings,
    update_profile,
)
from nubo.accounts.sessions import (
    ClientInfo,
    IssuedTokens,
    issue_operator_token,
    list_sessions,
    open_session,
    refresh,
    revoke_session,
    revoke_user_sessions,
)
from nubo.accounts.users import find_user
from nubo.accounts.views import (
    SETTINGS_FIELDS,
    MeView,
    Profile,
    PublicUser,
    SessionView,
    SettingsView,
    TokenView,
)
from nubo.stores.session_mirrors import REVOKED_MARKER

__all__ = [
    "EMAIL_RE",
    "INVALID_CREDENTIALS",
    "MIRROR_REFRESH_BELOW",
    "MIRROR_TTL",
    "PASSWORD_MAX",
    "PASSWORD_MIN",
    "PROFILE_FIELDS",
    "REVOKED_MARKER",
    "SETTINGS_FIELDS",
    "USERNAME_RE",
    "AuthUser",
    "ClientInfo",
    "IssuedTokens",
    "MeView",
    "NewUser",
    "Profile",
    "PublicUser",
    "SessionView",
    "SettingsView",
    "TokenView",
    "authenticate_and_limit",
    "authenticate_session",
    "deactivate",
    "find_user",
    "get_me",
    "get_settings",
    "issue_operator_token",
    "list_sessions",
    "login",
    "mark_revoked",
    "open_session",
    "put_settings",
    "refresh",
    "refresh_mirrors",
    "refresh_user_mirrors",
    "revoke_session",
    "revoke_user_sessions",
    "revoked_among",
    "signup",
    "update_profile",
    "validate_new_user",
]
