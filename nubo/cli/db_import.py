"""`nubo db import`: load a community from JSON Lines (the work is :mod:`nubo.importing`; this parses, shows a
Rich progress bar and prints the report).

Exit codes: 0 imported (rejected rows are reported, not fatal, unless `--strict`), 1 a store is unreachable or
the load failed (nothing was written), 2 bad sources or configuration, 4 `--strict` and rows were rejected
(nothing was written).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import psycopg_pool
import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from nubo.cli.common import JSON_OPTION, console, err_console, fail, finish, settings_or_exit
from nubo.importing import ImportReport, ImportSourceError, find_sources, import_community, iter_rejected
from nubo.root import open_root
from nubo.settings import Settings

EXIT_REJECTED = 4
_SHOWN_REJECTS = 50  # rejected rows listed on the terminal (--json lists them all)
_SOURCES = typer.Argument(
    ..., help="users.jsonl, follows.jsonl, posts.jsonl, comments.jsonl, likes.jsonl, or directories of them."
)


async def _import(settings: Settings, sources: dict[str, Path], dry_run: bool, show: bool) -> ImportReport:
    root = await open_root(settings, wait_for_postgres=True, pg_max_size=2)
    columns = (TextColumn("{task.description:<24}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"))
    try:
        with Progress(*columns, TimeElapsedColumn(), console=err_console, disable=not show) as bar:
            tasks: dict[str, TaskID] = {}

            def progress(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bar.add_task(phase, total=max(total, 1))
                bar.update(tasks[phase], completed=done, total=max(total, 1))

            return await import_community(root.stores, sources, dry_run=dry_run, progress=progress)
    finally:
        await root.close()


def _print_report(report: ImportReport) -> None:
    verb = "would load" if report.dry_run else "loaded"
    table = Table(title=f"nubo db import{' (dry run)' if report.dry_run else ''}", title_justify="left")
    for column in ("kind", "lines", verb, "rejected", "Mongo copies"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    rejected_by_file: dict[str, int] = {}
    for row in report.rejected:
        rejected_by_file[row.file] = rejected_by_file.get(row.file, 0) + 1
    for kind, path in report.files.items():
        table.add_row(
            kind,
            str(report.read.get(kind, 0)),
            str(report.loaded.get(kind, 0)),
            str(rejected_by_file.get(Path(path).name, 0)),
            "-" if report.dry_run else str(report.mongo_copies.get(kind, 0)),
        )
    console.print(table)
    for row in list(iter_rejected(report))[:_SHOWN_REJECTS]:
        console.print(f"[yellow]rejected[/] {row.where}: {row.reason}", highlight=False, soft_wrap=True)
    if len(report.rejected) > _SHOWN_REJECTS:
        console.print(f"... and {len(report.rejected) - _SHOWN_REJECTS} more (--json lists them all)")
    rate = f", {report.rows_per_second:,.0f} rows/s" if not report.dry_run else ""
    console.print(f"{verb} {sum(report.loaded.values())} rows in {report.seconds:.1f} s{rate}", highlight=False)


def import_command(
    sources: list[Path] = _SOURCES,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Validate everything (also against the database); write nothing."
    ),
    strict: bool = typer.Option(False, "--strict", help="Write nothing when any row is rejected (exit code 4)."),
    json_output: bool = JSON_OPTION,
) -> None:
    """Load users, follows, posts, comments and likes from JSON Lines with COPY, in one transaction.

    Each row is validated; rejected rows are reported with file:line and the reason, the others are loaded.
    Rows of the last NUBO_RETENTION_DAYS get their Mongo copies. See docs/write-pipeline.md for the format.
    """
    settings = settings_or_exit()
    try:
        found = find_sources(sources)
    except ImportSourceError as exc:
        fail(str(exc), 2)
    show = console.is_terminal and not json_output
    try:
        if strict and not dry_run:
            checked = asyncio.run(_import(settings, found, True, show))
            if checked.rejected:
                _finish(checked, json_output)
                raise typer.Exit(EXIT_REJECTED)
        report = asyncio.run(_import(settings, found, dry_run, show))
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        fail(f"import failed, nothing was written: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
    _finish(report, json_output)
    if strict and report.rejected:
        raise typer.Exit(EXIT_REJECTED)


def _finish(report: ImportReport, json_output: bool) -> None:
    finish(report, json_output, _print_report, ImportReport.as_dict)
