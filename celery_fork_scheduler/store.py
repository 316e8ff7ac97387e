"""Runtime entries and per-entry controls in Redis: what the Manager writes, beat reads.

Runtime entries live in one hash (name -> JSON, never pickle) beside a version counter and a
change log (a zset of name -> version of its latest change, deletions included), so a replica
learns what changed since the version it has with one small read, instead of reloading
everything. A write can carry the version it read: a stale one is refused.

Pause state, counters and history live in each entry's own keys (see :mod:`.keys`), for static
and runtime entries alike.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

from .config import INT_RANGES, has_lone_surrogates
from .entry import MAX_JSON_DEPTH, json_depth
from .errors import ConfigError, ForkSchedulerError
from .keys import Keys

logger = logging.getLogger("celery_fork_scheduler")

#: Largest stored entry the store writes at all (the top of ``fork_scheduler_max_entry_size``;
#: the Manager applies the setting itself).
MAX_STORED_BYTES = INT_RANGES["max_entry_size"][1]
#: Longest pause note, characters.
MAX_NOTE_LENGTH = 1_000

#: Removed entries: their change-log members, and their own keys, go after this retention.
#: Long enough for every replica to have seen the removal; a replica away longer reloads all.
DELETED_RETENTION = timedelta(days=1)

#: Shared by PUT and DELETE: trim the change-log members of entries removed longer than the
#: retention ago (at most 100 per call) and raise the floor version to theirs. A replica whose
#: version is below the floor may have missed a removal: it reloads everything.
#: KEYS[1] entries hash, KEYS[2] changes zset, KEYS[5] removed zset, KEYS[6] floor.
#: Expects ``now_ms`` in scope; ``retention``: of removals (ms).
_TRIM = """
local function trim(retention)
  local old = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now_ms - retention,
                         'LIMIT', 0, 100)
  if #old == 0 then
    return
  end
  local floor = tonumber(redis.call('GET', KEYS[6]) or '0')
  for _, name in ipairs(old) do
    if redis.call('HEXISTS', KEYS[1], name) == 0 then
      floor = math.max(floor, tonumber(redis.call('ZSCORE', KEYS[2], name) or '0'))
      redis.call('ZREM', KEYS[2], name)
    end
    redis.call('ZREM', KEYS[5], name)
  end
  redis.call('SET', KEYS[6], string.format('%.0f', floor))
end
"""

#: Shared by every write: keep the tag index. KEYS[8] the index (zset, score 0, a member
#: "<tag>|<name>" for each tag of each entry, the tag with "%" and "|" escaped as %25 and %7C:
#: the names of a tag are one lexical range), KEYS[9] each entry's escaped tags, joined by "|"
#: (no field when none). ``retag(name, joined)`` gives ``name`` the tags ``joined`` ("" none).
_RETAG = """
local function retag(name, joined)
  local old = redis.call('HGET', KEYS[9], name)
  if old == joined or (not old and joined == '') then
    return
  end
  if old then
    for tag in string.gmatch(old, '[^|]+') do
      redis.call('ZREM', KEYS[8], tag .. '|' .. name)
    end
  end
  if joined == '' then
    redis.call('HDEL', KEYS[9], name)
    return
  end
  redis.call('HSET', KEYS[9], name, joined)
  for tag in string.gmatch(joined, '[^|]+') do
    redis.call('ZADD', KEYS[8], 0, tag .. '|' .. name)
  end
