"""The transactional outbox: every row written through a :class:`~nubo.stores.transaction.Transaction` gets
an outbox entry in the same commit; the entry is deleted once the row's Mongo and Redis copies are written.
One worker per server process (:func:`run_outbox_worker`) re-projects the entries left behind (a store was
down, the process stopped) from the rows' current PostgreSQL state. Projections are idempotent, so doing one
twice is harmless.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING

from nubo.logs import get_logger
from nubo.stores.entities import Row

if TYPE_CHECKING:
    from nubo.stores.tiered import TieredStore

log = get_logger(__name__)

# The worker leaves younger entries alone: their own request (or a deferred projection) is still on them.
OUTBOX_MIN_AGE_SECONDS = 10.0


async def drain_outbox(
    tiered: TieredStore, *, batch: int = 200, min_age_seconds: float = OUTBOX_MIN_AGE_SECONDS
) -> int:
    """Re-project rows whose post-commit projection did not complete; returns how many were repaired."""
    async with tiered.pg.connection() as conn, conn.transaction():
        rows = await (
            await conn.execute(
                "SELECT id, collection, entity_id, attempts FROM logic.outbox "
                "WHERE next_try_at <= now() AND created_at <= now() - make_interval(secs => %s) "
                "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                (min_age_seconds, batch),
            )
        ).fetchall()
        if not rows:
            return 0
        by_entity: dict[str, list[uuid.UUID]] = {}
        for row in rows:
            by_entity.setdefault(row["collection"], []).append(row["entity_id"])
        failed = {
            name for name, ids in by_entity.items() if not await project_safely(tiered, name, list(dict.fromkeys(ids)))
        }
        done = [row["id"] for row in rows if row["collection"] not in failed]
        retry = [row["id"] for row in rows if row["collection"] in failed]
        if done:
            await conn.execute("DELETE FROM logic.outbox WHERE id = ANY(%s)", (done,))
        if retry:
            await conn.execute(
                "UPDATE logic.outbox SET attempts = attempts + 1, last_error = 'projection failed', "
                "next_try_at = now() + make_interval(secs => least(5, 0.5 * (attempts + 1))) "
                "WHERE id = ANY(%s)",
                (retry,),
            )
    if done:
        log.info("outbox_repaired", extra={"rows": len(done)})
    return len(done)


async def project_safely(
    tiered: TieredStore, name: str, ids: list[uuid.UUID], rows: Mapping[uuid.UUID, Row | None] | None = None
) -> bool:
    """`project`, with any error (a row a cache schema rejects, an unknown collection) counted as a failure of
    this collection only, so one bad row cannot roll back, and so block, the repair of every other."""
    try:
        return await tiered.project(name, ids, rows)
    except Exception as exc:
        log.warning(
            "outbox_projection_error", extra={"collection": name, "error": f"{type(exc).__name__}: {exc}"[:200]}
        )
        return False


async def run_outbox_worker(tiered: TieredStore, interval: float = 1.0) -> None:
    """Drain the outbox forever (one task per server process; SKIP LOCKED shares the work)."""
    while True:
        try:
            while await drain_outbox(tiered) > 0:
                pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # PostgreSQL itself down: keep trying, never crash the server
            log.warning("outbox_drain_failed", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})
        await asyncio.sleep(interval)
