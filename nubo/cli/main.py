"""Entry point of the `nubo` command: registers each sub-command group."""

from __future__ import annotations

import typer

from nubo.cli.cache import cache_app
from nubo.cli.chat import chat
from nubo.cli.db import db_app
from nubo.cli.db_import import import_command
from nubo.cli.serve import serve
from nubo.cli.token import token

app = typer.Typer(
    name="nubo",
    help="nubo: the Nubo social backend (API server, database setup, cache tools, test tokens, chat client).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """nubo: the Nubo social backend (API server, database setup, cache tools, test tokens, chat client)."""


app.command("serve")(serve)
app.command("token")(token)
app.command("chat")(chat)
app.add_typer(db_app, name="db")
app.add_typer(cache_app, name="cache")
db_app.command("import")(import_command)


def run() -> None:
    app()
