"""The Manager: see and steer every replica's schedule at runtime (the original Manager API).

Runtime entries are stored in Redis and picked up by every beat replica within one refresh
(``fork_scheduler_refresh_interval``). Static entries (config, decorators) can be listed,
paused, resumed and triggered, but not removed or replaced from here.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, NamedTuple, TypeVar, cast

import redis
from celery.beat import EmbeddedService
from kombu.exceptions import OperationalError

from .backends.base import to_epoch_us
from .backends.factory import redis_client_for
from .backends.lua import TAKE_CAP_PLACES
from .backfill import (
    DEFAULT_LIMIT,
    DEFAULT_RATE,
    BackfillInputError,
    BackfillOptions,
    BackfillOverlap,
    BackfillSlot,
    backfill_slots,
    run_backfill,
)
from .config import Settings, app_timezone, has_lone_surrogates, read_settings
from .decorators import REGISTRY_ATTRIBUTE, periodic_entries
from .entry import (
    REPLACING,
    Entry,
    check_size,
    entries_from_config,
    entry_from_config,
    entry_to_dict,
    stored_fields,
)
from .errors import ConfigError, ForkSchedulerError
from .ids import manual_task_id
from .keys import Keys
from .manager_results import EntryStats, HistoryItem, Job, ReplicaInfo, RunRecord, TriggerResult
from .outages import Outage
from .publishing import CeleryPublisher, build_occurrence
from .schedules import EveryBuilder, SlotSchedule, at, cron, every, parse_schedule
from .store import (
    MAX_STORED_BYTES,
    BulkConflictError,
    PauseState,
    RuntimeStore,
    StaleVersionError,
    StoredEntry,
    encode_entry,
    joined_tags,
    wrong_type,
)
from .store_shards import ShardedStore, runtime_store
from .validation import CheckReport, Problem, check_app_report
from .worker import MANUAL_HEADER

__all__ = [
    "BackfillInputError",
    "BackfillSlot",
    "BrokerUnavailableError",
    "BulkConfigError",
    "BulkConflictError",
    "EntryStats",
    "HistoryItem",
    "Job",
    "JobBuilder",
    "JobNotFoundError",
    "JobSpec",
    "Manager",
    "RedisRequiredError",
    "ReplicaInfo",
    "RunRecord",
    "StoredRecordError",
    "Tagged",
    "TriggerResult",
]

logger = logging.getLogger("celery_fork_scheduler")

#: Delete a marker only while it still holds a run that was never sent.
#: KEYS[1] the running marker. ARGV[1] task id. Returns 1 when deleted, else 0.
RELEASE_UNSENT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


#: The settings of the Manager call in progress (in this thread or task): the Manager and what
#: it read. Reading them scans every Celery setting, so a call reads them once.
_CALL_SETTINGS: ContextVar[tuple[Manager, Settings] | None] = ContextVar(
    "fork_scheduler_call_settings", default=None
)
_Method = TypeVar("_Method", bound=Callable[..., Any])


def _settings_read_once(method: _Method) -> _Method:
    """Make every :meth:`Manager._settings` of one call of ``method`` return one reading."""

    @functools.wraps(method)
    def once(self: Manager, /, *args: Any, **kwargs: Any) -> Any:
        pinned = _CALL_SETTINGS.get()
        if pinned is not None and pinned[0] is self:
            return method(self, *args, **kwargs)
        token = _CALL_SETTINGS.set((self, read_settings(self.app.conf)))
        try:
            return method(self, *args, **kwargs)
        finally:
            _CALL_SETTINGS.reset(token)

    return cast(_Method, once)


class JobNotFoundError(ForkSchedulerError, KeyError):
    """No entry of that name, static or runtime."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no entry named {name!r}")

    def __str__(self) -> str:
        return str(self.args[0])


class StoredStateError(ForkSchedulerError):
    """An entry's state or history in Redis cannot be read (a key of the wrong type); names
    the entry."""

    def __init__(self, name: str, error: Exception, what: str = "state") -> None:
        self.name = name
        super().__init__(f"entry {name!r}: its {what} in Redis cannot be read: {error}")


