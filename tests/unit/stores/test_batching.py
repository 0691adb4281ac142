"""BatchQueue (nubo.stores.batching) with a recording handler: a burst becomes a few batches, a key under way
is not queued twice, a failing batch does not stop the next ones, and `drain` waits for the work."""

from __future__ import annotations

import asyncio
import logging

import pytest

from nubo.stores.batching import BatchQueue


class Recorder:
    """A handler that records each batch; it can hold a batch until released, or fail one."""

    def __init__(self) -> None:
        self.batches: list[dict[str, int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail_next = False

    async def __call__(self, batch: dict[str, int]) -> None:
        self.batches.append(dict(batch))
        await self.release.wait()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("store down")


def queue_with(recorder: Recorder, max_batch: int = 1000) -> BatchQueue[str, int]:
    queue: BatchQueue[str, int] = BatchQueue("test", max_batch=max_batch)
    queue.bind(recorder)
    return queue


async def test_items_added_in_one_turn_of_the_loop_go_in_one_batch() -> None:
    recorder = Recorder()
    queue = queue_with(recorder)
    for i in range(50):
        queue.add(f"k{i}", i)
    await queue.drain()
    assert recorder.batches == [{f"k{i}": i for i in range(50)}]


async def test_batches_hold_at_most_max_batch_items() -> None:
    recorder = Recorder()
    queue = queue_with(recorder, max_batch=20)
    for i in range(45):
        queue.add(f"k{i}", i)
    await queue.drain()
    assert [len(batch) for batch in recorder.batches] == [20, 20, 5]


async def test_a_key_under_way_is_not_queued_again_and_later_adds_form_the_next_batch() -> None:
    recorder = Recorder()
    recorder.release.clear()
    queue = queue_with(recorder)
    queue.add("a", 1)
    queue.add("a", 2)  # still pending: the newer value replaces it
    await asyncio.sleep(0.01)
    assert recorder.batches == [{"a": 2}]
    queue.add("a", 3)  # in the batch being handled: its work is under way
    queue.add("b", 4)
    recorder.release.set()
    await queue.drain()
    assert recorder.batches == [{"a": 2}, {"b": 4}]


async def test_a_failing_batch_is_logged_and_the_next_ones_still_run(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    recorder.fail_next = True
    queue = queue_with(recorder, max_batch=1)
    with caplog.at_level(logging.WARNING):
        queue.add("a", 1)
        queue.add("b", 2)
        await queue.drain()
    assert recorder.batches == [{"a": 1}, {"b": 2}]
    assert any(record.getMessage() == "batch_failed" for record in caplog.records)


async def test_a_queue_needs_exactly_one_handler() -> None:
    queue: BatchQueue[str, int] = BatchQueue("unbound")
    with pytest.raises(RuntimeError, match="no handler"):
        queue.add("a", 1)
    queue.bind(Recorder())
    with pytest.raises(RuntimeError, match="already has a handler"):
        queue.bind(Recorder())
    await queue.drain()  # nothing queued: returns at once
