"""The Lua scripts of the cache engine, and the runner that calls them by EVALSHA.

Every change of an element — set, modify, delete, purge — is one script that updates the hash, its index
entries, the id set and the usage order together, so no reader sees an element without its index entries and
no crash leaves an orphan. Removing the last id of an index set deletes the set (Redis deletes empty sets).
The scripts build index key names from the element's stored values, so they assume a single Redis server (not
Redis Cluster, where every key must be declared). Reads are scripts too: one round trip per chunk of ids.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

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
