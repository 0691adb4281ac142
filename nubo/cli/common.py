"""What every command shares: loading settings (one-line error, exit 2) and Rich consoles."""

from __future__ import annotations

import json
from typing import Any, NoReturn

import typer
from rich.console import Console

from nubo.settings import Settings, SettingsError, load_settings

console = Console()
err_console = Console(stderr=True)


def settings_or_exit() -> Settings:
    """Load settings; on a bad value print one line naming the variable and exit with code 2."""
    try:
        return load_settings()
    except SettingsError as exc:
        err_console.print(f"[bold red]config error[/]: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error[/]: {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    """Machine-readable output on stdout for `--json` (no Rich markup)."""
    typer.echo(json.dumps(data, indent=2, default=str))