end
"""

#: First in every write: refuse a writer whose number of shards (the last ARGV) is not the one
#: recorded in this shard (KEYS[11]), or that is sharded while an unsharded store written
#: before the number was recorded holds entries here; else record it. So no entry is ever
#: written to a shard of another layout, however long ago the writer checked (a sharded
#: writer records the number in shard 0 before its first write: see check_shard_count).
#: Returns {-3, the number in force} when refused.
_SHARDS = """
do
  local wanted = ARGV[#ARGV]
  local recorded = redis.call('GET', KEYS[11])
  if recorded and recorded ~= wanted then
    return {-3, recorded}
  end
  if not recorded and wanted ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then
    return {-3, '1'}
  end
  if not recorded then
    redis.call('SET', KEYS[11], wanted)
  end
end
"""

#: Record the number of shards in shard 0, unless another is recorded there or an unsharded
#: store written before it was recorded holds entries there (one script: no writer slips in
#: between). KEYS[1] shard 0's recorded number, KEYS[2] shard 0's entries hash; ARGV[1] the
#: caller's number. Returns the number in force.
RECORD_SHARDS = """
local recorded = redis.call('GET', KEYS[1])
if recorded then
  return tonumber(recorded)
end
if redis.call('EXISTS', KEYS[2]) == 1 and ARGV[1] ~= '1' then
  return 1
end
redis.call('SET', KEYS[1], ARGV[1])
return tonumber(ARGV[1])
"""

_NOW = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[7], t[1] .. '.' .. t[2], 'NX')
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[10], '1')  -- no entry to index: the tag index is complete
end
"""

#: Store or replace one runtime entry.
#: KEYS[1] entries hash, KEYS[2] changes zset, KEYS[3] version counter, KEYS[4] since hash,
#: KEYS[5] removed zset, KEYS[6] floor version, KEYS[7] epoch (set once, by the first write),
#: KEYS[8] tag index, KEYS[9] tags of each entry (see _RETAG), KEYS[10] set once the tag index
#: holds every entry (see INDEX_TAGS), KEYS[11] the number of shards recorded (see _SHARDS).
#: ARGV[1] name, ARGV[2] JSON, ARGV[3] expected version ("" any, "0" must not exist),
#: ARGV[4] the instant (us) the writer computed the entry's next run from ("": Redis TIME),
#: ARGV[5] retention of removals (ms), ARGV[6] its tags, separated by NUL, ARGV[7] the
#: writer's number of shards.
#: Returns {new version, 1 if the entry is new else 0} or {-1, current version} when the
#: expected version is stale ({-3, n}: see _SHARDS).
PUT = (
    _SHARDS
    + _NOW
    + _TRIM
    + _RETAG
    + """
local current = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
local created = 0
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  current = 0
  created = 1
end
if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= current then
  return {-1, current}
end
local since = ARGV[4]
if since == '' then
  since = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
end
local version = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
-- "<since> <added>": the instant of this change and of the entry's creation (a replica that
-- never saw the entry starts it from its creation: no slot promised since then is lost).
local added = since
if created == 0 then
  added = string.match(redis.call('HGET', KEYS[4], ARGV[1]) or '', '^%d+ (%d+)$') or since
end
redis.call('HSET', KEYS[4], ARGV[1], since .. ' ' .. added)
redis.call('ZADD', KEYS[2], version, ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
retag(ARGV[1], ARGV[6])
trim(tonumber(ARGV[5]))
return {version, created}
"""
)

#: Remove one runtime entry. Same KEYS; ARGV[1] name, ARGV[2] expected version ("" any),
#: ARGV[5] retention of removals (ms), ARGV[6] the writer's number of shards.
#: Returns {new version}, {0} when there was no such entry, or {-1, current} when stale.
DELETE = (
    _SHARDS
    + _NOW
    + _TRIM
    + _RETAG
    + """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return {0}
end
local current = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= current then
  return {-1, current}
end
local version = redis.call('INCR', KEYS[3])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[2], version, ARGV[1])
redis.call('ZADD', KEYS[5], now_ms, ARGV[1])
retag(ARGV[1], '')
trim(tonumber(ARGV[5]))
return {version}
"""
)


def _removal_mark(client: Any, at: datetime | None) -> str:
    """The ``removed`` field of a removed runtime entry's state: the instant of the removal
    (us since the epoch): ``at`` (the remover's clock), else Redis's. Its slots due up to then
    may still be claimed (by a replica that has not seen the removal yet); the later ones are
    refused."""
    if at is not None:
        return str(_epoch_us(at))
    reply = client.time()
    if isinstance(reply, dict):  # Redis Cluster: one answer per node
        reply = next(iter(reply.values()))
    seconds, micros = reply
    return str(int(seconds) * 1_000_000 + int(micros))


#: The fields of a state hash that a name added again starts without: its run count, its
#: finished mark, its pause and the max_runs its held runs were counted under (the high-water
#: mark stays: it keeps slots from running twice).
_FRESH_FIELDS = (
    "runs",
    "finished",
    "paused",
    "pause_note",
    "paused_at",
    "removed",
    "max_runs",
    "disabled",
)
_FRESH_LUA = ", ".join(f"'{name}'" for name in _FRESH_FIELDS)
#: A disable's note (Redis Cluster, beside the deletion of the held runs): they were of slots
#: up to the entry's mark, which GIVE_BACK_HELD never holds back again.
_NOTE_HELD_DROPPED = """
local mark = redis.call('HGET', KEYS[1], 'hwm')
if mark then
  redis.call('HSET', KEYS[1], 'held_dropped', mark)
end
"""
#: What a reset keeps in the state's ``before_reset`` (a JSON list of field, value, ...) unless
#: it holds one already or says ``removed``: a replica running a static entry of the same name
#: (the runtime entry was written by an app that does not know it) puts it back at its next
#: claim.
_KEPT_FIELDS = ("runs", "finished", "paused", "pause_note", "paused_at", "max_runs", "fresh_after")
_KEPT_LUA = ", ".join(f"'{name}'" for name in _KEPT_FIELDS)

#: ``entry_key(name, j)``: the j-th key of an entry (Keys.entry_keys order), built from the key
#: layout in ARGV[3] ("1" when the script may build the entries' keys itself, then the parts
#: around the name); ``own_keys`` says which.
_LAYOUT = """
local own_keys, layout = false, {}
for part in string.gmatch(ARGV[3] .. '\\n', '([^\\n]*)\\n') do
  layout[#layout + 1] = part
end
own_keys = layout[1] == '1'
-- the j-th key of an entry (Keys.entry_keys order), built from the layout in ARGV[3]
local function entry_key(name, j)
  return layout[2 * j] .. name .. layout[2 * j + 1]
end
"""

#: Shared by the bulk scripts: ``push(list, a, b)`` appends two items; ``many(command, key,
#: args)`` runs ``command key args...`` with up to 4 000 of ``args`` per call (``key`` false:
#: ``command args...``, for DEL of many keys).
_MANY = """
local function push(list, a, b)
  list[#list + 1] = a
  list[#list + 1] = b
end
local function many(command, key, args)
  for i = 1, #args, 4000 do
    if key then
      redis.call(command, key, unpack(args, i, math.min(i + 3999, #args)))
    else
      redis.call(command, unpack(args, i, math.min(i + 3999, #args)))
    end
  end
end
"""

#: Store or replace a batch of runtime entries, all or none (``Manager.add_many`` and
#: ``update_many``): PUT for each, in one script. KEYS[1..11] as PUT, KEYS[12] the chain of
#: the call's batches, KEYS[13...] the held-back runs (``buffered``) of the entries the batch
#: disables, deleted with the write, their states marked ``disabled`` (and the others' not;
#: on one Redis; see :func:`disables`). ARGV[3] "0": the
#: caller resets a new entry's state and makes its keys
#: lose an expiry (Redis Cluster: those keys live on other slots); else "1" and the layout of
#: an entry's five keys (``Keys.entry_keys``: state, pending, running, buffered, history), each
#: as the text before and after the name, all joined by newlines, and the script does it, at
#: once with the write. (On one Redis only: it builds those keys rather than receive them as
#: KEYS, which would cost more to send than the entry itself.) ARGV[1] since (us; "": Redis
#: TIME), ARGV[2] retention of removals (ms), ARGV[4] the batch's number in its call ("": not
#: chained), then four per entry: name, JSON, expected version ("" any, "0" must not exist),
#: tags (as PUT), and last the writer's number of shards (see _SHARDS). A chained batch runs
#: only when KEYS[12] holds the number of the batch before
#: it (batches are sent before the one before them has answered: one that fails stops the
#: others), and then sets it to its own.
#: Returns {v, created}, the i-th entry taking version v + i and the i-th character of created
#: being "1" when it is new, else "0"; or {-1, {name, current, ...}} when any expected version
#: is stale, or {-2} when the batch before was not written; then nothing is written.
PUT_MANY = (
    _SHARDS
    + _NOW
    + _TRIM
    + _RETAG
    + _LAYOUT
    + _MANY
    + """
if ARGV[4] ~= '' and tonumber(redis.call('GET', KEYS[12]) or '0') ~= tonumber(ARGV[4]) - 1 then
  return {-2}  -- the batch before this one was not written
end
local count = (#ARGV - 5) / 4
local currents, stale = {}, {}
for i = 1, count do
  local name, expected = ARGV[i * 4 + 1], ARGV[i * 4 + 3]
  local current = -1
  if redis.call('HEXISTS', KEYS[1], name) == 1 then
    current = tonumber(redis.call('ZSCORE', KEYS[2], name) or '0')
  end
  currents[i] = current
  if expected ~= '' and tonumber(expected) ~= math.max(current, 0) then
    stale[#stale + 1] = name
    stale[#stale + 1] = math.max(current, 0)
  end
end
if #stale > 0 then
  return {-1, stale}
end
local since = ARGV[1]
if since == '' then
  since = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
end
-- GET and SET rather than INCRBY: the scripts need no command beyond the documented ACL list
local first = tonumber(redis.call('GET', KEYS[3]) or '0')
redis.call('SET', KEYS[3], string.format('%.0f', first + count))
local disabling = {}  -- the held-back runs of the entries this write disables
for i = 13, #KEYS do
  disabling[KEYS[i]] = true
  redis.call('DEL', KEYS[i])
end
-- Written together, one command per key and up to 4 000 arguments per command.
local entries, instants, changes, names, tags_of, index = {}, {}, {}, {}, {}, {}
local created = {}
for i = 1, count do
  local name = ARGV[i * 4 + 1]
  local added = since
  created[i] = '0'
  if currents[i] < 0 then
    created[i] = '1'
    if own_keys and redis.call('EXISTS', entry_key(name, 1), entry_key(name, 2),
        entry_key(name, 3), entry_key(name, 4), entry_key(name, 5)) > 0 then
      local kept, values = {}, redis.call('HMGET', entry_key(name, 1), """
    + _KEPT_LUA
    + """)
      for j, field in ipairs({"""
    + _KEPT_LUA
    + """}) do
        if values[j] then
          push(kept, field, values[j])
        end
      end
      if #kept > 0 and not redis.call('HGET', entry_key(name, 1), 'removed') then
        -- (a name removed as a runtime entry was not a static entry's: nothing to keep)
        redis.call('HSETNX', entry_key(name, 1), 'before_reset', cjson.encode(kept))
      end
      redis.call('HDEL', entry_key(name, 1), """
    + _FRESH_LUA
    + """)
      local mark = redis.call('HGET', entry_key(name, 1), 'hwm')
      if mark then  -- runs of slots up to here were the removed definition's (give_back_run)
        redis.call('HSET', entry_key(name, 1), 'fresh_after', mark)
      end
      redis.call('DEL', entry_key(name, 4))
      -- The running marker (3) keeps its own lease: a run of the removed entry may still hold it.
      for _, j in ipairs({1, 2, 5}) do
        redis.call('PERSIST', entry_key(name, j))
      end
    end
  else
    added = string.match(redis.call('HGET', KEYS[4], name) or '', '^%d+ (%d+)$') or since
  end
  if own_keys then  -- claims of the definition this replaces are refused after the change
    redis.call('HSET', entry_key(name, 1), 'defined',
               string.format('%.0f', first + i) .. ' ' .. since)
    if disabling[entry_key(name, 4)] then  -- no new claim while disabled
      redis.call('HSET', entry_key(name, 1), 'disabled', '1')
      local mark = redis.call('HGET', entry_key(name, 1), 'hwm')
      if mark then  -- the held runs deleted here were of slots up to it (GIVE_BACK_HELD)
        redis.call('HSET', entry_key(name, 1), 'held_dropped', mark)
      end
    elseif currents[i] >= 0 then
      redis.call('HDEL', entry_key(name, 1), 'disabled')
    end
  end
  push(entries, name, ARGV[i * 4 + 2])
  push(instants, name, since .. ' ' .. added)
  push(changes, first + i, name)
  names[#names + 1] = name
  local joined = ARGV[i * 4 + 4]
  if currents[i] < 0 and joined ~= '' and not redis.call('HGET', KEYS[9], name) then
    push(tags_of, name, joined)  -- a new entry: nothing to take out of the index
    for tag in string.gmatch(joined, '[^|]+') do
      push(index, 0, tag .. '|' .. name)
    end
  else
    retag(name, joined)
  end
end
many('HSET', KEYS[1], entries)
many('HSET', KEYS[4], instants)
many('ZADD', KEYS[2], changes)
many('ZREM', KEYS[5], names)
many('HSET', KEYS[9], tags_of)
many('ZADD', KEYS[8], index)
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[12], ARGV[4], 'PX', 600000)
end
trim(tonumber(ARGV[2]))
return {first, table.concat(created)}
"""
)

#: Remove a batch of runtime entries, all or none: DELETE for each, in one script. KEYS[1..10]
#: as PUT; ARGV[3] as PUT_MANY's (with the layout, a removed entry's state says ``removed``,
#: its keys expire after the retention and its held-back run goes, here; with "0", the caller
#: does that). ARGV[1] the instant of the removal (us; "": Redis TIME), ARGV[2] retention (ms),
#: then pairs: name, expected version ("" any).
#: Returns {v, removed}: the i-th character of removed is "1" when the i-th entry was removed,
#: "0" when there was none; the removed take versions v + 1, v + 2, ... in order. Or {-1,
#: {name, current, ...}} when any expected version is stale (nothing done).
DELETE_MANY = (
    _SHARDS
    + _NOW
    + _TRIM
    + _LAYOUT
    + _MANY
    + """
local count = (#ARGV - 4) / 2
local removed_at = ARGV[1] ~= '' and ARGV[1] or string.format('%.0f', now_ms * 1000)
local present, stale, found = {}, {}, 0
for i = 1, count do
  local name, expected = ARGV[i * 2 + 2], ARGV[i * 2 + 3]
  present[i] = '0'
  if redis.call('HEXISTS', KEYS[1], name) == 1 then
    present[i] = '1'
    found = found + 1
    if expected ~= '' then
      local current = tonumber(redis.call('ZSCORE', KEYS[2], name) or '0')
      if tonumber(expected) ~= current then
        stale[#stale + 1] = name
        stale[#stale + 1] = current
      end
    end
  end
end
if #stale > 0 then
  return {-1, stale}
end
local first = tonumber(redis.call('GET', KEYS[3]) or '0')
if found == 0 then
  trim(tonumber(ARGV[2]))
  return {first, table.concat(present)}
end
redis.call('SET', KEYS[3], string.format('%.0f', first + found))
-- Written together, one command per key (see PUT_MANY); the own keys are one per entry.
local names, changes, removals, members, held = {}, {}, {}, {}, {}
for i = 1, count do
  if present[i] == '1' then
    names[#names + 1] = ARGV[i * 2 + 2]
  end
end
local tags = {}
for i = 1, #names, 4000 do
  local part = redis.call('HMGET', KEYS[9], unpack(names, i, math.min(i + 3999, #names)))
  for j = 1, #part do
    tags[i + j - 1] = part[j]
  end
end
for i, name in ipairs(names) do
  push(changes, first + i, name)
  push(removals, now_ms, name)
  if tags[i] then
    for tag in string.gmatch(tags[i], '[^|]+') do
      members[#members + 1] = tag .. '|' .. name
    end
  end
  if own_keys then
    redis.call('HSET', entry_key(name, 1), 'removed', removed_at)
    -- Not the running marker (3): its lease is the run's (a re-add would keep it for ever).
    for _, j in ipairs({1, 2, 5}) do
      redis.call('PEXPIRE', entry_key(name, j), ARGV[2])
    end
    held[#held + 1] = entry_key(name, 4)
  end
end
many('HDEL', KEYS[1], names)
many('HDEL', KEYS[4], names)
many('ZADD', KEYS[2], changes)
many('ZADD', KEYS[5], removals)
many('ZREM', KEYS[8], members)
many('HDEL', KEYS[9], names)
many('DEL', false, held)
trim(tonumber(ARGV[2]))
return {first, table.concat(present)}
"""
)

#: Names an INDEX_TAGS call indexes.
TAG_PAGE = 1_000

#: Index the tags of entries stored before the tag index existed (by an earlier version), a
#: page of names (read by HKEYS) per call; the last call marks the index complete (KEYS[10]).
#: KEYS as PUT; ARGV[1] "1" on the last call, ARGV[2...] names. Entries written since are
#: indexed by their own writes.
INDEX_TAGS = (
    _RETAG
    + """
for i = 2, #ARGV do
  local name = ARGV[i]
  local raw = redis.call('HGET', KEYS[1], name)
  if raw and redis.call('HEXISTS', KEYS[9], name) == 0 then
    local ok, data = pcall(cjson.decode, raw)
    if ok and type(data) == 'table' and type(data['tags']) == 'table' then
      local tags = {}
      for _, tag in ipairs(data['tags']) do
        if type(tag) == 'string' and tag ~= '' then
          tags[#tags + 1] = string.gsub(string.gsub(tag, '%%', '%%25'), '|', '%%7C')
        end
      end
      table.sort(tags)
      retag(name, table.concat(tags, '|'))
    end
  end
end
if ARGV[1] == '1' then
  redis.call('SET', KEYS[10], '1')
end
return 1
"""
)

#: Read a batch of runtime entries at one instant. KEYS[1] entries hash, KEYS[2] changes zset,
#: KEYS[3] since hash; ARGV[2...] the names. With ARGV[1] "data": for each name {JSON, since,
#: version} (false for what is absent, version -1); with "version": the versions only, -1 for
#: no entry, in one string, separated by commas.
READ_MANY = """
local out = {}
for i = 2, #ARGV do
  local name = ARGV[i]
  local exists = redis.call('HEXISTS', KEYS[1], name) == 1
  local version = -1
  if exists then
    version = tonumber(redis.call('ZSCORE', KEYS[2], name) or '0')
  end
  if ARGV[1] == 'data' then
    out[i - 1] = {redis.call('HGET', KEYS[1], name), redis.call('HGET', KEYS[3], name), version}
  else
    out[i - 1] = string.format('%.0f', version)
  end
end
if ARGV[1] == 'data' then
  return out
end
return table.concat(out, ',')
"""


class StaleVersionError(ForkSchedulerError):
    """An update carried a version that is no longer the entry's current one."""

    def __init__(self, name: str, expected: int, current: int) -> None:
        self.name = name
        self.expected = expected
        self.current = current
        super().__init__(
            f"entry {name!r} changed since it was read (version {expected}, now {current}); "
            "read it again and retry"
        )


#: One entry of a bulk write: name, JSON, expected version (``None`` any, 0 new), tags (as
#: :func:`joined_tags` gives them).
BulkItem = tuple[str, str, "int | None", str]


class BulkConflictError(StaleVersionError):
    """Entries of a bulk change (``Manager.add_many``, ``update_many``, ``remove_many``) are
    not at the version expected (for ``add_many``: they exist). The batch that holds them wrote
    nothing; ``written`` names what batches before it stored (empty when the conflict was found
    before anything was written). ``conflicts``: one :class:`StaleVersionError` each; ``name``,
    ``expected`` and ``current`` are the first one's."""

    def __init__(self, conflicts: Sequence[StaleVersionError], written: Sequence[str] = ()) -> None:
        self.conflicts = list(conflicts)
        self.written = list(written)
        first = self.conflicts[0]
        self.name, self.expected, self.current = first.name, first.expected, first.current
        shown = ", ".join(
            f"{c.name!r} (version {c.expected}, now {c.current})" for c in self.conflicts[:10]
        )
        more = f" and {len(self.conflicts) - 10} more" if len(self.conflicts) > 10 else ""
        done = (
            f"; the {len(self.written)} entries of the batches before were written"
            if self.written
            else "; nothing was written"
        )
        ForkSchedulerError.__init__(
            self,
            f"{len(self.conflicts)} entries changed since they were read: {shown}{more}{done}; "
            "read them again and retry",
        )

    def after(self, written: Sequence[str]) -> BulkConflictError:
        """The same conflicts, after ``written`` were stored by earlier batches."""
        return BulkConflictError(self.conflicts, [*written, *self.written])


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """A runtime entry as stored: its JSON data and the version of its latest change.

    ``since``: the instant its writer computed the promised next run from (the first slot to
    fire is the first one after it); ``None`` for entries stored before it was recorded.
    ``added``: the same for the change that created the entry.
    """

    name: str
    data: Mapping[str, Any]
    version: int
    since: datetime | None = field(default=None, compare=False)
    added: datetime | None = field(default=None, compare=False)


#: A change of the log as a reader saw it: the name, its version, and its identity: the stored
#: instants of that change (``since``), or for a removal the instant it was logged removed. A
#: change written again at the same version (Redis back from an older snapshot, then written
#: to) has another identity.
Anchor = tuple[str, int, "bytes | str | None"]


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed since a version: new or changed entries, and removed names.

    ``floor``: removals up to this version may have been trimmed from the change log; a reader
    whose version is below it must reload everything (:meth:`RuntimeStore.all`).
    """

    version: int
    changed: dict[str, StoredEntry | bytes]
    removed: list[str]
    floor: int = 0
    #: The epoch of the runtime keys (``None`` before the first write): it changes only when
    #: Redis lost them.
    epoch: str | None = None
    #: The latest change in the log (name, version), and whether the anchor a reader gave (the
    #: latest change it saw) is still logged at its version or later: not, when Redis came back
    #: from an older snapshot (then later writes may have reused the versions it saw).
    latest: Anchor | None = None
    anchor_kept: bool = True


@dataclass(frozen=True, slots=True)
class PauseState:
    """Whether an entry is paused, with the operator's note and when."""

    paused: bool
    note: str = ""
    since: datetime | None = None


#: Runtime entries read per round trip when a replica reads them all.
PAGE_SIZE = 1000


class RuntimeStore:
    """Reads and writes runtime entries and per-entry controls."""

    def __init__(
        self,
        client: Any,
        keys: Keys,
        *,
        retention: timedelta = DELETED_RETENTION,
        shard_count: int = 1,
    ) -> None:
        self.client = client
        self.keys = keys
        #: How many shards the writer's store has (this one is one of them): every write
        #: checks it against the number recorded in Redis (see _SHARDS).
        self.shard_count = shard_count
        self.retention_ms = int(retention.total_seconds() * 1000)
        self._put = client.register_script(PUT)
        self._delete = client.register_script(DELETE)
        self._put_many = client.register_script(PUT_MANY)
        self._delete_many = client.register_script(DELETE_MANY)
        self._read_many = client.register_script(READ_MANY)
        self._index_tags = client.register_script(INDEX_TAGS)
        #: One Redis (not a cluster): the bulk scripts also touch each entry's own keys, which
        #: on Redis Cluster live on other slots and are written by pipelines around them.
        self.one_node = not isinstance(client, RedisCluster)
        self._chain_id = ""

    @property
    def _runtime_keys(self) -> list[str]:
        return [
            self.keys.runtime_entries,
            self.keys.runtime_changes,
            self.keys.runtime_version,
            self.keys.runtime_since,
            self.keys.runtime_removed,
            self.keys.runtime_floor,
            self.keys.runtime_epoch,
            tag_index_key(self.keys),
            entry_tags_key(self.keys),
            tag_indexed_key(self.keys),
            self.keys.runtime_shards,
        ]

    @property
    def _read_keys(self) -> list[str]:
        """The KEYS of READ_MANY."""
        return [self.keys.runtime_entries, self.keys.runtime_changes, self.keys.runtime_since]

    @property
    def shards(self) -> list[RuntimeStore]:
        """The stores a replica follows: this one (see :class:`.store_shards.ShardedStore`)."""
        return [self]

    # -- runtime entries ----------------------------------------------------------------------

    def check_layout(self, *, record: bool = True) -> None:
        """Refuse to follow or change runtime entries stored in shards
        (:func:`check_shard_count`: this store is one shard, recorded as such)."""
        check_shard_count(self.client, self.keys, 1, record=record)

    def names(self) -> list[str]:
        """The name of every runtime entry (one ``HKEYS``)."""
        return [_text(name) for name in self.client.hkeys(self.keys.runtime_entries)]

    def epoch(self) -> str | None:
        """The epoch of the runtime keys (see :attr:`Keys.runtime_epoch`)."""
        epoch = self.client.get(self.keys.runtime_epoch)
        return None if epoch is None else _text(epoch)

    def version(self) -> int:
        """The version counter: it changes whenever any runtime entry does."""
        return int(self.client.get(self.keys.runtime_version) or 0)

    def get(self, name: str) -> StoredEntry | None:
        """One runtime entry, or ``None``."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.keys.runtime_entries, name)
        pipe.zscore(self.keys.runtime_changes, name)
        pipe.hget(self.keys.runtime_since, name)
        raw, version, since = pipe.execute()
        if raw is None:
            return None
        decoded = _decode(name, raw, int(version or 0), since)
        if not isinstance(decoded, StoredEntry):
            raise ConfigError("stored JSON cannot be decoded", entry=name)
        return decoded

    def all(self) -> tuple[int, dict[str, StoredEntry | bytes]]:
        """The version and every runtime entry; undecodable JSON comes back as raw bytes."""
        version, pages = self.pages()
        return version, {name: item for page in pages for name, item in page.items()}

    def pages(self, size: int = PAGE_SIZE) -> tuple[int, Iterator[dict[str, StoredEntry | bytes]]]:
        """The version, and every runtime entry page by page (``HSCAN``): a replica reading a
        million entries holds one page of raw JSON at a time.

        The version is read first: whatever changes while the pages are read has a later
        version, so the next :meth:`changes_since` applies it (an entry may then come twice,
        or be read after its removal: the change log has the last word).
        """
        version = int(self.client.get(self.keys.runtime_version) or 0)

        def read() -> Iterator[dict[str, StoredEntry | bytes]]:
            cursor: int | None = None
            while cursor != 0:
                cursor, raw = self.client.hscan(self.keys.runtime_entries, cursor or 0, count=size)
                if raw:
                    yield self._page(raw)

        return version, read()

    def _page(self, raw: Mapping[bytes | str, bytes]) -> dict[str, StoredEntry | bytes]:
        """Decode one page of stored entries, with their versions and instants."""
        names = list(raw)
        pipe = self.client.pipeline(transaction=False)
        pipe.zmscore(self.keys.runtime_changes, names)
        pipe.hmget(self.keys.runtime_since, names)
        try:
            scores, since = pipe.execute()
        except redis.ResponseError:  # before Redis 6.2: no ZMSCORE
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.zscore(self.keys.runtime_changes, name)
            pipe.hmget(self.keys.runtime_since, names)
            *scores, since = pipe.execute()
        return {
            _text(name): _decode(_text(name), raw[name], _version(score), instant)
            for name, score, instant in zip(names, scores, since, strict=True)
        }

    def latest_change(self) -> Anchor | None:
        """The latest change in the log (see :data:`Anchor`), or ``None`` for an empty log."""
        top = self.client.zrange(self.keys.runtime_changes, -1, -1, withscores=True)
        if not top:
            return None
        name = _text(top[0][0])
        return (name, _version(top[0][1]), self._identity_of(name))

    def _identity_of(self, name: str) -> str | bytes | None:
        """The identity of ``name``'s latest change (see :data:`Anchor`), read now."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.keys.runtime_since, name)
        pipe.zscore(self.keys.runtime_removed, name)
        return _identity(*pipe.execute())

    def changes_since(self, version: int, anchor: Anchor | None = None) -> Changes:
        """Entries changed or removed after ``version`` (one round trip, two if any changed);
        ``anchor``: the latest change the reader saw, checked to be still in the log (its
        name at its version with the same identity, or at a later version; or trimmed, as a
        removal older than the retention is, below the floor)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.runtime_version)
        pipe.zrangebyscore(self.keys.runtime_changes, f"({version}", "+inf", withscores=True)
        pipe.get(self.keys.runtime_floor)
        pipe.get(self.keys.runtime_epoch)
        pipe.zrange(self.keys.runtime_changes, -1, -1, withscores=True)
        pipe.zscore(self.keys.runtime_changes, anchor[0] if anchor else "")
        pipe.hget(self.keys.runtime_since, anchor[0] if anchor else "")
        pipe.zscore(self.keys.runtime_removed, anchor[0] if anchor else "")
        current, changed, floor, epoch, top, anchored, since, removal = pipe.execute()
        epoch = None if epoch is None else _text(epoch)
        anchored_identity = _identity(since, removal)
        kept = anchor is None or (
            (anchored is None and anchor[1] <= int(floor or 0))  # trimmed by the retention
            or (
                anchored is not None
                and (
                    _version(anchored) > anchor[1]
                    or (_version(anchored) == anchor[1] and anchored_identity == anchor[2])
                )
            )
        )
        names = [_text(name) for name, _ in changed]
        top_name = _text(top[0][0]) if top else None
        latest: Anchor | None = None
        if top_name is not None and anchor is not None and top_name == anchor[0]:
            latest = (top_name, _version(top[0][1]), anchored_identity)
        elif top_name is not None and top_name not in names:  # rare: read its identity now
            latest = (top_name, _version(top[0][1]), self._identity_of(top_name))
        if not names:
            return Changes(int(current or 0), {}, [], int(floor or 0), epoch, latest, kept)
        versions = {_text(name): _version(score) for name, score in changed}
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self.keys.runtime_entries, names)
        pipe.hmget(self.keys.runtime_since, names)
        pipe.zscore(self.keys.runtime_removed, top_name or "")
        values, instants, top_removal = pipe.execute()
        present = {
            name: _decode(name, value, versions[name], since)
            for name, value, since in zip(names, values, instants, strict=True)
            if value is not None
        }
        removed = [name for name, value in zip(names, values, strict=True) if value is None]
        if top_name is not None and latest is None:  # the top is among the changes read
            identity = _identity(instants[names.index(top_name)], top_removal)
            latest = (top_name, _version(top[0][1]), identity)
        return Changes(
            max(int(current or 0), *versions.values()),
            present,
            removed,
            int(floor or 0),
            epoch,
            latest,
            kept,
        )

    def put(
        self,
        name: str,
        data: Mapping[str, Any],
        expected_version: int | None = None,
        *,
        since: datetime | None = None,
    ) -> int:
        """Store a runtime entry and return its version; ``expected_version=0``: must be new.

        ``since``: the instant the writer computed the entry's promised next run from (``None``:
        Redis TIME). A new entry's own keys lose an expiry left by an earlier removal (an
        update leaves them, and the lease of a running marker, alone); a new
        entry (a name added again included) starts afresh: no run count, no finished mark, no
        pause, no held-back run. On one Redis that is done by the write's own script (as
        :meth:`put_many` does), so a write refused as stale changes nothing. On Redis Cluster it
        is done before the entry is stored, so that no replica sees it with the old state, and
        again after, should the name have been removed meanwhile; there a stale expected
        version is refused before that reset.
        """
        encoded = _encode(name, data)
        if self.one_node:
            try:
                [version] = self.put_many(
                    [(name, encoded, expected_version, joined_tags(data))], since=since
                )
            except BulkConflictError as exc:
                raise exc.conflicts[0] from None
            return version
        expected = "" if expected_version is None else str(expected_version)
        fresh = not self.client.hexists(self.keys.runtime_entries, name)
        if fresh and expected_version:  # removed since it was read: refused, nothing reset
            raise StaleVersionError(name, expected_version, 0)
        if fresh:
            self._start_afresh(self.client.pipeline(transaction=False), name).execute()
        instant = "" if since is None else str(_epoch_us(since))
        reply = self._put(
            keys=self._runtime_keys,
            args=[
                name,
                encoded,
                expected,
                instant,
                self.retention_ms,
                joined_tags(data),
                self.shard_count,
            ],
        )
        self._check_reply(reply)
        if int(reply[0]) < 0:
            raise StaleVersionError(name, expected_version or 0, int(reply[1]))
        pipe = self.client.pipeline(transaction=False)
        if int(reply[1]) == 1:  # (an update keeps its keys as they are: a lease stays a lease)
            for key in self.keys.retained_keys(name):
                pipe.persist(key)
            if not fresh:
                self._start_afresh(pipe, name)
        self._note_enabled(pipe, name, encoded)
        self._note_defined(pipe, [(name, int(reply[0]))], since)
        pipe.execute()
        self._note_held_dropped([(name, encoded)])
        return int(reply[0])

    def _note_defined(
        self, pipe: Any, versions: Sequence[tuple[str, int]], since: datetime | None
    ) -> None:
        """Queue, on Redis Cluster, what PUT_MANY writes itself on one Redis: each entry's
        state says which version defines it since when (``defined``), so that a claim of a
        slot after the change, made under the definition it replaced, is refused
        (``changed``)."""
        if since is None:
            return
        instant = _epoch_us(since)
        for name, version in versions:
            pipe.hset(self.keys.state(name), "defined", f"{version} {instant}")

    def _note_held_dropped(self, items: Sequence[tuple[str, str]]) -> None:
        """On Redis Cluster, after :meth:`_note_enabled`'s pipeline: each disabled entry's
        state keeps its mark as ``held_dropped`` (a cluster pipeline runs no script; no claim
        moves the mark of a disabled entry meanwhile)."""
        for name, encoded in items:
            if disables(encoded):
                self.client.eval(_NOTE_HELD_DROPPED, 1, self.keys.state(name))

    def _note_enabled(self, pipe: Any, name: str, encoded: str) -> None:
        """Queue, on Redis Cluster, what PUT_MANY does itself on one Redis: a disabled entry's
        held-back runs go and its state says ``disabled`` (the claim script then refuses new
        claims to a replica that has not read the change); an enabled one's state does not.
        Then :meth:`_note_held_dropped`."""
        if disables(encoded):
            pipe.delete(self.keys.buffered(name))
            pipe.hset(self.keys.state(name), "disabled", "1")
        else:
            pipe.hdel(self.keys.state(name), "disabled")

    def _layout_error(self, reply: Sequence[Any]) -> ConfigError:
        """The error of a write refused by _SHARDS (reply ``{-3, n}``)."""
        return shard_count_error(self.keys, self.shard_count, int(reply[1]))

    def _check_reply(self, reply: Sequence[Any]) -> None:
        """Raise the error of a write refused by _SHARDS."""
        if int(reply[0]) == -3:
            raise self._layout_error(reply)

    def _start_afresh(self, pipe: Any, name: str) -> Any:
        """Queue the reset of a name's state on ``pipe`` (see :meth:`put`); the runs of slots up
        to its mark were the earlier definition's, never given back to the new one's count."""
        state = self.keys.state(name)
        values = self.client.hmget(state, [*_KEPT_FIELDS, "removed", "hwm"])
        kept = [
            text
            for field, value in zip(_KEPT_FIELDS, values, strict=False)
            if value is not None
            for text in (field, _text(value))
        ]
        if kept and values[-2] is None:  # (a name removed as a runtime entry: nothing to keep)
            pipe.hsetnx(state, "before_reset", json.dumps(kept))
        pipe.hdel(state, *_FRESH_FIELDS)
        pipe.delete(self.keys.buffered(name))
        mark = values[-1]
        if mark is not None:
            pipe.hset(state, "fresh_after", mark)
        return pipe

    def delete(
        self, name: str, expected_version: int | None = None, *, removed_at: datetime | None = None
    ) -> bool:
        """Remove a runtime entry; False when there was none.

        Its own keys (state, pending, history) expire after the retention instead of
        going at once: a replica that has not seen the removal yet may still claim a slot of
        it, and without the high-water mark it could win a published slot again; the state
        says ``removed``, so that such a claim is refused. A held-back run (``buffer_one``) goes
        at once: it is never sent.
        """
        expected = "" if expected_version is None else str(expected_version)
        reply = self._delete(
            keys=self._runtime_keys,
            args=[name, expected, "", "", self.retention_ms, self.shard_count],
        )
        self._check_reply(reply)
        if int(reply[0]) < 0:
            raise StaleVersionError(name, expected_version or 0, int(reply[1]))
        if int(reply[0]) == 0:
            return False
        mark = _removal_mark(self.client, removed_at)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.keys.state(name), "removed", mark)
        for key in self.keys.retained_keys(name):
            pipe.pexpire(key, self.retention_ms)
        pipe.delete(self.keys.buffered(name))
        pipe.execute()
        return True

    # -- many runtime entries at once (the Manager's bulk calls) --------------------------

    def versions(self, names: Sequence[str]) -> dict[str, int | None]:
        """The version of each name's runtime entry, ``None`` for no entry (one script call)."""
        if not names:
            return {}
        return _versions_of(names, self._read_many(keys=self._read_keys, args=["version", *names]))

    @contextlib.contextmanager
    def versions_ahead(self, names: Sequence[str]) -> Iterator[Callable[[], dict[str, int | None]]]:
        """:meth:`versions` of ``names`` (a call per :data:`PAGE_SIZE` of them), asked now and
        read when the function given is called: on one Redis, Redis looks them up while the
        caller does other work. On Redis Cluster the function asks them."""
        pages = [names[start : start + PAGE_SIZE] for start in range(0, len(names), PAGE_SIZE)]
        if not self.one_node:
            yield lambda: {n: v for page in pages for n, v in self.versions(page).items()}
            return
        self.client.script_load(READ_MANY)
        pool = self.client.connection_pool
        connection = pool.get_connection()
        unread = len(pages)

        def read() -> dict[str, int | None]:
            nonlocal unread
            versions: dict[str, int | None] = {}
            for page in pages:
                try:
                    reply = connection.read_response()
                except NoScriptError:  # the script cache was flushed meanwhile: ask again
                    unread -= 1
                    versions.update(self.versions(page))
                    continue
                unread -= 1
                versions.update(_versions_of(page, reply))
            return versions

        try:
            for page in pages:
                keys = self._read_keys
                connection.send_command(
                    "EVALSHA", self._read_many.sha, len(keys), *keys, "version", *page
                )
            yield read
        finally:
            if unread:
                connection.disconnect()  # replies left unread: start afresh
            pool.release(connection)

    def get_many(self, names: Sequence[str]) -> dict[str, StoredEntry | bytes]:
        """The runtime entries of ``names`` that exist, read at one instant (one script call);
        undecodable JSON comes back as raw bytes."""
        if not names:
            return {}
        reply = self._read_many(keys=self._read_keys, args=["data", *names])
        return {
            name: _decode(name, raw, int(version), since)
            for name, (raw, since, version) in zip(names, reply, strict=True)
            if raw is not None
        }

    def names_with_tag(self, tag: str) -> list[str]:
        """The names of the runtime entries tagged ``tag``, from the tag index (one read).
        Entries stored before the index existed (by an earlier version) are indexed first,
        once, in pages of :data:`TAG_PAGE` names."""
        if not self.client.exists(tag_indexed_key(self.keys)):
            names = self.client.hkeys(self.keys.runtime_entries)
            # No entry (a shard never written): nothing to index, and no write (a read-only
            # user may be asking); the first write marks the index complete.
            for start in range(0, len(names), TAG_PAGE):
                last = "1" if start + TAG_PAGE >= len(names) else "0"
                page = names[start : start + TAG_PAGE]
                self._index_tags(keys=self._runtime_keys, args=[last, *page])
        escaped = _escaped(tag).encode()
        prefix = escaped + b"|"
        members = self.client.zrange(  # ZRANGE BYLEX: one of the documented ACL commands
            tag_index_key(self.keys), b"[" + prefix, b"(" + escaped + b"}", bylex=True
        )
        return [_text(member[len(prefix) :]) for member in members]

    def put_many(
        self,
        items: Sequence[BulkItem],
        *,
        since: datetime | None = None,
    ) -> list[int]:
        """Store a batch of runtime entries, all or none: ``(name, JSON, expected version,
        tags)`` each (the JSON from :func:`encode_entry`, its tags from :func:`joined_tags`;
        expected as in :meth:`put`). Returns their versions, in order;
        :class:`BulkConflictError` when any expected version is stale, and then nothing is
        written.

        As :meth:`put` for each entry (a new entry starts afresh), in one script call on one
        Redis, where the reset is atomic with the write; on Redis Cluster the entries' own
        keys are reset and kept by pipelines before and after the script, as :meth:`put` does.
        """
        if not items:
            return []
        names = [item[0] for item in items]
        _distinct(names)
        keys, args = self._put_call(items, since, "")
        fresh: set[str] = set()
        if not self.one_node:
            fresh = {name for name, version in self.versions(names).items() if version is None}
            pipe = self.client.pipeline(transaction=False)
            for name in fresh:
                self._start_afresh(pipe, name)
            pipe.execute()
        reply = self._put_many(keys=keys, args=args)
        self._check_reply(reply)
        first = int(reply[0])
        if first < 0:
            raise _conflicts(reply[1], {item[0]: item[2] for item in items})
        flags = _text(reply[1])
        created = [name for name, flag in zip(names, flags, strict=True) if flag == "1"]
        if not self.one_node:
            pipe = self.client.pipeline(transaction=False)
            for name in created:
                for key in self.keys.retained_keys(name):
                    pipe.persist(key)
                if name not in fresh:
                    self._start_afresh(pipe, name)
            for name, encoded, _, _ in items:
                self._note_enabled(pipe, name, encoded)
            self._note_defined(pipe, [(n, first + i) for i, n in enumerate(names, 1)], since)
            pipe.execute()
            self._note_held_dropped([(name, encoded) for name, encoded, _, _ in items])
        return [first + index for index in range(1, len(items) + 1)]

    def _put_call(
        self, items: Sequence[BulkItem], since: datetime | None, chain: str
    ) -> tuple[list[str], list[Any]]:
        """The KEYS and ARGV of one PUT_MANY call."""
        instant = "" if since is None else str(_epoch_us(since))
        args: list[Any] = [instant, self.retention_ms, self._layout(), chain]
        for name, encoded, expected, tags in items:
            args += [name, encoded, "" if expected is None else str(expected), tags]
        args.append(self.shard_count)
        held = (
            [self.keys.buffered(item[0]) for item in items if disables(item[1])]
            if self.one_node
            else []
        )
        return [*self._runtime_keys, self._chain_key(chain), *held], args

    def _layout(self) -> str:
        """ARGV[3] of the bulk scripts: "0" on Redis Cluster, else "1" and the layout of an
        entry's own keys (see PUT_MANY)."""
        if not self.one_node:
            return "0"
        parts = [part for key in self.keys.entry_keys("\0") for part in key.split("\0")]
        return "\n".join(["1", *parts])

    def _chain_key(self, chain: str) -> str:
        chain_id = self._chain_id if chain else "none"
        return f"{self.keys.prefix}{{{self.keys.runtime_tag}}}:bulk:{chain_id}"

    def put_batches(
        self, batches: Iterable[tuple[Sequence[BulkItem], datetime | None]]
    ) -> list[int]:
        """:meth:`put_many` for each batch, in order; the versions of every entry.

        On one Redis the next batch is sent while the one before runs (two in flight on one
        connection): the client builds one while Redis writes the other. Each runs only if the
        one before it was written (a chain key), so the first that fails stops the rest, as if
        they were sent one by one: :class:`BulkConflictError` with ``written``, the names of the
        batches before it. On Redis Cluster the batches go one by one.
        """
        versions: list[int] = []
        written: list[str] = []
        if not self.one_node:
            for items, since in batches:
                try:
                    versions += self.put_many(items, since=since)
                except BulkConflictError as exc:
                    raise exc.after(written) from None
                written += [item[0] for item in items]
            return versions
        self._chain_id = uuid.uuid4().hex
        self.client.script_load(PUT_MANY)
        connection = self.client.connection_pool.get_connection()
        in_flight: collections.deque[Sequence[BulkItem]] = collections.deque()
        failure: BaseException | None = None
        clean = False
        try:
            for number, (items, since) in enumerate(batches, 1):
                _distinct([item[0] for item in items])
                keys, args = self._put_call(items, since, str(number))
                connection.send_command("EVALSHA", self._put_many.sha, len(keys), *keys, *args)
                in_flight.append(items)
                if len(in_flight) > 1:
                    failure = self._answer(connection, in_flight.popleft(), versions, written)
                    if failure is not None:
                        break
            while in_flight:
                answer = self._answer(connection, in_flight.popleft(), versions, written)
                failure = failure or answer
            clean = True
        finally:
            if not clean:
                connection.disconnect()  # replies left unread: start afresh
            self.client.connection_pool.release(connection)
            with contextlib.suppress(redis.RedisError):
                self.client.delete(self._chain_key("1"))
        if failure is not None:
            raise failure
        return versions

    def _answer(
        self,
        connection: Any,
        items: Sequence[BulkItem],
        versions: list[int],
        written: list[str],
    ) -> BaseException | None:
        """Read the reply of one chained batch: its versions, or why it wrote nothing."""
        try:
            reply = connection.read_response()
        except redis.ResponseError as exc:
            return exc
        first = int(reply[0])
        if first == -3:
            return self._layout_error(reply)
        if first == -2:
            return None  # stopped by the batch before, which said why
        if first < 0:
            return _conflicts(reply[1], {item[0]: item[2] for item in items}).after(written)
        versions += [first + index for index in range(1, len(items) + 1)]
        written += [item[0] for item in items]
        return None

    def delete_many(
        self, items: Sequence[tuple[str, int | None]], *, removed_at: datetime | None = None
    ) -> list[int | None]:
        """Remove a batch of runtime entries, all or none: ``(name, expected version or
        None)`` each. Returns the version of each removal, ``None`` for a name with no entry;
        :class:`BulkConflictError` when any expected version is stale (nothing is removed).
        As :meth:`delete` for each entry, in one script call (on Redis Cluster, the entries'
        own keys are marked and set to expire by a pipeline after it)."""
        if not items:
            return []
        names = [name for name, _ in items]
        _distinct(names)
        at = "" if removed_at is None else str(_epoch_us(removed_at))
        args: list[Any] = [at, self.retention_ms, self._layout()]
        for name, expected in items:
            args += [name, "" if expected is None else str(expected)]
        args.append(self.shard_count)
        reply = self._delete_many(keys=self._runtime_keys, args=args)
        self._check_reply(reply)
        version = int(reply[0])
        if version < 0:
            raise _conflicts(reply[1], dict(items))
        versions: list[int | None] = []
        removed = []
        for name, flag in zip(names, _text(reply[1]), strict=True):
            if flag == "1":
                version += 1
                versions.append(version)
                removed.append(name)
            else:
                versions.append(None)
        if not self.one_node and removed:
            mark = _removal_mark(self.client, removed_at)
            pipe = self.client.pipeline(transaction=False)
            for name in removed:
                pipe.hset(self.keys.state(name), "removed", mark)
                for key in self.keys.retained_keys(name):
                    pipe.pexpire(key, self.retention_ms)
                pipe.delete(self.keys.buffered(name))
            pipe.execute()
        return versions

    # -- per-entry controls -------------------------------------------------------------------

    def pause(self, names: Sequence[str], note: str = "", *, at: datetime | None = None) -> None:
        """Pause entries (static or runtime) for every replica, with an optional note of at
        most :data:`MAX_NOTE_LENGTH` characters."""
        if not isinstance(note, str) or len(note) > MAX_NOTE_LENGTH or has_lone_surrogates(note):
            raise ConfigError(
                f"must be UTF-8 text of at most {MAX_NOTE_LENGTH} characters",
                entry=names[0] if len(names) == 1 else None,
                field="note",
            )
        since = (at or datetime.now(timezone.utc)).isoformat()
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hset(
                self.keys.state(name),
                mapping={"paused": "1", "pause_note": note, "paused_at": since},
            )
        pipe.execute()

    def resume(self, names: Sequence[str]) -> None:
        """Resume paused entries."""
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hdel(self.keys.state(name), "paused", "pause_note", "paused_at")
        pipe.execute()

    def states(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        """The state hash of each entry (high-water mark, counters, pause), as text; raises
        the error of one that cannot be read."""
        states, errors = self.read_states(names)
        for error in errors.values():
            raise error
        return states

    def read_states(
        self, names: Sequence[str]
    ) -> tuple[dict[str, dict[str, str]], dict[str, redis.ResponseError]]:
        """The state hash of each entry that can be read, and the error of each that cannot
        (a key of the wrong type): one entry's corrupted state is that entry's alone."""
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.keys.state(name))
        states: dict[str, dict[str, str]] = {}
        errors: dict[str, redis.ResponseError] = {}
        for name, raw in zip(names, pipe.execute(raise_on_error=False), strict=True):
            if wrong_type(raw):
                errors[name] = raw
            elif isinstance(raw, Exception):
                raise raw
            else:
                states[name] = {_text(k): _text(v) for k, v in raw.items()}
        return states, errors

    def pause_states(self, names: Sequence[str]) -> dict[str, PauseState]:
        """Whether each entry is paused."""
        return {name: pause_state(state) for name, state in self.states(names).items()}