class StoredRecordError(ConfigError):
    """A runtime entry stored in Redis cannot be decoded (corrupted, or nested too deep)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__("stored JSON cannot be decoded", entry=name)


#: Entries written per round trip by the bulk calls (one script call per batch).
DEFAULT_BATCH_SIZE = 1_000
#: How often :meth:`Manager.update` without ``expected_version`` re-applies its changes to an
#: entry another writer changed meanwhile before it gives up (``StaleVersionError``).
UPDATE_ATTEMPTS = 5
#: Distinct schedule strings a bulk call keeps parsed.
MAX_PARSED = 10_000
#: The stored JSON of the bulk calls (as :func:`encode_entry`'s ``json.dumps``, built once).
_JSON = json.JSONEncoder(allow_nan=False)
#: Errors a :class:`BulkConfigError` message shows (``errors`` holds them all).
SHOWN_ERRORS = 10


def _checked_version(name: str, version: object) -> int | None:
    """An expected version as given: ``None`` (no check) or the whole number a read returned.
    Anything else would only ever be refused as a conflict (Redis compares numbers): a
    :class:`ConfigError` naming the entry and the field instead."""
    if version is None or (type(version) is int and version >= 0):
        return version
    raise ConfigError(
        f"must be the version a read returned (a whole number, 0 or more), not {version!r}",
        entry=name,
        field="expected_version",
    )


def _checked_versions(
    versions: Mapping[str, object] | None, errors: list[ForkSchedulerError]
) -> dict[str, int]:
    """The expected versions of a bulk call, each checked (an error per bad one appended to
    ``errors``); a name whose version is ``None`` is not checked, as in the one-entry calls."""
    checked: dict[str, int] = {}
    if versions is not None and not isinstance(versions, Mapping):
        message = f"must be a dict of entry name -> version, not {versions!r:.60}"
        errors.append(ConfigError(message, field="expected_versions"))
        return checked
    for name, version in (versions or {}).items():
        try:
            value = _checked_version(name, version)
        except ConfigError as exc:
            errors.append(exc)
            continue
        if value is not None:
            checked[name] = value
    return checked


def _listed(items: object, field: str) -> list[Any]:
    """The items of a bulk call as a list; a dict (``beat_schedule``'s shape) or anything that
    is not a collection of items is a :class:`ConfigError` naming the argument."""
    if isinstance(items, Mapping):
        raise ConfigError(
            "give a list of dicts, each with its 'name' (from a beat_schedule-shaped dict: "
            "[{'name': name, **entry} for name, entry in schedule.items()])",
            field=field,
        )
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise ConfigError(f"must be a list, not {items!r:.60}", field=field)
    return list(items)


class BulkConfigError(ConfigError):
    """Definitions of a bulk call (``add_many``, ``update_many``, ``remove_many``) are bad:
    nothing was written. ``errors`` holds one error per bad definition, each naming its entry
    and field: :class:`ConfigError` (``StoredRecordError`` included) or
    :class:`JobNotFoundError`; the message shows the first ten."""

    def __init__(self, errors: Sequence[ForkSchedulerError], *, total: int) -> None:
        self.errors = list(errors)
        shown = "; ".join(str(error) for error in self.errors[:SHOWN_ERRORS])
        more = len(self.errors) - SHOWN_ERRORS
        super().__init__(
            f"{len(self.errors)} of {total} definitions refused, nothing was written: {shown}"
            + (f"; and {more} more" if more > 0 else "")
        )


class Tagged(NamedTuple):
    """The names of the entries with a tag, sorted: static ones and runtime ones."""

    static: list[str]
    runtime: list[str]


@dataclass(frozen=True)
class _Bulk:
    """What validating many definitions needs, read once."""

    zone: tzinfo
    floor: timedelta
    max_size: int
    static: frozenset[str]
    calendars: Mapping[str, tuple[str, ...]]
    #: Schedule strings parsed so far (most definitions of a bulk call share a few): entry
    #: validation resolves the zone of each, as it would for the string.
    parsed: dict[str, SlotSchedule] = field(default_factory=dict)
    #: The stored form of each (shared) schedule object met: id -> (schedule, its dict).
    stored: dict[int, tuple[SlotSchedule, dict[str, Any]]] = field(default_factory=dict)
    #: The tags met, as the store indexes them (see :func:`joined_tags`).
    joined: dict[frozenset[str], str] = field(default_factory=dict)


class BrokerUnavailableError(ForkSchedulerError):
    """The broker could not be reached to send a run. Without ``task_id`` nothing was sent;
    with it, the broker failed during the publish and the run may have been sent."""

    def __init__(self, name: str, error: Exception, *, task_id: str | None = None) -> None:
        self.name = name
        self.error = error
        self.task_id = task_id
        outcome = (
            "nothing was sent"
            if task_id is None
            else f"the run may have been sent (task id {task_id}): check before sending again"
        )
        super().__init__(f"cannot send {name!r}: cannot reach the broker: {error}; {outcome}")


class RedisRequiredError(ForkSchedulerError):
    """The operation stores state that every replica must see: it needs Redis."""

    def __init__(self, operation: str) -> None:
        self.operation = operation
        super().__init__(
            f"{operation} needs Redis: set fork_scheduler_redis_url or use a Redis broker"
        )


class Manager:
    """Runtime control of the schedule of one Celery app, for the whole cluster."""

    def __init__(self, app: Any, *, clock: Callable[[], datetime] | None = None) -> None:
        self.app = app
        self._clock = clock or self._server_clock
        self._client: Any = None
        self._job_name: str | None = None
        self._singleton_all = False
        self._service: Any = None
        self._listeners: list[Any] = []
        #: Whether the store's shard layout was checked against Redis (see :meth:`store`).
        self._layout_checked = False

    # -- configuration (chainable) ------------------------------------------------------------

    def name(self, name: str) -> Manager:
        """Name the next job built with :meth:`every`, :meth:`at` or :meth:`cron`."""
        self._job_name = name
        return self

    def singleton_mode(self) -> Manager:
        """Make every job added from now on a singleton (no overlapping runs)."""
        self._singleton_all = True
        return self

    def with_distributed_locker(self, locker: Any) -> Manager:
        """Read and write the schedule through ``locker.client`` (a
        :class:`~celery_fork_scheduler.RedisLocker`'s Redis connection) instead of a client made
        from ``fork_scheduler_redis_url``. Keys keep ``fork_scheduler_key_prefix`` (the locker's
        ``key_prefix`` names its locks only) and no job runs under the locker's lock."""
        self._client = locker.client
        self._layout_checked = False
        return self

    def register_event_listeners(self, *listeners: Any) -> Manager:
        """Register event listeners (see :mod:`celery_fork_scheduler.listeners`)."""
        from .listeners import register_event_listeners

        register_event_listeners(*listeners)
        self._listeners.extend(listeners)
        return self

    # -- building jobs ------------------------------------------------------------------------

    def every(self, n: int = 1) -> JobBuilder:
        """Start a job on an interval or calendar: ``every(5).minutes.do(task)``."""
        return self._builder(every(n))

    def at(self, *times: str) -> JobBuilder:
        """Start a daily job at the given times: ``at("10:30").do(task)``."""
        return self._builder(at(*times))

    def cron(self, expression: str) -> JobBuilder:
        """Start a cron job (5 fields, or 6 with seconds first, or a macro)."""
        return self._builder(cron(expression))

    def _builder(self, target: SlotSchedule | EveryBuilder) -> JobBuilder:
        name, self._job_name = self._job_name, None
        return JobBuilder(
            self, target, JobSpec(name=name, overlap="skip" if self._singleton_all else None)
        )

    @_settings_read_once
    def add(
        self,
        name: str,
        task: Any,
        schedule: object,
        *,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        replace_existing: bool = False,
        expected_version: int | None = None,
        **policies: Any,
    ) -> Job:
        """Store a runtime entry (every replica picks it up) and return it as a :class:`Job`.

        ``policies`` are the entry keys of ``beat_schedule`` (``tags``, ``singleton``,
        ``overlap``, ``timezone``, ``options``, ``max_runs``, ``one_off``, ``start_at``,
        ``end_at``, ``catchup``, ``catchup_window``, ``pause_on_failure``, ``jitter``,
        ``enabled``, ``description``). Without ``replace_existing`` an existing runtime entry of
        that name is an error; with ``expected_version`` a stale replacement is refused.
        """
        task_name = task if isinstance(task, str) else getattr(task, "name", task)
        if self._singleton_all and "overlap" not in policies and "singleton" not in policies:
            policies["overlap"] = "skip"
        definition = {
            "task": task_name,
            "schedule": schedule,
            # Anything but a list/tuple or a dict goes to validation, which names the field.
            "args": list(args) if isinstance(args, (list, tuple)) else args,
            "kwargs": dict(kwargs) if isinstance(kwargs, Mapping) else kwargs,
            **policies,
        }
        entry = self._validate(name, definition)
        expected_version = _checked_version(name, expected_version)
        if name in self._static_names():
            raise ConfigError(
                "a static entry (config or decorator) has this name; "
                "runtime entries cannot replace it",
                entry=name,
            )
        expected = (
            expected_version if expected_version is not None else (None if replace_existing else 0)
        )
        now = self._clock()
        try:
            version = self.store().put(name, self._stored_form(entry), expected, since=now)
        except StaleVersionError:
            if expected != 0:
                raise
            raise ConfigError(
                "a runtime entry of this name exists; pass replace_existing=True", entry=name
            ) from None
        return Job.from_entry(entry, {}, version, now)

    @_settings_read_once
    def update(self, name: str, *, expected_version: int | None = None, **changes: Any) -> Job:
        """Change fields of a runtime entry; a stale ``expected_version`` is refused.

        Without ``expected_version`` only the given fields change: when another writer
        changed the entry between the read and the write, the changes are applied again to
        what it wrote (up to :data:`UPDATE_ATTEMPTS` times)."""
        _check_name(name)
        expected_version = _checked_version(name, expected_version)
        attempts_left = UPDATE_ATTEMPTS
        while True:
            stored = self._stored(name)
            entry = self._validate(name, _changed(stored.data, changes))
            now = self._clock()
            try:
                version = self.store().put(
                    name,
                    self._stored_form(entry),
                    stored.version if expected_version is None else expected_version,
                    since=now,
                )
            except StaleVersionError:
                attempts_left -= 1
                if expected_version is not None or not attempts_left:
                    raise
                continue
            return Job.from_entry(entry, self.store().states([name])[name], version, now)

    def _validate(self, name: str, definition: Mapping[str, Any]) -> Entry:
        _check_name(name)
        if len(name) > 200 or any(ch in name for ch in "\n\r\t"):
            raise ConfigError(
                "entry names are at most 200 characters, without control characters",
                entry=name[:60],
                field="name",
            )
        settings = self._settings()
        return entry_from_config(
            name,
            definition,
            default_timezone=app_timezone(self.app),
            source="runtime",
            min_interval=settings.min_interval,
            calendars=settings.calendars,
        )

    def _stored_form(self, entry: Entry) -> dict[str, Any]:
        return entry_to_dict(entry, max_size=self._settings().max_entry_size)

    # -- bulk changes ---------------------------------------------------------------------------

    @_settings_read_once
    def add_many(
        self,
        definitions: Iterable[Mapping[str, Any]],
        *,
        replace_existing: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> dict[str, int]:
        """Store many runtime entries; returns name -> version, in the order given.

        Each definition is a dict: ``name`` plus the keys of a ``beat_schedule`` entry
        (``task`` — a name or a task —, ``schedule``, ``args``, ``tags``, ...). Every one is
        validated, and (without ``replace_existing``) checked not to exist, before anything is
        written: any problem raises one :class:`BulkConfigError` naming each bad entry and
        field, and nothing is stored. Then ``batch_size`` entries are written per round trip,
        each batch at once; a name added by someone else meanwhile fails its batch with
        :class:`BulkConflictError` (``written``: what the batches before stored).
        """
        bulk, size = self._bulk(), _batch(batch_size)
        items: list[tuple[str, tuple[str, str]]] = []
        errors: list[ForkSchedulerError] = []
        definitions = _listed(definitions, "definitions")
        total = len(definitions)
        with self._versions_ahead([] if replace_existing else _names(definitions)) as read:
            for name, fields in self._each_named(definitions, errors):
                try:
                    items.append((name, self._encoded(name, fields, bulk)))
                except ConfigError as exc:
                    errors.append(exc)
            existing = read()
        errors += [
            ConfigError(
                "a runtime entry of this name exists; pass replace_existing=True", entry=name
            )
            for name, _ in items
            if existing.get(name) is not None
        ]
        if errors:
            raise BulkConfigError(errors, total=total)
        expected = None if replace_existing else 0
        return self._put_many([(name, text, expected, tags) for name, (text, tags) in items], size)

    def _each_named(
        self, definitions: Sequence[Mapping[str, Any]], errors: list[ForkSchedulerError]
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Each definition's name and other fields, each name once; a definition without a
        valid name, or repeating one, goes to ``errors``."""
        seen: set[str] = set()
        for index, definition in enumerate(definitions):
            try:
                name, fields = self._named(index, definition)
                if name in seen:
                    raise ConfigError("is given more than once", entry=name, field="name")
            except ConfigError as exc:
                errors.append(exc)
                continue
            seen.add(name)
            yield name, fields

    @_settings_read_once
    def update_many(
        self,
        changes: Iterable[Mapping[str, Any]],
        *,
        expected_versions: Mapping[str, int] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> dict[str, int]:
        """Change fields of many runtime entries, as :meth:`update` does for one; returns
        name -> new version. Each change is a dict: ``name`` plus the keys that change.

        Every entry is read (at one instant per batch of names) and every result validated
        before anything is written (:class:`BulkConfigError`, naming each bad entry and field;
        a missing entry is a :class:`JobNotFoundError` in it). Each entry is written only if it
        is still at the version read, or at ``expected_versions[name]`` when given: otherwise
        :class:`BulkConflictError`, before anything is written when the versions read already
        differ, else for the batch that met the change.
        """
        bulk, size = self._bulk(), _batch(batch_size)
        wanted: dict[str, dict[str, Any]] = {}
        errors: list[ForkSchedulerError] = []
        changes = _listed(changes, "changes")
        total = len(changes)
        for name, fields in self._each_named(changes, errors):
            if name in bulk.static:
                message = "static entries cannot be changed at runtime"
                errors.append(ConfigError(message, entry=name))
            else:
                wanted[name] = fields
        expected_versions = _checked_versions(expected_versions, errors)
        errors += [
            ConfigError("an expected version is given, but no change", entry=name)
            for name in expected_versions
            if name not in wanted
        ]
        stored = self._get_many(list(wanted))
        items: list[tuple[str, str, int | None, str]] = []
        conflicts: list[StaleVersionError] = []
        for name, fields in wanted.items():
            item = stored.get(name)
            try:
                if item is None:
                    raise JobNotFoundError(name)
                if not isinstance(item, StoredEntry):
                    raise StoredRecordError(name)
                definition = _changed(item.data, fields)
                text, tags = self._encoded(name, definition, bulk)
                items.append((name, text, item.version, tags))
            except (ConfigError, JobNotFoundError) as exc:
                errors.append(exc)
                continue
            expected = expected_versions.get(name, item.version)
            if expected != item.version:
                conflicts.append(StaleVersionError(name, expected, item.version))
        if errors:
            raise BulkConfigError(errors, total=total)
        if conflicts:
            raise BulkConflictError(conflicts)
        return self._put_many(items, size)

    @_settings_read_once
    def remove_many(
        self,
        names: Iterable[str],
        *,
        expected_versions: Mapping[str, int] | None = None,
        missing_ok: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> list[str]:
        """Remove many runtime entries; returns the names removed, in the order given.

        Every name is checked before anything is removed: a static entry's name, a bad name or
        (unless ``missing_ok``) a name with no runtime entry raises one
        :class:`BulkConfigError` naming each. ``expected_versions`` (name -> version) refuses
        stale removals as :meth:`remove` does (:class:`BulkConflictError`).
        """
        if isinstance(names, (str, bytes)):
            raise ConfigError("give a list of entry names, not one string", field="names")
        names = _listed(names, "names")
        static = self._bulk().static
        unique: list[str] = []
        errors: list[ForkSchedulerError] = []
        total = 0
        for name in names:
            total += 1
            try:
                _check_name(name)
                if name in static:
                    raise ConfigError(
                        "static entries (config or decorator) cannot be removed at runtime; "
                        "pause it, or remove it from the code",
                        entry=name,
                    )
            except ConfigError as exc:
                errors.append(exc)
                continue
            unique.append(name)
        unique = list(dict.fromkeys(unique))
        expected = _checked_versions(expected_versions, errors)
        versions = self._versions(unique)
        if not missing_ok:
            errors += [JobNotFoundError(name) for name in unique if versions[name] is None]
        if errors:
            raise BulkConfigError(errors, total=total)
        conflicts = [
            StaleVersionError(name, expected[name], versions[name] or 0)
            for name in unique
            if name in expected and expected[name] != versions[name]
        ]
        if conflicts:
            raise BulkConflictError(conflicts)
        present = [name for name in unique if versions[name] is not None]
        return self._delete_many([(name, expected.get(name)) for name in present], batch_size)

    @_settings_read_once
    def tagged(self, tag: str) -> Tagged:
        """The names of the entries with ``tag``, static and runtime (one read of the runtime
        entries' tag index)."""
        static, runtime = self._indexed(tag)
        if runtime:  # only names that have an entry (an earlier version's removal may linger)
            runtime = [name for name, v in self._versions(runtime).items() if v is not None]
        return Tagged(static, runtime)

    def _indexed(self, tag: str) -> Tagged:
        """:meth:`tagged`, the runtime names as the tag index has them: some may have no entry
        any more."""
        if not isinstance(tag, str) or not tag or has_lone_surrogates(tag):
            raise ConfigError(f"tags must be non-empty UTF-8 text, not {tag!r}", field="tag")
        static = self._static_entries()
        runtime = self.store().names_with_tag(tag) if self._has_redis() else []
        return Tagged(
            sorted(name for name, entry in static.items() if tag in entry.tags),
            sorted(name for name in runtime if name not in static),
        )

    def _bulk(self) -> _Bulk:
        settings = self._settings()
        return _Bulk(
            app_timezone(self.app),
            settings.min_interval,
            settings.max_entry_size,
            self._static_names(),
            settings.calendars,
        )

    def _named(self, index: int, definition: object) -> tuple[str, dict[str, Any]]:
        """The name and the other fields of ``definitions[index]``, its name checked."""
        if not isinstance(definition, Mapping):
            raise ConfigError(
                f"must be a dict with a name, not {type(definition).__name__} "
                f"(definitions[{index}])"
            )
        fields = dict(definition)
        name = fields.pop("name", None)
        try:
            _check_name(name)
        except ConfigError as exc:
            raise ConfigError(f"{exc.reason} (definitions[{index}])", field="name") from None
        assert isinstance(name, str)
        task = fields.get("task")
        if task is not None and not isinstance(task, str):
            fields["task"] = getattr(task, "name", task)
        return name, fields

    def _encoded(self, name: str, definition: dict[str, Any], bulk: _Bulk) -> tuple[str, str]:
        """The stored JSON of one definition (a dict of the caller's own, which this may
        change), validated as :meth:`add` validates it, and its tags as the store indexes
        them."""
        if name in bulk.static:
            raise ConfigError(
                "a static entry (config or decorator) has this name; "
                "runtime entries cannot replace it",
                entry=name,
            )
        if self._singleton_all and "overlap" not in definition and "singleton" not in definition:
            definition["overlap"] = "skip"
        raw = definition.get("schedule")
        if isinstance(raw, str):
            parsed = bulk.parsed.get(raw)
            if parsed is None and len(bulk.parsed) < MAX_PARSED:
                with contextlib.suppress(Exception):  # entry_from_config names the error
                    parsed = bulk.parsed[raw] = parse_schedule(raw)
            if parsed is not None:
                definition["schedule"] = parsed
        entry = entry_from_config(
            name,
            definition,
            default_timezone=bulk.zone,
            source="runtime",
            min_interval=bulk.floor,
            calendars=bulk.calendars,
        )
        if entry.lazy:
            entry_to_dict(entry, max_size=bulk.max_size)  # refuses them, naming the field
        known = bulk.stored.get(id(entry.schedule))
        if known is None or known[0] is not entry.schedule:
            known = bulk.stored[id(entry.schedule)] = (entry.schedule, entry.schedule.to_dict())
        data = stored_fields(entry, known[1])
        try:
            # As encode_entry, whose depth check entry_from_config made field by field.
            encoded = _JSON.encode(data)
        except (TypeError, ValueError):
            entry_to_dict(entry, max_size=bulk.max_size)  # names the field that cannot be stored
            encode_entry(name, data)
            raise ConfigError("cannot be stored as JSON", entry=name) from None
        if len(encoded.encode()) > min(bulk.max_size, MAX_STORED_BYTES):
            check_size(name, data, min(bulk.max_size, MAX_STORED_BYTES))
        joined = bulk.joined.get(entry.tags)
        if joined is None:
            joined = joined_tags(data["tags"])
            if len(bulk.joined) < MAX_PARSED:
                bulk.joined[entry.tags] = joined
        return encoded, joined

    def _versions(self, names: Sequence[str]) -> dict[str, int | None]:
        store, versions = self.store(), {}
        for start in range(0, len(names), DEFAULT_BATCH_SIZE):
            versions.update(store.versions(names[start : start + DEFAULT_BATCH_SIZE]))
        return versions

    def _versions_ahead(
        self, names: Sequence[str]
    ) -> contextlib.AbstractContextManager[Callable[[], dict[str, int | None]]]:
        """:meth:`RuntimeStore.versions_ahead`; no Redis asked for no names."""
        if not names:
            return contextlib.nullcontext(dict)
        return self.store().versions_ahead(names)

    def _get_many(self, names: Sequence[str]) -> dict[str, StoredEntry | bytes]:
        store, stored = self.store(), {}
        for start in range(0, len(names), DEFAULT_BATCH_SIZE):
            stored.update(store.get_many(names[start : start + DEFAULT_BATCH_SIZE]))
        return stored

    def _put_many(
        self, items: Sequence[tuple[str, str, int | None, str]], batch_size: int
    ) -> dict[str, int]:
        """Write ``items`` in batches, each from the clock read just before it (as
        :meth:`add` does for one entry)."""
        batches = (
            (items[start : start + batch_size], self._clock())
            for start in range(0, len(items), batch_size)
        )
        written = self.store().put_batches(batches)
        return dict(zip((item[0] for item in items), written, strict=True))

    def _delete_many(self, items: Sequence[tuple[str, int | None]], batch_size: int) -> list[str]:
        store, removed = self.store(), list[str]()
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            try:
                versions = store.delete_many(batch, removed_at=self._clock())
            except BulkConflictError as exc:
                raise exc.after(removed) from None
            removed += [name for (name, _), v in zip(batch, versions, strict=True) if v]
        return removed

    # -- reading ------------------------------------------------------------------------------

    @_settings_read_once
    def jobs(self, tag: str | None = None) -> list[Job]:
        """Every entry (static and runtime), optionally only those with ``tag``; by name."""
        if tag is not None and not isinstance(tag, str):
            raise ConfigError(f"tag must be a string, not {tag!r}", field="tag")
        entries = self._all_entries()
        if tag is not None:
            entries = {n: e for n, e in entries.items() if tag in e[0].tags}
        states = self._states(sorted(entries))
        now = self._clock()
        return [
            Job.from_entry(entry, states.get(name, {}), version, now)
            for name, (entry, version) in sorted(entries.items())
        ]

    @_settings_read_once
    def get(self, name: str) -> Job:
        """One entry as a :class:`Job`; :class:`JobNotFoundError` if there is none."""
        entry, version = self._entry(name)
        state = self._states([name], strict=True).get(name, {})
        return Job.from_entry(entry, state, version, self._clock())

    def unreadable(self) -> dict[str, str]:
        """The runtime entries that cannot be read, name -> why; :meth:`jobs` leaves them out."""
        return self._runtime()[1] if self._has_redis() else {}

    def next_runs(self, name: str, n: int = 5, *, after: datetime | None = None) -> list[datetime]:
        """The next ``n`` slots of an entry (UTC), after now or ``after``."""
        _check_count(n, "n")
        if after is not None and (not isinstance(after, datetime) or after.tzinfo is None):
            raise ConfigError(f"must be an aware datetime, not {after!r}", field="after")
        entry, _ = self._entry(name)
        return list(_first_slots(entry, after or self._clock(), n))

    def excluded_runs(self, name: str, slots: Iterable[datetime]) -> list[datetime]:
        """Those of ``slots`` that fall on the entry's exclusion dates (``exclude``,
        ``calendar``): they are recorded skipped (``excluded``), never published."""
        entry, _ = self._entry(name)
        return [slot for slot in slots if entry.excludes(slot)]

    def history(self, name: str, n: int = 20) -> list[RunRecord]:
        """The latest runs of an entry, newest first (up to ``fork_scheduler_history_size``);
        ``ValueError`` when an item cannot be decoded (see :meth:`history_items`)."""
        return [item.record() for item in self.history_items(name, n)]

    def history_items(self, name: str, n: int = 20) -> list[HistoryItem]:
        """The latest history items of an entry as stored, newest first, for display: an item
        that cannot be decoded is kept as its text rather than raising."""
        _check_count(n, "n")
        self._entry(name)
        try:
            raw = self._redis().lrange(self._keys().history(name), 0, n - 1) if n else []
        except redis.ResponseError as exc:
            if wrong_type(exc):
                raise StoredStateError(name, exc, "history") from None
            raise
        return [HistoryItem.from_stored(item) for item in raw]

    def outages(self, n: int = 20) -> list[Outage]:
        """The latest claim-backend outages the replicas came through, newest first: what
        each cost (``schedule history --outages``). Items that cannot be read are left out."""
        _check_count(n, "n")
        raw = self._redis().lrange(self._keys().outages, 0, n - 1) if n else []
        return [outage for outage in map(Outage.decode, raw) if outage is not None]

    @_settings_read_once
    def stats(self, name: str) -> EntryStats:
        """The counters of an entry: runs, skips by reason, failures, completions, errors."""
        self._entry(name)
        return EntryStats.from_state(self.store().states([name])[name])

    def replicas(self, within: float = 60) -> list[ReplicaInfo]:
        """The beat replicas that ticked within ``within`` seconds, by id (a record whose tick
        cannot be read is always listed: a crashed replica leaves its record behind)."""
        if isinstance(within, bool) or not isinstance(within, int | float) or not within >= 0:
            raise ConfigError(
                f"within must be a number of seconds >= 0, not {within!r}", field="within"
            )
        now = self._clock()
        records = self._redis().hgetall(self._keys().replicas)
        replicas = [ReplicaInfo.from_stored(rid, raw, now) for rid, raw in records.items()]
        return sorted((r for r in replicas if r.seen_within(within)), key=lambda r: r.id)

    def check(self) -> list[Problem]:
        """Every problem of the schedule: settings, config, @periodic and runtime entries,
        unknown tasks, args that do not fit, Redis (see :mod:`.validation`)."""
        return list(self.check_report().problems)

    def check_report(self) -> CheckReport:
        """:meth:`check` with the names of the valid entries."""
        return check_app_report(self.app, client=self._client)

    # -- steering -------------------------------------------------------------------------------

    @_settings_read_once
    def remove(self, name: str, *, expected_version: int | None = None) -> bool:
        """Remove a runtime entry; static entries cannot be removed (ConfigError). A slot
        that was due before the removal still fires once if a replica had not published it
        yet; no later slot does."""
        _check_name(name)
        if name in self._static_names():
            raise ConfigError(
                "static entries (config or decorator) cannot be removed at runtime; "
                "pause it, or remove it from the code",
                entry=name,
            )
        expected_version = _checked_version(name, expected_version)
        if not self.store().delete(name, expected_version, removed_at=self._clock()):
            raise JobNotFoundError(name)
        return True

    @_settings_read_once
    def remove_by_tag(self, tag: str) -> list[str]:
        """Remove every runtime entry with ``tag``; returns their names, sorted (static ones
        stay). One read finds them; they are removed in batches (see :meth:`remove_many`),
        whose script passes over a name the index keeps without an entry."""
        return self._delete_many(
            [(name, None) for name in self._indexed(tag).runtime], DEFAULT_BATCH_SIZE
        )

    @_settings_read_once
    def clear(self) -> int:
        """Remove every runtime entry; returns how many."""
        names = self.store().names()
        return len(self._delete_many([(name, None) for name in names], DEFAULT_BATCH_SIZE))

    @_settings_read_once
    def pause(
        self, name: str | None = None, *, tag: str | None = None, note: str = ""
    ) -> list[str]:
        """Pause one entry or every entry with ``tag``, for every replica; returns the names."""
        names = self._select(name, tag)
        self._states(names, strict=True)  # one entry's corrupted state: nothing is paused
        self.store().pause(names, note, at=self._clock())
        return names

    @_settings_read_once
    def resume(self, name: str | None = None, *, tag: str | None = None) -> list[str]:
        """Resume one entry or every entry with ``tag``; returns the names."""
        names = self._select(name, tag)
        self._states(names, strict=True)  # one entry's corrupted state: nothing is resumed
        self.store().resume(names)
        return names

    @_settings_read_once
    def is_paused(self, name: str) -> PauseState:
        """Whether an entry is paused, with the note and since when."""
        self._entry(name)
        return self.store().pause_states([name])[name]

    def run_now(self, name: str, *, force: bool = False) -> str | None:
        """Publish one run of an entry now; returns its task id, or ``None`` when the run was
        skipped (see :meth:`trigger`, which says why)."""
        return self.trigger(name, force=force).task_id

    def trigger(self, name: str, *, force: bool = False) -> TriggerResult:
        """Publish one run of an entry now, outside its schedule.

        - A paused entry is not run (``skipped="paused"``), nor a disabled one
          (``skipped="disabled"``: ``enabled=False`` never fires it), unless ``force=True``.
        - It does not count towards ``max_runs`` (``Job.manual_runs`` counts it), so a finished
          entry can be triggered too.
        - It respects the overlap policy: ``skipped="busy"`` while a run of a singleton (or
          ``buffer_one``) entry holds its marker; and the concurrency cap (``"capped"``).

        Redis and the broker are reached first: when either cannot be, nothing is sent (the
        Redis error, or :class:`BrokerUnavailableError`). A broker lost during the publish is a
        :class:`BrokerUnavailableError` with the ``task_id`` that may have been sent. After any
        failure to send, the marker and the place are given back at once (a run that was sent
        anyway takes them again when it starts, or is not run if another run holds them). Once
        the run is sent, a failure to record it in Redis does not raise: the result says what
        was not recorded (``unrecorded``).
        """
        entry, _ = self._entry(name)
        if not entry.enabled and not force:
            logger.info("fork scheduler: run_now(%s) skipped: the entry is disabled", name)
            return TriggerResult(skipped="disabled")
        client, keys, settings = self._redis(), self._keys(), self._settings()
        if client.hget(keys.state(name), "paused") and not force:
            logger.info("fork scheduler: run_now(%s) skipped: the entry is paused", name)
            return TriggerResult(skipped="paused")
        self._reach_broker(name)
        slot = self._clock()
        task_id = manual_task_id(name, slot)
        lease_ms = int(settings.singleton_lease.total_seconds() * 1000)
        if entry.singleton and not client.set(keys.running(name), task_id, nx=True, px=lease_ms):
            logger.info(
                "fork scheduler: run_now(%s) skipped: the previous run is still executing", name
            )
            return TriggerResult(skipped="busy")
        capped = settings.max_concurrent > 0
        replacing = entry.overlap in REPLACING
        try:  # a Redis error from here on gives back what was taken (round 66)
            if capped:
                granted = client.eval(
                    TAKE_CAP_PLACES, 1, keys.cap, settings.max_concurrent, lease_ms * 1000, task_id
                )
                if not int(granted[0]):
                    self._give_back(entry, task_id, capped=False)
                    logger.warning(
                        "fork scheduler: run_now(%s) skipped: concurrency cap reached", name
                    )
                    return TriggerResult(skipped="capped")
            replaced = client.hget(keys.state(name), "latest_run") if replacing else None
            if replacing:  # the newest run wins: an older one waiting gives way
                client.hset(keys.state(name), "latest_run", task_id)
        except redis.RedisError:
            self._give_back(entry, task_id, capped=capped)
            raise
        try:  # (lazy arguments that raise are a failure to send too: round 63)
            occurrence = build_occurrence(entry, slot, task_id, capped=capped)
            occurrence = replace(occurrence, headers={**occurrence.headers, MANUAL_HEADER: True})
            CeleryPublisher(self.app, lambda: None).publish(occurrence)
        except OperationalError as exc:  # connected, then lost: the message may have gone out
            self._give_back(entry, task_id, capped=capped)
            raise BrokerUnavailableError(name, exc, task_id=task_id) from exc
        except Exception:
            if replacing:  # never sent: it replaces nothing
                self._unreplace(name, task_id, replaced)
            self._give_back(entry, task_id, capped=capped)
            raise
        if replacing:  # the latest run sent (see lua._UNREPLACE)
            client.hset(keys.state(name), "sent_run", f"{to_epoch_us(slot)} {task_id}")
        return self._record_manual_run(name, slot, task_id)

    def _unreplace(self, name: str, task_id: str, replaced: bytes | str | None) -> None:
        """A manual run of a replacing entry that was not sent: the run it was to replace is
        the latest again (unless a later one was claimed meanwhile)."""
        client, state = self._redis(), self._keys().state(name)
        if _text(client.hget(state, "latest_run") or b"") != task_id:
            return
        if replaced is None:
            client.hdel(state, "latest_run")
        else:
            client.hset(state, "latest_run", replaced)

    def backfill(
        self,
        name: str,
        start: datetime,
        end: datetime,
        *,
        overlap: BackfillOverlap | None = None,
        rate: float = DEFAULT_RATE,
        limit: int = DEFAULT_LIMIT,
        dry_run: bool = False,
        force: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> list[BackfillSlot]:
        """Publish each slot of an entry in ``[start, end]`` that was never published, once
        across the cluster, oldest first, at most ``rate`` per second; one
        :class:`BackfillSlot` per slot (see ``docs/manager.md``, "Backfill").

        - ``overlap``: the entry's own policy by default; ``"allow"`` publishes a singleton's
          slots even while one of its runs holds the running marker (``"skip"`` and
          ``"buffer_one"`` both skip them as ``skipped:busy``).
        - ``force``: also slots older than what the entry's capped history remembers
          (``skipped:unknown`` otherwise) and slots of a paused entry (``skipped:paused``).
        - ``dry_run``: decide every slot (``would_send``) without writing or sending anything.
        - Naive datetimes are UTC. :class:`BackfillInputError` (nothing written) when ``start``
          is after ``end``, the range holds more than ``limit`` slots, or an option is bad;
          :class:`JobNotFoundError` for an unknown entry; :class:`BrokerUnavailableError`
          when the broker cannot be reached (nothing claimed).
        """
        entry, version = self._entry(name)
        options = BackfillOptions(
            overlap=overlap, rate=rate, limit=limit, dry_run=dry_run, force=force
        ).checked(name)
        slots = backfill_slots(entry, start, end, options.limit)
        client = self._redis()
        if not dry_run:
            self._reach_broker(name)
        return run_backfill(
            self.app,
            client,
            self._keys(),
            self._settings(),
            entry,
            slots,
            options,
            sleep=sleep,
            monotonic=monotonic,
            version=version if entry.source == "runtime" else None,
        )

    def _reach_broker(self, name: str) -> None:
        """Connect to the broker once, so that a broker that is down costs nothing."""
        try:
            with self.app.connection_for_write() as connection:
                connection.ensure_connection(
                    max_retries=2, interval_start=0, interval_step=0.2, interval_max=0.2
                )
        except OperationalError as exc:
            raise BrokerUnavailableError(name, exc) from exc

    def _give_back(self, entry: Entry, task_id: str, *, capped: bool) -> None:
        """Free the singleton marker and the place under the cap of a run never sent."""
        client, keys = self._redis(), self._keys()
        try:
            if entry.singleton:
                client.eval(RELEASE_UNSENT, 1, keys.running(entry.name), task_id)
            if capped:
                client.zrem(keys.cap, task_id)
        except redis.RedisError as exc:
            logger.warning(
                "fork scheduler: run_now(%s) was not sent and its markers could not be freed "
                "(they expire with their lease): %s",
                entry.name,
                exc,
            )

    def _record_manual_run(self, name: str, slot: datetime, task_id: str) -> TriggerResult:
        keys = self._keys()
        pipe = self._redis().pipeline(transaction=False)
        pipe.hincrby(keys.state(name), "manual_runs", 1)
        pipe.hset(keys.state(name), "last_manual_run", slot.isoformat())
        try:
            pipe.execute()
        except redis.RedisError as exc:
            why = f"{type(exc).__name__}: {exc}"
            logger.warning(
                "fork scheduler: run_now(%s) sent task %s, but the run was not recorded: %s",
                name,
                task_id,
                why,
            )
            return TriggerResult(task_id=task_id, unrecorded=why)
        return TriggerResult(task_id=task_id)

    # -- embedded beat ----------------------------------------------------------------------------

    def start(self) -> Manager:
        """Run a beat replica in a thread of this process (an embedded scheduler)."""
        if self.is_running():
            return self
        from .scheduler import Scheduler

        self._service = EmbeddedService(self.app, thread=True, scheduler_cls=Scheduler)
        self._service.start()
        return self

    def stop(self) -> None:
        """Stop the embedded beat replica, if running."""
        if self._service is not None:
            self._service.stop()
            self._service = None

    def is_running(self) -> bool:
        """True while the embedded beat replica runs."""
        return self._service is not None and self._service.is_alive()

    # -- internals -------------------------------------------------------------------------

    def _settings(self) -> Settings:
        """The settings; one reading per call of a method made :func:`_settings_read_once`."""
        pinned = _CALL_SETTINGS.get()
        if pinned is not None and pinned[0] is self:
            return pinned[1]
        return read_settings(self.app.conf)

    def _keys(self) -> Keys:
        return Keys(self._settings().key_prefix)

    def _redis(self) -> Any:
        if self._client is None:
            self._client = redis_client_for(self.app, self._settings())
            if self._client is None:
                raise RedisRequiredError("this operation")
        return self._client

    def store(self) -> RuntimeStore | ShardedStore:
        """The runtime store (Redis); :class:`RedisRequiredError` without Redis, and
        :class:`ConfigError` when ``fork_scheduler_runtime_shards`` differs from the layout of
        the stored entries (checked on first use)."""
        store = runtime_store(self._redis(), self._keys(), self._settings().runtime_shards)
        if not self._layout_checked:
            store.check_layout(record=False)  # recorded by the first write
            self._layout_checked = True
        return store

    def _static_names(self) -> frozenset[str]:
        """The names of the static entries (``beat_schedule`` and decorators), without building
        them: a runtime write only needs to know it does not take one's name."""
        schedule = self.app.conf.beat_schedule or {}
        registry = self.app.__dict__.get(REGISTRY_ATTRIBUTE) or {}
        if not isinstance(schedule, Mapping) or not isinstance(registry, Mapping):
            return frozenset(self._static_entries())  # raises the error naming the setting
        return frozenset(schedule) | frozenset(registry)

    def _static_entries(self) -> dict[str, Entry]:
        floor = self._settings().min_interval
        calendars = self._settings().calendars
        entries = entries_from_config(
            self.app.conf.beat_schedule,
            default_timezone=app_timezone(self.app),
            min_interval=floor,
            calendars=calendars,
        )
        decorated = periodic_entries(
            self.app,
            default_timezone=app_timezone(self.app),
            min_interval=floor,
            calendars=calendars,
        )
        for name, entry in decorated.items():
            entries.setdefault(name, entry)  # beat_schedule wins, as in beat
        return entries

    def _all_entries(self) -> dict[str, tuple[Entry, int]]:
        entries = {name: (entry, 0) for name, entry in self._static_entries().items()}
        if self._has_redis():
            for name, item in self._runtime()[0].items():
                entries.setdefault(name, item)
        return entries

    def _runtime(self) -> tuple[dict[str, tuple[Entry, int]], dict[str, str]]:
        """The readable runtime entries with their versions, and why the others are not."""
        entries: dict[str, tuple[Entry, int]] = {}
        unreadable: dict[str, str] = {}
        floor = self._settings().min_interval
        for name, item in self.store().all()[1].items():
            try:
                if not isinstance(item, StoredEntry):
                    raise StoredRecordError(name)
                entries[name] = (self._from_stored(item, floor), item.version)
            except ForkSchedulerError as exc:
                logger.error("fork scheduler: stored entry skipped: %s", exc)
                unreadable[name] = str(exc)
        return entries, unreadable

    def _entry(self, name: str) -> tuple[Entry, int]:
        _check_name(name)
        static = self._static_entries()
        if name in static:
            return static[name], 0
        if self._has_redis():
            stored = self._get_stored(name)
            if stored is not None:
                return self._from_stored(stored, self._settings().min_interval), stored.version
        raise JobNotFoundError(name)

    def _stored(self, name: str) -> StoredEntry:
        _check_name(name)
        if name in self._static_names():
            raise ConfigError("static entries cannot be changed at runtime", entry=name)
        stored = self._get_stored(name)
        if stored is None:
            raise JobNotFoundError(name)
        return stored

    def _get_stored(self, name: str) -> StoredEntry | None:
        store = self.store()  # a ConfigError here names a setting, not the record
        try:
            return store.get(name)
        except ConfigError:  # the store's word for JSON it cannot decode
            raise StoredRecordError(name) from None

    def _from_stored(self, stored: StoredEntry, floor: timedelta) -> Entry:
        from .entry import entry_from_dict

        return entry_from_dict(
            stored.name,
            stored.data,
            default_timezone=app_timezone(self.app),
            min_interval=floor,
            calendars=self._settings().calendars,
        )

    def _server_clock(self) -> datetime:
        """Redis's clock, which every replica schedules on (a ``next_run`` computed from it is
        the one they fire); this host's clock without Redis."""
        if self._has_redis():
            with contextlib.suppress(redis.RedisError, OSError):
                seconds, micros = self._redis().time()
                return datetime.fromtimestamp(int(seconds), timezone.utc) + timedelta(
                    microseconds=int(micros)
                )
        return datetime.now(timezone.utc)

    def _has_redis(self) -> bool:
        try:
            self._redis()
        except RedisRequiredError:
            return False
        return True

    def _states(self, names: Sequence[str], *, strict: bool = False) -> dict[str, dict[str, str]]:
        """The state of each entry; one that cannot be read (a key of the wrong type) is left
        out with a warning naming it, or with ``strict`` raises :class:`StoredStateError`."""
        if not self._has_redis() or not names:
            return {}
        states, errors = self.store().read_states(names)
        for name, error in errors.items():
            if strict:
                raise StoredStateError(name, error)
            logger.warning(
                "fork scheduler: the state of entry %r cannot be read, shown without it: %s",
                name,
                error,
            )
        return states

    def _select(self, name: str | None, tag: str | None) -> list[str]:
        if (name is None) == (tag is None):
            raise ValueError("give either a name or a tag")
        if name is not None:
            self._entry(name)
            return [name]
        assert tag is not None
        static, runtime = self.tagged(tag)
        return sorted(static + runtime)


def _changed(data: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """A stored entry's definition with ``changes`` applied, as :meth:`Manager.update` does.

    Unless given too, ``overlap`` and ``max_runs`` follow ``singleton`` and ``one_off`` as far
    as these say: ``singleton=True`` is ``"skip"``, and ``singleton=False`` lifts only
    ``"skip"`` (``buffer_one`` and the others stay); ``one_off=True`` is one run, and
    ``one_off=False`` lifts only a limit of one run (a larger ``max_runs`` stays). Dropping
    the entry's ``timezone`` (``None``) moves its schedule to the app's zone too, unless the
    schedule names a zone of its own (stored with it, see :attr:`.Entry.schedule_zone`)."""
    definition = {key: value for key, value in data.items() if key != "schema"}
    singleton, one_off = changes.get("singleton"), changes.get("one_off")
    if (
        "singleton" in changes
        and "overlap" not in changes
        and (singleton is True or definition.get("overlap") == "skip")
    ):
        definition.pop("overlap", None)
    if (
        "one_off" in changes
        and "max_runs" not in changes
        and (one_off is True or definition.get("max_runs") == 1)
    ):
        definition.pop("max_runs", None)
    if "timezone" in changes and changes["timezone"] is None and "schedule" not in changes:
        definition["schedule"] = _without_zone(definition.get("schedule"), data.get("timezone"))
    definition.update(changes)
    return definition


def _without_zone(schedule: Any, zone: Any) -> Any:
    """A stored schedule without the zone its entry's own ``timezone`` gave it (``zone``), so
    that dropping the entry's zone puts its schedule in the app's zone, as its exclusions are;
    a zone the schedule was given by itself stays."""
    if isinstance(schedule, Mapping) and zone is not None and schedule.get("tz") == zone:
        return {key: value for key, value in schedule.items() if key != "tz"}
    return schedule


def _names(definitions: Sequence[object]) -> list[str]:
    """The names of the definitions that have a valid one (the others are errors)."""
    names = []
    for definition in definitions:
        name = definition.get("name") if isinstance(definition, Mapping) else None
        with contextlib.suppress(ConfigError):
            _check_name(name)
            names.append(cast(str, name))
    return names


def _batch(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 10_000:
        raise ConfigError(f"must be an integer from 1 to 10000, not {size!r}", field="batch_size")
    return size


def _text(value: bytes | str) -> str:
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else value


#: The most items :meth:`Manager.next_runs`, :meth:`Manager.history` and
#: :meth:`Manager.outages` list at once.
MAX_COUNT = 10_000


def _check_count(n: object, field: str) -> None:
    """Refuse a count of items to list that is not a whole number from 0 to :data:`MAX_COUNT`."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_COUNT:
        raise ConfigError(f"must be a whole number from 0 to {MAX_COUNT}, not {n!r}", field=field)


def _check_name(name: object) -> None:
    """Refuse an entry name that is not a non-empty string (``None`` included) before it
    reaches Redis; every method that takes an entry name calls this."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"entry names must be non-empty strings, not {name!r}", field="name")
    if has_lone_surrogates(name):
        raise ConfigError(
            f"entry names must be valid UTF-8 text, not {name!r} (undecodable bytes)",
            field="name",
        )


@dataclass
class JobSpec:
    """What a :class:`JobBuilder` collected besides the schedule."""

    name: str | None = None
    tags: tuple[str, ...] = ()
    overlap: str | None = None
    timezone: str | None = None
    policies: dict[str, Any] = field(default_factory=dict)


class JobBuilder:
    """A job being built: schedule words, then options, then :meth:`do`.

    Schedule words (``.minutes``, ``.at("10:30")``, ``.monday``, ``.on(1, -1)``, ``.offset()``)
    are those of :func:`~celery_fork_scheduler.every`; the builder passes them through.
    """

    def __init__(
        self, manager: Manager, target: SlotSchedule | EveryBuilder, spec: JobSpec
    ) -> None:
        self._manager = manager
        self._target = target
        self._spec = spec

    def __getattr__(self, attribute: str) -> Any:
        value = getattr(self._target, attribute)
        if isinstance(value, (SlotSchedule, EveryBuilder)):
            return JobBuilder(self._manager, value, self._spec)
        if callable(value):
            return lambda *args, **kwargs: self._wrap(value(*args, **kwargs))
        return value

    def _wrap(self, value: Any) -> Any:
        if isinstance(value, (SlotSchedule, EveryBuilder)):
            return JobBuilder(self._manager, value, self._spec)
        return value

    def _with(self, **changes: Any) -> JobBuilder:
        return JobBuilder(self._manager, self._target, replace(self._spec, **changes))

    def tag(self, *tags: str) -> JobBuilder:
        """Add tags."""
        return self._with(tags=self._spec.tags + tags)

    def name(self, name: str) -> JobBuilder:
        """Name the job (default: ``<task name>@<schedule>``)."""
        return self._with(name=name)

    def singleton(self) -> JobBuilder:
        """No overlapping runs across the cluster: skip a slot while the last run executes."""
        return self._with(overlap="skip")

    def overlap(self, policy: str) -> JobBuilder:
        """``"allow"``, ``"skip"`` (singleton), ``"buffer_one"``, ``"buffer_all"``,
        ``"cancel_other"`` or ``"terminate_other"`` (see docs/singleton.md)."""
        return self._with(overlap=policy)

    def timezone(self, zone: str) -> JobBuilder:
        """The IANA time zone of the schedule."""
        return self._with(timezone=zone)

    def options(self, **options: Any) -> JobBuilder:
        """``apply_async`` options (queue, priority, expires, ...)."""
        return self._policy(options={**self._spec.policies.get("options", {}), **options})

    def limit_runs(self, max_runs: int) -> JobBuilder:
        """Run at most ``max_runs`` times (skipped runs do not count)."""
        return self._policy(max_runs=max_runs)

    def one_off(self) -> JobBuilder:
        """Run once."""
        return self._policy(one_off=True)

    def between(
        self, start_at: datetime | None = None, end_at: datetime | None = None
    ) -> JobBuilder:
        """Only fire from ``start_at`` and until ``end_at``."""
        return self._policy(start_at=start_at, end_at=end_at)

    def _policy(self, **policies: Any) -> JobBuilder:
        return self._with(policies={**self._spec.policies, **policies})

    def do(self, task: Any, *args: Any, **kwargs: Any) -> Job:
        """Store the job for every replica and return it."""
        if isinstance(self._target, EveryBuilder):
            raise ConfigError(
                "incomplete schedule: add a unit, e.g. every(5).minutes", field="schedule"
            )
        task_name = task if isinstance(task, str) else getattr(task, "name", task)
        name = self._spec.name
        if name is None:
            name = f"{task_name}@{self._target.describe()}"
        policies: dict[str, Any] = dict(self._spec.policies)
        if self._spec.tags:
            policies["tags"] = list(self._spec.tags)
        if self._spec.overlap is not None:
            policies["overlap"] = self._spec.overlap
        if self._spec.timezone is not None:
            policies["timezone"] = self._spec.timezone
        return self._manager.add(name, task, self._target, args=args, kwargs=kwargs, **policies)


def _first_slots(entry: Entry, after: datetime, n: int) -> Iterator[datetime]:
    for _ in range(max(n, 0)):
        slot = entry.first_slot_after(after)
        if slot is None:
            return
        yield slot
        after = slot
