"""Entry point of the `nubo` command: registers each sub-command group."""

from __future__ import annotations

from typing import Any

import typer

from nubo.cli.cache import cache_app
from nubo.cli.chat import chat
from nubo.cli.common import plain_metavars
from nubo.cli.db import db_app
from nubo.cli.db_import import import_command
from nubo.cli.serve import serve
from nubo.cli.token import token
from nubo.cli.users import users_app

app = typer.Typer(
    name="nubo",
    help="nubo: the Nubo social backend (API server, database and cache tools, test tokens, operator commands, chat).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """nubo: the Nubo social backend (API server, database and cache tools, test tokens, operator commands, chat)."""


app.command("serve")(serve)
app.command("token")(token)
app.command("chat")(chat)
db_app.command("import")(import_command)
app.add_typer(db_app, name="db")
app.add_typer(cache_app, name="cache")
app.add_typer(users_app, name="users")


def command() -> Any:
    """The `nubo` command tree as click runs it, with plain value names in `--help`."""
    tree = typer.main.get_command(app)
    plain_metavars(tree)
    return tree


def run() -> None:
    command()()
