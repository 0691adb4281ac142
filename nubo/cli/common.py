"""What every command shares: loading settings (one-line error, exit 2), Rich consoles, and the pattern of
long commands: a Rich progress display on stderr while they work, and their result as a table or, with
``--json``, as JSON on stdout (:data:`JSON_OPTION`, :func:`working`, :func:`finish`)::

    def purge(json_output: bool = JSON_OPTION) -> None:
        with working("purging", json_output=json_output) as progress:
            result = do_it(on_progress=lambda name, done, total: progress.update(name, done, total))
        finish(result, json_output, print_table)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

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


T = TypeVar("T")
JSON_OPTION = typer.Option(False, "--json", help="Print the result as JSON on stdout (no progress display).")


class Working:
    """The progress display of one long command: a line naming the current step, with a bar once the total
    is known. Every method is a no-op when the display is off."""

    def __init__(self, progress: Progress | None, task: TaskID | None) -> None:
        self._progress = progress
        self._task = task

    def update(self, step: str, done: int | None = None, total: int | None = None) -> None:
        """Show `step`, and `done` of `total` when given."""
        if self._progress is None or self._task is None:
            return
        self._progress.update(self._task, description=step, completed=done or 0, total=total)


@contextmanager
def working(title: str, *, json_output: bool) -> Iterator[Working]:
    """A progress display on stderr for the block, shown only to a person: not with ``--json`` and not when
    stderr is not a terminal (cron, pipes). It disappears when the block ends."""
    if json_output or not err_console.is_terminal:
        yield Working(None, None)
        return
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as progress:
        yield Working(progress, progress.add_task(title, total=None))


def finish(result: T, json_output: bool, show: Callable[[T], None], as_json: Callable[[T], Any] | None = None) -> None:
    """Print a command's result: `as_json(result)` (default: the result itself) with ``--json``, else `show`."""
    if json_output:
        print_json(as_json(result) if as_json is not None else result)
    else:
        show(result)