def wrong_type(error: object) -> bool:
    """Whether Redis refused a command on one key for its type (one entry's data, not the
    server's)."""
    return isinstance(error, redis.ResponseError) and str(error).startswith("WRONGTYPE")


def shard_count_error(keys: Keys, configured: int, stored: int) -> ConfigError:
    """The error of a store asked for with ``configured`` shards where ``stored`` are in use."""
    prefix = keys.prefix
    return ConfigError(
        f"is {configured}, but the runtime entries in Redis are stored in {stored} "
        f"shard{'s' if stored != 1 else ''}; set it back to {stored} (to change it, remove "
        f"every runtime entry, then delete the keys {prefix}{{runtime}}:shards and "
        f"{prefix}{{runtime:<k>}}:shards: an empty store takes any number)",
        field="fork_scheduler_runtime_shards",
    )


#: How many shards' records of the number of shards a check reads at least.
RECORDS_READ = 16


def check_shard_count(client: Any, keys: Keys, configured: int, *, record: bool = True) -> None:
    """Refuse a ``fork_scheduler_runtime_shards`` that differs from the stored entries'
    layout (:class:`ConfigError` naming the setting): the number recorded in any shard of this
    layout or among the first :data:`RECORDS_READ` (on Redis Cluster they fall on several
    masters: one that lost its data leaves records on others), else one when an unsharded store
    written before the number was recorded holds entries. With ``record``, the number is
    recorded in each of this layout's shards that has none yet: atomically in shard 0, which
    every layout has, so that a writer of another layout is refused by its next write there
    (every write checks it: see _SHARDS)."""
    shards = [keys.runtime_shard(number) for number in range(max(configured, RECORDS_READ))]
    pipe = client.pipeline(transaction=False)
    for shard in shards:
        pipe.get(shard.runtime_shards)
    pipe.exists(shards[0].runtime_entries)  # a hash exists while it holds fields
    *recorded, unsharded = pipe.execute()  # reads only: a read-only user gets this far
    found = {int(value) for value in recorded if value is not None}
    if not found and unsharded:
        found = {1}
    for stored in sorted(found - {configured}):
        raise shard_count_error(keys, configured, stored)
    if not record:
        return
    if recorded[0] is None:
        in_force = int(
            client.register_script(RECORD_SHARDS)(
                keys=[shards[0].runtime_shards, shards[0].runtime_entries], args=[configured]
            )
        )
        if in_force != configured:
            raise shard_count_error(keys, configured, in_force)
    pipe = client.pipeline(transaction=False)
    for shard, value in zip(shards[1:configured], recorded[1:], strict=False):
        if value is None:
            pipe.set(shard.runtime_shards, configured, nx=True)
    pipe.execute()


