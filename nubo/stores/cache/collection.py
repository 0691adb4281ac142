"""The Redis cache engine: schema-checked collections with per-value index sets and MongoDB-style filters.

Keys (DESIGN §3, all under the configured prefix):

* ``cache:{collection}:{id}`` — the element, a hash of typed values (see :mod:`nubo.stores.cache.schema`)
  plus ``_rev``, a revision counter used for compare-and-set by filtered writes;
* ``idx:{collection}:{field}:{value}`` — the ids whose indexed `field` has `value` (null is not indexed);
* ``ids:{collection}`` — every id of the collection: filters no index can narrow walk it with SSCAN, whose
  cost follows the collection's size (a SCAN of the keyspace would walk every collection and index);
* ``lru`` — one sorted set shared by all instances, members ``{collection}:{id}`` scored by the Redis server
  time (µs) of their last use; the memory governor (:mod:`nubo.stores.cache.governor`) purges from its head.

Every change of an element — set, modify, delete, purge — is one Lua script that updates the hash, its index
entries, the id set and the usage order together, so no reader sees an element without its index entries and
no crash leaves an orphan. Removing the last id of an index set deletes the set (Redis deletes empty sets).
The scripts build index key names from the element's stored values, so they assume a single Redis server (not
Redis Cluster, where every key must be declared).
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

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
    CacheError,
    CacheValidationError,
    Schema,
    encode_value,
    index_payload,
)
from nubo.stores.redis import Keys, scan_prefix

__all__ = [
    "CacheCollection",
    "CacheError",
    "CacheFilterError",
    "CacheValidationError",
    "RedisCache",
    "audit_cache",
    "cache_stats",
]

CHUNK = 1000  # ids read per round trip (one script run)
SET_BATCH = 100  # elements written per script run by set_many
MAX_QUERY_CANDIDATES = 1000  # above this, index candidates are streamed rather than read in one reply
MAX_CAS_ROUNDS = 5  # filtered writes re-check elements that changed under them this many times

# ---- Lua ---------------------------------------------------------------------------------------------------

# Removes an element, its index entries (derived from its stored `=value`s), its id and its usage entry.
_LUA_DELETE_ELEMENT = """
local function delete_element(hash, idx_prefix, ids, lru, member, id)
  local old = redis.call('HGETALL', hash)
  for i = 1, #old, 2 do
    local v = old[i + 1]
    if string.byte(v, 1) == 61 then
      redis.call('SREM', idx_prefix .. old[i] .. ':' .. string.sub(v, 2), id)
    end
  end
  redis.call('DEL', hash)
  redis.call('SREM', ids, id)
  redis.call('ZREM', lru, member)
  if #old > 0 then return 1 end
  return 0
end
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
"""

# Insert or replace elements. KEYS: ids, lru. ARGV: hash prefix, idx prefix, member prefix, then per element:
# id, n pairs, field/value pairs..., n index keys, index keys... Returns how many were written.
_LUA_SET = (
    _LUA_DELETE_ELEMENT
    + """
local hash_prefix, idx_prefix, member_prefix = ARGV[1], ARGV[2], ARGV[3]
local now = now_us()
local i, written = 4, 0
while i <= #ARGV do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  local first, last = i + 2, i + 1 + 2 * n
  local hash = hash_prefix .. id
  local new = {}
  for j = first, last, 2 do new[ARGV[j]] = ARGV[j + 1] end
  local old = redis.call('HGETALL', hash)
  local rev = 0
  for j = 1, #old, 2 do
    local f, v = old[j], old[j + 1]
    if f == '_rev' then rev = tonumber(v)
    elseif new[f] ~= v and string.byte(v, 1) == 61 then
      redis.call('SREM', idx_prefix .. f .. ':' .. string.sub(v, 2), id)
    end
  end
  redis.call('DEL', hash)
  redis.call('HSET', hash, '_rev', rev + 1, unpack(ARGV, first, last))
  local nidx = tonumber(ARGV[last + 1])
  for j = last + 2, last + 1 + nidx do redis.call('SADD', ARGV[j], id) end
  redis.call('SADD', KEYS[1], id)
  redis.call('ZADD', KEYS[2], now, member_prefix .. id)
  written = written + 1
  i = last + 2 + nidx
