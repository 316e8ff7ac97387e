"""Lua scripts of the Redis backend, each atomic on the keys of one entry (one hash slot).

Redis key layout (``P`` = ``fork_scheduler_key_prefix``, default ``scheduler:``; the entry name
in braces is a Redis Cluster hash tag, so every key of one entry lives on one node)::

    P{<entry>}:state     hash    hwm          latest claimed slot, microseconds since the epoch
                                 state        "claimed" | "sent" | "skipped" | "failed" (at hwm)
                                 reason       why the slot at hwm was skipped (or "restored")
                                 finished     max_runs the entry finished under (once recorded)
                                 owner        replica id (hostname:pid:token) of the last claim
                                 task_id      task id of the slot at hwm
                                 claimed_at   Redis TIME of the latest claim, microseconds
                                 sent_at      Redis TIME of the latest publish, microseconds
                                 runs         slots claimed to run (skipped ones are given back)
                                 paused       "1" while paused; pause_note, paused_at beside it
                                 max_runs     the entry's max_runs as of the latest slot
                                              decided, for RELEASE
                                 fresh_after  the hwm when the name was added again: runs of
                                              slots up to it are not given back to its count
                                 held_dropped the hwm when a disable deleted the held runs:
                                              those of slots up to it are not held again
                                 uncertain    task id of the latest slot a claim sent whose
                                              broker command failed
                                 latest_run   task id of the latest run claimed (overlap
                                              "cancel_other" / "terminate_other")
                                 sent_run     "<slot> <task id>" of the latest of them
                                              sent: the latest again when a later one is
                                              not published after all (_UNREPLACE)
                                 retrying     task id of the run holding the marker while it
                                              waits for a retry (same policies)
                                 latest_start slot (us) of the latest scheduled run of a
                                              "buffer_all" entry that started: an earlier
                                              slot's run never starts after it
                                 released     task id of the latest run whose end handed
                                              over a held run; released_as, released_run,
                                              released_by: RELEASE's answer, given again to
                                              the same asker until the held run starts
                                 answered     "<task id>|<replica>" of the latest claim that
                                              released a queue's head or superseded a held
                                              run; answered_as, answered_run,
                                              answered_reason: given again to that replica
                                 given_back   ids of the latest 16 put-backs of released
                                              runs (space-separated)
                                 skips:<why>  slots skipped for each reason
                                 failures     publishes that raised
                                 completed    runs that finished on a worker
                                 errors       runs that raised on a worker
    P{<entry>}:pending   hash    <slot us> -> "<owner>|<claimed_at us>": claimed, not yet sent;
                                 "<owner>|<claimed_at us>|publishing" once the owner began to
                                 publish it (never taken over from then on)
    P{<entry>}:running   string  task id of the run in progress (singleton), with a lease (PX)
    P{<entry>}:buffered  string  JSON message of the one run held back (overlap "buffer_one")
                         list    JSON messages of the runs queued, oldest slot first
                                 (overlap "buffer_all", at most fork_scheduler_buffer_limit)
    P{<entry>}:history   list    JSON of the latest runs, newest first, capped (history_size)
    P{<entry>}:backfill  hash    <slot us> -> "publishing|<backfill run>|<at us>", then
                                 "sent|<task id>|<at us>" or "failed|<task id>|<at us>":
                                 slots claimed by a backfill (never claimed twice)
    P{cap}:running       zset    task id -> lease end (us): scheduled runs executing now
    P{runtime}:entries   hash    name -> JSON of a runtime entry (schema-versioned)
    P{runtime}:changes   zset    name -> version of its latest change (deletes included)
    P{runtime}:version   string  version counter of the runtime entries
    P{runtime}:since     hash    name -> instant (us) its promised next run was computed from
    P{runtime}:removed   zset    name -> Redis TIME (ms) of its removal, until trimmed
    P{runtime}:floor     string  highest version of a removal trimmed from the change log
    P{runtime}:epoch     string  set by the first write; a change says Redis lost these keys
    P{runtime}:shards    string  N with fork_scheduler_runtime_shards N > 1; shard k > 0 has
                                 the P{runtime}:* keys above as P{runtime:k}:* (store_shards)
    P{replicas}          hash    replica id -> JSON (last tick, schedule version); pruned after
                                 an hour without a tick
    P{workers}:seen      string  set by workers that release singletons (TTL)
"""

from __future__ import annotations

#: Shared by the scripts that record a run: push a JSON item (with the fields of ``extra``, if
#: any) to the capped history list. Expects ``now`` (us) in scope; KEYS[5] is the history list.
_RECORD = """
local function record(slot, replica, task_id, outcome, size, extra)
  if tonumber(size) <= 0 then
    return
  end
  local item = {slot = tonumber(slot), replica = replica, task_id = task_id, outcome = outcome,
                at = now}
  for field, value in pairs(extra or {}) do
    item[field] = value
  end
  redis.call('LPUSH', KEYS[5], cjson.encode(item))
  redis.call('LTRIM', KEYS[5], 0, tonumber(size) - 1)
end
"""

#: ``sent_by(history, task_id, replica)``: "sent" or "uncertain" when the history list holds
#: that outcome for the task id, recorded by that replica; else nil (one read of the list,
#: at most ``fork_scheduler_history_size`` items).
_SENT_BY = """
local function sent_by(history, task_id, replica)
  for _, raw in ipairs(redis.call('LRANGE', history, 0, -1)) do
    local ok, item = pcall(cjson.decode, raw)
    if ok and type(item) == 'table' and item['task_id'] == task_id
        and item['replica'] == replica
        and (item['outcome'] == 'sent' or item['outcome'] == 'uncertain') then
      return item['outcome']
    end
  end
  return nil
end
"""

#: ``now``: Redis TIME in microseconds.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""


def _recording(body: str) -> str:
    """A script that records runs: ``now`` and ``record`` (see ``_RECORD``), then ``body``."""
    return _NOW + _RECORD + body


#: How early (us) a slot may be claimed by Redis TIME (the claims' early tolerance).
EARLY_TOLERANCE_US = 500_000

#: The restart rule of :data:`CLAIM` and :data:`BACKFILL_CLAIM` covers the slots due this long
#: (us) before Redis's start: Redis's default snapshot schedule saves at least hourly while keys
#: change, so older slots are in any snapshot it comes back from (and a slot months before the
#: start is on another clock than Redis's: an injected one, in tests).
CLOCKS_DISAGREE_US = 3_600_000_000

#: ``started_by()``: an instant (us) no earlier than Redis's start, ``nil`` when INFO does not
#: say: Redis counts uptime in whole seconds from its start's second, so now's whole second -
#: uptime + 1 s is never before the start (and a stale cached clock only makes uptime
#: smaller); taking now itself instead of its whole second would refuse up to a second more
#: of a new entry's first slots after a restart (simulator seed 5204). Expects ``now`` (us).
_STARTED_BY = """
local function started_by()
  local uptime = tonumber(string.match(redis.call('INFO', 'server'), 'uptime_in_seconds:(%d+)'))
  if not uptime then
    return nil
  end
  -- Redis counts uptime from its start's whole second to its cached whole second, never
  -- later than now's: the start is before (now's whole second - uptime + 1 s).
  local second = math.floor(now / 1000000) * 1000000
  return math.min(now, second - uptime * 1000000 + 1000000)
end
"""

#: The restart rule's tests, after ``started_by`` and ``data_lost_at``: Redis may have come back
#: from data older than what happened before it stopped (a snapshot), unless something since
#: its start could have lost data later (a flush leaves no older data behind).
#: ``due_before_restart(at)``: whether a slot asked about at ``at`` (us; its publish instant)
#: is due in the hour before Redis's start plus the early tolerance (it could have been decided
#: before the stop); ``claimed_before_restart(at)``: whether a claim made at ``at`` (us, Redis
#: TIME) predates the start (it may have been fenced, published or taken over since);
#: ``held_before_restart(message)``: whether a held run (its JSON message) is of a slot due
#: before the start (it may have been handed over and sent since).
_RESTART_TESTS = f"""
local function due_before_restart(at)
  local started = started_by()  -- (INFO server only: the usual answer is no)
  if not started or at > started + {EARLY_TOLERANCE_US} or at <= started - {CLOCKS_DISAGREE_US} then
    return false
  end
  return select(2, data_lost_at())
end
local function claimed_before_restart(at)
  return tonumber(at) < (started_by() or 0) and select(2, data_lost_at())
end
local function held_before_restart(message)
  local ok, decoded = pcall(cjson.decode, message)
  local slot = ok and type(decoded) == 'table' and tonumber(decoded['slot_us'])
  return slot and due_before_restart(slot) or false
end
"""

#: The instant (us) before which Redis may have lost data, for a restore of a lost mark.
#: A restart (with or without persistence) loses nothing after its start, so the start time
#: (``started_by``) bounds it. A flush,
#: SWAPDB, DEBUG (RELOAD), REPLICAOF or FAILOVER since the start, a promotion of a former
#: replica, or a CONFIG RESETSTAT (which would hide the others from INFO commandstats) can lose
#: data at any later instant:
#: then only ``now`` is a sound bound. Returns the instant and whether it is the start time
#: (a bound that holds for every entry, known to this replica or not). Expects ``now`` (us).
_DATA_LOST_AT = """
local function data_lost_at()
  local stats = '\\n' .. redis.call('INFO', 'commandstats')
  for _, name in ipairs({'flushall', 'flushdb', 'swapdb', 'debug', 'replicaof', 'slaveof',
                         'failover', 'config|resetstat'}) do
    if string.find(stats, '\\ncmdstat_' .. name .. ':', 1, true) then
      return now, false
    end
  end
  -- Redis 6.2 counts CONFIG as one command: any CONFIG call may have been a RESETSTAT.
  if string.find(stats, '\\ncmdstat_config:', 1, true) then
    return now, false
  end
  local replication = redis.call('INFO', 'replication')
  if not string.find(replication, 'second_repl_offset:-1', 1, true) then
    return now, false
  end
  local started = started_by()
  if not started then
    return now, false
  end
  return started, true
end
"""

