"""Redis connection and key naming: every key and channel starts with the configured prefix
(docs/architecture.md §7)."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import BlockingConnectionPool
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError, DataError, RedisError, ResponseError, TimeoutError

# What a Redis call raises when the server cannot answer (or refuses): redis-py's errors and the socket errors it
# lets through. Domain modules catch these, never a redis class, so redis stays behind nubo.stores.
REDIS_FAILURES: tuple[type[Exception], ...] = (RedisError, OSError)

# Commands that may wait on the server (or change the connection's state) must keep a connection of their own.
_UNBATCHED = frozenset(
    {
        "BLPOP",
        "BRPOP",
        "BLMOVE",
        "BRPOPLPUSH",
        "BLMPOP",
        "BZPOPMIN",
        "BZPOPMAX",
        "BZMPOP",
        "XREAD",
        "XREADGROUP",
        "WAIT",
        "WAITAOF",
        "SUBSCRIBE",
        "PSUBSCRIBE",
        "SSUBSCRIBE",
        "MONITOR",
        "SELECT",
        "MULTI",
        "EXEC",
        "WATCH",
        "UNWATCH",
        "DISCARD",
        "CLIENT",
        "HELLO",
        "AUTH",
        "QUIT",
        "RESET",
    }
)
MAX_BATCH = 256
PLAIN_MAX_CONNECTIONS = 100  # pooled connections of the plain client (redis-py's default pool size)
_Pending = tuple[tuple[Any, ...], dict[str, Any], "asyncio.Future[Any]"]  # a command, its options, its waiter


class BatchingRedis(Redis):
    """redis-py's client with automatic pipelining: the commands that coroutines issue during one turn of the
    event loop leave together, as one non-transactional pipeline on one connection.

    Why by hand: redis-py has no auto-pipelining (redis/redis-py#3767; ioredis and Lettuce have it), and its
    per-command cost (pool checkout, retry wrapper, timeout task) is most of a hot request's CPU: one command
    alone costs ~100 µs of CPU here, eight in a pipeline ~26 µs each. Semantics are unchanged for callers:
    each command gets its own reply or its own error (a NOSCRIPT reply still reaches redis-py's script
    retry); a connection failure fails every command of that batch, as it would have failed each alone.
    Commands that block or change connection state run alone (:data:`_UNBATCHED`); MULTI/EXEC pipelines and
    pub/sub have their own connections and are not affected.

    The timeout covers a whole round trip (:func:`timed`), not each socket write and read: redis-py applies a
    `socket_timeout` with `asyncio.wait_for`, which on Python 3.11 starts a task per write.

    Commands are packed by hiredis in C (what redis-py's sync client does; its asyncio connection packs in
    Python, at ~30 µs for a script call with twenty arguments), each on its own: an argument Redis cannot take
    fails only its own command, with redis-py's DataError.
    """

    _batch: list[_Pending] | None = None
    round_trip_timeout: float | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if str(args[0]).upper() in _UNBATCHED or self.single_connection_client:
            async with timed(self.round_trip_timeout):
                return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._batch is None:
            self._batch = []
            asyncio.get_running_loop().call_soon(self._flush)
        self._batch.append((args, options, future))
        if len(self._batch) >= MAX_BATCH:
            self._flush()
        return await future

    def _flush(self) -> None:
        batch, self._batch = self._batch, None
        if batch:
            task = asyncio.ensure_future(self._send(batch))
            sending: set[asyncio.Future[None]] = self.__dict__.setdefault("_sending", set())
            sending.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(sending.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        batch, packed = _pack_each(batch)
        if not batch:
            return
        try:
            try:
                replies = await self._round_trip(batch, packed)
            except ConnectionError:  # a pooled connection the server dropped: once more on a fresh one
                replies = await self._round_trip(batch, packed)
        except BaseException as exc:  # still down, timeout, cancellation: every waiter learns it
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else ConnectionError(str(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue  # the caller was cancelled meanwhile
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _round_trip(self, batch: list[_Pending], packed: list[bytes]) -> list[Any]:
        """Send the packed batch in one write on one pooled connection and read its replies in order (what a
        non-transactional Pipeline does, minus its per-pipeline bookkeeping)."""
        pool = self.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            async with timed(self.round_trip_timeout):
                await conn.send_packed_command(packed)
                replies: list[Any] = []
                for args, options, _ in batch:
                    try:
                        replies.append(await self.parse_response(conn, args[0], **options))
                    except ResponseError as exc:
                        replies.append(exc)
            return replies
        except BaseException:
            await conn.disconnect()  # replies may be left unread on it: never reuse it
            raise
        finally:
            await pool.release(conn)

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = TimedPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.round_trip_timeout = self.round_trip_timeout
        return pipe


_hiredis_packer = HiredisRespSerializer()  # hiredis is a dependency (redis[hiredis])


def _pack_each(batch: list[_Pending]) -> tuple[list[_Pending], list[bytes]]:
    """The commands that could be packed, and their wire bytes; the others' waiters get the DataError."""
    kept: list[_Pending] = []
    packed: list[bytes] = []
    for pending in batch:
        try:
            packed += _hiredis_packer.pack(*pending[0])
        except DataError as exc:
            if not pending[2].done():
                pending[2].set_exception(exc)
            continue
        kept.append(pending)
    return kept, packed


class TimedPipeline(Pipeline):
    """An explicit pipeline (or MULTI/EXEC transaction) whose execution is bounded like a batch."""

    round_trip_timeout: float | None = None

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        async with timed(self.round_trip_timeout):
            return await super().execute(raise_on_error)


@contextlib.asynccontextmanager
async def timed(seconds: float | None) -> AsyncIterator[None]:
    """Bound a Redis round trip; raises redis' TimeoutError (a RedisError, which callers already handle)."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except builtins.TimeoutError:
        raise TimeoutError(f"Redis did not answer within {seconds} s") from None


def open_redis(url: str, *, timeout: float = 2.0, autopipeline: bool = True) -> Redis:
    """A lazily connecting client returning `str` values, with automatic pipelining (:class:`BatchingRedis`).

    Round trips are bounded by `timeout` (see :class:`BatchingRedis`); the sockets themselves have none.
    ``autopipeline=False`` (``NUBO_REDIS_AUTOPIPELINE=off``) gives redis-py's own client instead: each
    command on a pooled connection of its own, each socket read and write bounded by `timeout`. Its pool
    makes a command wait (up to `timeout`) for a free connection: redis-py's default pool refuses any command
    beyond :data:`PLAIN_MAX_CONNECTIONS` in flight, which a loaded server reaches."""
    if not autopipeline:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=PLAIN_MAX_CONNECTIONS,
            timeout=timeout,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            socket_keepalive=True,
            health_check_interval=30,
            retry_on_timeout=False,
        )
        return Redis.from_pool(pool)  # the client owns its pool: aclose() closes it
    client: BatchingRedis = BatchingRedis.from_url(  # type: ignore[assignment]
        url,
        decode_responses=True,
        socket_timeout=None,
        socket_connect_timeout=timeout,
        socket_keepalive=True,
        health_check_interval=30,
        retry_on_timeout=False,
    )
    client.round_trip_timeout = timeout
    return client


@dataclass(frozen=True)
class Keys:
    """Builds prefixed key names, so nubo never touches another application's keys."""

    prefix: str

    def __call__(self, *parts: object) -> str:
        return self.prefix + ":".join(map(str, parts))

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key of this prefix."""
        return _escape_glob(self.prefix) + "*"


def _escape_glob(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


async def scan_prefix(redis: Redis, keys: Keys, suffix_pattern: str = "*", count: int = 1000) -> AsyncIterator[str]:
    """Iterate over keys under the prefix with SCAN (never KEYS, which blocks the server)."""
    async for key in redis.scan_iter(match=_escape_glob(keys.prefix) + suffix_pattern, count=count):
        yield key


async def key_families(redis: Redis, keys: Keys) -> dict[str, int]:
    """How many keys of each family (the first name part after the prefix: `cache`, `idx`, `session`, `rl`,
    `rt`, `derived`, `tag`, ...) nubo holds, by one SCAN over the prefix."""
    families: dict[str, int] = {}
    async for key in scan_prefix(redis, keys):
        family = key[len(keys.prefix) :].split(":", 1)[0] or "(none)"
        families[family] = families.get(family, 0) + 1
    return dict(sorted(families.items()))


async def delete_prefix(
    redis: Redis, keys: Keys, batch: int = 500, on_progress: Callable[[int], None] | None = None
) -> int:
    """Delete every key under the prefix in batches; returns how many were deleted. `on_progress` gets the
    count deleted so far after each batch."""
    deleted = 0
    pending: list[str] = []
    async for key in scan_prefix(redis, keys):
        pending.append(key)
        if len(pending) >= batch:
            deleted += await redis.unlink(*pending)
            pending.clear()
            if on_progress is not None:
                on_progress(deleted)
    if pending:
        deleted += await redis.unlink(*pending)
    if on_progress is not None:
        on_progress(deleted)
    return deleted


async def ping(redis: Redis) -> dict[str, Any]:
    await redis.ping()
    info = await redis.info("server")
    return {"version": info.get("redis_version")}