def pause_state(state: Mapping[str, str]) -> PauseState:
    """The pause part of a state hash."""
    if not state.get("paused"):
        return PauseState(False)
    since = state.get("paused_at")
    return PauseState(
        True, state.get("pause_note", ""), datetime.fromisoformat(since) if since else None
    )


def tag_index_key(keys: Keys) -> str:
    """Zset: ``"<tag>|<name>"`` for each tag of each runtime entry (score 0; see _RETAG)."""
    return f"{keys.prefix}{{{keys.runtime_tag}}}:tag-index"


def entry_tags_key(keys: Keys) -> str:
    """Hash: name -> its tags, escaped, joined by ``|`` (runtime entries with tags only)."""
    return f"{keys.prefix}{{{keys.runtime_tag}}}:entry-tags"


def tag_indexed_key(keys: Keys) -> str:
    """String: set once every runtime entry stored before the tag index is indexed."""
    return f"{keys.prefix}{{{keys.runtime_tag}}}:tag-indexed"


def joined_tags(data: Mapping[str, Any] | Sequence[str]) -> str:
    """The tags of a stored entry (or the tags themselves) as the scripts index them: sorted,
    escaped, joined by ``|``; what is not a non-empty string is not indexed."""
    tags = data.get("tags") if isinstance(data, Mapping) else data
    if not isinstance(tags, (list, tuple, set, frozenset)):
        return ""
    return "|".join(sorted({_escaped(t) for t in tags if isinstance(t, str) and t}))