#: How long after a runtime entry's change a claim made under the definition it replaced is
#: refused (``changed``), in us, at least (a replica whose refresh interval is longer asks for
#: twice its interval: it may read the change that late). A replica reads a change within a
#: refresh; the bound keeps a change whose record a Redis Cluster failover lost from refusing
#: the definition left in force for longer than this.
CHANGE_FENCE_US = 300_000_000


#: Claim one slot of one entry.
#: KEYS[1] state hash, KEYS[2] pending hash, KEYS[3] running marker, KEYS[4] buffered message,
#: KEYS[5] history list.
#: ARGV[1] slot (us), ARGV[2] task id, ARGV[3] replica id, ARGV[4] early tolerance (us),
#: ARGV[5] claim lease (us), ARGV[6] TTL of the pending hash (ms), ARGV[7] overlap
#: ("allow" | "skip" | "buffer_one" | "buffer_all" | "cancel_other" | "terminate_other"),
#: ARGV[8] max runs (0: no limit), ARGV[9] singleton lease (ms), ARGV[10] JSON message to hold
#: back for "buffer_one" / "buffer_all" (else ""), ARGV[11] history size,
#: ARGV[12] "1" to only take over or renew an existing claim (never claim anew),
#: ARGV[13] the latest slot (us) this replica saw claimed for the entry, or 0,
#: ARGV[14] age (us) after which a pending claim is dropped when a later slot is won,
#: ARGV[15] "0" for a static entry; "1" for a runtime entry (refused once removed), then
#: optionally ":" and the version of its definition the replica read (a slot after a later
#: change, within CHANGE_FENCE_US of it, is refused: "changed"), then optionally ":" and a
#: longer fence (us) than CHANGE_FENCE_US,
#: ARGV[16] "1" when the slot falls on an exclusion date (recorded skipped, never won),
#: ARGV[17] the most runs queued for "buffer_all" (KEYS[4] is then a list),
#: ARGV[18] (optional) "1" when the request is sent again after its reply was lost, else "0";
#: ARGV[19] (optional) the slot's jitter offset (us): its replicas ask about it at slot +
#: offset, the instant the claim is early before (answering the wait until it) and the
#: restart rule judges (below),
#: ARGV[20] (optional, overlap "allow" and "skip" only) the number of broker commands that
#: publish the slot's message, then three ARGV per command as in :data:`PUBLISH_ONCE` (their
#: keys in KEYS[6...]): a new claim won is then published and recorded in the same step
#: (outcome "sent"; "uncertain" with the error text when a command failed: the slot is
#: recorded sent, never published again), with no pending claim in between. A slot this
#: replica sent so answers "sent" (or "uncertain") again when asked again: the one at the mark
#: always, an earlier one (a burst of an entry's slots) when ARGV[18] is "1", from its history.
#: Returns {outcome, wait_us}: outcome "won" | "taken_over" | "claimed" | "pending" | "early" |
#: "excluded" | "paused" | "removed" | "disabled" | "changed" | "busy" | "buffered" |
#: "buffer_full" | "finished" | "in_flight" | "sent" | "uncertain"; wait_us: how long to wait
#: before asking again (pending, early), else 0.
#: "in_flight": the owner began publishing the slot and never confirmed it; whether it reached
#: the broker is unknown, so it is not taken over.
#: "unknown": a slot due before Redis started (plus the early tolerance) that its data does not
#: decide, or another replica's pending claim made before that start: Redis may have come back
#: from data older than what was published before it stopped (an RDB snapshot, an append-only
#: file that lost its last writes), so the slot may have been published. It is neither won nor
#: taken over, and nothing is recorded (the replica reports it skipped).
#: A "won" slot of a "buffer_one" entry that found a run held back (no run held the marker)
#: answers {"won", 0, message}: the held run is superseded (recorded "skipped:superseded").
#: Or {"released", 0, message, reason, dropped...}: a "buffer_all" slot was queued (reason
#: "buffered") or refused ("buffer_full") while no run held the marker (its runner died): the
#: head of the queue, whose task id now holds the marker, must be published by the caller;
#: the queued runs of slots due before Redis's start that were dropped first (recorded
#: skipped:unknown) follow, for the caller to report.
#: "cancel_other" / "terminate_other": a slot that finds a run in progress is won without
#: taking the marker (the new run's worker revokes the old run and takes it over at start).
#: A corrupted ``hwm`` is an error reply (for this claim only).
_CLAIM_BODY = (
    f"""
local CHANGE_FENCE_US = {CHANGE_FENCE_US}
"""
    + """
local now_text = string.format('%.0f', now)
local slot = tonumber(ARGV[1])
local sends = tonumber(ARGV[20] or '0') or 0
if ARGV[7] ~= 'allow' and ARGV[7] ~= 'skip' then
  sends = 0
end
-- A jittered slot is due at its publish instant (the slot plus its offset, ARGV[19]): not
-- claimed before it, whatever the asking replica's clock says (round 57, seed 30477).
local due_at = slot + (tonumber(ARGV[19] or '0') or 0)
if due_at > now + tonumber(ARGV[4]) then
  return {'early', due_at - now}
end
-- One read of every field a claim decides on (the script runs alone: they cannot change).
local fields = redis.call('HMGET', KEYS[1], 'hwm', 'paused', 'removed', 'runs', 'finished',
                          'outcome', 'defined', 'before_reset', 'disabled', 'skips:buffered')
if ARGV[15] == '0' and (fields[8] or fields[3]) then
  -- A static entry whose state a runtime entry of the same name reset, or marked removed (an
  -- app that does not know the static entry wrote it): the static entry keeps its own state.
  if fields[8] then
    local kept = cjson.decode(fields[8])
    -- (the reset's fresh_after goes too: the static entry's runs are all its own)
    redis.call('HDEL', KEYS[1], 'before_reset', 'fresh_after')
    if #kept > 0 then
      redis.call('HSET', KEYS[1], unpack(kept))
    end
  end
  if fields[3] then
    redis.call('HDEL', KEYS[1], 'removed')
    redis.call('PERSIST', KEYS[1])
    redis.call('PERSIST', KEYS[5])
  end
  fields = redis.call('HMGET', KEYS[1], 'hwm', 'paused', 'removed', 'runs', 'finished',
                      'outcome', 'defined', 'before_reset', 'disabled', 'skips:buffered')
elseif fields[8] then
  redis.call('HDEL', KEYS[1], 'before_reset')  -- the name runs as a runtime entry
end
local hwm_text = fields[1]
local hwm = tonumber(hwm_text or '-1')
if not hwm then
  return redis.error_reply('ERR corrupted hwm ' .. string.sub(hwm_text, 1, 40))
end
local known = tonumber(ARGV[13])
local restored = nil
if not hwm_text then
  -- No mark: a new entry, or Redis lost it (restarted empty, flushed; a worker's outcome
  -- record may have made the hash again). Refuse every slot that could have been claimed
  -- before the data was lost: up to that instant plus the early tolerance, and at least what
  -- this replica saw. After a restart that instant is Redis's start, which holds for an entry
  -- this replica never saw claimed too; other losses are bounded only by now, applied when
  -- this replica knows the entry was claimed (a new entry's first slot must still fire).
  local lost_at, at_start = data_lost_at()
  if known > 0 or at_start then
    restored = math.max(known, lost_at + tonumber(ARGV[4]))
    if due_at > lost_at + tonumber(ARGV[4]) and slot > known then
      -- A jittered slot published after that instant could not have been claimed before it
      -- (the early check above): the mark stops just below it (adversary round 59).
      restored = math.max(known, math.min(restored, slot - 1))
    end
  end
elseif known > hwm then
  -- A part of the marks was lost (failover to a lagging replica): write back what was seen.
  restored = known
end
if restored then
  -- 'lost_before': the history of the slots up to here may be lost with the data, so a
  -- backfill cannot tell whether they were published (BACKFILL_CLAIM: unknown).
  local mark_text = string.format('%.0f', restored)
  redis.call('HSET', KEYS[1], 'hwm', mark_text, 'state', 'sent', 'reason', 'restored',
             'lost_before', mark_text)
  hwm = restored
end
local mine = ARGV[3] .. '|' .. now_text
if slot > hwm and ARGV[12] == '1' then
  -- Seen claimed before, unknown now: Redis lost its state; publishing could duplicate.
  return {'claimed', 0}
end
if slot > hwm then
  if due_before_restart(slot + (tonumber(ARGV[19] or '0') or 0)) then
    -- Not decided in Redis's data, yet due before Redis started: that data may be older than
    -- what was published before the stop (a snapshot), and no replica may know the rest.
    return {'unknown', 0}
  end
  -- Every new slot decided writes the entry's max_runs as its definition says now: RELEASE
  -- hands a held run over only while the entry has runs left (not as an earlier policy or
  -- definition of the name said).
  local function skip(reason)
    redis.call('HSET', KEYS[1], 'hwm', ARGV[1], 'state', 'skipped', 'reason', reason,
               'task_id', ARGV[2], 'max_runs', ARGV[8])
    redis.call('HINCRBY', KEYS[1], 'skips:' .. reason, 1)
    record(ARGV[1], ARGV[3], ARGV[2], 'skipped:' .. reason, ARGV[11])
    return {reason, 0}
  end
  -- A held run this slot replaces: recorded skipped (superseded), and kept for this replica
  -- asking about the slot again (its answer carries the run, to be reported).
  local function supersede(held)
    local ok, message = pcall(cjson.decode, held)
    local held_slot = ok and type(message) == 'table' and tonumber(message['slot_us'])
    redis.call('HINCRBY', KEYS[1], 'skips:superseded', 1)
    if held_slot then
      record(string.format('%.0f', held_slot), ARGV[3], message['task_id'] or '',
             'skipped:superseded', ARGV[11])
    end
    redis.call('HSET', KEYS[1], 'answered', ARGV[2] .. '|' .. ARGV[3], 'answered_as',
               'superseded', 'answered_run', held)
  end
  local removed = ARGV[15] ~= '0' and fields[3]
  -- "removed" holds the instant of the removal (us); "1" (older versions): refuse every slot.
  -- A slot due before the removal still fires (a replica that had not seen it yet claims it).
  if removed and (tonumber(removed) or 1) <= 1 or removed and slot > tonumber(removed) then
    -- A runtime entry removed while this replica had not seen it yet: nothing to record.
    return {'removed', 0}
  end
  if ARGV[15] ~= '0' and fields[9] then
    -- A runtime entry disabled while this replica had not read it yet: no new slot (nothing
    -- recorded), so none is held back after the disable dropped its held runs.
    return {'disabled', 0}
  end
  local read_version, fence = string.match(ARGV[15], '^1:(%d+):?(%d*)$')
  read_version = tonumber(read_version or '')
  fence = math.max(tonumber(fence) or 0, CHANGE_FENCE_US)
  local version, changed_at = string.match(read_version and fields[7] or '', '^(%d+) (%d+)$')
  changed_at = tonumber(changed_at or '')
  if changed_at and read_version < tonumber(version) and slot > changed_at
      and slot <= changed_at + fence then
    -- A slot of the definition a change replaced, after the change: this replica has not
    -- read it yet. Nothing is recorded: the mark stays below the slots the change promised.
    return {'changed', 0}
  end
  if ARGV[16] == '1' then
    -- An exclusion date: the mark moves past the slot and one skip is recorded, atomically,
    -- so exactly one replica records it; no run is counted and no running marker is taken.
    return skip('excluded')
  end
  if fields[2] then
    return skip('paused')
  end
  local max_runs = tonumber(ARGV[8])
  local runs = tonumber(fields[4] or '0')
  if max_runs > 0 and (runs or 0) >= max_runs then
    if fields[5] == ARGV[8] then
      -- Recorded once already: only the mark moves (nothing is claimed at or below it).
      redis.call('HSET', KEYS[1], 'hwm', ARGV[1], 'task_id', ARGV[2])
      return {'finished', 0}
    end
    redis.call('HSET', KEYS[1], 'finished', ARGV[8])
    return skip('finished')
  end
  local replacing = ARGV[7] == 'cancel_other' or ARGV[7] == 'terminate_other'
  local running = ARGV[7] ~= 'allow' and redis.call('EXISTS', KEYS[3]) == 1
  if running and ARGV[7] == 'buffer_one' and redis.call('EXISTS', KEYS[4]) == 0 then
    redis.call('SET', KEYS[4], ARGV[10])
    return skip('buffered')
  end
  if ARGV[7] == 'buffer_all' and (running or redis.call('EXISTS', KEYS[4]) == 1) then
    -- Queued behind the running run, in slot order (a message held under buffer_one before
    -- the policy changed goes first).
    if redis.call('TYPE', KEYS[4]).ok == 'string' then
      local held = redis.call('GET', KEYS[4])
      redis.call('DEL', KEYS[4])
      redis.call('RPUSH', KEYS[4], held)
    end
    local dropped = {}
    while not running do
      -- Nobody runs (the last runner died, its lease expired): the queue is handed over.
      -- A run queued before Redis's start may have been released and sent since (the data
      -- may be a snapshot's): it is recorded skipped (unknown) and returned, to be reported.
      local stale = redis.call('LINDEX', KEYS[4], 0)
      if not stale or not held_before_restart(stale) then
        break
      end
      redis.call('LPOP', KEYS[4])
      local ok, message = pcall(cjson.decode, stale)
      if ok and type(message) == 'table' and tonumber(message['slot_us']) then
        record(string.format('%.0f', tonumber(message['slot_us'])), ARGV[3],
               message['task_id'] or '', 'skipped:unknown', ARGV[11])
      end
      redis.call('HINCRBY', KEYS[1], 'skips:unknown', 1)
      dropped[#dropped + 1] = stale
    end
    local reason = 'buffered'
    if redis.call('LLEN', KEYS[4]) < tonumber(ARGV[17]) then
      redis.call('RPUSH', KEYS[4], ARGV[10])
    else
      reason = 'buffer_full'
    end
    skip(reason)
    if running then
      return {reason, 0}
    end
    -- The head of the queue runs now.
    local head = redis.call('LPOP', KEYS[4])
    if not head then
      return {reason, 0}
    end
    redis.call('SET', KEYS[3], cjson.decode(head)['task_id'], 'PX', ARGV[9])
    redis.call('HINCRBY', KEYS[1], 'runs', 1)
    -- Kept for this request asked again after a lost reply (round 66): the head existed only
    -- in the answer.
    redis.call('HSET', KEYS[1], 'answered', ARGV[2] .. '|' .. ARGV[3], 'answered_as',
               'released', 'answered_run', head, 'answered_reason', reason)
    return {'released', 0, head, reason, unpack(dropped)}
  end
  if running and not replacing then
    return skip('busy')
  end
  -- Runs held back under a buffering policy changed since, whose runner died (no run ends to
  -- hand them over, and this policy's claims never release them: round 66): each slot won
  -- from now on supersedes one of them, recorded and returned to be reported.
  local stranded = nil
  if fields[10] and ARGV[7] ~= 'buffer_one' and ARGV[7] ~= 'buffer_all'
      and redis.call('EXISTS', KEYS[4]) == 1 and redis.call('EXISTS', KEYS[3]) == 0 then
    -- (only an entry that ever held a run back: skips:buffered, read with the other fields)
    if redis.call('TYPE', KEYS[4]).ok == 'list' then
      stranded = redis.call('LPOP', KEYS[4])
    else
      stranded = redis.call('GET', KEYS[4])
      redis.call('DEL', KEYS[4])
    end
  end
  if stranded then
    supersede(stranded)
  end
  -- Claimed and sent in one step: recorded sent before the commands run, so that a command
  -- that fails leaves the slot decided (it may have reached the broker) and never sent again.
  local mark = {'hwm', ARGV[1], 'state', 'claimed', 'owner', ARGV[3], 'task_id', ARGV[2],
                'claimed_at', now_text, 'max_runs', ARGV[8]}
  if sends > 0 then
    mark[4] = 'sent'
    mark[#mark + 1] = 'sent_at'
    mark[#mark + 1] = now_text
  end
  if runs and runs == math.floor(runs) then
    mark[#mark + 1] = 'runs'
    mark[#mark + 1] = string.format('%.0f', runs + 1)
    redis.call('HSET', KEYS[1], unpack(mark))
  else
    redis.call('HSET', KEYS[1], unpack(mark))
    redis.call('HINCRBY', KEYS[1], 'runs', 1)  -- not a whole number: Redis says so
  end
  if fields[5] or fields[6] then
    redis.call('HDEL', KEYS[1], 'finished', 'outcome')
  end
  -- Claims older than the bound (their owners died, even mid-publish) are dropped, so that
  -- later wins renewing the hash's TTL do not keep them for ever.
  local oldest = now - tonumber(ARGV[14])
  local fields = redis.call('HGETALL', KEYS[2])
  for i = 1, #fields, 2 do
    local owner, at_text, flag = string.match(fields[i + 1], '^([^|]*)|(%d+)|?(%a*)$')
    local at = tonumber(at_text or '')
    if at and at < oldest then
      redis.call('HDEL', KEYS[2], fields[i])
      if flag == 'publishing' then
        -- Fenced, never confirmed: the message may have left. The history keeps saying so
        -- (a backfill must not send it again).
        record(fields[i], owner, '', 'skipped:in_flight', ARGV[11])
      end
    end
  end
  if ARGV[7] ~= 'allow' and not running then
    redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[9])
  end
  if sends > 0 then
    local ok, failure = pcall(function()
      for i = 0, sends - 1 do
        local name, key = ARGV[21 + 3 * i], KEYS[tonumber(ARGV[22 + 3 * i])]
        if name == 'lpush' then
          redis.call('LPUSH', key, ARGV[23 + 3 * i])
        elseif name == 'pexpire' then
          redis.call('PEXPIRE', key, ARGV[23 + 3 * i])
        else
          error('unsupported broker command ' .. name)
        end
      end
    end)
    if not ok then
      local text = type(failure) == 'table' and tostring(failure.err) or tostring(failure)
      redis.call('HSET', KEYS[1], 'uncertain', ARGV[2])  -- for a request asked again
      pcall(record, ARGV[1], ARGV[3], ARGV[2], 'uncertain', ARGV[11])
      return {'uncertain', 0, text}
    end
    -- Sent: a history that cannot be written (a key of the wrong type) does not undo that.
    pcall(record, ARGV[1], ARGV[3], ARGV[2], 'sent', ARGV[11])
    if stranded then
      return {'sent', 0, '', stranded}
    end
    return {'sent', 0}
  end
  redis.call('HSET', KEYS[2], ARGV[1], mine)
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
  if replacing then
    -- The run in progress (if any) keeps its marker until it stops: this run's worker
    -- revokes it and takes the marker over (TAKE_OVER); any older run waiting is replaced.
    -- Should this one not be published after all (the cap, the broker), the latest run that
    -- was is the latest again (_UNREPLACE) and still runs.
    redis.call('HSET', KEYS[1], 'latest_run', ARGV[2])
  end
  if ARGV[7] == 'buffer_one' and redis.call('TYPE', KEYS[4]).ok == 'string' then
    -- A run held back while no run holds the marker (its runner died, its publish failed, a
    -- lost write brought an old marker back) is superseded by this one: recorded as skipped
    -- and returned, so that the miss is reported.
    local held = redis.call('GET', KEYS[4])
    redis.call('DEL', KEYS[4])
    supersede(held)
    return {'won', 0, held}
  end
  if stranded then
    return {'won', 0, stranded}
  end
  return {'won', 0}
end
local pending = redis.call('HGET', KEYS[2], ARGV[1])
local answered = nil
if ARGV[18] == '1' or ARGV[12] == '1' or pending then
  -- Asked again (its reply lost, or after an outage): a run the first answer carried (a
  -- queue's head it released, a held run it superseded) is carried again; the replica acts
  -- on it once (round 66).
  answered = redis.call('HMGET', KEYS[1], 'answered', 'answered_as', 'answered_run',
                        'answered_reason')
  if answered[1] ~= ARGV[2] .. '|' .. ARGV[3] or not answered[3] then  -- this replica's
    answered = nil
  end
end
if not pending then
  if answered and answered[2] == 'released' then
    local ok, head = pcall(cjson.decode, answered[3])
    if ok and type(head) == 'table' and redis.call('GET', KEYS[3]) == head['task_id'] then
      return {'released', 0, answered[3], answered[4] or 'buffered'}
    end
  end
  if sends > 0 and ARGV[18] == '1' then
    -- Asked again after a lost reply: did this very request send the slot?
    local outcome = sent_by(KEYS[5], ARGV[2], ARGV[3])
    if outcome and answered and answered[2] == 'superseded' then
      return {outcome, 0, 'the first answer was lost; the history says ' .. outcome,
              answered[3]}
    end
    if outcome then
      return {outcome, 0, 'the first answer was lost; the history says ' .. outcome}
    end
  end
  if sends > 0 and slot == hwm then
    local sent = redis.call('HMGET', KEYS[1], 'state', 'owner', 'task_id', 'uncertain')
    if sent[1] == 'sent' and sent[2] == ARGV[3] and sent[3] == ARGV[2] then
      if sent[4] == ARGV[2] then
        return {'uncertain', 0, 'the first answer was lost; its broker command had failed'}
      end
      return {'sent', 0}  -- this replica's one-step claim, asked again after a lost reply
    end
  end
  return {'claimed', 0}
end
local owner, claimed_at, flag = string.match(pending, '^([^|]*)|(%d+)|?(%a*)$')
local lease_end = tonumber(claimed_at) + tonumber(ARGV[5])
if owner ~= ARGV[3] and now < lease_end then
  return {'pending', lease_end - now}
end
if flag == 'publishing' and owner ~= ARGV[3] then
  return {'in_flight', 0}
end
if claimed_before_restart(claimed_at) then
  -- A claim that a restart brought back: it may have been published, or taken over and
  -- published, since (its owner's own too: it may have stalled meanwhile).
  return {'unknown', 0}
end
if flag == 'publishing' then
  -- Its own fenced claim, asked again after the fence's reply was lost: not published yet.
  return {'won', 0}
end
redis.call('HSET', KEYS[2], ARGV[1], mine)
if slot == hwm then
  redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'claimed_at', now_text)
end
if owner == ARGV[3] then
  if answered and answered[2] == 'superseded' then
    return {'won', 0, answered[3]}
  end
  return {'won', 0}
end
return {'taken_over', 0}
"""
)
#: The restart rule for a script run once per claim (Redis's start read at each call).
_RESTART_RULE = _STARTED_BY + _DATA_LOST_AT + _RESTART_TESTS
CLAIM = _NOW + _RECORD + _SENT_BY + _RESTART_RULE + _CLAIM_BODY

