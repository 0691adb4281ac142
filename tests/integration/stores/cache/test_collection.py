"""Index maintenance: after random set/modify/delete sequences every index set holds exactly the right ids.

The invariant checker (`audit_cache`) walks every key of the prefix: each index set must hold exactly the ids
whose element has that value, no index set may be empty, and the id sets and the shared usage order must name
exactly the elements that exist. A plain Python dict is kept as a model of what the cache should contain.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nubo.stores import Stores
from nubo.stores.cache.admin import audit_cache
from nubo.stores.cache.collection import CacheCollection, RedisCache
from nubo.stores.redis import Keys, delete_prefix, scan_prefix

IDS = [uuid.UUID(int=1000 + n) for n in range(6)]
CONVERSATIONS = [uuid.UUID(int=50 + n) for n in range(3)]
SENDERS = [uuid.UUID(int=70 + n) for n in range(3)]
VALUES: dict[str, list[Any]] = {
    "conversation_id": CONVERSATIONS,
    "sender_id": SENDERS,
    "message_type": [0, 1, 2],
    "state": [0, 1, 2],
    "content": [None, "hi", "x" * 600],
    "client_id": [None, "c1", "c2", "y" * 600],
    "created_at": [datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)],
    "edited_at": [None, datetime(2024, 2, 1, tzinfo=UTC)],
    "attachments": [{}, {"a": [1]}],
}
FIELDS = sorted(VALUES)


@st.composite
def message(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": draw(st.sampled_from(IDS))}
    for field in FIELDS:
        doc[field] = draw(st.sampled_from(VALUES[field]))
    return doc


@st.composite
def simple_filter(draw: st.DrawFn) -> dict[str, Any]:
    field = draw(st.sampled_from(["conversation_id", "sender_id", "state", "client_id", "edited_at"]))
    kind = draw(st.sampled_from(["all", "eq", "in", "ne", "or"]))
    value = draw(st.sampled_from(VALUES[field]))
    if kind == "all":
        return {}
    if kind == "eq":
        return {field: value}
    if kind == "in":
        return {field: {"$in": draw(st.lists(st.sampled_from(VALUES[field]), max_size=2))}}
    if kind == "ne":
        return {field: {"$ne": value}}
    return {"$or": [{field: value}, {"id": draw(st.sampled_from(IDS))}]}


def model_match(doc: dict[str, Any], filter: dict[str, Any]) -> bool:
    """Reference semantics for the filter shapes above."""
    for field, condition in filter.items():
        if field == "$or":
            return any(model_match(doc, sub) for sub in condition)
        value = doc.get(field)
        if isinstance(condition, dict) and "$in" in condition:
            if value not in condition["$in"]:
                return False
        elif isinstance(condition, dict) and "$ne" in condition:
            if value == condition["$ne"]:
                return False
        elif value != condition:
            return False
    return True


OPERATIONS = st.one_of(
    st.tuples(st.just("set"), message()),
    st.tuples(
        st.just("modify"), simple_filter(), st.dictionaries(st.sampled_from(FIELDS), st.none(), min_size=1, max_size=3)
    ),
    st.tuples(st.just("delete"), simple_filter()),
    st.tuples(st.just("delete_by_id"), st.sampled_from(IDS)),
)


@pytest.fixture(scope="module")
async def messages(stores: Stores) -> AsyncIterator[CacheCollection]:
    keys = Keys(stores.keys.prefix + "integrity:")
    yield RedisCache(stores.redis, keys).collection("messages")
    await delete_prefix(stores.redis, keys)


async def apply(
    coll: CacheCollection, model: dict[uuid.UUID, dict[str, Any]], op: tuple[Any, ...], values: st.DataObject
) -> None:
    if op[0] == "set":
        await coll.set(op[1])
        model[op[1]["id"]] = dict(op[1])
    elif op[0] == "modify":
        update = {field: values.draw(st.sampled_from(VALUES[field])) for field in op[2]}
        matching = [doc for doc in model.values() if model_match(doc, op[1])]
        assert await coll.modify(op[1], update) == len(matching)
        for doc in matching:
            doc.update(update)
    elif op[0] == "delete":
        matching = [i for i, doc in model.items() if model_match(doc, op[1])]
        assert await coll.delete(op[1]) == len(matching)
        for element_id in matching:
            del model[element_id]
    else:
        assert await coll.delete_by_id(op[1]) == (op[1] in model)
        model.pop(op[1], None)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=st.lists(OPERATIONS, min_size=1, max_size=25), values=st.data())
async def test_random_sequences_keep_indexes_exact(
    messages: CacheCollection, operations: list[Any], values: st.DataObject
) -> None:
    await delete_prefix(messages.cache.redis, messages.cache.keys)
    model: dict[uuid.UUID, dict[str, Any]] = {}
    for op in operations:
        await apply(messages, model, op, values)
    assert await audit_cache(messages.cache) == []
    assert {doc["id"]: doc for doc in await messages.get({})} == model


async def test_modify_moves_ids_and_last_srem_deletes_the_set(messages: CacheCollection) -> None:
    redis = messages.cache.redis
    await delete_prefix(redis, messages.cache.keys)
    doc = {
        "id": IDS[0],
        "conversation_id": CONVERSATIONS[0],
        "sender_id": SENDERS[0],
        "message_type": 0,
        "state": 0,
        "attachments": {},
        "created_at": datetime(2024, 1, 1, tzinfo=UTC),
    }
    await messages.set(doc)
    old_key = messages.index_key("state", "0")
    new_key = messages.index_key("state", "2")
    assert await redis.smembers(old_key) == {str(IDS[0])}
    assert await messages.modify({"id": IDS[0]}, {"state": 2}) == 1
    assert await redis.exists(old_key) == 0  # SREM of the last member removed the set itself
    assert await redis.smembers(new_key) == {str(IDS[0])}
    assert await messages.get({"state": 0}) == [] and len(await messages.get({"state": 2})) == 1
    # modify never resurrects a deleted element as a partial one
    await messages.delete_by_id(IDS[0])
    assert await messages.modify({}, {"state": 1}) == 0
    assert [k async for k in scan_prefix(redis, messages.cache.keys)] == []


async def test_checker_reports_orphans_and_missing_entries(messages: CacheCollection) -> None:
    """The invariant checker can fail: break the indexes by hand and it says how."""
    redis = messages.cache.redis
    await delete_prefix(redis, messages.cache.keys)
    doc = {
        "id": IDS[1],
        "conversation_id": CONVERSATIONS[1],
        "sender_id": SENDERS[1],
        "message_type": 1,
        "state": 1,
        "attachments": {},
        "created_at": datetime(2024, 1, 1, tzinfo=UTC),
    }
    await messages.set(doc)
    await redis.sadd(messages.index_key("state", "2"), str(IDS[1]))  # orphan entry
    await redis.srem(messages.index_key("sender_id", str(SENDERS[1])), str(IDS[1]))  # missing entry
    await redis.zadd(messages.cache.lru_key, {messages.member(str(IDS[2])): 1})  # usage of nothing
    problems = "\n".join(await audit_cache(messages.cache))
    assert "state:2: holds" in problems
    assert f"sender_id:{SENDERS[1]}: index set missing" in problems
    assert f"usage order lists messages:{IDS[2]}" in problems


async def test_concurrent_writers_keep_indexes_exact(messages: CacheCollection) -> None:
    """Many writers at once (the scripts are atomic; filtered writes re-check changed elements)."""
    redis = messages.cache.redis
    await delete_prefix(redis, messages.cache.keys)

    async def writer(seed: int) -> None:
        for step in range(30):
            doc = {
                "id": IDS[(seed + step) % len(IDS)],
                "conversation_id": CONVERSATIONS[step % 3],
                "sender_id": SENDERS[seed % 3],
                "message_type": step % 3,
                "state": seed % 3,
                "attachments": {},
                "created_at": datetime(2024, 1, 1, tzinfo=UTC),
            }
            action = (seed + step) % 4
            if action == 0:
                await messages.set(doc)
            elif action == 1:
                await messages.modify({"conversation_id": CONVERSATIONS[seed % 3]}, {"state": step % 3})
            elif action == 2:
                await messages.delete({"state": seed % 3, "message_type": step % 3})
            else:
                await messages.set(doc)
                await messages.modify({"id": doc["id"]}, {"sender_id": SENDERS[step % 3]})

    await asyncio.gather(*(writer(seed) for seed in range(12)))
    assert await audit_cache(messages.cache) == []
