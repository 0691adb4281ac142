"""The `nubo` command tree as data, for the tests of every command's help and registration."""

from __future__ import annotations

from typing import Any

import typer

from nubo.cli.main import app


def command_paths() -> list[tuple[tuple[str, ...], str]]:
    """Every registered command and group as (path, its help text), walking the Typer/Click tree."""
    found: list[tuple[tuple[str, ...], str]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        found.append((path, command.help or command.short_help or ""))
        # Typer >= 0.20 vendors Click: a group is whatever has sub-commands.
        for name, sub in (getattr(command, "commands", None) or {}).items():
            if not sub.hidden:
                walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found