#: The claim of slot ARGV[1] in the pending hash KEYS[2] if replica ARGV[2] holds it (``owner``,
#: ``claimed_at``); else the script returns 0.
_OWN_CLAIM = """
local pending = redis.call('HGET', KEYS[2], ARGV[1])
if not pending then
  return 0
end
local owner, claimed_at = string.match(pending, '^([^|]*)|(%d+)')
if owner ~= ARGV[2] then
  return 0
end
"""

#: How a fenced claim's value in the pending hash ends (``owner|claimed_at|publishing``).
FENCED = "|publishing"

#: Begin publishing a won slot (the fence): from now on no replica takes the claim over, since
#: whether the message reached the broker can no longer be known from here.
#: KEYS[2] pending hash. ARGV[1] slot (us), ARGV[2] replica id.
#: Returns 1 when this replica still holds the claim (publish it), 0 when another replica took
#: it over or Redis no longer knows it (do not publish).
BEGIN_PUBLISH = (
    _NOW
    + _RESTART_RULE
    + _OWN_CLAIM
    + """\
if claimed_before_restart(claimed_at) then
  return 0  -- brought back by a restart: it may have been taken over and published since
end
redis.call('HSET', KEYS[2], ARGV[1], owner .. '|' .. claimed_at .. '|publishing')
return 1
"""
)

