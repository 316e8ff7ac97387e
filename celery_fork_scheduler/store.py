"""Runtime entries and per-entry controls in Redis: what the Manager writes, beat reads.

Runtime entries live in one hash (name -> JSON, never pickle) beside a version counter and a
change log (a zset of name -> version of its latest change, deletions included), so a replica
learns what changed since the version it has with one small read, instead of reloading
everything. A write can carry the version it read: a stale one is refused.

Pause state, counters and history live in each entry's own keys (see :mod:`.keys`), for static
and runtime entries alike.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from .config import INT_RANGES
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
#: Expects ``now_ms`` in scope; ARGV[5] retention (ms).
_TRIM = """
local function trim()
  local old = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now_ms - tonumber(ARGV[5]),
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

_NOW = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[7], t[1] .. '.' .. t[2], 'NX')
"""

#: Store or replace one runtime entry.
#: KEYS[1] entries hash, KEYS[2] changes zset, KEYS[3] version counter, KEYS[4] since hash,
#: KEYS[5] removed zset, KEYS[6] floor version, KEYS[7] epoch (set once, by the first write).
#: ARGV[1] name, ARGV[2] JSON, ARGV[3] expected version ("" any, "0" must not exist),
#: ARGV[4] the instant (us) the writer computed the entry's next run from ("": Redis TIME),
#: ARGV[5] retention of removals (ms).
#: Returns {new version, 1 if the entry is new else 0} or {-1, current version} when the
#: expected version is stale.
PUT = (
    _NOW
    + _TRIM
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
trim()
return {version, created}
"""
)

