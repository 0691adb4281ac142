"""The cache's filter language against the MongoDB-protocol server: same documents, same filter, same ids.

Runs on the real Redis and the real MongoDB-protocol server of the run (FerretDB in CI). Generation is
constrained only where the *reference server* would make the comparison meaningless; each constraint says why:

* datetimes have millisecond precision — BSON dates store milliseconds (MongoDB and FerretDB alike);
* strings have no NUL or surrogate characters — BSON cannot carry them (Redis could);
* floats are finite and not -0.0 — NaN ordering and the sign of zero are not part of the cache's contract;
* top-level ``$not`` (the seed notes' spelling) is sent to the server as the equivalent ``$nor: [filter]``,
  since MongoDB only knows ``$not`` inside a field expression.

No FerretDB deviation from MongoDB semantics was hit on these operators (v1.24.2, SQLite handler), so no
other constraint is needed.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nubo.stores import Stores
from nubo.stores.cache.admin import audit_cache
from nubo.stores.cache.collection import CacheCollection, RedisCache
from nubo.stores.cache.filter import CacheFilterError
from nubo.stores.cache.schema import CacheValidationError, schema
from nubo.stores.mongo import server_info
from nubo.stores.redis import Keys, delete_prefix

# Every filterable type, indexed and not: u/s/i/b indexed by default, d/f indexed on request, t/n never.
PROBE = schema(
    "probe",
    index=("d", "f"),
    no_index=("n",),
    u="?uuid",
    s="?str",
    t="?text",
    i="?int",
    n="?int",
    f="?float",
    b="?bool",
    d="?datetime",
)

UUIDS = [
    uuid.UUID(int=1),
    uuid.UUID(int=2**64),
    uuid.UUID(int=2**127 + 5),
    uuid.UUID("ffffffff-0000-4000-8000-000000000000"),
]
STRINGS = ["", "a", "aa", "ab", "B", "z", "é", "日本"]
INTS = [-(2**40), -1, 0, 1, 2, 7, 2**40]
FLOATS = [-2.5, 0.0, 0.5, 1.0, 3.25, 1e10]
BASE = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
DATES = [BASE + timedelta(milliseconds=ms) for ms in (-86_400_000, -1, 0, 1, 3_600_000)]
POOLS: dict[str, list[Any]] = {
    "u": UUIDS,
    "s": STRINGS,
    "t": STRINGS,
    "i": INTS,
    "n": INTS,
    "f": FLOATS,
    "b": [False, True],
    "d": DATES,
}
FIELDS = sorted(POOLS)


def operand(field: str) -> st.SearchStrategy[Any]:
    values = st.sampled_from(POOLS[field])
    if field == "f":  # float fields also take integers
        return values | st.sampled_from([-1, 0, 1, 3])
    if field == "u":  # uuid fields also take their text form
        return values | st.sampled_from(UUIDS).map(str)
    return values


def nullable(field: str) -> st.SearchStrategy[Any]:
    return st.none() | operand(field)


@st.composite
def field_condition(draw: st.DrawFn) -> dict[str, Any]:
    field = draw(st.sampled_from(FIELDS))
    kind = draw(
        st.sampled_from(["implicit", "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "range", "$not"])
    )
    if kind == "implicit":
        return {field: draw(nullable(field))}
    if kind in ("$eq", "$ne"):
        return {field: {kind: draw(nullable(field))}}
    if kind in ("$in", "$nin"):
        return {field: {kind: draw(st.lists(nullable(field), max_size=3))}}
    if kind == "range":
        low, high = draw(st.sampled_from(["$gt", "$gte"])), draw(st.sampled_from(["$lt", "$lte"]))
        return {field: {low: draw(operand(field)), high: draw(operand(field))}}
    if kind == "$not":
        inner = draw(st.sampled_from(["$eq", "$ne", "$gt", "$lte", "$in"]))
        value = (
            draw(st.lists(nullable(field), max_size=2))
            if inner == "$in"
            else draw(operand(field) if inner in ("$gt", "$lte") else nullable(field))
        )
        return {field: {"$not": {inner: value}}}
    return {field: {kind: draw(operand(field))}}


def combine(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    lists = st.lists(children, min_size=1, max_size=3)
    return st.one_of(
        st.builds(lambda op, subs: {op: subs}, st.sampled_from(["$and", "$or", "$nor"]), lists),
        children.map(lambda sub: {"$not": sub}),
        # Several keys in one object are ANDed (only when their keys differ).
        st.tuples(children, children).map(lambda pair: {**pair[1], **pair[0]}),
    )


FILTERS = st.recursive(field_condition(), combine, max_leaves=6)


@st.composite
def documents(draw: st.DrawFn) -> list[dict[str, Any]]:
    docs = []
    for index in range(draw(st.integers(0, 10))):
        doc: dict[str, Any] = {"id": uuid.UUID(int=(index + 1) * 7919)}
        for field in FIELDS:
            presence = draw(st.sampled_from(["value", "value", "null", "missing"]))
            if presence != "missing":
                doc[field] = None if presence == "null" else draw(st.sampled_from(POOLS[field]))
        docs.append(doc)
    return docs


def to_mongo(filter: dict[str, Any]) -> dict[str, Any]:
    """The same filter in MongoDB's own spelling (top-level $not becomes $nor of one)."""
    out: dict[str, Any] = {}
    negations = []
    for key, value in filter.items():
        if key == "$not":
            negations.append({"$nor": [to_mongo(value)]})
        elif key in ("$and", "$or", "$nor"):
            out[key] = [to_mongo(sub) for sub in value]
        else:
            out[key] = _uuid_strings_to_uuids(value) if key == "u" else value
    if negations:
        out["$and"] = out.get("$and", []) + negations
    return out