#: Lift the fence of a claim whose message certainly did not leave (the broker refused it):
#: any replica may publish the slot again, after the lease, if this one does not.
#: KEYS[2] pending hash. ARGV[1] slot (us), ARGV[2] replica id.
#: Returns 1 when the fence was this replica's and is lifted, else 0.
END_FENCE = (
    _OWN_CLAIM
    + """\
redis.call('HSET', KEYS[2], ARGV[1], owner .. '|' .. claimed_at)
return 1
"""
)

#: Record that a claimed slot was published (or that its publish raised after it may have
#: reached the broker: outcome "uncertain"; it is not published again either way).
#: KEYS[1] state hash, KEYS[2] pending hash, KEYS[5] history list.
#: ARGV[1] slot (us), ARGV[2] task id, ARGV[3] replica id, ARGV[4] history size,
#: ARGV[5] outcome for the history ("sent" | "uncertain").
#: Returns 1 when the slot was still pending, 0 when another replica had recorded it already.
MARK_SENT = _recording(
    """
local removed = redis.call('HDEL', KEYS[2], ARGV[1])
if removed == 1 then
  redis.call('HSET', KEYS[1], 'sent_at', string.format('%.0f', now))
  if redis.call('HGET', KEYS[1], 'latest_run') then
    -- cancel_other / terminate_other: the latest run sent is the one a run given back after
    -- it leaves as the latest (_UNREPLACE)
    local sent = redis.call('HGET', KEYS[1], 'sent_run')
    local sent_slot = tonumber(sent and string.match(sent, '^(%d+) ') or '')
    if not sent_slot or tonumber(ARGV[1]) > sent_slot then
      redis.call('HSET', KEYS[1], 'sent_run', ARGV[1] .. ' ' .. ARGV[2])
      if sent and redis.call('HGET', KEYS[1], 'latest_run') == string.match(sent, '^%d+ (.+)$') then
        -- a later run given back made the earlier one sent the latest: this one is later
        redis.call('HSET', KEYS[1], 'latest_run', ARGV[2])
      end
    end
  end
  if redis.call('HGET', KEYS[1], 'hwm') == ARGV[1] then
    redis.call('HSET', KEYS[1], 'state', 'sent')
  end
  record(ARGV[1], ARGV[3], ARGV[2], ARGV[5], ARGV[4])
end
return removed
"""
)

#: Give back the run counted for ``slot`` in the state hash ``state``: unless the slot is not
#: after ``fresh_after``, the mark at which the name was added again (store.py
#: ``_start_afresh``): a run of the removed definition is not the new one's to give back.
_GIVE_BACK_RUN = """
local function give_back_run(state, slot)
  local fresh = tonumber(redis.call('HGET', state, 'fresh_after') or '')
  if not fresh or tonumber(slot) > fresh then
    redis.call('HINCRBY', state, 'runs', -1)
  end
end
"""

#: A run of a ``cancel_other`` / ``terminate_other`` entry that will not be published after all
#: (given back, its publish refused) replaces nothing: when it is the latest run claimed, the
#: latest run sent (``sent_run``, written by MARK_SENT and triggers) is the latest again.
_UNREPLACE = """
local function unreplace(state, task_id)
  if redis.call('HGET', state, 'latest_run') == task_id then
    local sent = redis.call('HGET', state, 'sent_run')
    local id = sent and string.match(sent, '^%d+ (.+)$')
    if id then
      redis.call('HSET', state, 'latest_run', id)
    else
      redis.call('HDEL', state, 'latest_run')
    end
  end
end
"""

