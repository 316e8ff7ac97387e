"""Following runtime entries from beat: load them once, then apply only what changed.

A bad stored entry (corrupted JSON, an unknown schema, an invalid schedule) is skipped with an
error that names it; every other entry keeps firing. A runtime entry never replaces a static
entry (config or decorator) of the same name.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

import redis

from .entry import Entry, entry_from_dict
from .errors import ConfigError
from .store import RuntimeStore, StoredEntry

logger = logging.getLogger("celery_fork_scheduler")

#: Errors that mean "Redis cannot be asked right now": the next refresh tries again.
REFRESH_ERRORS = (redis.RedisError, OSError)


@dataclass
class Update:
    """Runtime entries to (re)queue and names to drop."""

    changed: list[Entry] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


class RuntimeEntries:
    """The runtime entries one replica knows, and the version it has seen."""

    def __init__(self, store: RuntimeStore, default_timezone: tzinfo, replica_id: str) -> None:
        self.store = store
        self.default_timezone = default_timezone
        self.replica_id = replica_id
        self.version = 0
        self._reported: set[tuple[str, int]] = set()

    def load(self, static_names: Collection[str]) -> dict[str, Entry]:
        """Every valid runtime entry (none when Redis cannot be reached: a refresh follows)."""
        try:
            version, stored = self.store.all()
        except REFRESH_ERRORS as exc:
            logger.warning("fork scheduler: cannot load runtime entries yet: %s", exc)
            return {}
        self.version = version
        entries = {}
        for name, item in stored.items():
            entry = self._parse(name, item, static_names)
            if entry is not None:
                entries[name] = entry
        return entries

    def poll(self, static_names: Collection[str]) -> Update | None:
        """What changed since the last poll; ``None`` when nothing did or Redis is away."""
        try:
            changes = self.store.changes_since(self.version)
        except REFRESH_ERRORS as exc:
            logger.debug("fork scheduler: runtime entries not refreshed: %s", exc)
            return None
        if changes.version == self.version and not changes.changed and not changes.removed:
            return None
        self.version = changes.version
        update = Update(removed=[n for n in changes.removed if n not in static_names])
        for name, item in changes.changed.items():
            entry = self._parse(name, item, static_names)
            if entry is not None:
                update.changed.append(entry)
        return update

    def announce(self, now: datetime, entry_count: int) -> None:
        """Record this replica in Redis (for ``celery schedule replicas``)."""
        record = {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "last_tick": now.isoformat(),
            "runtime_version": self.version,
            "entries": entry_count,
        }
        try:
            self.store.client.hset(self.store.keys.replicas, self.replica_id, json.dumps(record))
        except REFRESH_ERRORS:
            logger.debug("fork scheduler: replica record not written", exc_info=True)

    def workers_seen(self) -> bool:
        """True when some worker announced that it frees singleton markers (or Redis is away)."""
        try:
            return bool(self.store.client.exists(self.store.keys.workers_seen))
        except REFRESH_ERRORS:
            return True

    def forget(self) -> None:
        """Remove this replica's record (on a clean shutdown)."""
        try:
            self.store.client.hdel(self.store.keys.replicas, self.replica_id)
        except REFRESH_ERRORS:
            logger.debug("fork scheduler: replica record not removed", exc_info=True)

    def _parse(
        self, name: str, item: StoredEntry | bytes, static_names: Collection[str]
    ) -> Entry | None:
        version = item.version if isinstance(item, StoredEntry) else -1
        try:
            if name in static_names:
                raise ConfigError("a static entry of this name exists; it wins", entry=name)
            if not isinstance(item, StoredEntry):
                raise ConfigError("stored JSON cannot be decoded", entry=name)
            return entry_from_dict(name, item.data, default_timezone=self.default_timezone)
        except Exception as exc:  # one bad stored entry must never stop the others
            if (name, version) not in self._reported:
                self._reported.add((name, version))
                logger.error("fork scheduler: runtime entry skipped: %s", exc)
            return None