def _uuid_strings_to_uuids(value: Any) -> Any:
    """The cache takes a UUID's text for a uuid field; MongoDB needs the UUID itself (binary subtype 4)."""
    if isinstance(value, str):
        return uuid.UUID(value)
    if isinstance(value, list):
        return [_uuid_strings_to_uuids(item) for item in value]
    if isinstance(value, dict):
        return {op: _uuid_strings_to_uuids(operand) for op, operand in value.items()}
    return value


@pytest.fixture(scope="module")
async def probe(stores: Stores) -> AsyncIterator[tuple[CacheCollection, Any]]:
    keys = Keys(stores.keys.prefix + "probe:")
    cache = RedisCache(stores.redis, keys, {"probe": PROBE})
    mongo = stores.mongo["cache_probe"]
    print(f"reference server: {await server_info(stores.mongo)}")
    yield cache.collection("probe"), mongo
    await mongo.drop()
    await delete_prefix(stores.redis, keys)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    docs=documents(),
    filters=st.lists(FILTERS, min_size=1, max_size=4),
    sort_field=st.sampled_from(FIELDS),
    descending=st.booleans(),
)
async def test_get_matches_mongo_find(
    probe: tuple[CacheCollection, Any],
    docs: list[dict[str, Any]],
    filters: list[dict[str, Any]],
    sort_field: str,
    descending: bool,
) -> None:
    coll, mongo = probe
    await coll.delete({})
    await mongo.delete_many({})
    await coll.set_many(docs)
    if docs:
        await mongo.insert_many([{"_id": doc["id"], **doc} for doc in docs])
    for filter in filters:
        got = {doc["id"] for doc in await coll.get(filter)}
        expected = {doc["_id"] async for doc in mongo.find(to_mongo(filter), {"_id": 1})}
        assert got == expected, f"filter {filter} (mongo: {to_mongo(filter)}) over {docs}"
    # Sorted and limited: the same sequence of sort-field values (ties may come in any order).
    ours = [doc.get(sort_field) for doc in await coll.get(filters[0], sort=sort_field, descending=descending, limit=3)]
    cursor = mongo.find(to_mongo(filters[0])).sort(sort_field, -1 if descending else 1).limit(3)
    theirs = [doc.get(sort_field) async for doc in cursor]
    assert [_comparable(v) for v in ours] == [_comparable(v) for v in theirs], (sort_field, filters[0])


def _comparable(value: Any) -> Any:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


async def test_property_run_left_consistent_indexes(probe: tuple[CacheCollection, Any]) -> None:
    coll, _ = probe
    assert await audit_cache(coll.cache) == []


# ---- malformed filters: errors, never "match everything" --------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"nope": 1},  # unknown field
        {"i": {"$regex": "x"}},  # unknown operator
        {"$where": "1"},  # unknown top-level operator
        {"i": "1"},  # wrong operand type (string for int)
        {"i": True},  # bool is not an int
        {"i": 1.5},  # float for int
        {"b": 1},  # int for bool
        {"u": "not-a-uuid"},
        {"d": "2024-01-01"},  # a string is not a datetime
        {"d": datetime(2024, 1, 1)},  # naive datetime
        {"f": float("nan")},
        {"i": {"$gt": None}},  # ordering against null
        {"i": {"$in": 1}},  # $in needs a list
        {"i": {"$in": [1, "x"]}},
        {"$and": []},  # empty combinator
        {"$or": {"i": 1}},  # combinator needs a list
        {"$nor": [1]},
        {"$not": {}},
        {"i": {}},  # empty operator object
        {"i": {"$gt": 1, "x": 2}},  # mixed operator / value object
        {"i": {"$not": 3}},  # field $not needs operators
        {"i": 2**70},  # beyond int64
        [("i", 1)],  # not an object
    ],
)
async def test_malformed_filters_raise(probe: tuple[CacheCollection, Any], bad: Any) -> None:
    coll, _ = probe
    for call in (coll.get(bad), coll.delete(bad), coll.modify(bad, {"i": 1})):
        with pytest.raises(CacheFilterError):
            await call