#: Give back a claimed slot that will not be published (e.g. over the concurrency cap).
#: KEYS[1] state hash, KEYS[2] pending hash, KEYS[3] running marker, KEYS[5] history list.
#: ARGV[1] slot (us), ARGV[2] task id, ARGV[3] reason, ARGV[4] replica id, ARGV[5] history size.
#: Returns 1 when the claim was given back, 0 when it was no longer pending.
MARK_SKIPPED = _recording(
    _GIVE_BACK_RUN
    + _UNREPLACE
    + """
local removed = redis.call('HDEL', KEYS[2], ARGV[1])
if removed == 0 then
  return 0
end
give_back_run(KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'skips:' .. ARGV[3], 1)
if redis.call('HGET', KEYS[1], 'hwm') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', 'skipped', 'reason', ARGV[3])
end
if redis.call('GET', KEYS[3]) == ARGV[2] then
  redis.call('DEL', KEYS[3])
end
unreplace(KEYS[1], ARGV[2])
record(ARGV[1], ARGV[4], ARGV[2], 'skipped:' .. ARGV[3], ARGV[5])
return 1
"""
)

#: Record a run's end as seen by a worker, or a publish that raised; the run of the latest slot
#: (the mark) leaves its outcome in the state hash (``outcome``, cleared by the next claim).
#: KEYS[1] state hash, KEYS[5] history list. ARGV[1] slot (us), ARGV[2] task id,
#: ARGV[3] who (worker or replica), ARGV[4] outcome ("completed" | "error" | "failed"),
#: ARGV[5] counter field, ARGV[6] history size, ARGV[7] duration (s, or ""), ARGV[8] error text,
#: ARGV[9] pause note ("": do not pause; else pause the entry, as ``Store.pause`` does, with this
#: note, unless it is paused already, was removed, or the run was of a removed definition:
#: slot not after ``fresh_after``), ARGV[10] paused_at (ISO-8601).
#: Returns 1 when this call paused the entry, else 0.
RECORD_OUTCOME = _recording(
    """
local paused = 0
-- Not a run of a definition since removed: the name's removal marks it, and once added again
-- its slots up to fresh_after (the mark at the re-add) are the removed one's.
local fresh_after = tonumber(redis.call('HGET', KEYS[1], 'fresh_after') or '')
if ARGV[9] ~= '' and not redis.call('HGET', KEYS[1], 'paused')
    and not redis.call('HGET', KEYS[1], 'removed')
    and not (fresh_after and (tonumber(ARGV[1]) or 0) <= fresh_after) then
  redis.call('HSET', KEYS[1], 'paused', '1', 'pause_note', ARGV[9], 'paused_at', ARGV[10])
  paused = 1
end
redis.call('HINCRBY', KEYS[1], ARGV[5], 1)
if redis.call('HGET', KEYS[1], 'hwm') == ARGV[1] then
  -- The latest slot's run ended: its outcome is the entry's last one (a claim clears it).
  redis.call('HSET', KEYS[1], 'outcome', ARGV[4])
end
local extra = {}
if ARGV[7] ~= '' then extra['duration'] = tonumber(ARGV[7]) end
if ARGV[8] ~= '' then extra['error'] = ARGV[8] end
if paused == 1 then extra['note'] = ARGV[9] end
record(ARGV[1], ARGV[3], ARGV[2], ARGV[4], ARGV[6], extra)
return paused
"""
)

#: Record a publish that raised: nobody publishes the slot, so its pending claim goes, and so
#: do the running marker it holds and its run (the cap place is freed beside it: another hash
#: tag).
#: KEYS[1] state hash, KEYS[2] pending hash, KEYS[3] running marker, KEYS[5] history list.
#: ARGV[1] slot (us),
#: ARGV[2] task id, ARGV[3] replica id, ARGV[4] history size, ARGV[5] error text.
RECORD_FAILURE = _recording(
    _UNREPLACE
    + _GIVE_BACK_RUN
    + """
if redis.call('HDEL', KEYS[2], ARGV[1]) == 1 then
  -- No run of it exists: it does not count towards max_runs (round 66: a one-off entry whose
  -- one publish failed was finished without ever running). Once: a request asked again after
  -- a lost reply finds the claim gone.
  give_back_run(KEYS[1], ARGV[1])
end
unreplace(KEYS[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'failures', 1)
if redis.call('HGET', KEYS[1], 'hwm') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', 'failed')
end
-- No run exists: the singleton marker the claim took for it is freed at once.
if redis.call('GET', KEYS[3]) == ARGV[2] then
  redis.call('DEL', KEYS[3])
end
record(ARGV[1], ARGV[3], ARGV[2], 'failed', ARGV[4], {error = ARGV[5]})
return 1
"""
)

#: Take places under the cluster-wide cap of concurrent scheduled runs.
#: KEYS[1] the cap zset. ARGV[1] cap, ARGV[2] lease (us), ARGV[3..] task ids wanting a place.
#: A task id that holds a place already keeps it (renewed) and never counts against itself,
#: wherever it stands in the list: a run asked about again (a failed publish, a takeover) is
#: never refused behind a new run that found the cap full. The other ids take the free places
#: in the order given; the rest are refused.
#: Returns one flag per task id, in order: 1 granted, 0 refused.
TAKE_CAP_PLACES = (
    _NOW
    + """\
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
local free = tonumber(ARGV[1]) - redis.call('ZCARD', KEYS[1])
local lease_end = string.format('%.0f', now + tonumber(ARGV[2]))
local granted = {}
for i = 3, #ARGV do
  local mine = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if (mine or free > 0) then
    if not mine then
      free = free - 1
    end
    redis.call('ZADD', KEYS[1], lease_end, ARGV[i])
    granted[#granted + 1] = 1
  else
    redis.call('ZREM', KEYS[1], ARGV[i])
    granted[#granted + 1] = 0
  end
end
return granted
"""
)

#: Keep a singleton run's marker alive while the worker holds the run (received or running).
#: KEYS[1] running marker. ARGV[1] task id, ARGV[2] lease (ms), ARGV[3] "1" to take the marker
#: back when nobody holds it (a run executing whose marker a Redis restart lost), "2" to take
#: it whoever holds it (just after a restart: a marker a snapshot brought back is an ended
#: run's, while this one executes).
#: Returns 1 when the marker was still this run's, 2 when it was taken back, else 0.
HEARTBEAT = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if (not held and ARGV[3] == '1') or ARGV[3] == '2' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""

#: Keep a run's place under the concurrency cap while the worker holds the run.
#: KEYS[1] the cap zset. ARGV[1] task id, ARGV[2] lease (ms), ARGV[3] "1" to take the place
#: back when the run holds none (as for HEARTBEAT: the run executes, so it counts).
#: Returns 1 when the run still held a place, 2 when it was taken back, else 0.
CAP_HEARTBEAT = """
local t = redis.call('TIME')
local lease_end = tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[2]) * 1000
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if ARGV[3] == '1' or ARGV[3] == '2' then
    redis.call('ZADD', KEYS[1], string.format('%.0f', lease_end), ARGV[1])
    return 2
  end
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', string.format('%.0f', lease_end), ARGV[1])
return 1
"""

#: ``forget_released(state)``: drop RELEASE's note of its latest answer (see RELEASE).
_FORGET_RELEASED = """
local function forget_released(state)
  redis.call('HDEL', state, 'released', 'released_as', 'released_run', 'released_by')
end
"""

#: A singleton run starts: it must hold its marker. One that expired while the run waited (a
#: countdown, a backlog, workers down) is taken again if nobody else holds it.
#: KEYS[1] running marker, KEYS[2] state hash. ARGV[1] task id, ARGV[2] lease (ms),
#: ARGV[3] the run's slot (us), ARGV[4] "1" when runs must start in slot order (a scheduled run
#: of a "buffer_all" entry), "2" the same but the slot is noted started later (NOTE_START,
#: once the run also has its place under the cap), else "0".
#: Returns 1 when the run held its marker (renewed), 2 when it took it again, 0 when another
#: run holds it, or (in slot order) a run of a later slot started already: this one must not
#: execute (a slot published late, after its marker expired: a stalled publish).
#: A run that starts with its marker ends RELEASE's note of its hand-over (it was published).
START_SINGLETON = (
    _FORGET_RELEASED
    + """
local holder = redis.call('GET', KEYS[1])
local latest = 0
if ARGV[4] == '1' or ARGV[4] == '2' then
  latest = tonumber(redis.call('HGET', KEYS[2], 'latest_start') or '0') or 0
  if holder ~= ARGV[1] and tonumber(ARGV[3]) < latest then
    return 0
  end
end
local taken = 1
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  if holder then
    return 0
  end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  taken = 2
end
forget_released(KEYS[2])
if ARGV[4] == '1' and tonumber(ARGV[3]) > latest then
  redis.call('HSET', KEYS[2], 'latest_start', ARGV[3])
end
return taken
"""
)

#: A run of a "buffer_all" entry under the cap started (its marker and its place held): note
#: its slot as the latest started (see START_SINGLETON).
#: KEYS[1] state hash. ARGV[1] the run's slot (us).
NOTE_START = """
local latest = tonumber(redis.call('HGET', KEYS[1], 'latest_start') or '0') or 0
if tonumber(ARGV[1]) > latest then
  redis.call('HSET', KEYS[1], 'latest_start', ARGV[1])
end
return 1
"""