def _escaped(tag: str) -> str:
    """A tag as the index holds it: without ``|``, which ends it in an index member."""
    return tag.replace("%", "%25").replace("|", "%7C")


def _versions_of(names: Sequence[str], reply: bytes | str) -> dict[str, int | None]:
    """The versions of READ_MANY's "version" reply, ``None`` for no entry."""
    values = _text(reply).split(",")
    return {
        name: None if int(value) < 0 else int(value)
        for name, value in zip(names, values, strict=True)
    }


def _distinct(names: Sequence[str]) -> None:
    if len(set(names)) != len(names):
        raise ValueError("a batch names an entry more than once")


def _conflicts(flat: Sequence[Any], expected: Mapping[str, int | None]) -> BulkConflictError:
    """The error of a bulk script's reply ``{name, current, name, current, ...}``."""
    conflicts = []
    for index in range(0, len(flat), 2):
        name = _text(flat[index])
        conflicts.append(StaleVersionError(name, expected.get(name) or 0, int(flat[index + 1])))
    return BulkConflictError(conflicts)


def encode_entry(name: str, data: Mapping[str, Any]) -> str:
    """The JSON :meth:`RuntimeStore.put` stores for ``data`` (what :meth:`RuntimeStore.put_many`
    takes); :class:`ConfigError` when it cannot be stored."""
    return _encode(name, data)


