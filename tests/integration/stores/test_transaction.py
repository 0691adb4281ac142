"""Side effects registered inside a transaction run after its commit, never after a rollback, and a failing
one cannot undo the commit (nubo.stores.transaction)."""

from __future__ import annotations

import uuid

import pytest

from nubo.ids import new_id
from nubo.stores import Stores
from nubo.stores.events import seq_of
from nubo.stores.postgres import pg_read


async def _probe_table(db: Stores) -> None:
    async with pg_read(db) as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS public.tx_probe (id uuid PRIMARY KEY)")


async def _committed(db: Stores, row_id: uuid.UUID) -> bool:
    """Whether another connection sees the row (i.e. it is committed)."""
    async with pg_read(db) as conn:
        row = await (await conn.execute("SELECT 1 FROM public.tx_probe WHERE id = %s", (row_id,))).fetchone()
    return row is not None


async def test_a_callback_runs_after_the_commit(db: Stores) -> None:
    await _probe_table(db)
    row_id = new_id()
    seen: list[bool] = []

    async def check() -> None:
        seen.append(await _committed(db, row_id))

    async with db.transaction() as tx:
        await tx.conn.execute("INSERT INTO public.tx_probe (id) VALUES (%s)", (row_id,))
        tx.on_commit(check)
        tx.on_commit(lambda: seen.append(True))  # plain functions too, in registration order
        assert seen == []  # registered, not run
    assert seen == [True, True]  # the first callback saw the row from another connection: committed


async def test_a_rolled_back_transaction_runs_no_callback(db: Stores) -> None:
    await _probe_table(db)
    row_id = new_id()
    ran: list[str] = []

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with db.transaction() as tx:
            await tx.conn.execute("INSERT INTO public.tx_probe (id) VALUES (%s)", (row_id,))
            tx.on_commit(lambda: ran.append("callback"))
            tx.emit([row_id], {"type": "never"})
            raise Boom
    assert ran == []
    assert not await _committed(db, row_id)
    assert seq_of(await db.events.current_seq(row_id)) == 0  # the event was never published


async def test_a_failing_callback_leaves_the_commit_and_the_others_run(db: Stores) -> None:
    await _probe_table(db)
    row_id = new_id()
    ran: list[str] = []
    failures_before = db.failures.get("after_commit")

    async def fails() -> None:
        raise RuntimeError("a side effect failed")

    async with db.transaction() as tx:
        await tx.conn.execute("INSERT INTO public.tx_probe (id) VALUES (%s)", (row_id,))
        tx.on_commit(fails)
        tx.on_commit(lambda: ran.append("next"))
    assert await _committed(db, row_id)
    assert ran == ["next"]
    assert db.failures.get("after_commit") == failures_before + 1


async def test_an_emitted_event_is_published_after_the_commit(db: Stores) -> None:
    await _probe_table(db)
    user = new_id()
    row_id = new_id()
    async with db.transaction() as tx:
        await tx.conn.execute("INSERT INTO public.tx_probe (id) VALUES (%s)", (row_id,))
        tx.emit([user], {"type": "probe"})
        assert seq_of(await db.events.current_seq(user)) == 0  # not before the commit
    assert seq_of(await db.events.current_seq(user)) == 1
    history = await db.events.history(user, 0)
    assert [seq_of(event_id) for event_id, *_ in history] == [1]
