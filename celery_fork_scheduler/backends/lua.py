"""Lua scripts of the Redis backend, each atomic on the keys of one entry (one hash slot).

Redis key layout (``P`` = ``fork_scheduler_key_prefix``, default ``scheduler:``; the entry name
in braces is a Redis Cluster hash tag, so both keys of one entry live on one node)::

    P{<entry>}:state    hash   hwm         latest claimed slot, microseconds since the epoch
                               state       "claimed" | "sent" (of the slot at hwm)
                               owner       replica id (hostname:pid) of the latest claim
                               task_id     task id of the slot at hwm
                               claimed_at  Redis TIME of the latest claim, microseconds
                               sent_at     Redis TIME of the latest publish, microseconds
                               runs        number of slots published
    P{<entry>}:pending  hash   <slot us> -> "<owner>|<claimed_at us>" for claimed, unsent slots
"""

from __future__ import annotations

#: Claim one slot of one entry.
#: KEYS[1] state hash, KEYS[2] pending hash.
#: ARGV[1] slot (us), ARGV[2] task id, ARGV[3] replica id, ARGV[4] early tolerance (us),
#: ARGV[5] lease (us), ARGV[6] TTL of the pending hash (ms).
#: Returns {outcome, wait_us}: outcome "won" | "taken_over" | "claimed" | "pending" | "early";
#: wait_us is how long to wait before asking again (pending, early), else 0.
CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_text = string.format('%.0f', now)
local slot = tonumber(ARGV[1])
if slot > now + tonumber(ARGV[4]) then
  return {'early', slot - now}
end
local hwm = tonumber(redis.call('HGET', KEYS[1], 'hwm') or '-1')
local mine = ARGV[3] .. '|' .. now_text
if slot > hwm then
  redis.call('HSET', KEYS[1], 'hwm', ARGV[1], 'state', 'claimed', 'owner', ARGV[3],
             'task_id', ARGV[2], 'claimed_at', now_text)
  redis.call('HSET', KEYS[2], ARGV[1], mine)
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
  return {'won', 0}
end
local pending = redis.call('HGET', KEYS[2], ARGV[1])
if not pending then
  return {'claimed', 0}
end
local owner, claimed_at = string.match(pending, '^(.*)|(%d+)$')
local lease_end = tonumber(claimed_at) + tonumber(ARGV[5])
if owner ~= ARGV[3] and now < lease_end then
  return {'pending', lease_end - now}
end
redis.call('HSET', KEYS[2], ARGV[1], mine)
if slot == hwm then
  redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'claimed_at', now_text)
end
if owner == ARGV[3] then
  return {'won', 0}
end
return {'taken_over', 0}
"""

#: Record that a claimed slot was published.
#: KEYS[1] state hash, KEYS[2] pending hash. ARGV[1] slot (us).
#: Returns 1 when the slot was still pending, 0 when another replica had recorded it already.
MARK_SENT = """
local t = redis.call('TIME')
local now_text = t[1] .. string.format('%06d', tonumber(t[2]))
local removed = redis.call('HDEL', KEYS[2], ARGV[1])
if removed == 1 then
  redis.call('HINCRBY', KEYS[1], 'runs', 1)
  if redis.call('HGET', KEYS[1], 'hwm') == ARGV[1] then
    redis.call('HSET', KEYS[1], 'state', 'sent', 'sent_at', now_text)
  end
end
return removed
"""