def disables(encoded: str) -> bool:
    """Whether the stored JSON ``encoded`` (see :func:`encode_entry`) defines a disabled entry:
    its held-back runs go with the write (never sent, as a removal's) and its state says
    ``disabled``, so that the claim script refuses new claims (``disabled``) to a replica that
    has not read the change (adversary round 56, and the simulator's disables)."""
    return '"enabled": false' in encoded and json.loads(encoded).get("enabled") is False


def _encode(name: str, data: Mapping[str, Any]) -> str:
    """The stored JSON of an entry; refused when nested deeper than the entries allow (a
    reader's parser would recurse that deep) or larger than :data:`MAX_STORED_BYTES`."""
    if json_depth(data, MAX_JSON_DEPTH + 1) > MAX_JSON_DEPTH + 1:
        raise ConfigError(f"nests more than {MAX_JSON_DEPTH} levels deep", entry=name)
    try:
        encoded = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot be stored as JSON: {exc}", entry=name) from None
    if len(encoded.encode()) > MAX_STORED_BYTES:
        raise ConfigError(f"is larger than {MAX_STORED_BYTES} bytes of JSON", entry=name)
    return encoded


def _identity(since: bytes | str | None, removal: float | None) -> bytes | str | None:
    """The identity of a change (see :data:`Anchor`): the entry's stored instants, or for a
    removal its instant in the ``removed`` zset (``None`` once trimmed)."""
    if since is not None:
        return since
    return None if removal is None else f"removed {removal!r}"