#: Remove one runtime entry. Same KEYS; ARGV[1] name, ARGV[2] expected version ("" any),
#: ARGV[5] retention of removals (ms).
#: Returns {new version}, {0} when there was no such entry, or {-1, current} when stale.
DELETE = (
    _NOW
    + _TRIM
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
trim()
return {version}
"""
)

#: The fields of a state hash that a name added again starts without: its run count, its
#: finished mark and its pause (the high-water mark stays: it keeps slots from running twice).
_FRESH_FIELDS = ("runs", "finished", "paused", "pause_note", "paused_at", "removed")


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


@dataclass(frozen=True, slots=True)
class PauseState:
    """Whether an entry is paused, with the operator's note and when."""

    paused: bool
    note: str = ""
    since: datetime | None = None


class RuntimeStore:
    """Reads and writes runtime entries and per-entry controls."""

    def __init__(
        self, client: Any, keys: Keys, *, retention: timedelta = DELETED_RETENTION
    ) -> None:
        self.client = client
        self.keys = keys
        self.retention_ms = int(retention.total_seconds() * 1000)
        self._put = client.register_script(PUT)
        self._delete = client.register_script(DELETE)

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
        ]

    # -- runtime entries ----------------------------------------------------------------------

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
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.runtime_version)
        pipe.hgetall(self.keys.runtime_entries)
        pipe.zrange(self.keys.runtime_changes, 0, -1, withscores=True)
        pipe.hgetall(self.keys.runtime_since)
        version, raw, scores, since = pipe.execute()
        versions = {_text(name): int(score) for name, score in scores}
        instants = {_text(name): value for name, value in since.items()}
        entries = {
            _text(name): _decode(
                _text(name), data, versions.get(_text(name), 0), instants.get(_text(name))
            )
            for name, data in raw.items()
        }
        return int(version or 0), entries

    def changes_since(self, version: int) -> Changes:
        """Entries changed or removed after ``version`` (one round trip, two if any changed)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.runtime_version)
        pipe.zrangebyscore(self.keys.runtime_changes, f"({version}", "+inf", withscores=True)
        pipe.get(self.keys.runtime_floor)
        pipe.get(self.keys.runtime_epoch)
        current, changed, floor, epoch = pipe.execute()
        epoch = None if epoch is None else _text(epoch)
        names = [_text(name) for name, _ in changed]
        if not names:
            return Changes(int(current or 0), {}, [], int(floor or 0), epoch)
        versions = {_text(name): int(score) for name, score in changed}
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self.keys.runtime_entries, names)
        pipe.hmget(self.keys.runtime_since, names)
        values, instants = pipe.execute()
        present = {
            name: _decode(name, value, versions[name], since)
            for name, value, since in zip(names, values, instants, strict=True)
            if value is not None
        }
        removed = [name for name, value in zip(names, values, strict=True) if value is None]
        return Changes(
            max(int(current or 0), *versions.values()), present, removed, int(floor or 0), epoch
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
        Redis TIME). The entry's own keys lose an expiry left by an earlier removal; a new
        entry (a name added again included) starts afresh: no run count, no finished mark, no
        pause, no held-back run. That is done before it is stored, so that no replica sees it
        with the old state; and again after, should the name have been removed meanwhile.
        """
        encoded = _encode(name, data)
        expected = "" if expected_version is None else str(expected_version)
        fresh = not self.client.hexists(self.keys.runtime_entries, name)
        if fresh:
            self._start_afresh(self.client.pipeline(transaction=False), name).execute()
        instant = "" if since is None else str(_epoch_us(since))
        reply = self._put(
            keys=self._runtime_keys,
            args=[name, encoded, expected, instant, self.retention_ms],
        )
        if int(reply[0]) < 0:
            raise StaleVersionError(name, expected_version or 0, int(reply[1]))
        pipe = self.client.pipeline(transaction=False)
        for key in self.keys.entry_keys(name):
            pipe.persist(key)
        if int(reply[1]) == 1 and not fresh:
            self._start_afresh(pipe, name)
        pipe.execute()
        return int(reply[0])

    def _start_afresh(self, pipe: Any, name: str) -> Any:
        """Queue the reset of a name's state on ``pipe`` (see :meth:`put`)."""
        pipe.hdel(self.keys.state(name), *_FRESH_FIELDS)
        pipe.delete(self.keys.buffered(name))
        return pipe

    def delete(self, name: str, expected_version: int | None = None) -> bool:
        """Remove a runtime entry; False when there was none.

        Its own keys (state, pending, running, history) expire after the retention instead of
        going at once: a replica that has not seen the removal yet may still claim a slot of
        it, and without the high-water mark it could win a published slot again; the state
        says ``removed``, so that such a claim is refused. A held-back run (``buffer_one``) goes
        at once: it is never sent.
        """
        expected = "" if expected_version is None else str(expected_version)
        reply = self._delete(
            keys=self._runtime_keys, args=[name, expected, "", "", self.retention_ms]
        )
        if int(reply[0]) < 0:
            raise StaleVersionError(name, expected_version or 0, int(reply[1]))
        if int(reply[0]) == 0:
            return False
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.keys.state(name), "removed", "1")
        for key in self.keys.entry_keys(name):
            pipe.pexpire(key, self.retention_ms)
        pipe.delete(self.keys.buffered(name))
        pipe.execute()
        return True

    # -- per-entry controls -------------------------------------------------------------------

    def pause(self, names: Sequence[str], note: str = "", *, at: datetime | None = None) -> None:
        """Pause entries (static or runtime) for every replica, with an optional note of at
        most :data:`MAX_NOTE_LENGTH` characters."""
        if not isinstance(note, str) or len(note) > MAX_NOTE_LENGTH:
            raise ConfigError(
                f"must be a string of at most {MAX_NOTE_LENGTH} characters",
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
        """The state hash of each entry (high-water mark, counters, pause), as text."""
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.keys.state(name))
        return {
            name: {_text(k): _text(v) for k, v in raw.items()}
            for name, raw in zip(names, pipe.execute(), strict=True)
        }

    def pause_states(self, names: Sequence[str]) -> dict[str, PauseState]:
        """Whether each entry is paused."""
        return {name: pause_state(state) for name, state in self.states(names).items()}


def pause_state(state: Mapping[str, str]) -> PauseState:
    """The pause part of a state hash."""
    if not state.get("paused"):
        return PauseState(False)
    since = state.get("paused_at")
    return PauseState(
        True, state.get("pause_note", ""), datetime.fromisoformat(since) if since else None
    )


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


def _instants(
    name: str, raw: bytes | str | None
) -> tuple[datetime | None, datetime | None]:
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
