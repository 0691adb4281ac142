"""Entry point of the `nubo` command: registers each sub-command group."""

from __future__ import annotations

import typer

from nubo.cli.serve import serve

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


def run() -> None:
    app()
