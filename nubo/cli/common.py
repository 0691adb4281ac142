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


def plain_metavars(command: Any) -> None:
    """Click-style value names in `--help`, for `command` and every sub-command.

    Typer (0.29) prints each parameter's Python type (`<bool>`, `<str>`, `<int>`): a flag (`--help` too) gets
    none, an option a click-style name (TEXT, INTEGER, the choices a|b), an argument only its own name.
    """
    for param in getattr(command, "params", None) or []:
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif param.param_type_name == "argument":
            param.metavar = param.metavar or str(param.name).upper()
            setattr(param, "display_type_rich", _no_type)  # noqa: B010 - an instance override of typer's method
        elif param.metavar is None:
            param.metavar = _value_name(param)
    help_option = command.get_help_option

    def plain_help_option(ctx: Any) -> Any:
        option = help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    setattr(command, "get_help_option", plain_help_option)  # noqa: B010 - typer builds `--help` per call
    for sub in (getattr(command, "commands", None) or {}).values():
        plain_metavars(sub)


def _no_type(ctx: Any = None) -> None:
    return None


def _value_name(param: Any) -> str:
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None and descriptor.is_choice:
        return "|".join(str(choice) for choice in descriptor.choices or ())
    bare = param.bare_type() if hasattr(param, "bare_type") else "str"
    return {"str": "TEXT", "int": "INTEGER", "float": "NUMBER"}.get(bare, bare.upper())
