"""The cache's MongoDB-style filter language: parse and validate, evaluate on stored hashes, plan index use.

Grammar (MongoDB semantics):

* ``{field: value}`` is equality; several keys in one object are ANDed.
* ``{field: {"$eq"|"$ne"|"$gt"|"$gte"|"$lt"|"$lte": value, "$in"|"$nin": [values], "$not": {ops}}}``.
* ``{"$and"|"$or"|"$nor": [filters]}`` (non-empty lists); ``{"$not": filter}`` at top level is the seed notes'
  spelling of ``{"$nor": [filter]}``.

As in MongoDB, null and a missing field are the same to a filter: ``{f: None}`` and
``{f: {"$in": [None]}}`` match both, ``$ne``/``$nin``/``$not`` match them unless they name null, and an
ordering comparison never matches them. Operands must have the field's type (`uuid` fields also take UUID
strings, `float` fields take ints); ordering operators reject null. Anything else — unknown operator, unknown
or unfilterable field, wrong operand type, empty ``$and``/``$or``/``$nor``/``$not`` — raises
:class:`CacheFilterError`, never "match everything".
The empty filter ``{}`` matches every element, as in MongoDB.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nubo.stores.cache.schema import (
    MAX_INDEXED_CHARS,
    NULL,
    NUMERIC,
    VALUE,
    CacheError,
    Field,
    Schema,
    encode_payload,
)

Raw = Mapping[str, str]  # a stored element hash
Predicate = Callable[[Raw], bool]

COMPARISONS = ("$gt", "$gte", "$lt", "$lte")
FIELD_OPERATORS = ("$eq", "$ne", *COMPARISONS, "$in", "$nin", "$not")
LIST_COMBINATORS = ("$and", "$or", "$nor")


class CacheFilterError(CacheError):
    """A malformed filter: unknown operator, wrong operand type, unknown or unfilterable field."""


# ---- syntax tree -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    """One field condition; `values` are canonical payloads, None standing for null."""

    field: Field
    op: str
    values: tuple[str | None, ...]


@dataclass(frozen=True)
class Combine:
    """``$and``, ``$or``, ``$nor`` or ``$not`` (one child) over sub-filters."""

    op: str
    children: tuple[Node, ...]


Node = Leaf | Combine


# ---- index plans -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexKey:
    """The ids whose `field` has the value `payload`: one index set."""

    field: str
    payload: str


@dataclass(frozen=True)
class SetOp:
    """Intersection (``and``) or union (``or``) of sub-plans."""

    op: str
    parts: tuple[Plan, ...]


@dataclass(frozen=True)
class Nothing:
    """No element can match (``$in: []``)."""


Plan = IndexKey | SetOp | Nothing


@dataclass(frozen=True)
class CompiledFilter:
    """A validated filter.

    `match` tests a stored hash (whole, or a projection holding at least `fields`); `plan` narrows the
    candidates (None: scan everything); `exact` means the plan's ids are exactly the matches.
    """

    node: Node
    match: Predicate
    plan: Plan | None
    fields: frozenset[str]
    exact: bool


def compile_filter(schema: Schema, filter: Mapping[str, Any]) -> CompiledFilter:
    """Parse and validate `filter` against `schema`; raises CacheFilterError."""
    node = parse(schema, filter)
    return CompiledFilter(node, predicate(node), plan(node), frozenset(_fields(node)), _exact(node))


def _fields(node: Node) -> set[str]:
    if isinstance(node, Leaf):
        return {node.field.name}
    return set().union(*(_fields(child) for child in node.children))


def _exact(node: Node) -> bool:
    """True when the index plan of `node` holds exactly its matches (equality/$in on indexed values only)."""
    if isinstance(node, Combine):
        return node.op in ("$and", "$or") and all(_exact(child) for child in node.children)
    return _leaf_plan(node) is not None


# ---- parsing -----------------------------------------------------------------------------------------------


def parse(schema: Schema, filter: Any) -> Node:
    if not isinstance(filter, Mapping):
        raise CacheFilterError(f"a filter must be an object, got {type(filter).__name__}")
    children: list[Node] = []
    for key, value in filter.items():
        if not isinstance(key, str):
            raise CacheFilterError(f"filter keys must be strings, got {key!r}")
        if key in LIST_COMBINATORS:
            children.append(Combine(key, tuple(parse(schema, sub) for sub in _filter_list(key, value))))
        elif key == "$not":
            if not isinstance(value, Mapping) or not value:
                raise CacheFilterError("$not needs a non-empty filter object")
            children.append(Combine("$not", (parse(schema, value),)))
        elif key.startswith("$"):
            raise CacheFilterError(f"unknown top-level operator {key}")
        else:
            children.append(_parse_field(schema, _filterable(schema, key), value))
    return children[0] if len(children) == 1 else Combine("$and", tuple(children))


def _filter_list(op: str, value: Any) -> list[Any]:
    if not isinstance(value, list | tuple) or not value:
        raise CacheFilterError(f"{op} needs a non-empty list of filters")
    return list(value)


def _filterable(schema: Schema, name: str) -> Field:
    field = schema.field(name)
    if field is None:
        raise CacheFilterError(f"unknown field {name!r} in collection {schema.name}")
    if not field.filterable:
        raise CacheFilterError(f"field {name!r} ({field.type}) cannot be filtered on")
    return field


def _parse_field(schema: Schema, field: Field, value: Any) -> Node:
    if not isinstance(value, Mapping):
        return Leaf(field, "$eq", (_operand(field, "$eq", value, allow_null=True),))
    if not value:
        raise CacheFilterError(f"{field.name}: empty operator object")
    if not all(isinstance(op, str) and op.startswith("$") for op in value):
        problem = f"an object is not a {field.type} value (operators start with $)"
        raise CacheFilterError(f"{field.name}: {problem}")
    leaves = [_parse_operator(schema, field, op, operand) for op, operand in value.items()]
    return leaves[0] if len(leaves) == 1 else Combine("$and", tuple(leaves))


def _parse_operator(schema: Schema, field: Field, op: str, operand: Any) -> Node:
    if op in ("$eq", "$ne"):
        return Leaf(field, op, (_operand(field, op, operand, allow_null=True),))
    if op in COMPARISONS:
        return Leaf(field, op, (_operand(field, op, operand, allow_null=False),))
    if op in ("$in", "$nin"):
        if not isinstance(operand, list | tuple | set | frozenset):
            raise CacheFilterError(f"{field.name}: {op} needs a list, got {type(operand).__name__}")
        return Leaf(field, op, tuple(_operand(field, op, item, allow_null=True) for item in operand))
    if op == "$not":
        if not isinstance(operand, Mapping) or not operand:
            raise CacheFilterError(f"{field.name}: $not needs a non-empty object of operators")
        return Combine("$not", (_parse_field(schema, field, operand),))
    expected = ", ".join(FIELD_OPERATORS)
    raise CacheFilterError(f"{field.name}: unknown operator {op} (expected one of {expected})")


def _operand(field: Field, op: str, value: Any, *, allow_null: bool) -> str | None:
    if value is None:
        if allow_null:
            return None
        expected = field.expected.removesuffix(" or null")
        raise CacheFilterError(f"{field.name}: {op} needs {expected}, got null")
    try:
        return encode_payload(field, value)
    except (TypeError, ValueError, UnicodeError, OverflowError):
        expected = field.expected.removesuffix(" or null")
        raise CacheFilterError(f"{field.name}: {op} needs {expected}, got {type(value).__name__}") from None


# ---- evaluation --------------------------------------------------------------------------------------------


def predicate(node: Node) -> Predicate:
    """A function telling whether a stored hash matches `node`."""
    if isinstance(node, Combine):
        parts = [predicate(child) for child in node.children]
        if node.op == "$and":
            return lambda raw: all(p(raw) for p in parts)
        if node.op == "$or":
            return lambda raw: any(p(raw) for p in parts)
        return lambda raw: not any(p(raw) for p in parts)  # $nor, and $not (one child)
    return _leaf_predicate(node)


def _leaf_predicate(leaf: Leaf) -> Predicate:
    name = leaf.field.name
    if leaf.op in ("$eq", "$ne", "$in", "$nin"):
        targets = frozenset(VALUE + v for v in leaf.values if v is not None)
        with_null = None in leaf.values
        negate = leaf.op in ("$ne", "$nin")

        def member(raw: Raw) -> bool:
            value = raw.get(name)
            found = with_null if value is None or value == NULL else value in targets
            return found != negate

        return member
    return _comparison(name, leaf.field, leaf.op, leaf.values[0] or "")


def _comparison(name: str, field: Field, op: str, payload: str) -> Predicate:
    """An ordering test; null/missing never match (MongoDB compares only values of the same type)."""
    compare = _ORDER[op]
    if field.type in NUMERIC:
        convert: Callable[[str], Any] = int if field.type == "int" else float
        bound: Any = convert(payload)
        return lambda raw: (v := raw.get(name)) is not None and v != NULL and compare(convert(v[1:]), bound)
    # Canonical payloads of the other types sort like their values; all share the "=" tag.
    target = VALUE + payload
    return lambda raw: (v := raw.get(name)) is not None and v != NULL and compare(v, target)


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def sort_key(field: Field) -> Callable[[Raw], tuple[Any, ...]]:
    """Order stored hashes by `field` as MongoDB does: null and missing first, then values."""
    if not field.filterable:
        raise CacheFilterError(f"cannot sort on {field.name!r} ({field.type})")
    name = field.name
    convert: Callable[[str], Any] = {"int": int, "float": float}.get(field.type, str)

    def key(raw: Raw) -> tuple[Any, ...]:
        value = raw.get(name)
        return (0,) if value is None or value == NULL else (1, convert(value[1:]))

    return key


# ---- planning ----------------------------------------------------------------------------------------------


def plan(node: Node) -> Plan | None:
    """Index sets holding every id that can match `node`, or None when no index narrows it."""
    if isinstance(node, Leaf):
        return _leaf_plan(node)
    if node.op == "$and":
        parts = [p for p in (plan(child) for child in node.children) if p is not None]
        if any(isinstance(p, Nothing) for p in parts):
            return Nothing()
        return None if not parts else parts[0] if len(parts) == 1 else SetOp("and", tuple(parts))
    if node.op == "$or":
        options = [plan(child) for child in node.children]
        if any(p is None for p in options):
            return None  # one branch needs a scan, so the whole $or does
        kept = tuple(p for p in options if p is not None and not isinstance(p, Nothing))
        return Nothing() if not kept else kept[0] if len(kept) == 1 else SetOp("or", kept)
    return None  # $nor / $not match what lies outside index sets


def _leaf_plan(leaf: Leaf) -> Plan | None:
    if leaf.op not in ("$eq", "$in") or not leaf.field.indexed:
        return None
    # Null is not indexed (missing values have no set), nor are very long values.
    if any(v is None or len(v) > MAX_INDEXED_CHARS for v in leaf.values):
        return None
    keys = tuple(IndexKey(leaf.field.name, v) for v in dict.fromkeys(leaf.values) if v is not None)
    return Nothing() if not keys else keys[0] if len(keys) == 1 else SetOp("or", keys)
