"""Following runtime entries from beat: load them once, then apply only what changed.

A bad stored entry (corrupted JSON, an unknown schema, an invalid schedule) is skipped with an
error that names it; every other entry keeps firing. A runtime entry never replaces a static
entry (config or decorator) of the same name.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, tzinfo

import redis

from .entry import DEFAULT_MIN_INTERVAL, Entry, entry_from_dict
from .errors import ConfigError
from .store import Anchor, Changes, RuntimeStore, StoredEntry
from .store_shards import ShardedStore, shard_number

logger = logging.getLogger("celery_fork_scheduler")

#: Errors that mean "Redis cannot be asked right now": the next refresh tries again.
REFRESH_ERRORS = (redis.RedisError, OSError)
#: A replica record whose last tick is older than this is removed (its replica died).
REPLICA_RETENTION = timedelta(hours=1)
#: How often a replica looks for such records.
REPLICA_PRUNE_INTERVAL = timedelta(minutes=10)


@dataclass
class Update:
    """Runtime entries to (re)queue and names to drop.

    ``since``: for changed entries, the instant their writer computed the promised next run
    from (name -> instant); queue each from its first slot after it. ``added``: the same for
    the change that created each entry (a replica that never saw it starts from there). Entries
    stored without them are absent.
    """

    changed: list[Entry] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    since: dict[str, datetime] = field(default_factory=dict)
    added: dict[str, datetime] = field(default_factory=dict)


@dataclass
class _Cursor:
    """How far a replica has followed one shard's change log: its version, the epoch of its
    keys at the last full read, and its latest change seen at the last poll (an Anchor):
    see :attr:`.store.Changes.anchor_kept`."""

    store: RuntimeStore
    version: int = 0
    epoch: str | None = None
    anchor: Anchor | None = None


@dataclass
class _Load:
    """A load under way: the pages left, and the names a poll applied meanwhile (a page read
    later has nothing newer for them: the next poll has)."""

    pages: Iterator[dict[str, StoredEntry | bytes]]
    polled: set[str] = field(default_factory=set)


class RuntimeEntries:
    """The runtime entries one replica knows, and the version it has seen of each shard of
    the store (one, unless ``fork_scheduler_runtime_shards`` says otherwise).

    ``since`` maps each valid runtime entry loaded (by :meth:`load`, kept up to date by
    :meth:`poll`) to the instant its writer computed the promised next run from.
    """

    def __init__(
        self,
        store: RuntimeStore | ShardedStore,
        default_timezone: tzinfo,
        replica_id: str,
        *,
        min_interval: timedelta = DEFAULT_MIN_INTERVAL,
        calendars: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.store = store
        self.calendars = calendars or {}
        self.default_timezone = default_timezone
        self.min_interval = min_interval
        self.replica_id = replica_id
        self._cursors = [_Cursor(shard) for shard in store.shards]
        self.since: dict[str, datetime] = {}
        #: Every name stored at the version seen, valid or not (to tell removals on a reload).
        self._names: set[str] = set()
        self._reported: set[tuple[str, int]] = set()
        #: Stored entries this replica refused (name -> version): replicas that refuse
        #: different entries must not trust each other's progress (see :mod:`.ownership`).
        self.refused: dict[str, int] = {}
        #: The version of each runtime entry this replica runs (what a change of it must match).
        self.versions: dict[str, int] = {}
        self._next_prune: datetime | None = None
        self._load: _Load | None = None
        #: Whether every stored entry was read once since start-up (a load's last page, or a
        #: poll that read everything).
        self.complete = False
        #: Whether the store's number of shards was checked against Redis's (see
        #: :func:`.store.check_shard_count`): before the first read that reaches Redis.
        self._layout_checked = False

    @property
    def version(self) -> int:
        """The versions seen of the shards, summed: it grows whenever any shard changes."""
        return sum(cursor.version for cursor in self._cursors)

    def begin_load(self) -> None:
        """Start reading every stored entry, a page at a time (:meth:`load_page`).

        The version read before the first page is this replica's from then on: polls go on
        during the read, and apply every change made since (to entries read or not yet read).
        When Redis cannot be reached, nothing is read now: the next poll reads everything.
        """
        self.since, self.refused, self.versions, self._names = {}, {}, {}, set()
        self.complete = False
        try:
            self._check_layout()
            reads = [
                (cursor, cursor.store.epoch(), cursor.store.latest_change(), cursor.store.pages())
                for cursor in self._cursors
            ]
        except REFRESH_ERRORS as exc:
            logger.warning("fork scheduler: cannot load runtime entries yet: %s", exc)
            return  # the next poll reads everything
        for cursor, epoch, anchor, (version, _) in reads:
            cursor.epoch, cursor.anchor, cursor.version = epoch, anchor, version
        self._load = _Load(itertools.chain.from_iterable(pages for *_, (_, pages) in reads))

    @property
    def loading(self) -> bool:
        """True while pages of the load begun by :meth:`begin_load` are left to read."""
        return self._load is not None

    def load_page(self, static_names: Collection[str]) -> Update:
        """The valid entries of the next page (one page of raw JSON in memory at a time),
        but those a poll during the load applied already, as an :class:`Update` (``changed``,
        ``since``, ``added``). When Redis goes away in between, the load stops there and the
        next poll reads everything."""
        page_entries = Update()
        load = self._load
        if load is None:
            return page_entries
        try:
            page = next(load.pages, None)
        except REFRESH_ERRORS as exc:
            logger.warning("fork scheduler: runtime entries not all loaded yet: %s", exc)
            self._load = None  # the next poll reads everything
            return page_entries
        if page is None:
            self._load = None
            self.complete = True
            return page_entries
        for name, item in page.items():
            if name not in load.polled:
                self._names.add(name)
                self._collect(page_entries, name, item, static_names)
        return page_entries

    def load(self, static_names: Collection[str]) -> dict[str, Entry]:
        """Every valid runtime entry at once (see :meth:`begin_load`)."""
        self.begin_load()
        entries: dict[str, Entry] = {}
        while self.loading:
            entries.update((entry.name, entry) for entry in self.load_page(static_names).changed)
        return entries

    def poll(self, static_names: Collection[str]) -> Update | None:
        """What changed since the last poll; ``None`` when nothing did or Redis is away.

        A replica whose version is below the change log's floor (it was away longer than
        removals are kept there), or that sees a new epoch or a version below its own (Redis
        lost its data), reloads everything, so it never misses a removal; so does one whose
        start-up read failed. During a load, the changes apply to entries read or not.
        """
        try:
            self._check_layout()
            polled = [
                cursor.store.changes_since(cursor.version, cursor.anchor)
                for cursor in self._cursors
            ]
            unread = not self.complete and self._load is None  # a start-up read that failed
            gone: list[str] = []
            lost = [
                number
                for number, cursor in enumerate(self._cursors)
                if _lost(cursor, polled[number])
            ]
            if unread or lost:  # Redis lost keys: check (and record) the layout again
                self._layout_checked = False
                self._check_layout()
            if unread or (lost and self._load is not None):
                # Redis lost runtime keys (a new epoch, the version went back, or the latest
                # change this replica saw is gone from the log: an older snapshot, written to
                # since), or this replica was away longer than removals are kept: only a full
                # read says which entries are left. During the start-up load, or after it
                # failed, every shard is read again.
                polled, gone = self._everything(polled, range(len(self._cursors)))
                self._load = None
                self.complete = True
            elif lost:  # only those shards are read again
                polled, gone = self._everything(polled, lost)
        except REFRESH_ERRORS as exc:
            logger.debug("fork scheduler: runtime entries not refreshed: %s", exc)
            return None
        quiet = not gone and all(
            changes.version == cursor.version and not changes.changed and not changes.removed
            for cursor, changes in zip(self._cursors, polled, strict=True)
        )
        for cursor, changes in zip(self._cursors, polled, strict=True):
            cursor.epoch, cursor.anchor = changes.epoch, changes.latest
        if quiet:
            return None
        changed: dict[str, StoredEntry | bytes] = {}
        removed = list(gone)
        for cursor, changes in zip(self._cursors, polled, strict=True):
            cursor.version = changes.version
            changed.update(changes.changed)
            removed += changes.removed
        if self._load is not None:
            self._load.polled.update(removed, changed)
        self._names.difference_update(removed)
        self._names.update(changed)
        update = Update(removed=[n for n in removed if n not in static_names])
        for name in removed:
            self.since.pop(name, None)
            self.refused.pop(name, None)
            self.versions.pop(name, None)
        for name, item in changed.items():
            self._collect(update, name, item, static_names)
        return update

    def _check_layout(self) -> None:
        """:class:`ConfigError` when ``fork_scheduler_runtime_shards`` differs from the layout
        of the stored entries (checked once, when Redis answers)."""
        if not self._layout_checked:
            self.store.check_layout()
            self._layout_checked = True

    def _collect(
        self, update: Update, name: str, item: StoredEntry | bytes, static_names: Collection[str]
    ) -> None:
        """Add one stored entry to ``update`` when it is valid, with its instants."""
        entry = self._parse(name, item, static_names)
        if entry is None:
            return
        update.changed.append(entry)
        since = self._note_since(name, item)
        if since is not None:
            update.since[name] = since
        if isinstance(item, StoredEntry) and item.added is not None:
            update.added[name] = item.added

    def _everything(
        self, polled: list[Changes], numbers: Iterable[int]
    ) -> tuple[list[Changes], list[str]]:
        """``polled``, with every stored entry of shards ``numbers`` as changed (the epoch and
        latest change as ``polled`` read them, before), and every name known before in those
        shards and gone."""
        everything, read, stored_names = list(polled), set(numbers), set[str]()
        for number in read:
            version, stored = self._cursors[number].store.all()
            stored_names.update(stored)
            everything[number] = replace(
                polled[number], version=version, changed=stored, removed=[]
            )
        count = len(self._cursors)
        known = {name for name in self._names if shard_number(name, count) in read}
        return everything, sorted(known - stored_names)

    def basis(self) -> str:
        """What decides this replica's runtime slots beyond the stored entries: the version it
        has seen, the entries it refused, and how it reads a zone-less schedule."""
        refused = ",".join(f"{name}@{version}" for name, version in sorted(self.refused.items()))
        seen = ",".join(str(cursor.version) for cursor in self._cursors)
        return f"{seen}|{refused}|{self.default_timezone}|{self.min_interval}"

    def _note_since(self, name: str, item: StoredEntry | bytes) -> datetime | None:
        since = item.since if isinstance(item, StoredEntry) else None
        if since is None:
            self.since.pop(name, None)
        else:
            self.since[name] = since
        return since

    def announce(self, now: datetime, entry_count: int) -> None:
        """Record this replica in Redis (for ``celery schedule replicas``); now and then,
        remove the records of replicas that have not ticked for :data:`REPLICA_RETENTION`."""
        record = {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "last_tick": now.isoformat(),
            "runtime_version": self.version,
            "entries": entry_count,
        }
        try:
            self.store.client.hset(self.store.keys.replicas, self.replica_id, json.dumps(record))
            if self._next_prune is None or now >= self._next_prune:
                self._next_prune = now + REPLICA_PRUNE_INTERVAL
                self._prune_replicas(now - REPLICA_RETENTION)
        except REFRESH_ERRORS:
            logger.debug("fork scheduler: replica record not written", exc_info=True)

    def _prune_replicas(self, oldest: datetime) -> None:
        """Remove replica records whose last tick is before ``oldest`` (unreadable ones stay)."""
        records = self.store.client.hgetall(self.store.keys.replicas)
        stale = [rid for rid, raw in records.items() if _ticked_before(raw, oldest)]
        if stale:
            self.store.client.hdel(self.store.keys.replicas, *stale)

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
        self.refused.pop(name, None)
        # (refused, the version of the definition read before stays: a replica keeps running
        # that one, and its claims say so: a change it cannot read still fences them)
        try:
            if name in static_names:
                raise ConfigError("a static entry of this name exists; it wins", entry=name)
            if not isinstance(item, StoredEntry):
                raise ConfigError("stored JSON cannot be decoded", entry=name)
            entry = entry_from_dict(
                name,
                item.data,
                default_timezone=self.default_timezone,
                min_interval=self.min_interval,
                calendars=self.calendars,
            )
            self.versions[name] = version
            return entry
        except Exception as exc:  # one bad stored entry must never stop the others
            self.refused[name] = version
            if (name, version) not in self._reported:
                self._reported.add((name, version))
                logger.error("fork scheduler: runtime entry skipped: %s", exc)
            return None


def _lost(cursor: _Cursor, changes: Changes) -> bool:
    """Whether a shard's changes since ``cursor`` cannot be trusted: Redis lost its keys (a
    new epoch, a version below the cursor's, the latest change seen gone from the log) or the
    cursor is below the change log's floor (removals it has not seen were trimmed)."""
    return (
        changes.epoch != cursor.epoch
        or changes.version < cursor.version
        or not changes.anchor_kept
        or cursor.version < changes.floor
    )


def _ticked_before(raw: bytes | str, oldest: datetime) -> bool:
    """True when a replica record's last tick is readable and before ``oldest``."""
    try:
        last = datetime.fromisoformat(json.loads(raw)["last_tick"])
        return last.tzinfo is not None and last < oldest
    except Exception:  # a record this code did not write: leave it
        return False
