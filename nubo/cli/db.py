"""`nubo db init` and `nubo db purge`: set up and maintain PostgreSQL and the Mongo `nubo_recent` database.

Exit codes (cron-friendly): 0 success (also "nothing to do"), 1 a store is unreachable or an SQL file failed,
2 bad configuration, 3 `db init` found drift (an applied SQL file changed, or a conflicting Mongo index).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
from rich.table import Table

from nubo.cli.common import JSON_OPTION, Working, console, err_console, fail, finish, settings_or_exit, working
from nubo.cli.stores import EXIT_UNREACHABLE, run_with_stores
from nubo.media import purge_media
from nubo.settings import Settings
from nubo.stores import Stores
from nubo.stores.schema import InitReport, SchemaError, init_databases, purge_cutoff, purge_recent

db_app = typer.Typer(
    help="Database setup and upkeep: create the PostgreSQL schema and Mongo collections (init), "
    "delete Mongo documents unused for the retention period (purge).",
    no_args_is_help=True,
)

EXIT_DRIFT = 3

T = TypeVar("T")
_INIT_STEPS = {"postgres": "PostgreSQL: applying sql/", "mongo": "MongoDB: collections and indexes"}


def _run(settings: Settings, work: Callable[[Stores], Awaitable[T]]) -> T:
    """Run `work` with open stores; an unreachable store or a broken schema becomes one line and exit code 1."""
    try:
        return run_with_stores(settings, work)
    except SchemaError as exc:
        fail(str(exc), EXIT_UNREACHABLE)


# -------------------------------------------------------------------------------------------------- init


def _print_postgres(report: InitReport) -> None:
    pg = report.postgres
    if not pg.applied:
        changed = f" ({len(pg.changed)} changed since, see below)" if pg.changed else ""
        console.print(
            f"PostgreSQL: all {len(pg.skipped) + len(pg.changed)} SQL files of {pg.sql_dir} already applied{changed}."
        )
        return
    files = Table(title=f"PostgreSQL: SQL files applied from {pg.sql_dir}", title_justify="left")
    files.add_column("file")
    files.add_column("status")
    for name in pg.applied:
        files.add_row(name, "[green]applied[/]")
    console.print(files)
    created_tables, created_indexes = set(pg.created_tables), set(pg.created_indexes)
    objects = Table(title="PostgreSQL objects per schema", title_justify="left")
    for column in ("schema", "tables", "views", "indexes", "created now"):
        objects.add_column(column)
    for schema, found in sorted(pg.schemas.items()):
        new_tables = [t for t in found["tables"] if f"{schema}.{t}" in created_tables]
        new_indexes = sum(f"{schema}.{i}" in created_indexes for i in found["indexes"])
        objects.add_row(
            schema,
            ", ".join(found["tables"]) or "-",
            ", ".join(found["views"]) or "-",
            str(len(found["indexes"])),
            f"{len(new_tables)} tables, {new_indexes} indexes",
        )
    console.print(objects)


def _print_mongo(report: InitReport) -> None:
    mongo = report.mongo
    header = f"MongoDB ({mongo.server}) database {mongo.database}"
    if not (mongo.created_collections or mongo.created_indexes):
        console.print(f"{header}: all {len(mongo.collections)} collections and their indexes already exist.")
        return
    created = set(mongo.created_indexes)
    table = Table(title=header, title_justify="left")
    for column in ("collection", "status", "indexes created now", "indexes now"):
        table.add_column(column)
    for name, indexes in mongo.collections.items():
        new = [i for i in indexes if f"{name}.{i}" in created]
        table.add_row(
            name,
            "[green]created[/]" if name in mongo.created_collections else "exists",
            ", ".join(new) or "-",
            str(len(indexes)),
        )
    console.print(table)


def _print_init(report: InitReport) -> None:
    _print_postgres(report)
    _print_mongo(report)
    for warning in report.mongo.warnings:
        console.print(f"[bold yellow]warning[/]: {warning}", soft_wrap=True)
    for problem in report.problems:
        err_console.print(f"[bold red]drift[/]: {problem}", highlight=False, soft_wrap=True)
    if report.nothing_to_do and not report.problems:
        console.print("[bold]nothing to do[/]: the databases are up to date.")
    elif report.problems:
        err_console.print(
            "[bold red]the databases differ from sql/ or mongo/[/]: fix the drift above (exit code 3).", highlight=False
        )


@db_app.command("init")
def init(json_output: bool = JSON_OPTION) -> None:
    """Create the PostgreSQL schemas and tables (sql/) and the Mongo collections and indexes (mongo/).

    Safe to re-run: applied SQL files are recorded and skipped; an applied file that changed is reported
    (exit code 3), never re-run. Set NUBO_SQL_DIR / NUBO_MONGO_DIR when running from an installed package.
    """
    settings = settings_or_exit()
    with working("connecting", json_output=json_output) as progress:
        report = _run(
            settings, lambda stores: init_databases(stores, on_step=lambda step: progress.update(_INIT_STEPS[step]))
        )
    finish(report, json_output, _print_init, InitReport.as_dict)
    if report.problems:
        if json_output:  # the human text went to the JSON; still say why the exit code is not 0
            err_console.print(f'[bold red]drift[/]: {len(report.problems)} problem(s), see "problems"', highlight=False)
        raise typer.Exit(EXIT_DRIFT)


# ------------------------------------------------------------------------------------------------- purge

PurgeWork = Callable[[Stores], Awaitable[dict[str, int]]]


def _purge_with_progress(days: int, dry_run: bool, progress: Working) -> PurgeWork:
    async def work(stores: Stores) -> dict[str, int]:
        visited = 0

        def advance(collection: str, _count: int, total: int) -> None:
            nonlocal visited
            visited += 1
            progress.update(collection, visited, total)

        return await purge_recent(stores, days, dry_run, on_progress=advance)

    return work


def _print_purge(summary: dict[str, Any]) -> None:
    counts: dict[str, int] = summary["counts"]
    verb = "would delete" if summary["dry_run"] else "deleted"
    busy = {name: count for name, count in counts.items() if count}
    if busy:
        table = Table(title=f"{summary['database']}: documents unused for {summary['days']} days")
        table.add_column("collection")
        table.add_column(verb, justify="right")
        for name, count in busy.items():
            table.add_row(name, str(count))
        console.print(table)
    console.print(
        f"{verb} {summary['total']} document(s) with last_use before {summary['cutoff']} "
        f"in {len(counts)} collection(s) of {summary['database']}",
        highlight=False,
    )
    console.print(f"media: {summary['media']}", highlight=False)


@db_app.command("purge")
def purge(
    days: int | None = typer.Option(
        None, "--days", min=1, help="Purge documents unused for N days (default NUBO_RETENTION_DAYS, 30)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be deleted; delete nothing."),
    json_output: bool = JSON_OPTION,
) -> None:
    """Delete Mongo documents whose last_use is older than the retention, in every collection; and media
    never completed or never attached after a day, with the objects of deleted media (docs/media.md).

    Needed from cron where the Mongo server has no TTL indexes (FerretDB), harmless elsewhere:
    `17 3 * * * nubo db purge`. Exit code 0 on success, 1 when a store is unreachable.
    """
    settings = settings_or_exit()
    days = days if days is not None else settings.retention_days
    cutoff = purge_cutoff(days)
    with working("counting" if dry_run else "purging", json_output=json_output) as progress:
        counts = _run(settings, _purge_with_progress(days, dry_run, progress))
        progress.update("media: uploads never completed or attached, objects of deleted media")
        media = _run(settings, lambda stores: purge_media(stores, dry_run=dry_run))
    summary = {
        "database": settings.mongo_db,
        "days": days,
        "cutoff": cutoff.isoformat(timespec="seconds"),
        "dry_run": dry_run,
        "total": sum(counts.values()),
        "counts": counts,
        "media": media,
    }
    finish(summary, json_output, _print_purge)