def _version(score: float | None) -> int:
    """A change log score as a version; 0 for none, -1 for one no writer makes (not finite:
    the log was edited by hand), so that one bad score costs only its entry."""
    if score is None:
        return 0
    return int(score) if math.isfinite(score) else -1


def _text(value: bytes | str) -> str:
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else value


def _decode(
    name: str, raw: bytes | str, version: int, since: bytes | str | None = None
) -> StoredEntry | bytes:
    """The stored entry, or its raw bytes when it cannot be decoded in any way (the reader
    reports it, naming it); one bad record never stops the others."""
    try:
        instants = _instants(name, since)
        return StoredEntry(name, json.loads(raw), version, *instants)
    except Exception:  # e.g. RecursionError from JSON nested too deep
        return raw if isinstance(raw, bytes) else raw.encode()


def _instants(name: str, raw: bytes | str | None) -> tuple[datetime | None, datetime | None]:
    """A stored ``"<since> <added>"`` (us since the epoch; ``added`` may be absent): the two
    instants, ``None`` when absent or unreadable."""
    if raw is None:
        return None, None
    try:
        values = [_EPOCH + timedelta(microseconds=int(part)) for part in _text(raw).split()]
    except (ValueError, OverflowError):
        values = []
    if len(values) not in (1, 2):
        logger.error("fork scheduler: runtime entry %r: unreadable since %r ignored", name, raw)
        return None, None
    return values[0], values[-1]


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _epoch_us(instant: datetime) -> int:
    delta = instant - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
