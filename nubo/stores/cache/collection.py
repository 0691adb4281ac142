"""The cache collections: schema-checked elements in Redis with per-value index sets and MongoDB-style filters.

Keys (docs/architecture.md §7, all under the configured prefix):

* ``cache:{collection}:{id}`` — the element, a hash of typed values (see :mod:`nubo.stores.cache.schema`)
  plus ``_rev``, a revision counter used for compare-and-set by filtered writes;
* ``idx:{collection}:{field}:{value}`` — the ids whose indexed `field` has `value` (null is not indexed);
* ``ids:{collection}`` — every id of the collection: filters no index can narrow walk it with SSCAN, whose
  cost follows the collection's size (a SCAN of the keyspace would walk every collection and index);
* ``lru`` — one sorted set shared by all instances, members ``{collection}:{id}`` scored by the Redis server
  time (µs) of their last use; the memory governor (:mod:`nubo.stores.cache.governor`) purges from its head.

Every change of an element is one Lua script of :mod:`nubo.stores.cache.scripts` that updates the hash, its
index entries, the id set and the usage order together, so no reader sees an element without its index
entries and no crash leaves an orphan.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from nubo.stores.cache.filter import (
    CacheFilterError,
    CompiledFilter,
    IndexKey,
    Nothing,
    Plan,
    Raw,
    SetOp,
    compile_filter,
    sort_key,
)
from nubo.stores.cache.schema import (
    DECODERS,
    NULL,
    REV_FIELD,
    SCHEMAS,
    CacheValidationError,
    Schema,
    encode_value,
    index_payload,
)
from nubo.stores.cache.scripts import ScriptRunner
from nubo.stores.redis import Keys

CHUNK = 1000  # ids read per round trip (one script run)
SET_BATCH = 100  # elements written per script run by set_many
MAX_QUERY_CANDIDATES = 1000  # above this, index candidates are streamed rather than read in one reply
MAX_CAS_ROUNDS = 5  # filtered writes re-check elements that changed under them this many times


# ---- registry ----------------------------------------------------------------------------------------------


class RedisCache:
    """The cache collections over one Redis client and key prefix."""

    def __init__(self, redis: Redis, keys: Keys, schemas: Mapping[str, Schema] | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.schemas = dict(SCHEMAS if schemas is None else schemas)
        self.scripts = ScriptRunner(redis)
        self._collections: dict[str, CacheCollection] = {}

    def collection(self, name: str) -> CacheCollection:
        """The collection `name`; KeyError when no schema has that name."""
        if name not in self._collections:
            if name not in self.schemas:
                raise KeyError(f"unknown cache collection {name!r}")
            self._collections[name] = CacheCollection(self, self.schemas[name])
        return self._collections[name]

    @property
    def lru_key(self) -> str:
        return self.keys("lru")

    async def touch(self, members: Sequence[str]) -> None:
        """Mark ``collection:id`` members as just used (only those still cached)."""
        for start in range(0, len(members), CHUNK):
            await self.scripts.call("touch", [self.lru_key], members[start : start + CHUNK])


def _id_text(value: uuid.UUID | str) -> str:
    """The canonical text of an element id; CacheValidationError when it is not a UUID."""
    try:
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
    except ValueError:
        raise CacheValidationError("?", "id", f"expected a UUID, got {value!r}") from None


# ---- one collection ----------------------------------------------------------------------------------------


class CacheCollection:
    """One schema-checked, indexed collection of elements (hashes) in Redis."""

    def __init__(self, cache: RedisCache, schema: Schema) -> None:
        self.cache = cache
        self.name = schema.name
        self.schema = schema
        self._redis = cache.redis
        self._scripts = cache.scripts
        keys = cache.keys
        self.ids_key = keys("ids", self.name)
        self.idx_prefix = keys("idx", self.name, "")
        self._hash_prefix = keys("cache", self.name, "")
        self._whole = (REV_FIELD, *schema.fields)  # the hash fields read for a whole element
        self._decoders = {name: DECODERS[field.type] for name, field in schema.fields.items()}

    # ---- naming ----

    def hash_key(self, element_id: str) -> str:
        return self._hash_prefix + element_id

    def index_key(self, field: str, payload: str) -> str:
        return f"{self.idx_prefix}{field}:{payload}"

    def member(self, element_id: str) -> str:
        return f"{self.name}:{element_id}"

    # ---- encoding ----

    def _encode(self, doc: Mapping[str, Any], *, update: bool = False) -> tuple[list[str], list[str]]:
        """Validate `doc` (a full element, or an update) into hash field/value pairs and the index keys."""
        if not isinstance(doc, Mapping):
            raise CacheValidationError(self.name, "*", f"expected a mapping, got {type(doc).__name__}")
        pairs: list[str] = []
        index_keys: list[str] = []
        for name, value in doc.items():
            field = self.schema.field(name) if isinstance(name, str) else None
            if field is None:
                raise CacheValidationError(self.name, str(name), "unknown field")
            raw = encode_value(self.schema, field, value)
            pairs += (name, raw)
            payload = index_payload(field, raw)
            if payload is not None:
                index_keys.append(self.index_key(name, payload))
        if update and "id" in doc:
            raise CacheValidationError(self.name, "id", "the id of an element cannot be modified")
        if not update and doc.get("id") is None:
            raise CacheValidationError(self.name, "id", "required (expected a UUID)")
        if update and not pairs:
            raise CacheValidationError(self.name, "*", "an update needs at least one field")
        return pairs, index_keys

    def decode(self, raw: Raw) -> dict[str, Any]:
        """The typed element of a stored hash."""
        decoders = self._decoders
        return {
            name: None if value == NULL else decoders[name](value[1:])
            for name, value in raw.items()
            if name in decoders
        }

    # ---- writes ----

    async def set(self, doc: Mapping[str, Any]) -> None:
        """Insert or replace one element (validated), moving its index entries and marking it used."""
        await self.set_many([doc])

    async def set_many(self, docs: Sequence[Mapping[str, Any]]) -> None:
        """Insert or replace elements; all are validated before anything is written.

        Elements go to Redis SET_BATCH at a time, each batch one script run (atomic for its elements).
        """
        encoded = [self._encode(doc) for doc in docs]
        prefixes = [self._hash_prefix, self.idx_prefix, self.member("")]
        keys = [self.ids_key, self.cache.lru_key]
        for start in range(0, len(encoded), SET_BATCH):
            args: list[Any] = list(prefixes)
            for pairs, index_keys in encoded[start : start + SET_BATCH]:
                element_id = pairs[pairs.index("id") + 1][1:]  # values start with "=" or "~": never "id"
                args += (element_id, len(pairs) // 2, *pairs, len(index_keys), *index_keys)
            await self._scripts.call("set", keys, args)

    async def delete_by_id(self, element_id: uuid.UUID | str) -> bool:
        """Delete one element and its index entries; True when it existed."""
        text = _id_text(element_id)
        keys = [self.hash_key(text), self.ids_key, self.cache.lru_key]
        args = [text, self.idx_prefix, self.member(text), ""]
        return bool(await self._scripts.call("delete", keys, args) == 1)

    async def delete(self, filter: Mapping[str, Any]) -> int:
        """Delete the elements matching `filter`; returns how many were deleted."""
        query = compile_filter(self.schema, filter)

        def queue(pipe: Pipeline, element_id: str, rev: str) -> None:
            keys = [self.hash_key(element_id), self.ids_key, self.cache.lru_key]
            args = [element_id, self.idx_prefix, self.member(element_id), rev]
            self._scripts.queue(pipe, "delete", keys, args)

        return await self._write_matches(query, queue)

    async def modify(self, filter: Mapping[str, Any], update: Mapping[str, Any]) -> int:
        """Set the fields of `update` on every element matching `filter`; returns how many changed."""
        pairs, index_keys = self._encode(update, update=True)
        query = compile_filter(self.schema, filter)

        def queue(pipe: Pipeline, element_id: str, rev: str) -> None:
            keys = [self.hash_key(element_id), self.cache.lru_key]
            args = [element_id, self.idx_prefix, self.member(element_id), rev, len(pairs) // 2, *pairs, *index_keys]
            self._scripts.queue(pipe, "modify", keys, args)

        return await self._write_matches(query, queue)

    async def _write_matches(self, query: CompiledFilter, queue: Any) -> int:
        """Apply `queue`d scripts to the matches, each guarded by the revision it was matched at.

        An element that changed in between (-1) is read again and re-tested against the filter, so a filtered
        write never acts on an element that no longer matches.
        """
        fields = self._projection(query)
        matches = await self._find(query, fields)
        done = 0
        for _ in range(MAX_CAS_ROUNDS):
            if not matches:
                return done
            batch = matches
            results = await self._scripts.run_pipeline(
                lambda pipe, batch=batch: [queue(pipe, i, raw.get(REV_FIELD, "")) for i, raw in batch]
            )
            done += sum(1 for r in results if r == 1)
            changed = [i for (i, _), r in zip(batch, results, strict=True) if r == -1]
            matches = [(i, raw) for i, raw in await self._fetch(changed, fields) if query.match(raw)]
        # After MAX_CAS_ROUNDS of contention, the last re-test wins: apply without the revision guard.
        results = await self._scripts.run_pipeline(lambda pipe: [queue(pipe, i, "") for i, _ in matches])
        return done + sum(1 for r in results if r == 1)

    # ---- reads ----

    async def get_by_id(self, element_id: uuid.UUID | str) -> dict[str, Any] | None:
        """The element with this id (typed values), or None; marks it used."""
        found = await self.get_many_by_id([element_id])
        return found[0] if found else None

    async def get_many_by_id(self, element_ids: Iterable[uuid.UUID | str]) -> list[dict[str, Any]]:
        """The cached elements among `element_ids`, in that order (absent ones skipped); marks them used."""
        ids = list(dict.fromkeys(_id_text(i) for i in element_ids))
        return [self.decode(raw) for _, raw in await self._fetch(ids, self._whole, touch=True)]

    async def get(
        self, filter: Mapping[str, Any], *, limit: int | None = None, sort: str | None = None, descending: bool = False
    ) -> list[dict[str, Any]]:
        """The elements matching `filter`, optionally sorted by a field and limited; marks them used."""
        query = compile_filter(self.schema, filter)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise CacheFilterError(f"limit must be a positive integer, got {limit!r}")
        if sort is None:
            matches = await self._find(query, self._whole, stop_after=limit, touch=True)
            return [self.decode(raw) for _, raw in matches]
        field = self.schema.field(sort)
        if field is None:
            raise CacheFilterError(f"unknown sort field {sort!r} in collection {self.name}")
        order = sort_key(field)
        matches = await self._find(query, self._projection(query, sort))
        matches.sort(key=lambda m: (order(m[1]), m[0]), reverse=descending)
        chosen = [i for i, _ in matches[:limit]]
        # Read the chosen ones whole (and mark them used); one that changed meanwhile is re-tested.
        reread = await self._fetch(chosen, self._whole, touch=True)
        return [self.decode(raw) for _, raw in reread if query.match(raw)]

    async def count(self) -> int:
        """How many elements the collection holds."""
        return int(await self._redis.scard(self.ids_key))

    # ---- finding ----

    def _projection(self, query: CompiledFilter, *extra: str) -> tuple[str, ...]:
        """The hash fields a filter needs (`_rev` first: it tells a present element from a gone one)."""
        return (REV_FIELD, *sorted(query.fields.union(extra)))

    async def _fetch(
        self, ids: Sequence[str], fields: Sequence[str], *, touch: bool = False
    ) -> list[tuple[str, dict[str, str]]]:
        """(id, hash or projection) of those `ids` still cached, in order; one round trip per chunk."""
        out: list[tuple[str, dict[str, str]]] = []
        for start in range(0, len(ids), CHUNK):
            args = [self._hash_prefix, self.member(""), int(touch), ",".join(fields), *ids[start : start + CHUNK]]
            out += self._pairs(await self._scripts.call("fetch", [self.cache.lru_key], args), fields)
        return out

    @staticmethod
    def _pairs(flat: list[Any], fields: Sequence[str]) -> list[tuple[str, dict[str, str]]]:
        """[(id, {field: value})] from a script's flat reply; absent fields are left out."""
        return [
            (flat[i], {f: v for f, v in zip(fields, flat[i + 1], strict=True) if v is not None})
            for i in range(0, len(flat), 2)
        ]

    async def _find(
        self, query: CompiledFilter, fields: Sequence[str], *, stop_after: int | None = None, touch: bool = False
    ) -> list[tuple[str, dict[str, str]]]:
        """(id, hash or `fields` projection) of matching elements; at most `stop_after`; `touch` marks use."""
        plan = query.plan
        if isinstance(plan, Nothing):
            return []
        if isinstance(plan, IndexKey) or (isinstance(plan, SetOp) and all(isinstance(p, IndexKey) for p in plan.parts)):
            found = await self._query_index(plan, fields, query.exact, stop_after, touch)
            if found is not None:
                matches = [(i, raw) for i, raw in found if query.match(raw)][:stop_after]
                if touch and not query.exact:
                    await self.cache.touch([self.member(i) for i, _ in matches])
                return matches
        # Large or nested candidate sets, and filters no index narrows: stream projections (cheap to transfer
        # and parse), then read whole only the matches when whole elements were asked for.
        whole = tuple(fields) == self._whole
        projection = self._projection(query) if whole else tuple(fields)
        matches = []
        async for chunk in self._candidates(plan, projection):
            matches += [(i, raw) for i, raw in chunk if query.match(raw)]
            if stop_after is not None and len(matches) >= stop_after:
                matches = matches[:stop_after]
                break
        if not whole:
            if touch:
                await self.cache.touch([self.member(i) for i, _ in matches])
            return matches
        reread = await self._fetch([i for i, _ in matches], self._whole, touch=touch)
        return [(i, raw) for i, raw in reread if query.match(raw)]

    async def _query_index(
        self, plan: IndexKey | SetOp, fields: Sequence[str], exact: bool, stop_after: int | None, touch: bool
    ) -> list[tuple[str, dict[str, str]]] | None:
        """Candidates of a flat index plan in one round trip; None when too many for one reply."""
        parts = [plan] if isinstance(plan, IndexKey) else [p for p in plan.parts if isinstance(p, IndexKey)]
        keys = [self.cache.lru_key, *(self.index_key(p.field, p.payload) for p in parts)]
        op = "one" if isinstance(plan, IndexKey) else plan.op
        # Lua may stop at `limit` and mark use only when the index alone decides what matches.
        limit = stop_after if exact and stop_after else 0
        args = [
            self._hash_prefix,
            self.member(""),
            int(touch and exact),
            limit,
            MAX_QUERY_CANDIDATES,
            op,
            ",".join(fields),
        ]
        reply = await self._scripts.call("query", keys, args)
        return self._pairs(reply[1], fields) if reply[0] == 1 else None

    async def _candidates(
        self, plan: Plan | None, fields: Sequence[str]
    ) -> AsyncIterator[list[tuple[str, dict[str, str]]]]:
        """Chunks of (id, projection) that may match: SSCAN of the id set (or of one big index set)."""
        if plan is None or isinstance(plan, IndexKey):
            key = self.ids_key if plan is None else self.index_key(plan.field, plan.payload)
            seen: builtins.set[str] = set()
            cursor = "0"
            while True:
                args = [cursor, CHUNK, self._hash_prefix, ",".join(fields)]
                cursor, flat = await self._scripts.call("scan", [key], args)
                chunk = [(i, raw) for i, raw in self._pairs(flat, fields) if i not in seen]
                seen.update(i for i, _ in chunk)  # SSCAN may return a member twice
                if chunk:
                    yield chunk
                if str(cursor) == "0":
                    return
        ids = sorted(await self._evaluate(plan))
        for start in range(0, len(ids), CHUNK):
            yield await self._fetch(ids[start : start + CHUNK], fields)

    async def _evaluate(self, plan: Plan) -> builtins.set[str]:
        """The ids of an index plan; flat intersections/unions run in Redis (SINTER/SUNION)."""
        if isinstance(plan, Nothing):
            return set()
        if isinstance(plan, IndexKey):
            return {str(i) for i in await self._redis.smembers(self.index_key(plan.field, plan.payload))}
        flat = [p for p in plan.parts if isinstance(p, IndexKey)]
        nested = [p for p in plan.parts if not isinstance(p, IndexKey)]
        result: builtins.set[str] | None = None
        if flat:
            keys = [self.index_key(p.field, p.payload) for p in flat]
            command = self._redis.sinter if plan.op == "and" else self._redis.sunion
            result = {str(i) for i in await command(keys)}
        for part in nested:
            if plan.op == "and" and result is not None and not result:
                return result
            ids = await self._evaluate(part)
            result = ids if result is None else (result & ids if plan.op == "and" else result | ids)
        return result or set()
