"""Commands that open the stores: one direct PostgreSQL probe first, then the process, and one line on failure.

The connection pool retries quietly and then says only "timeout" (after logging a warning per attempt), so a
wrong password or host would read as six warnings and `PoolTimeout`. A single direct connection fails at once
with the driver's own reason, which the command prints as one line naming the store (exit 1).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg_pool
from pymongo.errors import PyMongoError

from nubo.cli.common import fail
from nubo.errors import StoreUnavailable
from nubo.root import open_root
from nubo.settings import Settings
from nubo.stores import Stores

T = TypeVar("T")

EXIT_UNREACHABLE = 1
CONNECT_TIMEOUT = 5  # seconds per attempt: an unreachable store fails well under 15 s


def redact(url: str) -> str:
    """The URL without its password, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def short_error(exc: BaseException) -> str:
    """The first useful part of a driver error (pymongo appends its whole topology description)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.split(" (configured timeouts")[0].split(", Timeout: ")[0][:300]


async def _probe_postgres(url: str) -> None:
    """One direct connection first: it fails at once with the real reason (the pool only says "timeout")."""
    conn = await psycopg.AsyncConnection.connect(url, connect_timeout=CONNECT_TIMEOUT)
    await conn.close()


async def _with_stores(settings: Settings, work: Callable[[Stores], Awaitable[T]], pg_max_size: int) -> T:
    await _probe_postgres(settings.postgres_url)
    stores = (await open_root(settings, wait_for_postgres=True, pg_max_size=pg_max_size)).stores
    try:
        return await work(stores)
    finally:
        await stores.close()


def run_with_stores(settings: Settings, work: Callable[[Stores], Awaitable[T]], *, pg_max_size: int = 2) -> T:
    """Run `work` with open stores; an unreachable store becomes one line naming it and exit code 1."""
    # The pool logs each failed attempt as a warning; the one-line error below says it once.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    try:
        return asyncio.run(_with_stores(settings, work, pg_max_size))
    except (psycopg_pool.PoolTimeout, psycopg.OperationalError) as exc:
        fail(f"PostgreSQL unreachable at {redact(settings.postgres_url)}: {short_error(exc)}", EXIT_UNREACHABLE)
    except PyMongoError as exc:
        fail(f"MongoDB unreachable at {redact(settings.mongo_url)}: {short_error(exc)}", EXIT_UNREACHABLE)
    except StoreUnavailable as exc:
        fail(f"{exc.store} unreachable: {exc.message}", EXIT_UNREACHABLE)
