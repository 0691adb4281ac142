"""The cache's filter compiler (nubo.stores.cache.filter) on its own: what it refuses, what a compiled filter
matches on stored hashes (null and missing alike, as in MongoDB), and which index sets it plans to read.

The same language is checked against a real MongoDB-protocol server in
`tests/integration/stores/cache/test_filter.py`; here no store is reached.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from nubo.stores.cache.filter import CacheFilterError, IndexKey, Nothing, SetOp, compile_filter, sort_key
from nubo.stores.cache.schema import Schema, encode_value, schema

# u/s/i/b indexed by default, d indexed on request, t/n never.
PROBE = schema("probe", index=("d",), no_index=("n",), u="?uuid", s="?str", t="?text", i="?int", n="?int",
               f="?float", b="?bool", d="?datetime", meta="?json")  # fmt: skip
USER = uuid.UUID(int=7)


def stored(probe: Schema = PROBE, **values: Any) -> dict[str, str]:
    """The element hash the cache would store for `values` (absent keys are missing fields)."""
    return {name: encode_value(probe, probe.fields[name], value) for name, value in values.items()}


def matches(filter: dict[str, Any], **values: Any) -> bool:
    return compile_filter(PROBE, filter).match(stored(**values))


@pytest.mark.parametrize(
    "bad",
    [
        {"nope": 1},  # unknown field
        {"meta": {"a": 1}},  # a json field cannot be filtered on
        {"i": {"$regex": "x"}},  # unknown operator
        {"$where": "1"},  # unknown top-level operator
        {"i": "1"},  # wrong operand type
        {"i": True},  # bool is not an int
        {"b": 1},  # int is not a bool
        {"u": "not-a-uuid"},
        {"d": datetime(2024, 1, 1)},  # naive datetime
        {"f": float("nan")},
        {"i": {"$gt": None}},  # ordering against null
        {"i": {"$in": 1}},  # $in needs a list
        {"$and": []},  # empty combinator
        {"$or": {"i": 1}},  # combinator needs a list
        {"$not": {}},
        {"i": {}},  # empty operator object
        {"i": {"$gt": 1, "x": 2}},  # mixed operator / value object
        {"i": {"$not": 3}},  # field $not needs operators
        {"i": 2**70},  # beyond int64
        [("i", 1)],  # not an object
    ],
)
def test_malformed_filters_raise_never_match_everything(bad: Any) -> None:
    with pytest.raises(CacheFilterError):
        compile_filter(PROBE, bad)


def test_null_and_missing_are_the_same_to_a_filter() -> None:
    for values in ({}, {"i": None}):
        assert matches({"i": None}, **values) and matches({"i": {"$in": [None, 5]}}, **values)
        assert matches({"i": {"$ne": 5}}, **values) and not matches({"i": {"$ne": None}}, **values)
        assert not matches({"i": {"$gt": -(2**40)}}, **values)  # orderings never match null
    assert not matches({"i": None}, i=0)


def test_operators_and_combinators_follow_mongodb() -> None:
    assert matches({"i": 3, "s": "a"}, i=3, s="a") and not matches({"i": 3, "s": "a"}, i=3, s="b")
    assert matches({"i": {"$gte": 3, "$lt": 4}}, i=3) and not matches({"i": {"$gt": 3}}, i=3)
    assert matches({"f": {"$gt": 1}}, f=1.5)  # a float field takes an int operand
    assert matches({"u": str(USER)}, u=USER)  # a uuid field takes the UUID's text
    assert matches({"$or": [{"i": 1}, {"s": "x"}]}, i=2, s="x")
    assert matches({"$nor": [{"i": 1}, {"s": "x"}]}, i=2, s="y")
    assert matches({"$not": {"i": 1}}, i=2) and not matches({"i": {"$not": {"$in": [1, 2]}}}, i=2)
    later = datetime(2024, 5, 2, tzinfo=UTC)
    assert matches({"d": {"$lt": later}}, d=datetime(2024, 5, 1, 23, tzinfo=UTC))
    assert matches({}, i=1)  # the empty filter matches everything


def test_plans_read_index_sets_only_where_they_narrow_exactly() -> None:
    one = compile_filter(PROBE, {"i": 3})
    assert one.plan == IndexKey("i", "3") and one.exact and one.fields == {"i"}
    both = compile_filter(PROBE, {"i": {"$in": [1, 2, 1]}})
    assert both.plan == SetOp("or", (IndexKey("i", "1"), IndexKey("i", "2"))) and both.exact
    assert compile_filter(PROBE, {"i": {"$in": []}}).plan == Nothing()
    narrowed = compile_filter(PROBE, {"i": 3, "n": 4})  # n has no index: the plan narrows, the match decides
    assert narrowed.plan == IndexKey("i", "3") and not narrowed.exact
    assert compile_filter(PROBE, {"$or": [{"i": 3}, {"n": 4}]}).plan is None  # one branch scans: all scan
    assert compile_filter(PROBE, {"i": None}).plan is None  # missing values have no index set
    assert compile_filter(PROBE, {"i": {"$ne": 3}}).plan is None


def test_sort_puts_null_and_missing_first_and_numbers_by_value() -> None:
    field = PROBE.fields["i"]
    rows = [stored(i=10), stored(i=None), stored(i=9), stored()]
    ordered = sorted(rows, key=sort_key(field))  # a stable sort: null and missing keep their order
    assert [row.get("i") for row in ordered] == ["~", None, "=9", "=10"]
    with pytest.raises(CacheFilterError, match="meta"):
        sort_key(PROBE.fields["meta"])
