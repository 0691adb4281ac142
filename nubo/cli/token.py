"""`nubo token --sub <user id|username> [--ttl 1h] [--json]`: an access token for an existing user.

The token is backed by a real session (so it passes the guard like a login's) that lives `--ttl`; it can be
revoked with `DELETE /sessions/{id}`. No refresh token is handed out. Exit 1 for an unknown or inactive user
or an unreachable database, 2 for bad configuration or a bad `--ttl`.
"""

from __future__ import annotations

import psycopg
import typer

from nubo import accounts
from nubo.cli.common import console, fail, print_json, settings_or_exit
from nubo.cli.stores import run_with_stores, short_error
from nubo.errors import NuboError
from nubo.settings import SettingsError, parse_duration

MAX_TTL = 366 * 86400


def token(
    sub: str = typer.Option(..., "--sub", help="The user: id (UUID) or username."),
    ttl: str = typer.Option("1h", "--ttl", help="Lifetime of the token and its session: 900, 15m, 1h, 7d..."),
    as_json: bool = typer.Option(False, "--json", help="Print token, expiry, user and session ids as JSON."),
) -> None:
    """Print a valid access token for an existing user (for tests, scripts and `curl`)."""
    settings = settings_or_exit()
    try:
        seconds = parse_duration("--ttl", ttl)
    except SettingsError as exc:
        fail(str(exc), code=2)
    if seconds > MAX_TTL:
        fail(f"--ttl: at most {MAX_TTL // 86400} days", code=2)
    try:
        issued = run_with_stores(settings, lambda stores: accounts.issue_operator_token(stores, sub, seconds))
    except NuboError as exc:
        fail(exc.message)
    except psycopg.errors.UndefinedTable:
        fail("the database has no nubo schema yet: run `nubo db init` first")
    except (psycopg.Error, OSError) as exc:
        fail(f"PostgreSQL failed: {short_error(exc)}")
    if as_json:
        print_json(
            {
                "access_token": issued.access_token,
                "token_type": "bearer",
                "expires_in": issued.expires_in,
                "user_id": str(issued.user.id),
                "username": issued.user.username,
                "session_id": str(issued.session_id),
            }
        )
        return
    console.print(issued.access_token, soft_wrap=True, highlight=False, markup=False)