end
return written
"""
)

# KEYS: hash, lru. ARGV: id, idx prefix, lru member, expected rev ('' = any), n pairs, pairs..., index keys...
# Returns 1 (modified), 0 (element gone: never resurrect a partial element), -1 (changed since it was read).
_LUA_MODIFY = (
    _LUA_DELETE_ELEMENT
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[4] ~= '' and redis.call('HGET', KEYS[1], '_rev') ~= ARGV[4] then return -1 end
local id, idx_prefix, n = ARGV[1], ARGV[2], tonumber(ARGV[5])
for i = 6, 5 + 2 * n, 2 do
  local f, v = ARGV[i], ARGV[i + 1]
  local o = redis.call('HGET', KEYS[1], f)
  if o and o ~= v and string.byte(o, 1) == 61 then
    redis.call('SREM', idx_prefix .. f .. ':' .. string.sub(o, 2), id)
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6, 5 + 2 * n))
for i = 6 + 2 * n, #ARGV do redis.call('SADD', ARGV[i], id) end
redis.call('HINCRBY', KEYS[1], '_rev', 1)
redis.call('ZADD', KEYS[2], now_us(), ARGV[3])
return 1
"""
)

# KEYS: hash, ids, lru. ARGV: id, idx prefix, lru member, expected rev ('' = any). Returns 1, 0 (gone) or -1.
_LUA_DELETE = (
    _LUA_DELETE_ELEMENT
    + """
if ARGV[4] ~= '' then
  local rev = redis.call('HGET', KEYS[1], '_rev')
  if rev and rev ~= ARGV[4] then return -1 end
end
return delete_element(KEYS[1], ARGV[2], KEYS[2], KEYS[3], ARGV[3], ARGV[1])
"""
)

# KEYS: lru. ARGV: key prefix, how many. Deletes the least recently used elements; returns their members.
_LUA_PURGE = (
    _LUA_DELETE_ELEMENT
    + """
local p = ARGV[1]
local victims = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
for _, m in ipairs(victims) do
  local sep = string.find(m, ':', 1, true)
  if sep then
    local coll, id = string.sub(m, 1, sep - 1), string.sub(m, sep + 1)
    delete_element(p .. 'cache:' .. m, p .. 'idx:' .. coll .. ':', p .. 'ids:' .. coll, KEYS[1], m, id)
  else
    redis.call('ZREM', KEYS[1], m)
  end
end
return victims
"""
)

# Reading: HMGET of `fields` (all the schema's for a whole element; the first is always `_rev`, present in
# every element, so nil means the element is gone). Results are flat lists [id, values, id, values, ...];
# `touch` marks the returned elements used (ZADD XX: never adds an orphan).
_LUA_READ = (
    _LUA_DELETE_ELEMENT
    + """
local function read(ids, hash_prefix, fields, lru, member_prefix, touch, limit)
  local out, used, found = {}, {}, 0
  for _, id in ipairs(ids) do
    local values = redis.call('HMGET', hash_prefix .. id, unpack(fields))
    if values[1] then
      out[#out + 1] = id
      out[#out + 1] = values
      found = found + 1
      if touch then used[#used + 1] = 0; used[#used + 1] = member_prefix .. id end
      if limit > 0 and found >= limit then break end
    end
  end
  if #used > 0 then
    local now = now_us()
    for i = 1, #used, 2 do used[i] = now end
    redis.call('ZADD', lru, 'XX', unpack(used))
  end
  return out
end
local function split(text)  -- field names come comma-joined: one argument instead of a dozen
  local items = {}
  for item in string.gmatch(text, '[^,]+') do items[#items + 1] = item end
  return items
end
"""
)

# KEYS: lru. ARGV: hash prefix, member prefix, touch (0/1), fields (comma-joined), ids...
_LUA_FETCH = (
    _LUA_READ
    + """
local ids = {}
for i = 5, #ARGV do ids[#ids + 1] = ARGV[i] end
return read(ids, ARGV[1], split(ARGV[4]), KEYS[1], ARGV[2], ARGV[3] == '1', 0)
"""
)