#: A run of a "cancel_other" / "terminate_other" entry starts: it takes the marker over from
#: the run it replaces once that one stopped.
#: KEYS[1] running marker, KEYS[2] state hash. ARGV[1] task id, ARGV[2] lease (ms),
#: ARGV[3] "1" for a scheduled run (replaced by a later one), "0" for a manual one, ARGV[4]
#: (optional) the attempt (the request's ``retries``), written as ``attempt`` when it executes.
#: Returns {code, task id}: {0, newer} a later run was claimed since (this one must not
#: execute); {1, ""} the run held its marker (renewed); {2, ""} it took the free marker;
#: {3, holder} another run holds it (revoke that one, then ask again); {4, holder} it took the
#: marker from a run that waits for a retry (``retrying``: not executing; revoke it).
TAKE_OVER = """
local retrying = redis.call('HGET', KEYS[2], 'retrying')
if retrying == ARGV[1] then
  -- This run starts again (its retry): it is executing from now on, whatever follows.
  redis.call('HDEL', KEYS[2], 'retrying')
  retrying = false
end
local latest = redis.call('HGET', KEYS[2], 'latest_run')
if ARGV[3] == '1' and latest and latest ~= ARGV[1] then
  return {0, latest}
end
local holder = redis.call('GET', KEYS[1])
-- The attempt that executes from here on: an earlier attempt ending later notes no retry
-- waiting (NOTE_RETRYING), since this one already started.
local attempt = ARGV[1] .. ':' .. (ARGV[4] or '0')
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('HSET', KEYS[2], 'attempt', attempt)
  return {1, ''}
end
if holder and holder == retrying then
  redis.call('HDEL', KEYS[2], 'retrying')
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('HSET', KEYS[2], 'attempt', attempt)
  return {4, holder}
end
if holder then
  return {3, holder}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], 'attempt', attempt)
return {2, ''}
"""

#: An attempt of a "cancel_other" / "terminate_other" run ended and its retry waits: note it
#: (``retrying``), unless a later attempt of the run already started (TAKE_OVER's
#: ``attempt``): a retry sent without a countdown may start elsewhere before this note.
#: KEYS[1] state hash. ARGV[1] task id, ARGV[2] the attempt that ended (its ``retries``).
NOTE_RETRYING = """
local started = redis.call('HGET', KEYS[1], 'attempt')
local mine = string.match(started or '', '^(.*):(%d+)$')
local latest_attempt = tonumber(string.match(started or '', ':(%d+)$') or '')
if mine == ARGV[1] and latest_attempt and latest_attempt > tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'retrying', ARGV[1])
return 1
"""

#: A run under the cap starts: it must hold its place; one that expired while the run waited is
#: taken again if the cap has room.
#: KEYS[1] the cap zset. ARGV[1] task id, ARGV[2] cap, ARGV[3] lease (us).
#: Returns 1 when the run held its place (renewed), 2 when it took one again, 0 when the cap is
#: full (this run must not execute).
START_CAP = (
    _NOW
    + """\
local lease_end = string.format('%.0f', now + tonumber(ARGV[3]))
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], lease_end, ARGV[1])
  return 1
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], lease_end, ARGV[1])
return 2
"""
)