async def test_filter_on_unfilterable_field_and_bad_sort(stores: Stores) -> None:
    posts = RedisCache(stores.redis, Keys(stores.keys.prefix + "probe2:")).collection("posts")
    with pytest.raises(CacheFilterError, match="meta"):
        await posts.get({"meta": {"a": 1}})
    with pytest.raises(CacheFilterError, match="media_ids"):
        await posts.get({"media_ids": []})
    with pytest.raises(CacheFilterError, match="sort"):
        await posts.get({}, sort="meta")
    with pytest.raises(CacheFilterError, match="limit"):
        await posts.get({}, limit=0)


@pytest.mark.parametrize(
    ("doc", "field", "expected"),
    [
        ({"visibility": "0"}, "visibility", "an integer"),
        ({"user_id": 12}, "user_id", "a UUID"),
        ({"created_at": "2024-01-01T00:00:00Z"}, "created_at", "a timezone-aware datetime"),
        ({"content": 5}, "content", "a string or null"),
        ({"visibility": None}, "visibility", "must not be null"),
        ({"bogus": 1}, "bogus", "unknown field"),
        ({"media_ids": ["x"]}, "media_ids", "a list of UUIDs"),
        ({"meta": {"x": object()}}, "meta", "a JSON value"),
        ({"id": None}, "id", "must not be null"),
    ],
)
async def test_set_validates_naming_field_and_type(
    stores: Stores, doc: dict[str, Any], field: str, expected: str
) -> None:
    posts = RedisCache(stores.redis, Keys(stores.keys.prefix + "probe2:")).collection("posts")
    full = {"id": uuid.uuid4(), "user_id": uuid.uuid4(), "visibility": 0, **doc}
    with pytest.raises(CacheValidationError) as info:
        await posts.set(full)
    assert info.value.field == field and expected in str(info.value), str(info.value)
    assert await posts.count() == 0  # nothing written


async def test_unindexed_filters_scan_with_sscan_never_keys(stores: Stores) -> None:
    keys = Keys(stores.keys.prefix + "scan:")
    posts = RedisCache(stores.redis, keys).collection("posts")
    now = datetime.now(UTC)
    await posts.set_many(
        [
            {
                "id": uuid.uuid4(),
                "user_id": uuid.uuid4(),
                "visibility": i % 2,
                "content": f"c{i}",
                "created_at": now + timedelta(seconds=i),
            }
            for i in range(50)
        ]
    )

    async def calls(command: str) -> int:
        return int((await stores.redis.info("commandstats")).get(f"cmdstat_{command}", {}).get("calls", 0))

    keys_before, sscan_before = await calls("keys"), await calls("sscan")
    found = await posts.get({"created_at": {"$gte": now + timedelta(seconds=45)}, "content": {"$ne": "c46"}})
    assert len(found) == 4
    assert await calls("keys") == keys_before
    assert await calls("sscan") > sscan_before
    await delete_prefix(stores.redis, keys)


async def test_values_come_back_typed(stores: Stores) -> None:
    keys = Keys(stores.keys.prefix + "typed:")
    cache = RedisCache(stores.redis, keys)
    users = cache.collection("users")
    uid = uuid.uuid4()
    row = {
        "id": uid,
        "username": "ann",
        "email": "a@x.io",
        "email_verified": True,
        "phone": None,
        "phone_verified": False,
        "first_name": "",
        "last_name": "L",
        "birthdate": "1990-02-03",
        "sex": None,
        "bio": "x" * 2000,
        "profile_picture_id": None,
        "grade": 1,
        "location": None,
        "school": None,
        "works": None,
        "badges": ["a", "b"],
        "state": 1,
        "created_at": datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        "updated_at": datetime(2024, 1, 2, 5, 4, 5, tzinfo=UTC).astimezone(),
    }
    await users.set(row)
    got = await users.get_by_id(str(uid))
    assert got is not None
    assert got["id"] == uid and got["email_verified"] is True and got["phone"] is None
    assert got["first_name"] == "" and "sex" in got and got["sex"] is None  # null kept distinct from ""
    assert got["birthdate"].isoformat() == "1990-02-03" and got["badges"] == ["a", "b"]
    assert got["created_at"] == row["created_at"] and got["created_at"].tzinfo is not None
    assert got["updated_at"] == row["updated_at"]
    # a missing field stays missing (distinct from null)
    partial = {"id": uuid.uuid4(), "username": "bob", "email": "b@x.io", "state": 1}
    await users.set(partial)
    assert await users.get_by_id(partial["id"]) == partial
    assert {u["username"] for u in await users.get({"phone": None})} == {"ann", "bob"}
    assert [u["username"] for u in await users.get({"phone": {"$ne": None}})] == []
    await delete_prefix(stores.redis, keys)