# Candidates of an index plan, read in one round trip. KEYS: lru, index keys...
# ARGV: hash prefix, member prefix, touch (0/1), limit (0: none), max candidates, op (one|and|or), fields
# (comma-joined). Returns {1, flat results}, or {0} when the sets hold more than `max candidates` ids (the
# caller then streams them instead of blocking the server on one big reply).
_LUA_QUERY = (
    _LUA_READ
    + """
local op, max_candidates = ARGV[6], tonumber(ARGV[5])
local size = 0
for i = 2, #KEYS do
  local n = redis.call('SCARD', KEYS[i])
  if op == 'or' then size = size + n elseif i == 2 or n < size then size = n end
end
if size > max_candidates then return {0} end
local ids
if op == 'and' then ids = redis.call('SINTER', unpack(KEYS, 2))
elseif op == 'or' then ids = redis.call('SUNION', unpack(KEYS, 2))
else ids = redis.call('SMEMBERS', KEYS[2]) end
return {1, read(ids, ARGV[1], split(ARGV[7]), KEYS[1], ARGV[2], ARGV[3] == '1', tonumber(ARGV[4]))}
"""
)

# One step of a scan over a set of ids. KEYS: the set. ARGV: cursor, count, hash prefix, fields
# (comma-joined). Returns {next cursor, flat projections}.
_LUA_SCAN = (
    _LUA_READ
    + """
local step = redis.call('SSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
return {step[1], read(step[2], ARGV[3], split(ARGV[4]), '', '', false, 0)}
"""
)

# KEYS: lru. ARGV: members. Marks use of elements that are still cached (XX: never adds an orphan).
_LUA_TOUCH = (
    _LUA_DELETE_ELEMENT
    + """
local now = now_us()
local args = {}
for i, m in ipairs(ARGV) do args[2 * i - 1] = now; args[2 * i] = m end
if #args > 0 then redis.call('ZADD', KEYS[1], 'XX', unpack(args)) end
return #ARGV
"""
)


@dataclass(frozen=True)
class _Script:
    source: str
    sha: str = dataclasses.field(init=False)

    def __post_init__(self) -> None:  # computed once: `sha` is read on every cached read
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


SCRIPTS = {
    name: _Script(source)
    for name, source in (
        ("set", _LUA_SET),
        ("modify", _LUA_MODIFY),
        ("delete", _LUA_DELETE),
        ("purge", _LUA_PURGE),
        ("touch", _LUA_TOUCH),
        ("fetch", _LUA_FETCH),
        ("query", _LUA_QUERY),
        ("scan", _LUA_SCAN),
    )
}


class ScriptRunner:
    """Runs the engine's Lua scripts by EVALSHA, loading them once per server (again after a restart)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._loaded = False

    async def load(self) -> None:
        for script in SCRIPTS.values():
            await self.redis.script_load(script.source)
        self._loaded = True

    async def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one script; reload the scripts once if the server forgot them."""
        for attempt in (1, 2):
            if not self._loaded:
                await self.load()
            try:
                return await self.redis.evalsha(SCRIPTS[name].sha, len(keys), *keys, *args)
            except NoScriptError:
                self._loaded = False
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def queue(self, pipe: Pipeline, name: str, keys: Sequence[str], args: Sequence[Any]) -> None:
        pipe.evalsha(SCRIPTS[name].sha, len(keys), *keys, *args)

    async def run_pipeline(self, build: Any) -> list[Any]:
        """Execute a pipeline filled by `build(pipe)`; scripts are idempotent, so a NOSCRIPT retry is safe."""
        for attempt in (1, 2):
            if not self._loaded:
                await self.load()
            pipe = self.redis.pipeline(transaction=False)
            build(pipe)
            try:
                return list(await pipe.execute())
            except NoScriptError:
                self._loaded = False
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


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


# ---- inspection and integrity (CLI, tests) ----------------------------------------------------------------


async def cache_stats(
    cache: RedisCache, collection: str | None = None, *, sample: int = 50, top: int = 5
) -> dict[str, Any]:
    """Per collection: element count, index count, largest indexes and approximate memory (sampled)."""
    redis = cache.redis
    names = [collection] if collection is not None else sorted(cache.schemas)
    index_sizes = await _index_sizes(cache, collection)
    collections: dict[str, Any] = {}
    for name in names:
        coll = cache.collection(name)
        sizes = index_sizes.get(name, {})
        elements = await coll.count()
        element_bytes = await _sampled_memory(
            redis, [coll.hash_key(str(i)) for i in await redis.srandmember(coll.ids_key, sample) or []]
        )
        index_keys = [coll.idx_prefix + suffix for suffix in list(sizes)[:sample]]
        index_bytes = await _sampled_memory(redis, index_keys)
        largest = sorted(sizes.items(), key=lambda item: (-item[1], item[0]))[:top]
        collections[name] = {
            "elements": elements,
            "indexes": len(sizes),
            "largest_indexes": [{"index": suffix, "ids": count} for suffix, count in largest],
            "memory_bytes": round(
                elements * element_bytes + len(sizes) * index_bytes + (await redis.memory_usage(coll.ids_key) or 0)
            ),
        }
    return {
        "prefix": cache.keys.prefix,
        "collections": collections,
        "lru_entries": int(await redis.zcard(cache.lru_key)),
    }


