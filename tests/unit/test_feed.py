"""The pure parts of the home feed (nubo.feed): the UUIDv7 floor of an instant and the item encoding."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from nubo import feed
from nubo.ids import id_time, new_id


def test_uuid7_floor_orders_before_ids_of_that_millisecond() -> None:
    made = new_id()
    floor = feed.uuid7_floor(id_time(made))
    assert floor <= made and feed.uuid7_floor(datetime.now(UTC)) > uuid.UUID(int=made.int - (1 << 80))


def test_items_pack_a_post_and_its_author_and_sort_like_the_post_ids() -> None:
    author = new_id()
    older, newer = (
        feed.uuid7_floor(datetime(2024, 5, 1, tzinfo=UTC)),
        feed.uuid7_floor(datetime(2024, 5, 2, tzinfo=UTC)),
    )
    item = feed.pack(older, author)
    assert len(item) == 64 and feed.unpack(item) == (older, author)
    assert sorted([feed.pack(newer, author), item]) == [item, feed.pack(newer, author)]