#: A run ended (its last attempt): free its marker; hand it to the held-back run, if any (the
#: one of "buffer_one", or the head of the queue of "buffer_all").
#: KEYS[1] running marker, KEYS[2] buffered message (string) or queue (list), KEYS[3] state hash.
#: ARGV[1] task id, ARGV[2] lease (ms), ARGV[3] (optional) "1" when the request is sent again
#: after its reply was lost, else "0", ARGV[4] (optional) who asks (host, process, hooks): a
#: request sent again is answered only by the asker's own noted answer (a run ended by two
#: processes, a pool's parent and its child, is handed over once).
#: Returns nil when nothing is held, else {what, held JSON message}: "send" (its task id now
#: holds the marker: publish it now), "paused" or "removed" (the entry was paused or removed
#: meanwhile: the held run is dropped, the marker freed), "finished" (max_runs used up),
#: "unknown" (held for a slot due before Redis's start: the data Redis came back with may be
#: older than its release and publish; dropped, the marker freed). Such held runs are dropped
#: before any answer (the first later one of a queue is handed over) and follow the answer's
#: two items, to be reported skipped "unknown". Each answer with a held run is noted in the
#: state hash (``released``: the task id that ended, ``released_as``, ``released_run``,
#: ``released_by``), so that a request sent again
#: after its reply was lost gets the same answer: a run handed over while its marker is still
#: the held run's and that run has not started (START_SINGLETON clears the note).
RELEASE = (
    _NOW
    + _RESTART_RULE
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  if ARGV[3] ~= '1' then
    return nil
  end
  local noted = redis.call('HMGET', KEYS[3], 'released', 'released_as', 'released_run',
                           'released_by')
  if noted[1] ~= ARGV[1] or not noted[3] or noted[4] ~= (ARGV[4] or '') then
    return nil
  end
  if noted[2] == 'send' and
      redis.call('GET', KEYS[1]) ~= cjson.decode(noted[3])['task_id'] then
    return nil  -- superseded since (its marker expired), or already running
  end
  return {noted[2], noted[3]}
end
local function answer(what, held)
  redis.call('HSET', KEYS[3], 'released', ARGV[1], 'released_as', what, 'released_run', held,
             'released_by', ARGV[4] or '')
  return {what, held}
end
local kind = redis.call('TYPE', KEYS[2]).ok
local held = nil
if kind == 'list' then
  held = redis.call('LPOP', KEYS[2])
elseif kind == 'string' then
  held = redis.call('GET', KEYS[2])
  redis.call('DEL', KEYS[2])
end
if not held then
  redis.call('DEL', KEYS[1])
  return nil
end
if redis.call('HGET', KEYS[3], 'removed') then
  redis.call('DEL', KEYS[1])
  return answer('removed', held)
end
local dropped = {}
while held and held_before_restart(held) do
  -- Held for a slot due before Redis's start: it may have been handed over and sent since
  -- (the data may be a snapshot's). Dropped and returned, to be reported; the next one of a
  -- queue is handed over instead.
  redis.call('HINCRBY', KEYS[3], 'skips:unknown', 1)
  dropped[#dropped + 1] = held
  held = kind == 'list' and redis.call('LPOP', KEYS[2]) or nil
end
if not held then
  redis.call('DEL', KEYS[1])
  return {'unknown', dropped[#dropped], unpack(dropped, 1, #dropped - 1)}
end
if redis.call('HGET', KEYS[3], 'paused') then
  redis.call('DEL', KEYS[1])
  return answer('paused', held)
end
local max_runs = tonumber(redis.call('HGET', KEYS[3], 'max_runs') or '0') or 0
if max_runs > 0 and tonumber(redis.call('HGET', KEYS[3], 'runs') or '0') >= max_runs then
  -- The entry used up max_runs: no queued run runs any more.
  redis.call('DEL', KEYS[1], KEYS[2])
  return answer('finished', held)
end
local message = cjson.decode(held)
redis.call('SET', KEYS[1], message['task_id'], 'PX', ARGV[2])
redis.call('HINCRBY', KEYS[3], 'runs', 1)
local reply = answer('send', held)
for _, stale in ipairs(dropped) do
  reply[#reply + 1] = stale
end
return reply
"""
)

#: The held-back run handed over by RELEASE is not sent: its publish failed ("failed": the
#: message goes back to be held, unless another is held by now; at the head of a "buffer_all"
#: queue, unless the entry was disabled or removed since) or the cap is full ("capped").
#: Its marker is freed, its run is given back.
#: KEYS[1] running marker, KEYS[2] buffered message, KEYS[3] state hash, KEYS[4] history list.
#: ARGV[1] JSON message, ARGV[2] its task id, ARGV[3] slot (us), ARGV[4] who, ARGV[5] history
#: size, ARGV[6] "failed" | "capped" | "unconfirmed" (the hand-over was not confirmed by the
#: replicas: held back again, nothing recorded), ARGV[7] error text, ARGV[8] (optional) an id
#: of this put-back, kept when it is asked again: the state's ``given_back`` remembers the
#: last 16, so a request whose reply was lost is not applied twice.
#: Returns 1; 0 for an "unconfirmed" put-back that found another run holding the marker (its
#: lease ended and the queue moved on): not put back, recorded skipped (redis_unavailable).
GIVE_BACK_HELD = (
    _GIVE_BACK_RUN
    + _FORGET_RELEASED
    + """
if (ARGV[8] or '') ~= '' then
  -- One put-back, asked again after its reply was lost (round 66): done once, also when
  -- other put-backs (another replica's) ran in between (round 67): the last 16 are kept.
  local done = redis.call('HGET', KEYS[3], 'given_back') or ''
  if string.find(' ' .. done .. ' ', ' ' .. ARGV[8] .. ' ', 1, true) then
    return 1
  end
  local kept = {ARGV[8]}
  for id in string.gmatch(done, '%S+') do
    if #kept < 16 then
      kept[#kept + 1] = id
    end
  end
  redis.call('HSET', KEYS[3], 'given_back', table.concat(kept, ' '))
end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[2] then
  redis.call('DEL', KEYS[1])
end
-- The hand-over was answered and acted on: RELEASE asked again never repeats it.
forget_released(KEYS[3])
give_back_run(KEYS[3], ARGV[3])
-- An entry disabled or removed since the hand-over holds nothing back again: the change
-- deleted its held runs (round 58: a failed publish put one back, sent after a re-enable),
-- also once it is enabled or added again (round 59): the run is of a slot up to the mark at
-- that disable (held_dropped) or re-add (fresh_after).
local cut = redis.call('HMGET', KEYS[3], 'disabled', 'removed', 'held_dropped', 'fresh_after')
local slot_us = tonumber(ARGV[3])
local gone = cut[1] or cut[2] or (tonumber(cut[3] or '') or -1) >= slot_us
             or (tonumber(cut[4] or '') or -1) >= slot_us
local function hold_again()
  if gone then
    return
  end
  if redis.call('TYPE', KEYS[2]).ok == 'list' then
    redis.call('LPUSH', KEYS[2], ARGV[1])
  else
    redis.call('SET', KEYS[2], ARGV[1], 'NX')
  end
end
if ARGV[6] == 'unconfirmed' then
  if holder and holder ~= ARGV[2] then
    -- Its marker expired and the queue moved on (another run holds it: round 67): put back
    -- now, it would run after later slots. Not sent: recorded, and 0 tells the replica to
    -- report it.
    redis.call('HINCRBY', KEYS[3], 'skips:redis_unavailable', 1)
    if tonumber(ARGV[5]) > 0 then
      local t = redis.call('TIME')
      redis.call('LPUSH', KEYS[4], cjson.encode({slot = slot_us, replica = ARGV[4],
        task_id = ARGV[2], outcome = 'skipped:redis_unavailable',
        at = tonumber(t[1]) * 1000000 + tonumber(t[2])}))
      redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[5]) - 1)
    end
    return 0
  end
  -- Held back again, as if never handed over (nothing to record).
  hold_again()
  return 1
end
local item = {slot = tonumber(ARGV[3]), replica = ARGV[4], task_id = ARGV[2]}
if ARGV[6] == 'failed' then
  hold_again()
  redis.call('HINCRBY', KEYS[3], 'failures', 1)
  item['outcome'] = 'failed'
  item['error'] = ARGV[7]
else
  redis.call('HINCRBY', KEYS[3], 'skips:' .. ARGV[6], 1)
  item['outcome'] = 'skipped:' .. ARGV[6]
end
if tonumber(ARGV[5]) > 0 then
  local t = redis.call('TIME')
  item['at'] = tonumber(t[1]) * 1000000 + tonumber(t[2])
  redis.call('LPUSH', KEYS[4], cjson.encode(item))
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[5]) - 1)
end
return 1
"""
)

#: A run was not executed: its marker or its place was another run's by the time it started,
#: or (held back) its entry was paused.
#: KEYS[1] state hash, KEYS[5] history list. ARGV[1] slot (us), ARGV[2] task id, ARGV[3] who,
#: ARGV[4] reason ("busy" | "capped" | "paused"), ARGV[5] history size, ARGV[6] "1" for a
#: scheduled run (given back: it does not count towards max_runs), "0" for a manual one or a
#: held run never counted.
RECORD_SKIP = _recording(
    _GIVE_BACK_RUN
    + """
redis.call('HINCRBY', KEYS[1], 'skips:' .. ARGV[4], 1)
if ARGV[6] == '1' then
  give_back_run(KEYS[1], ARGV[1])
end
record(ARGV[1], ARGV[3], ARGV[2], 'skipped:' .. ARGV[4], ARGV[5])
return 1
"""
)

#: Fence, publish and record one won slot in one step, when the broker is a Kombu Redis
#: transport on the same Redis (and database) as the claims: a replica killed at any instant
#: either published and recorded the slot, or left its claim to be taken over.
#: KEYS[1] state hash, KEYS[2] pending hash, KEYS[5] history list, KEYS[6...] the broker keys
#: of the message. ARGV[1] slot (us), ARGV[2] replica id, ARGV[3] task id, ARGV[4] history
#: size, ARGV[5] the number of broker commands, then three ARGV per command: "lpush" |
#: "pexpire", the index of its key in KEYS, its argument (the message JSON, or milliseconds).
#: Returns 1 when published now; 2 when this replica's publish of the slot was recorded
#: already (a retried request whose first reply was lost); 0 when the claim is not this
#: replica's (taken over) or was fenced by a publish whose delivery is uncertain.
#: The fence is set before the commands: should one fail (a queue key of the wrong type), the
#: slot stays fenced and is never published again (reported as uncertain).
_PUBLISH_ONCE_BODY = """
local pending = redis.call('HGET', KEYS[2], ARGV[1])
if not pending then
  if redis.call('HGET', KEYS[1], 'task_id') == ARGV[3]
      and redis.call('HGET', KEYS[1], 'owner') == ARGV[2]
      and redis.call('HGET', KEYS[1], 'state') == 'sent' then
    return 2
  end
  if sent_by(KEYS[5], ARGV[3], ARGV[2]) == 'sent' then
    return 2  -- an earlier slot of the entry, sent by the same request
  end
  return 0
end
local owner, claimed_at, flag = string.match(pending, '^([^|]*)|(%d+)|?(%a*)$')
if owner ~= ARGV[2] or flag == 'publishing' or claimed_before_restart(claimed_at) then
  return 0  -- (a claim a restart brought back may have been taken over and published since)
end
redis.call('HSET', KEYS[2], ARGV[1], owner .. '|' .. claimed_at .. '|publishing')
for i = 0, tonumber(ARGV[5]) - 1 do
  local name, key, value = ARGV[6 + 3 * i], KEYS[tonumber(ARGV[7 + 3 * i])], ARGV[8 + 3 * i]
  if name == 'lpush' then
    redis.call('LPUSH', key, value)
  elseif name == 'pexpire' then
    redis.call('PEXPIRE', key, value)
  else
    return redis.error_reply('ERR unsupported broker command ' .. name)
  end
end
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[1], 'hwm') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'sent_at', string.format('%.0f', now), 'state', 'sent')
else
  redis.call('HSET', KEYS[1], 'sent_at', string.format('%.0f', now))
end
record(ARGV[1], ARGV[2], ARGV[3], 'sent', ARGV[4])
return 1
"""
PUBLISH_ONCE = _recording(_SENT_BY + _RESTART_RULE + _PUBLISH_ONCE_BODY)


def _many(body: str, before: str = "") -> str:
    """The script ``body`` (written for one item: its own ``KEYS``, ``ARGV``) run for each item
    of a batch in one call, at one Redis ``TIME``; ``before`` is defined once, outside the loop.

    ARGV[1] the number of items n, ARGV[2 .. n+1] each item's number of keys, ARGV[n+2 .. 2n+1]
    each item's number of arguments, then every item's arguments in order; KEYS: every item's
    keys in order. Returns one reply per item; an item whose body raised or returned an error
    reply answers ``{"__error__", message}`` and the other items still run (as separate script
    calls in one pipeline would). One call per batch spares Redis the set-up of a script call
    per item, and the caller a command per item. Never on Redis Cluster: the keys of a batch
    span hash slots.
    """
    return (
        _NOW
        + before
        + """
local function one(KEYS, ARGV)
"""
        + _RECORD
        + body
        + """
end
local count = tonumber(ARGV[1])
local replies = {}
local next_key, next_arg = 1, 2 + 2 * count
for i = 1, count do
  local key_count, arg_count = tonumber(ARGV[1 + i]), tonumber(ARGV[1 + count + i])
  local item_keys, item_args = {}, {}
  for j = 1, key_count do
    item_keys[j] = KEYS[next_key + j - 1]
  end
  for j = 1, arg_count do
    item_args[j] = ARGV[next_arg + j - 1]
  end
  next_key, next_arg = next_key + key_count, next_arg + arg_count
  local ok, reply = pcall(one, item_keys, item_args)
  if not ok then
    reply = {'__error__', type(reply) == 'table' and tostring(reply.err) or tostring(reply)}
  elseif type(reply) == 'table' and reply.err then
    reply = {'__error__', tostring(reply.err)}
  elseif reply == nil then
    reply = false
  end
  replies[i] = reply
end
return replies
"""
    )


#: Redis's start and what it may have lost are read once per batch (INFO is the costliest part
#: of a claim that needs them).
_DATA_LOST_AT_ONCE = (
    _STARTED_BY.replace("local function started_by()", "local function read_started_by()")
    + """
local started_read, started_at
local function started_by()
  if not started_read then
    started_read, started_at = true, read_started_by()
  end
  return started_at
end
"""
    + _DATA_LOST_AT.replace("local function data_lost_at()", "local function read_data_lost_at()")
    + """
local lost_at_read, lost_at_is_start
local function data_lost_at()
  if lost_at_read == nil then
    lost_at_read, lost_at_is_start = read_data_lost_at()
  end
  return lost_at_read, lost_at_is_start
end
"""
)

#: The restart rule for a batch (Redis's start read once per call).
_RESTART_RULE_ONCE = _DATA_LOST_AT_ONCE + _RESTART_TESTS

#: :data:`CLAIM` for a batch of slots in one call (see :func:`_many`); not on Redis Cluster.
CLAIM_MANY = _many(_CLAIM_BODY, _SENT_BY + _RESTART_RULE_ONCE)

#: :data:`PUBLISH_ONCE` for a batch of slots in one call (see :func:`_many`); not on Redis
#: Cluster.
PUBLISH_ONCE_MANY = _many(_PUBLISH_ONCE_BODY, _SENT_BY + _RESTART_RULE_ONCE)

#: The scripts the backend runs by SHA in pipelines (loaded again after a NOSCRIPT reply).
ALL_SCRIPTS = (
    CLAIM,
    BEGIN_PUBLISH,
    END_FENCE,
    MARK_SENT,
    MARK_SKIPPED,
    RECORD_FAILURE,
    PUBLISH_ONCE,
    CLAIM_MANY,
    PUBLISH_ONCE_MANY,
)

#: Decide whether one past slot of an entry may be backfilled, and claim it for the backfill.
#: KEYS[1] state hash, KEYS[2] pending hash, KEYS[3] running marker, KEYS[4] buffered message,
#: KEYS[5] history list, KEYS[6] backfill hash (slot -> "<state>|<who>|<at us>").
#: ARGV[1] slot (us), ARGV[2] task id, ARGV[3] backfill run id, ARGV[4] overlap ("allow" |
#: "skip"), ARGV[5] singleton lease (ms), ARGV[6] history size, ARGV[7] "1" to force (a slot
#: older than the history remembers, a paused entry), ARGV[8] "1" for a dry run (writes nothing),
#: ARGV[9] (optional) the version of the runtime entry's definition the backfill read ("" for
#: a static entry): after a later change, or a removal and an add, it is "removed".
#: Returns {verdict, detail}: "claimed" (publish it now, then run BACKFILL_RECORD), "eligible"
#: (dry run: it would be claimed), "already_published" (detail: what says so), or "skipped"
#: (detail: "future" | "undecided" | "in_flight" | "failed" | "pending" | "buffered" |
#: "uncertain" | "unknown" | "paused" | "busy").
#: The claim is also the fence: a backfill slot is never taken over, so a backfill killed
#: between this script and BACKFILL_RECORD leaves the slot "publishing" for ever (reported
#: "skipped:in_flight" afterwards): at most once.
BACKFILL_CLAIM = (
    _NOW
    + _RESTART_RULE
    + """
local slot = tonumber(ARGV[1])
if redis.call('HGET', KEYS[1], 'removed') then
  return {'skipped', 'removed'}  -- a runtime entry removed while the backfill ran
end
local defined = tonumber(string.match(redis.call('HGET', KEYS[1], 'defined') or '', '^(%d+) ')
                         or '')
if (ARGV[9] or '') ~= '' and defined and defined > tonumber(ARGV[9]) then
  -- changed, or removed and added again, since the backfill read it: its definition is gone
  return {'skipped', 'removed'}
end
if slot > now then
  return {'skipped', 'future'}
end
local hwm = tonumber(redis.call('HGET', KEYS[1], 'hwm'))
if not hwm or slot > hwm then
  return {'skipped', 'undecided'}
end
local mark = redis.call('HGET', KEYS[6], ARGV[1])
if mark then
  local state, who = string.match(mark, '^(%a+)|([^|]*)')
  if state == 'publishing' and who == ARGV[3] and ARGV[8] ~= '1' then
    -- This very run asking again after its claim's reply was lost: nothing was published.
    return {'claimed', 'asked again'}
  end
  if state == 'sent' then
    return {'already_published', 'backfill'}
  elseif state == 'failed' then
    return {'skipped', 'failed'}
  end
  return {'skipped', 'in_flight'}
end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return {'skipped', 'pending'}
end
if slot == hwm and redis.call('HGET', KEYS[1], 'state') == 'sent' then
  return {'already_published', 'state'}
end
if redis.call('GET', KEYS[3]) == ARGV[2] then
  return {'already_published', 'running'}
end
local held_kind = redis.call('TYPE', KEYS[4]).ok
local held = {}
if held_kind == 'string' then
  held = {redis.call('GET', KEYS[4])}
elseif held_kind == 'list' then  -- overlap "buffer_all": the queued runs
  held = redis.call('LRANGE', KEYS[4], 0, -1)
end
for _, message in ipairs(held) do
  if string.find(message, ARGV[2], 1, true) then
    return {'skipped', 'buffered'}
  end
end
local items = redis.call('LRANGE', KEYS[5], 0, -1)
-- A run held back by buffer_one ("skipped:buffered") is published by a worker later, without
-- a "sent" item; one whose publish was uncertain ("skipped:uncertain"), or whose publisher
-- died after its fence ("skipped:in_flight"), may have left.
local maybe = nil
for _, raw in ipairs(items) do
  local ok, item = pcall(cjson.decode, raw)
  -- (the slot's own task id: a manual run near the slot is another run)
  if ok and type(item) == 'table' and type(item.slot) == 'number'
      and math.abs(item.slot - slot) < 500000
      and (item.task_id == nil or item.task_id == '' or item.task_id == ARGV[2]) then
    local outcome = tostring(item.outcome)
    if outcome == 'skipped:buffered' or outcome == 'skipped:uncertain'
        or outcome == 'skipped:in_flight' then
      maybe = string.sub(outcome, 9)
    elseif outcome ~= 'failed' and string.sub(outcome, 1, 8) ~= 'skipped:' then
      return {'already_published', outcome}
    end
  end
end
if maybe then
  return {'skipped', maybe}
end
local lost_before = tonumber(redis.call('HGET', KEYS[1], 'lost_before'))
if ARGV[7] ~= '1' and lost_before and slot <= lost_before then
  return {'skipped', 'unknown'}  -- Redis lost data since: its history may have gone with it
end
if ARGV[7] ~= '1' and due_before_restart(slot) then
  -- Due before Redis last started: it may have come back from data older than this slot's
  -- publish (a snapshot), with neither its mark nor its history item.
  return {'skipped', 'unknown'}
end
if ARGV[7] ~= '1' then
  -- A full list may have lost items. Every item lost to a push of the scheduler is older than
  -- the oldest item of the scheduler still listed; an item of the scheduler lost to a push of
  -- a backfill raised 'forgotten'. A slot is recorded at most 0.5 s before it is due, so a
  -- slot due more than 0.5 s after both was recorded after anything lost: it is known.
  local size = tonumber(ARGV[6])
  local horizon = nil
  if size <= 0 then
    horizon = math.huge
  elseif #items >= size then
    horizon = tonumber(redis.call('HGET', KEYS[6], 'forgotten'))
    for i = #items, 1, -1 do
      local ok, item = pcall(cjson.decode, items[i])
      if not ok or type(item) ~= 'table' or type(item.at) ~= 'number' then
        horizon = math.huge
        break
      end
      if not item.backfill then
        horizon = math.max(horizon or item.at, item.at)
        break
      end
    end
  end
  if horizon and slot <= horizon + 500000 then
    return {'skipped', 'unknown'}
  end
  if redis.call('HGET', KEYS[1], 'paused') then
    return {'skipped', 'paused'}
  end
end
local dry = ARGV[8] == '1'
if ARGV[4] ~= 'allow' then
  local holder = redis.call('GET', KEYS[3])
  if holder and holder ~= ARGV[2] then
    return {'skipped', 'busy'}
  end
  if not dry then
    redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[5])
  end
end
if dry then
  return {'eligible', ''}
end
redis.call('HSET', KEYS[6], ARGV[1], 'publishing|' .. ARGV[3] .. '|' .. string.format('%.0f', now))
return {'claimed', ''}
"""
)

#: Record the publish of a slot claimed by BACKFILL_CLAIM: the backfill hash says "sent" (or
#: "failed": the publish raised, the message may have left; never published again either way)
#: and the entry's history gets an item with ``backfill: true``.
#: KEYS as BACKFILL_CLAIM. ARGV[1] slot (us), ARGV[2] task id, ARGV[3] backfill run id,
#: ARGV[4] outcome ("sent" | "failed"), ARGV[5] history size, ARGV[6] error text (or "").
#: Returns 1 when recorded, 0 when the claim is not this run's (nothing written).
BACKFILL_RECORD = _recording(
    """
local mark = redis.call('HGET', KEYS[6], ARGV[1])
if not mark or string.match(mark, '^publishing|([^|]*)|') ~= ARGV[3] then
  return 0
end
redis.call('HSET', KEYS[6], ARGV[1], ARGV[4] .. '|' .. ARGV[2] .. '|' .. string.format('%.0f', now))
local size = tonumber(ARGV[5])
if size > 0 then
  -- The push below trims the oldest items: remember when the latest of the scheduler's was
  -- recorded (BACKFILL_CLAIM cannot tell its slots from the list any more).
  for _, raw in ipairs(redis.call('LRANGE', KEYS[5], size - 1, -1)) do
    local ok, item = pcall(cjson.decode, raw)
    if ok and type(item) == 'table' and not item.backfill and type(item.at) == 'number' then
      local forgotten = tonumber(redis.call('HGET', KEYS[6], 'forgotten')) or 0
      if item.at > forgotten then
        redis.call('HSET', KEYS[6], 'forgotten', string.format('%.0f', item.at))
      end
    end
  end
end
local extra = {backfill = true}
if ARGV[4] == 'sent' then
  redis.call('HINCRBY', KEYS[1], 'backfilled', 1)
else
  extra['error'] = ARGV[6]
  if redis.call('GET', KEYS[3]) == ARGV[2] then
    redis.call('DEL', KEYS[3])
  end
end
record(ARGV[1], ARGV[3], ARGV[2], ARGV[4], ARGV[5], extra)
return 1
"""
)
