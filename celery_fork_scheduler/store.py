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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .errors import ConfigError, ForkSchedulerError
from .keys import Keys

#: Store or replace one runtime entry.
#: KEYS[1] entries hash, KEYS[2] changes zset, KEYS[3] version counter.
#: ARGV[1] name, ARGV[2] JSON, ARGV[3] expected version ("" any, "0" must not exist).
#: Returns {new version} or {-1, current version} when the expected version is stale.
PUT = """
local current = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  current = 0
end
if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= current then
  return {-1, current}
end
local version = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], version, ARGV[1])
return {version}
"""

#: Remove one runtime entry. Same KEYS; ARGV[1] name, ARGV[2] expected version ("" any).
#: Returns {new version}, {0} when there was no such entry, or {-1, current} when stale.
DELETE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return {0}
end
local current = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= current then
  return {-1, current}
end
local version = redis.call('INCR', KEYS[3])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], version, ARGV[1])
return {version}
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


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """A runtime entry as stored: its JSON data and the version of its latest change."""

    name: str
    data: Mapping[str, Any]
    version: int


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed since a version: new or changed entries, and removed names."""

    version: int
    changed: dict[str, StoredEntry | bytes]
    removed: list[str]


@dataclass(frozen=True, slots=True)
class PauseState:
    """Whether an entry is paused, with the operator's note and when."""

    paused: bool
    note: str = ""
    since: datetime | None = None


class RuntimeStore:
    """Reads and writes runtime entries and per-entry controls."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._put = client.register_script(PUT)
        self._delete = client.register_script(DELETE)

    @property
    def _runtime_keys(self) -> list[str]:
        return [self.keys.runtime_entries, self.keys.runtime_changes, self.keys.runtime_version]

    # -- runtime entries ----------------------------------------------------------------------

    def version(self) -> int:
        """The version counter: it changes whenever any runtime entry does."""
        return int(self.client.get(self.keys.runtime_version) or 0)

    def get(self, name: str) -> StoredEntry | None:
        """One runtime entry, or ``None``."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.keys.runtime_entries, name)
        pipe.zscore(self.keys.runtime_changes, name)
        raw, version = pipe.execute()
        if raw is None:
            return None
        try:
            return StoredEntry(name, json.loads(raw), int(version or 0))
        except ValueError:
            raise ConfigError("stored JSON cannot be decoded", entry=name) from None

    def all(self) -> tuple[int, dict[str, StoredEntry | bytes]]:
        """The version and every runtime entry; undecodable JSON comes back as raw bytes."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.runtime_version)
        pipe.hgetall(self.keys.runtime_entries)
        pipe.zrange(self.keys.runtime_changes, 0, -1, withscores=True)
        version, raw, scores = pipe.execute()
        versions = {_text(name): int(score) for name, score in scores}
        entries = {
            _text(name): _decode(_text(name), data, versions.get(_text(name), 0))
            for name, data in raw.items()
        }
        return int(version or 0), entries

    def changes_since(self, version: int) -> Changes:
        """Entries changed or removed after ``version`` (one round trip, two if any changed)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.runtime_version)
        pipe.zrangebyscore(self.keys.runtime_changes, f"({version}", "+inf", withscores=True)
        current, changed = pipe.execute()
        names = [_text(name) for name, _ in changed]
        if not names:
            return Changes(int(current or 0), {}, [])
        versions = {_text(name): int(score) for name, score in changed}
        values = self.client.hmget(self.keys.runtime_entries, names)
        present = {
            name: _decode(name, value, versions[name])
            for name, value in zip(names, values, strict=True)
            if value is not None
        }
        removed = [name for name, value in zip(names, values, strict=True) if value is None]
        return Changes(max(int(current or 0), *versions.values()), present, removed)

    def put(self, name: str, data: Mapping[str, Any], expected_version: int | None = None) -> int:
        """Store a runtime entry and return its version; ``expected_version=0``: must be new."""
        expected = "" if expected_version is None else str(expected_version)
        reply = self._put(keys=self._runtime_keys, args=[name, json.dumps(data), expected])
        if int(reply[0]) < 0:
            raise StaleVersionError(name, expected_version or 0, int(reply[1]))
        return int(reply[0])

    def delete(self, name: str, expected_version: int | None = None) -> bool:
        """Remove a runtime entry; False when there was none."""
        expected = "" if expected_version is None else str(expected_version)
        reply = self._delete(keys=self._runtime_keys, args=[name, expected])
        if int(reply[0]) < 0:
            raise StaleVersionError(name, expected_version or 0, int(reply[1]))
        return int(reply[0]) > 0

    # -- per-entry controls -------------------------------------------------------------------

    def pause(self, names: Sequence[str], note: str = "", *, at: datetime | None = None) -> None:
        """Pause entries (static or runtime) for every replica, with an optional note."""
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


def _text(value: bytes | str) -> str:
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else value


def _decode(name: str, raw: bytes | str, version: int) -> StoredEntry | bytes:
    try:
        return StoredEntry(name, json.loads(raw), version)
    except ValueError:
        return raw if isinstance(raw, bytes) else raw.encode()
