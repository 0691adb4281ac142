"""`nubo users grant|revoke|ban|unban USER`: an operator's changes to a user's role and state.

USER is an id or a username. Each change commits in PostgreSQL with an audit_logs row, goes through the
tiered write path (Mongo and Redis copies, every instance's near copies) and rewrites or revokes the user's
session mirrors, so it applies to the user's next request on every instance. Exit 1 for an unknown user or an
unreachable store, 2 for bad configuration or usage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
import typer

from nubo import moderation
from nubo.cli.common import console, fail, print_json, settings_or_exit
from nubo.cli.stores import run_with_stores
from nubo.errors import NuboError
from nubo.moderation import UserRole
from nubo.stores import Stores

users_app = typer.Typer(
    help="Operator changes to users: grant or revoke a role (moderator, admin), ban or unban.",
    no_args_is_help=True,
)

_USER = typer.Argument(..., help="The user: id (UUID) or username.", show_default=False)
_JSON = typer.Option(False, "--json", help="Print the user's role and state as JSON.")


def _apply(work: Callable[[Stores], Awaitable[UserRole]], as_json: bool, done: str) -> None:
    settings = settings_or_exit()
    try:
        result = run_with_stores(settings, work)
    except NuboError as exc:
        fail(exc.message)
    if as_json:
        print_json(msgspec.to_builtins(result))
        return
    extra = f", {result.revoked_sessions} session(s) revoked" if result.revoked_sessions else ""
    console.print(
        f"{result.username} {done}: role {result.role} (grade {result.grade}), {result.state}{extra}",
        highlight=False,
        markup=False,
    )


@users_app.command("grant")
def grant(
    user: str = _USER,
    role: str = typer.Option(..., "--role", help="moderator or admin.", metavar="ROLE"),
    as_json: bool = _JSON,
) -> None:
    """Give a user a role: moderator or admin (applies at their next request)."""
    if role not in ("moderator", "admin"):
        fail("--role: moderator or admin (use `nubo users revoke` to make a user a plain user again)", code=2)
    _apply(lambda stores: moderation.set_role(stores, user, role), as_json, "granted")


@users_app.command("revoke")
def revoke(user: str = _USER, as_json: bool = _JSON) -> None:
    """Take a user's role away: a plain user again (applies at their next request)."""
    _apply(lambda stores: moderation.set_role(stores, user, "user"), as_json, "revoked")


@users_app.command("ban")
def ban(user: str = _USER, as_json: bool = _JSON) -> None:
    """Ban a user: every session ends now, login is refused, their content is hidden."""
    _apply(lambda stores: moderation.set_banned(stores, user, True), as_json, "banned")


@users_app.command("unban")
def unban(user: str = _USER, as_json: bool = _JSON) -> None:
    """Lift a ban: the account is active again (the user logs in again)."""
    _apply(lambda stores: moderation.set_banned(stores, user, False), as_json, "unbanned")