async def _index_sizes(cache: RedisCache, collection: str | None) -> dict[str, dict[str, int]]:
    """{collection: {"field:value": cardinality}} over every index set (one SCAN of the prefix)."""
    pattern = "idx:*" if collection is None else f"idx:{collection}:*"
    start = len(cache.keys("idx", ""))
    sizes: dict[str, dict[str, int]] = {}
    pending: list[str] = []

    async def flush() -> None:
        pipe = cache.redis.pipeline(transaction=False)
        for key in pending:
            pipe.scard(key)
        for key, count in zip(pending, await pipe.execute(), strict=True):
            name, _, suffix = key[start:].partition(":")
            sizes.setdefault(name, {})[suffix] = int(count)
        pending.clear()

    async for key in scan_prefix(cache.redis, cache.keys, pattern):
        pending.append(key)
        if len(pending) >= CHUNK:
            await flush()
    if pending:
        await flush()
    return sizes


async def _sampled_memory(redis: Redis, keys: list[str]) -> float:
    """Mean MEMORY USAGE of `keys` (0 when none)."""
    if not keys:
        return 0.0
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key)
    sizes = [int(size) for size in await pipe.execute() if size is not None]
    return sum(sizes) / len(sizes) if sizes else 0.0


async def audit_cache(cache: RedisCache) -> list[str]:
    """Walk every cache key of the prefix and list inconsistencies (empty list: all invariants hold).

    Every index set must hold exactly the ids whose element has that value, no index set may be empty, and the
    id sets and the usage order must name exactly the elements that exist.
    """
    redis, keys = cache.redis, cache.keys
    problems: list[str] = []
    expected: dict[str, set[str]] = {}
    elements: set[str] = set()  # "collection:id"
    async for key in scan_prefix(redis, keys, "cache:*"):
        name, _, element_id = key[len(keys("cache", "")) :].partition(":")
        if name not in cache.schemas:
            problems.append(f"{key}: element of unknown collection {name!r}")
            continue
        coll = cache.collection(name)
        raw: dict[str, str] = await redis.hgetall(key)  # type: ignore[assignment]  # decode_responses
        elements.add(coll.member(element_id))
        for field in coll.schema.indexed:
            payload = index_payload(field, raw.get(field.name))
            if payload is not None:
                expected.setdefault(coll.index_key(field.name, payload), set()).add(element_id)
    problems += await _audit_indexes(cache, expected)
    problems += await _audit_members(cache, elements)
    return problems


async def _audit_indexes(cache: RedisCache, expected: dict[str, set[str]]) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    async for key in scan_prefix(cache.redis, cache.keys, "idx:*"):
        seen.add(key)
        actual = {str(i) for i in await cache.redis.smembers(key)}
        if not actual:
            problems.append(f"{key}: empty index set")
        for orphan in sorted(actual - expected.get(key, set())):
            problems.append(f"{key}: holds {orphan}, whose element is gone or has another value")
        for missing in sorted(expected.get(key, set()) - actual):
            problems.append(f"{key}: lacks {missing}")
    problems += [f"{key}: index set missing for {sorted(ids)}" for key, ids in expected.items() if key not in seen]
    return problems


async def _audit_members(cache: RedisCache, elements: set[str]) -> list[str]:
    problems: list[str] = []
    listed: set[str] = set()
    for name in cache.schemas:
        coll = cache.collection(name)
        listed |= {coll.member(str(i)) for i in await cache.redis.smembers(coll.ids_key)}
    lru = {str(m) for m in await cache.redis.zrange(cache.lru_key, 0, -1)}
    problems += [f"id set lists {m}, which does not exist" for m in sorted(listed - elements)]
    problems += [f"id set lacks {m}" for m in sorted(elements - listed)]
    problems += [f"usage order lists {m}, which does not exist" for m in sorted(lru - elements)]
    problems += [f"usage order lacks {m}" for m in sorted(elements - lru)]
    return problems
