"""`nubo cache inspect|flush`: look into the Redis cache, or delete nubo's keys (under the prefix only)."""

from __future__ import annotations

import asyncio
from typing import Any

import typer
from redis.asyncio import Redis
from redis.exceptions import RedisError
from rich.table import Table

from nubo.cli.common import JSON_OPTION, Working, console, fail, finish, print_json, settings_or_exit, working
from nubo.settings import Settings
from nubo.stores.cache.admin import cache_stats, resolve_budget, used_memory
from nubo.stores.cache.collection import RedisCache
from nubo.stores.cache.schema import SCHEMAS
from nubo.stores.feed_backlog import FeedBacklog
from nubo.stores.redis import Keys, delete_prefix, key_families, open_redis
from nubo.stores.view_counts import ViewCounts

cache_app = typer.Typer(
    help="Inspect or flush nubo's Redis cache (only keys under NUBO_REDIS_PREFIX).", no_args_is_help=True
)


async def _inspect(settings: Settings, collection: str | None) -> dict[str, Any]:
    redis = open_redis(settings.redis_url, timeout=10.0)
    try:
        report = await cache_stats(RedisCache(redis, Keys(settings.redis_prefix)), collection)
        budget = await resolve_budget(redis, settings.redis_memory_budget)
        margin = settings.memory_margin_bytes(budget) if budget else 0
        report["memory"] = {
            "used_bytes": await used_memory(redis),
            "budget_bytes": budget,
            "margin_bytes": margin,
            "threshold_bytes": max(budget - margin, 0),
        }
        if collection is None:
            report["key_families"] = await key_families(redis, Keys(settings.redis_prefix))
            report["write_pipeline"] = await _write_pipeline(redis, Keys(settings.redis_prefix))
        return report
    finally:
        await redis.aclose()


async def _write_pipeline(redis: Redis, keys: Keys) -> dict[str, Any]:
    """The feed precompute's backlog and the view counts waiting for the flusher."""
    backlog = await FeedBacklog(redis, keys).stats()
    return {
        "feed_backlog_users": backlog.users,
        "feed_backlog_oldest_seconds": None if backlog.oldest_seconds is None else round(backlog.oldest_seconds, 1),
        "view_counts_pending": await ViewCounts(redis, keys).pending(),
    }


def _mib(size: float) -> str:
    return f"{size / 1024 / 1024:.2f} MiB"


def _print_report(report: dict[str, Any]) -> None:
    table = Table(title=f"Redis cache (prefix {report['prefix']})")
    for column in ("collection", "elements", "indexes", "largest indexes (ids)", "memory ≈"):
        table.add_column(column, justify="right" if column in ("elements", "indexes", "memory ≈") else "left")
    for name, stats in report["collections"].items():
        largest = ", ".join(f"{item['index']} ({item['ids']})" for item in stats["largest_indexes"]) or "-"
        table.add_row(name, str(stats["elements"]), str(stats["indexes"]), largest, _mib(stats["memory_bytes"]))
    console.print(table)
    memory = report["memory"]
    budget = (
        f"{_mib(memory['budget_bytes'])}, purging above {_mib(memory['threshold_bytes'])}"
        if memory["budget_bytes"]
        else "none (NUBO_REDIS_MEMORY_BUDGET and maxmemory unset)"
    )
    console.print(
        f"Redis used memory {_mib(memory['used_bytes'])}; budget {budget}; "
        f"usage order holds {report['lru_entries']} elements",
        highlight=False,
    )
    pipeline = report.get("write_pipeline")
    if pipeline is not None:
        oldest = pipeline["feed_backlog_oldest_seconds"]
        waited = f", the oldest queued {oldest:.0f} s ago" if oldest is not None else ""
        console.print(
            f"Feed precompute backlog: {pipeline['feed_backlog_users']} users{waited}; "
            f"view counts not yet in PostgreSQL: {pipeline['view_counts_pending']}",
            highlight=False,
        )
    families = report.get("key_families")
    if families:
        kinds = Table(title="All nubo keys, by family")
        kinds.add_column("family")
        kinds.add_column("keys", justify="right")
        for family, count in families.items():
            kinds.add_row(family, str(count))
        console.print(kinds)


@cache_app.command("inspect")
def inspect(
    collection: str | None = typer.Option(None, "--collection", "-c", help="Only this collection."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Per collection: elements, index sets, largest indexes, approximate memory; Redis memory vs budget; the
    feed precompute's backlog and the view counts waiting to be written."""
    settings = settings_or_exit()
    if collection is not None and collection not in SCHEMAS:
        fail(f"unknown collection {collection!r} (one of: {', '.join(sorted(SCHEMAS))})", 2)
    try:
        report = asyncio.run(_inspect(settings, collection))
    except (RedisError, OSError) as exc:
        fail(f"cannot read Redis: {type(exc).__name__}: {exc}")
    if as_json:
        print_json(report)
    else:
        _print_report(report)


async def _flush(settings: Settings, progress: Working) -> int:
    redis = open_redis(settings.redis_url, timeout=10.0)
    try:
        total = await redis.dbsize()  # every key of the database: an upper bound of what the prefix holds
        return await delete_prefix(
            redis, Keys(settings.redis_prefix), on_progress=lambda done: progress.update("deleting keys", done, total)
        )
    finally:
        await redis.aclose()


def flush_prefix(settings: Settings, *, json_output: bool = False) -> int:
    """Delete every key under the prefix (never FLUSHDB), print and return how many were deleted."""
    try:
        with working("scanning keys", json_output=json_output) as progress:
            deleted = asyncio.run(_flush(settings, progress))
    except (RedisError, OSError) as exc:
        fail(f"cannot flush Redis: {type(exc).__name__}: {exc}")
    finish(
        {"prefix": settings.redis_prefix, "deleted": deleted},
        json_output,
        lambda result: console.print(
            f"deleted {result['deleted']} Redis keys under prefix {result['prefix']!r}", highlight=False
        ),
    )
    return deleted


@cache_app.command("flush")
def flush(
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    json_output: bool = JSON_OPTION,
) -> None:
    """Delete nubo's Redis keys (those under NUBO_REDIS_PREFIX); other keys on the server are left alone."""
    settings = settings_or_exit()
    if (
        not yes
        and not json_output
        and not typer.confirm(f"Delete every Redis key under prefix {settings.redis_prefix!r}?")
    ):
        console.print("nothing deleted")
        raise typer.Exit(1)
    if json_output and not yes:
        fail("--json needs --yes (no question can be asked)", 2)
    flush_prefix(settings, json_output=json_output)
