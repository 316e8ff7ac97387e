"""The schedule entry model and its validation from ``beat_schedule`` dictionaries."""

from __future__ import annotations

import functools
import itertools
import json
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone, tzinfo
from types import MappingProxyType
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kombu.entity import Exchange, Queue

from .config import DEFAULTS, has_control_characters, shown
from .durations import to_timedelta
from .errors import ConfigError, ScheduleError
from .exclusions import ExclusionError, Exclusions, compile_exclusions, normalise_items
from .jitter import jitter_offset
from .keys import DIGEST_TAG, MAX_TAG_LENGTH, Keys
from .lazy_args import with_lazy_items
from .schedules import Interval, SlotSchedule, coerce_schedule, schedule_from_dict
from .schedules.base import to_zone
from .schedules.celery_adapters import crontab_key
from .schedules.wall_clock import wall_to_utc

EntrySource = Literal["config", "decorator", "runtime"]
Overlap = Literal["allow", "skip", "buffer_one", "buffer_all", "cancel_other", "terminate_other"]
Catchup = Literal["skip", "latest", "all"]

OVERLAPS: tuple[Overlap, ...] = (
    "allow",
    "skip",
    "buffer_one",
    "buffer_all",
    "cancel_other",
    "terminate_other",
)
#: The policies that hold runs back in Redis as JSON (their args must be JSON).
BUFFERING: tuple[Overlap, ...] = ("buffer_one", "buffer_all")
#: The policies under which a new run replaces (revokes) the one in progress.
REPLACING: tuple[Overlap, ...] = ("cancel_other", "terminate_other")
CATCHUPS: tuple[Catchup, ...] = ("skip", "latest", "all")

#: Keys of Celery's own ``beat_schedule`` entries, all accepted unchanged.
CELERY_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options", "relative"})
#: Keys this package adds.
EXTRA_KEYS = frozenset(
    {
        "tags",
        "singleton",
        "overlap",
        "enabled",
        "timezone",
        "start_at",
        "end_at",
        "description",
        "max_runs",
        "one_off",
        "catchup",
        "catchup_window",
        "pause_on_failure",
        "exclude",
        "calendar",
        "jitter",
    }
)
ENTRY_KEYS = CELERY_KEYS | EXTRA_KEYS

_EPSILON = timedelta(microseconds=1)

#: Limits on what an entry may hold (a runtime entry is written by API callers: these keep one
#: of them from filling Redis, the replicas' memory or the operator's terminal).
MAX_NAME_LENGTH = MAX_TAG_LENGTH
MAX_TASK_LENGTH = 200
MAX_DESCRIPTION_LENGTH = 4_096
MAX_TAGS = 100
MAX_TAG_LENGTH = 100
#: Deepest nesting of lists and dicts in args, kwargs and options (JSON parsers recurse).
MAX_JSON_DEPTH = 32
#: Default floor of the interval between two slots (``fork_scheduler_min_interval``).
DEFAULT_MIN_INTERVAL: timedelta = DEFAULTS["min_interval"]
#: Default largest stored JSON of a runtime entry, bytes (``fork_scheduler_max_entry_size``).
DEFAULT_MAX_ENTRY_SIZE: int = DEFAULTS["max_entry_size"]
#: Message headers Celery sets itself (task protocol 2): an entry must not override them.
CELERY_HEADERS = frozenset(
    {
        "lang",
        "task",
        "id",
        "shadow",
        "eta",
        "expires",
        "group",
        "group_index",
        "retries",
        "timelimit",
        "root_id",
        "parent_id",
        "argsrepr",
        "kwargsrepr",
        "origin",
        "ignore_result",
        "replaced_task_nesting",
        "stamped_headers",
        "stamps",
        "correlation_id",
        "reply_to",
    }
)


#: Shared by every entry without tags, kwargs or options: a million entries need not hold a
#: million empty containers (entries never change theirs).
NO_TAGS: frozenset[str] = frozenset()
NO_MAPPING: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, kw_only=True, eq=False, slots=True)
class Entry:
    """One named schedule: what to send, when, and the policies around it.

    Entries are immutable; a changed definition is a new object, so the scheduler's heap can
    tell a stale item from a current one by identity.
    """

    name: str
    task: str
    schedule: SlotSchedule
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=lambda: NO_MAPPING)
    options: Mapping[str, Any] = field(default_factory=lambda: NO_MAPPING)
    tags: frozenset[str] = NO_TAGS
    overlap: Overlap = "allow"
    enabled: bool = True
    start_at: datetime | None = None
    end_at: datetime | None = None
    description: str = ""
    max_runs: int | None = None
    catchup: Catchup = "latest"
    catchup_window: timedelta | None = None
    #: Pause the entry cluster-wide when one of its runs fails for good (after its retries).
    pause_on_failure: bool = False
    #: Exclusion items of the entry itself, canonical (see :mod:`.exclusions`).
    exclude: tuple[str, ...] = ()
    #: Names of ``fork_scheduler_calendars`` whose dates are excluded too.
    calendar: tuple[str, ...] = ()
    #: ``exclude`` and the calendars' items compiled in the entry's time zone (``None``: none).
    exclusions: Exclusions | None = None
    #: The entry's own jitter (``None``: the app's ``fork_scheduler_default_jitter``).
    jitter: timedelta | None = None
    #: The app's default jitter as it applies to this entry (at most its period); set by the
    #: scheduler (:meth:`with_default_jitter`), never stored.
    default_jitter: timedelta = timedelta(0)
    source: EntrySource = "config"
    #: The entry's own ``timezone`` key as an IANA name (``None``: the app's zone applies);
    #: kept in the stored form, so that its exclusion dates, start and end, and a schedule
    #: changed later are read in it again.
    timezone: str | None = None
    #: With ``timezone`` set, the zone the schedule names itself (``"... in Europe/Berlin"``;
    #: ``None``: none), stored with the schedule: dropping ``timezone`` later gives it back.
    schedule_zone: str | None = None

    @property
    def lazy(self) -> bool:
        """True when ``args`` or ``kwargs`` are callables, evaluated at each publish."""
        return callable(self.args) or callable(self.kwargs)

    @property
    def singleton(self) -> bool:
        """True when runs of this entry must not overlap (``overlap`` is not ``"allow"``)."""
        return self.overlap != "allow"

    def excludes(self, slot: datetime) -> bool:
        """True when ``slot`` falls on an excluded date (it is then skipped, ``excluded``)."""
        return self.exclusions is not None and self.exclusions.excludes(slot)

    @property
    def effective_jitter(self) -> timedelta:
        """The jitter its slots are published with: its own, else the app's default."""
        return self.jitter if self.jitter is not None else self.default_jitter

    def with_default_jitter(self, default: timedelta) -> Entry:
        """This entry under the app's default jitter, cut to its period (itself when the
        default does not apply: it has its own jitter, or the default is zero)."""
        if self.jitter is not None or default <= timedelta(0):
            return self
        period = schedule_period(self.schedule)
        applied = default if period is None else min(default, period)
        if applied == self.default_jitter:
            return self
        return replace(self, default_jitter=applied)

    def publish_at(self, slot: datetime) -> datetime:
        """The instant ``slot`` is published at: the slot plus its deterministic offset in
        ``[0, jitter)`` (see :mod:`.jitter`); the slot itself without jitter.

        Where the next slot comes sooner than the jitter (a cron schedule on the day a
        daylight-saving change shortens a gap), the offset is taken over that gap instead, so
        that every slot is still published before the next one."""
        jitter = self.effective_jitter
        if not jitter:
            return slot
        following = next_slot_of(self.schedule, slot)
        if following is not None and following - slot < jitter:
            jitter = following - slot
        return slot + jitter_offset(self.name, slot, jitter)

    def due_edge(self, at: datetime) -> datetime:
        """The instant that splits the slots at ``at``: those up to it are due (their publish
        instant is ``<= at``), the later ones are not. ``at`` itself without jitter.

        A jitter is at most the gap between two slots, so the publish instants keep the
        slots' order and only the last slot at or before ``at`` can still be waiting.
        """
        if not self.effective_jitter:
            return at
        last = self.schedule.previous_slot(at)
        if last is not None and self.publish_at(last) > at:
            return last - _EPSILON
        return at

    def first_slot_after(self, after: datetime) -> datetime | None:
        """Return the first slot strictly after ``after`` that lies inside start/end."""
        if self.start_at is not None and after < self.start_at:
            after = self.start_at - _EPSILON
        slot = next_slot_of(self.schedule, after)
        if slot is None or (self.end_at is not None and slot > self.end_at):
            return None
        return slot

    def last_slot_at_or_before(self, at: datetime) -> datetime | None:
        """Return the latest slot ``<= at`` inside start/end, or ``None``."""
        if self.end_at is not None and at > self.end_at:
            at = self.end_at
        slot = self.schedule.previous_slot(at)
        if slot is None or (self.start_at is not None and slot < self.start_at):
            return None
        return slot


def next_slot_of(schedule: SlotSchedule, after: datetime) -> datetime | None:
    """``schedule.next_slot(after)``, shared by entries with equal schedules.

    Schedules are immutable values, so thousands of entries with one cron expression (a burst)
    compute their next slot once per instant instead of once each. Only UTC instants are
    cached: two local wall times that differ only in ``fold`` compare (and hash) equal.
    """
    if after.tzinfo is timezone.utc:
        return _next_utc_slot_of(schedule, after)
    return schedule.next_slot(after)


@functools.lru_cache(maxsize=65536)
def _next_utc_slot_of(schedule: SlotSchedule, after: datetime) -> datetime | None:
    return schedule.next_slot(after)


def slots_of(schedule: SlotSchedule, start: datetime, end: datetime) -> Iterator[datetime]:
    """``schedule.slots(start, end)`` through :func:`next_slot_of` (shared by equal schedules)."""
    current = start
    while True:
        following = next_slot_of(schedule, current)
        if following is None or following > end:
            return
        yield following
        current = following


@functools.lru_cache(maxsize=65536)
def shared_schedule(schedule: SlotSchedule) -> SlotSchedule:
    """One instance per distinct schedule: 100 000 entries on one cron share one object."""
    return schedule


def _resolve_schedule(raw: object, zone: tzinfo, own_zone: bool) -> SlotSchedule:
    """The validated, shared schedule of a ``schedule`` value read in ``zone`` (the entry's
    own ``timezone`` when ``own_zone``). Raises :class:`ScheduleError`."""
    schedule = coerce_schedule(raw, default_tz=zone)
    if own_zone:
        schedule = schedule.with_timezone(zone)
    validate_schedule(schedule)
    return shared_schedule(schedule)


#: Schedule values resolved once per distinct value, type and IANA zone: entries added by the
#: thousand share a few (Celery's own schedule objects, and zones of other kinds — fixed
#: offsets equal to each other under other names, dateutil's unhashable ones — each time).
_RESOLVED_ONCE = (str, int, float, timedelta, SlotSchedule)


@functools.lru_cache(maxsize=4096)
def _resolved_schedule(kind: str, raw: object, zone: tzinfo, own_zone: bool) -> SlotSchedule:
    """:func:`_resolve_schedule`, cached (``kind``, the value's type: so that ``1.0`` is not
    taken for ``1``)."""
    return _resolve_schedule(raw, zone, own_zone)


#: Celery schedule objects (unhashable) resolved in one batch of entries: plain crontabs by
#: value, others by identity. Each object is kept beside its resolution, so that its identity
#: is not reused while the memo lives (a mapping may build its values as they are read).
ScheduleMemo = dict[tuple[object, tzinfo, bool], tuple[object, SlotSchedule]]


def _entry_schedule(
    raw: object, zone: tzinfo, own_zone: bool, memo: ScheduleMemo | None
) -> SlotSchedule:
    """The resolved schedule of a ``schedule`` value, each distinct value resolved once:
    100 000 entries sharing one ``crontab`` object, or stored with equal schedule dicts,
    share one resolution. Raises :class:`ScheduleError`."""
    if not isinstance(zone, ZoneInfo):  # other zones may be unhashable: no caching
        decoded = schedule_from_dict(raw) if isinstance(raw, Mapping) else raw
        return _resolve_schedule(decoded, zone, own_zone)
    if isinstance(raw, Mapping):
        try:
            frozen = _frozen(raw)
        except TypeError:  # not JSON-like: decoded as it is (and fails there)
            return _resolve_schedule(schedule_from_dict(raw), zone, own_zone)
        return _schedule_from_frozen(frozen, zone, own_zone)
    if isinstance(raw, _RESOLVED_ONCE):
        kind = type(raw)
        return _resolved_schedule(f"{kind.__module__}.{kind.__qualname__}", raw, zone, own_zone)
    if memo is None:
        return _resolve_schedule(raw, zone, own_zone)
    key = (crontab_key(raw) or id(raw), zone, own_zone)
    known = memo.get(key)
    if known is None:
        known = memo[key] = (raw, _resolve_schedule(raw, zone, own_zone))
    return known[1]


#: Scalar types of a JSON-like value (``bool`` apart from ``int``: they stay apart as keys).
_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})


def _frozen(value: object) -> tuple[type, Any]:
    """A hashable stand-in for a JSON-like value, types included (``1``, ``1.0`` and
    ``True`` stay apart); :class:`TypeError` for anything else."""
    kind = type(value)
    if kind in _JSON_SCALARS:
        return (kind, value)
    if kind is list:
        return (list, tuple(_frozen(item) for item in value))  # type: ignore[attr-defined]
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise TypeError("keys must be strings")
        return (dict, tuple(sorted((key, _frozen(item)) for key, item in value.items())))
    raise TypeError(f"not JSON-like: {kind.__name__}")


def _thawed(frozen: tuple[type, Any]) -> Any:
    """The value :func:`_frozen` stands for (an equal copy)."""
    kind, value = frozen
    if kind is dict:
        return {key: _thawed(item) for key, item in value}
    if kind is list:
        return [_thawed(item) for item in value]
    return value


@functools.lru_cache(maxsize=4096)
def _schedule_from_frozen(frozen: tuple[type, Any], zone: tzinfo, own_zone: bool) -> SlotSchedule:
    """A schedule dict (stored form), decoded and resolved once per distinct dict and zone."""
    return _resolve_schedule(schedule_from_dict(_thawed(frozen)), zone, own_zone)


@functools.lru_cache(maxsize=4096)
def validate_schedule(schedule: SlotSchedule) -> None:
    """``schedule.validate()``, once per distinct schedule (a failure is not cached)."""
    schedule.validate()


def _fail(name: str, field_name: str, message: str) -> ConfigError:
    return ConfigError(message, entry=name, field=field_name)


def _reserved_names(keys: Keys) -> frozenset[str]:
    """The hash tags of the global keys whose entry of that name would own a global key."""
    global_keys = {
        keys.cap,
        keys.runtime_entries,
        keys.runtime_changes,
        keys.runtime_version,
        keys.replicas,
        keys.workers_seen,
    }
    tags = {key[key.index("{") + 1 : key.index("}")] for key in global_keys}
    return frozenset(tag for tag in tags if global_keys & set(keys.entry_keys(tag)))


#: Entry names refused because one of their keys is a global key: ``cap``
#: (``{cap}:running`` is the concurrency cap).
RESERVED_NAMES = _reserved_names(Keys(""))


def _check_name(name: str, source: EntrySource) -> None:
    """Refuse a name that holds control characters or would make one of its keys a global key;
    a runtime entry's name also when it is too long or would break the Redis Cluster hash tag
    ``{<name>}`` of its keys. A static entry's name may (Celery's ``add_periodic_task`` without
    ``name=`` names it ``repr(signature)``): its keys' tag is then a digest (``entry_tag``)."""
    if has_control_characters(name) or (source == "runtime" and len(name) > MAX_NAME_LENGTH):
        raise ConfigError(
            f"entry names are at most {MAX_NAME_LENGTH} characters, without control characters",
            entry=name[:60],
            field="name",
        )
    if source == "runtime" and ("{" in name or "}" in name):
        raise _fail(
            name,
            "name",
            "entry names must not contain '{' or '}' "
            "(the name is the Redis Cluster hash tag of the entry's keys)",
        )
    if name in RESERVED_NAMES:
        raise _fail(name, "name", "this entry name is reserved: its keys would be global keys")
    if DIGEST_TAG.fullmatch(name):
        raise _fail(
            name,
            "name",
            "'#' and 32 hexadecimal digits is the form of the digest that tags the keys of "
            "entries whose names cannot (see entry_tag): another entry's keys",
        )


def _check_json(name: str, overlap: Overlap, values: Mapping[str, object]) -> None:
    """``buffer_one`` and ``buffer_all`` hold runs back in Redis as JSON: their args, kwargs and
    options must be JSON. Lazy (callable) args and kwargs cannot be checked here: the scheduler
    checks what they return when it publishes."""
    if overlap not in BUFFERING:
        return
    for field_name, value in values.items():
        if callable(value):
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise _fail(
                name,
                field_name,
                f"overlap {overlap!r} holds runs back in Redis as JSON, "
                f"and this cannot be stored as JSON: {exc}",
            ) from None


def _flat(value: object) -> bool:
    """Whether ``value`` is a list, tuple or dict of scalars only (depth 1 at most)."""
    items = value.values() if isinstance(value, Mapping) else value
    return isinstance(items, (list, tuple, type({}.values()))) and all(
        type(item) in _JSON_SCALARS for item in items
    )


def json_depth(value: object, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply lists and dicts nest in ``value`` (a scalar is 0); counts no further than
    ``limit + 1``."""
    depth = 0
    level = [value]
    while depth <= limit:
        children: list[object] = []
        nested = False
        for item in level:
            if isinstance(item, Mapping):
                nested = True
                children.extend(item.values())
            elif isinstance(item, (list, tuple)):
                nested = True
                children.extend(item)
        if not nested:
            break
        depth += 1
        level = children
    return depth


def _check_depth(name: str, field_name: str, value: object) -> None:
    if not callable(value) and json_depth(value) > MAX_JSON_DEPTH:
        raise _fail(
            name, field_name, f"nests lists and dicts more than {MAX_JSON_DEPTH} levels deep"
        )


def _headers(name: str, options: Mapping[str, Any]) -> None:
    """Refuse ``options.headers`` that would override Celery's or the scheduler's headers."""
    headers = options.get("headers")
    if headers is None:
        return
    if not isinstance(headers, Mapping) or not all(isinstance(key, str) for key in headers):
        raise _fail(
            name, "options", f"'headers' must be a dict with string keys, not {shown(headers)}"
        )
    reserved = sorted(
        key
        for key in headers
        if key.lower() in CELERY_HEADERS or key.lower().startswith("fork_scheduler_")
    )
    if reserved:
        raise _fail(
            name,
            "options",
            f"'headers' must not set Celery's own or the scheduler's message headers: "
            f"{', '.join(map(repr, reserved))}",
        )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_instant(value: object) -> bool:
    """A ``datetime`` (aware or naive, as Celery takes it) or an ISO-8601 string."""
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return False
        return True
    return isinstance(value, datetime)


#: The most seconds an option may give (ten years): more cannot be added to a send time.
MAX_OPTION_SECONDS = 10 * 365 * 86_400

#: How the ``apply_async`` options with an obvious type are checked: a test and the words for
#: what it accepts. Numbers are seconds; ``expires`` and ``eta`` take an instant as Celery does.
OPTION_RULES: Mapping[str, tuple[Callable[[Any], bool], str]] = {
    "queue": (
        lambda v: (isinstance(v, str) and v != "") or isinstance(v, Queue),
        "a queue name (a non-empty string) or a kombu Queue",
    ),
    "exchange": (lambda v: isinstance(v, (str, Exchange)), "a string or a kombu Exchange"),
    "routing_key": (lambda v: isinstance(v, str), "a string"),
    "priority": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255,
        "a whole number from 0 to 255",
    ),
    "countdown": (
        lambda v: _is_number(v) and 0 <= v <= MAX_OPTION_SECONDS,
        f"a number of seconds from 0 to {MAX_OPTION_SECONDS}",
    ),
    "expires": (
        lambda v: (_is_number(v) and 0 < v <= MAX_OPTION_SECONDS) or _is_instant(v),
        f"a number of seconds > 0 and <= {MAX_OPTION_SECONDS}, a datetime or an ISO-8601 string",
    ),
    "eta": (_is_instant, "a datetime or an ISO-8601 string"),
    "time_limit": (
        lambda v: _is_number(v) and 0 < v <= MAX_OPTION_SECONDS,
        f"a number of seconds > 0 and <= {MAX_OPTION_SECONDS}",
    ),
    "soft_time_limit": (
        lambda v: _is_number(v) and 0 < v <= MAX_OPTION_SECONDS,
        f"a number of seconds > 0 and <= {MAX_OPTION_SECONDS}",
    ),
    "serializer": (lambda v: isinstance(v, str), "a string"),
    "compression": (lambda v: isinstance(v, str), "a string"),
    "shadow": (lambda v: isinstance(v, str), "a string"),
    "ignore_result": (lambda v: isinstance(v, bool), "True or False"),
    "retry": (lambda v: isinstance(v, bool), "True or False"),
    "retry_policy": (lambda v: isinstance(v, Mapping), "a dict"),
}


def _options(name: str, value: object) -> Mapping[str, Any]:
    """Check the ``apply_async`` options of an entry (``None`` is none): a wrong one would
    fail every slot at publish, or send every message already expired."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(name, "options", f"must be a dict of apply_async options, not {shown(value)}")
    for key, option in value.items():
        if not isinstance(key, str):
            raise _fail(name, "options", f"option names must be strings, not {shown(key)}")
        accepts, expected = OPTION_RULES.get(key, (None, ""))
        if accepts is not None and option is not None and not accepts(option):
            raise _fail(name, "options", f"{key!r} must be {expected}, not {shown(option)}")
    if "task_id" in value:
        raise _fail(name, "options", "'task_id' is set by the scheduler (one id per slot)")
    _headers(name, value)
    return value


def _shortest_gap(schedule: SlotSchedule, floor: timedelta) -> timedelta | None:
    """The interval of an interval schedule; for others, the shortest gap between their first
    50 slots after 2030-01-01 when ``floor`` exceeds one second (their resolution)."""
    if isinstance(schedule, Interval):
        return schedule.every
    if floor <= timedelta(seconds=1):
        return None
    return _sampled_gap(schedule)


@functools.lru_cache(maxsize=4096)
def _sampled_gap(schedule: SlotSchedule) -> timedelta | None:
    slots: list[datetime] = []
    after = datetime(2030, 1, 1, tzinfo=timezone.utc)
    for _ in range(50):
        slot = schedule.next_slot(after)
        if slot is None:
            break
        slots.append(slot)
        after = slot
    gaps = [later - earlier for earlier, later in itertools.pairwise(slots)]
    return min(gaps) if gaps else None


def schedule_period(schedule: SlotSchedule) -> timedelta | None:
    """The bound of a jitter: an interval schedule's interval; for the others, the shortest gap
    between their first 50 slots after 2030-01-01 (``None``: fewer than two slots)."""
    if isinstance(schedule, Interval):
        return schedule.every
    return _sampled_gap(schedule)


def _check_interval(name: str, schedule: SlotSchedule, floor: timedelta) -> None:
    gap = _shortest_gap(schedule, floor)
    if gap is not None and gap < floor:
        raise _fail(
            name,
            "schedule",
            f"fires every {gap.total_seconds():g} s, more often than the minimum interval "
            f"({floor.total_seconds():g} s, fork_scheduler_min_interval)",
        )


def _text(name: str, field_name: str, value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise _fail(name, field_name, f"must be a string, not {type(value).__name__}")
    if len(value) > limit:
        raise _fail(name, field_name, f"is {len(value)} characters long, at most {limit}")
    return value


def _zone(name: str, value: object) -> tuple[tzinfo | None, str | None]:
    """An entry's own ``timezone`` key: the zone, and its IANA name (``None``, ``None``: it has
    none). A tzinfo no IANA name stands for is this key's fault (not the schedule's)."""
    if value is None:
        return None, None
    if isinstance(value, tzinfo):
        try:
            return value, to_zone(value).key
        except ScheduleError as exc:
            raise _fail(name, "timezone", str(exc)) from None
    if not isinstance(value, str) or not value:
        raise _fail(
            name,
            "timezone",
            f"must be an IANA zone name such as 'Europe/Berlin', not {shown(value)}",
        )
    try:
        return ZoneInfo(value), value
    except (ZoneInfoNotFoundError, ValueError):
        raise _fail(name, "timezone", f"unknown time zone {shown(value)}") from None


def _instant(name: str, field_name: str, value: object, zone: tzinfo) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise _fail(name, field_name, f"not an ISO-8601 date-time: {shown(value)}") from None
    if not isinstance(value, datetime):
        raise _fail(
            name, field_name, f"must be a datetime or an ISO-8601 string, not {shown(value)}"
        )
    try:
        if value.tzinfo is None and isinstance(zone, ZoneInfo):
            # a wall time of the entry's zone, read as its schedules read one (a time skipped by
            # a clock change is the end of the gap, a repeated one its first occurrence)
            return wall_to_utc(value, zone)
        if value.tzinfo is None:
            value = value.replace(tzinfo=zone)
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise _fail(name, field_name, f"out of range: {shown(value)}") from None


def _tags(name: str, value: object) -> frozenset[str]:
    if value is None:
        return NO_TAGS
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple, set, frozenset)) or not all(
        isinstance(tag, str) and tag for tag in value
    ):
        raise _fail(name, "tags", f"must be a list of non-empty strings, not {shown(value)}")
    if len(value) > MAX_TAGS or any(
        len(tag) > MAX_TAG_LENGTH or has_control_characters(tag) for tag in value
    ):
        raise _fail(
            name,
            "tags",
            f"at most {MAX_TAGS} tags of at most {MAX_TAG_LENGTH} characters each, "
            "without control characters",
        )
    return frozenset(value) if value else NO_TAGS


def _flag(name: str, field_name: str, value: object, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _fail(name, field_name, f"must be True or False, not {shown(value)}")
    return value


def _choice(name: str, field_name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        allowed = ", ".join(repr(choice) for choice in choices)
        raise _fail(name, field_name, f"must be one of {allowed}, not {shown(value)}")
    return choices[choices.index(value)]  # the constant: a decoded copy is not kept per entry


def _overlap(name: str, definition: Mapping[str, Any]) -> Overlap:
    singleton = _flag(name, "singleton", definition.get("singleton"), False)
    if "overlap" not in definition or definition["overlap"] is None:
        return "skip" if singleton else "allow"
    overlap = _choice(name, "overlap", definition["overlap"], OVERLAPS)
    if singleton and overlap == "allow":
        raise _fail(name, "overlap", "'allow' contradicts singleton=True")
    return overlap  # type: ignore[return-value]


#: The largest ``max_runs``: the claim script counts runs in Lua numbers (exact up to 2**53).
MAX_RUNS_LIMIT = 2**53 - 1


def _max_runs(name: str, definition: Mapping[str, Any]) -> int | None:
    value = definition.get("max_runs")
    one_off = _flag(name, "one_off", definition.get("one_off"), False)
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RUNS_LIMIT
    ):
        limit = f"must be a whole number from 1 to {MAX_RUNS_LIMIT}"
        raise _fail(name, "max_runs", f"{limit}, not {shown(value)}")
    if one_off and value not in (None, 1):
        raise _fail(name, "max_runs", f"one_off=True means one run, not {shown(value)}")
    return 1 if one_off else value


def _window(name: str, value: object) -> timedelta | None:
    if value is None:
        return None
    try:
        return to_timedelta(value, what="catchup_window", allow_zero=False)
    except ValueError as exc:
        raise _fail(name, "catchup_window", str(exc).removeprefix("catchup_window ")) from None


@functools.lru_cache(maxsize=4096)
def _compiled(items: tuple[str, ...], zone: tzinfo) -> Exclusions | None:
    """:func:`.exclusions.compile_exclusions`, shared by entries with the same items and zone."""
    return compile_exclusions(items, zone)


def _calendar_names(name: str, value: object, calendars: Mapping[str, Any]) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(each, str) and each for each in value
    ):
        raise _fail(
            name, "calendar", f"must be a calendar name or a list of names, not {shown(value)}"
        )
    unknown = [each for each in value if each not in calendars]
    if unknown:
        known = ", ".join(map(repr, sorted(calendars))) or "none"
        raise _fail(
            name,
            "calendar",
            f"unknown calendar {shown(unknown[0])} (fork_scheduler_calendars defines: {known})",
        )
    return tuple(dict.fromkeys(value))


def _exclusions(
    name: str,
    definition: Mapping[str, Any],
    calendars: Mapping[str, tuple[str, ...]],
    zone: tzinfo,
) -> tuple[tuple[str, ...], tuple[str, ...], Exclusions | None]:
    """The entry's own items, its calendars' names, and all their items compiled."""
    if definition.get("exclude") is None and definition.get("calendar") is None:
        return (), (), None
    try:
        own = normalise_items(definition.get("exclude"))
    except ExclusionError as exc:
        raise _fail(name, "exclude", str(exc)) from None
    names = _calendar_names(name, definition.get("calendar"), calendars)
    items = tuple(dict.fromkeys(own + tuple(item for each in names for item in calendars[each])))
    return own, names, _compiled(items, zone)


def _jitter(name: str, value: object, schedule: SlotSchedule) -> timedelta | None:
    if value is None:
        return None
    try:
        jitter = to_timedelta(value, what="jitter", allow_text=True)
    except ValueError as exc:
        raise _fail(name, "jitter", str(exc).removeprefix("jitter ")) from None
    period = schedule_period(schedule)
    if period is not None and jitter > period:
        raise _fail(
            name,
            "jitter",
            f"must be at most the schedule's period ({period.total_seconds():g} s), "
            f"not {jitter.total_seconds():g} s",
        )
    return jitter


def entry_from_config(
    name: str,
    definition: Mapping[str, Any],
    *,
    default_timezone: tzinfo,
    source: EntrySource = "config",
    min_interval: timedelta = DEFAULT_MIN_INTERVAL,
    calendars: Mapping[str, tuple[str, ...]] | None = None,
    schedule_memo: ScheduleMemo | None = None,
) -> Entry:
    """Build an :class:`Entry` from one ``beat_schedule`` item.

    Raises :class:`ConfigError` naming the entry and the field for any wrong key or value,
    a schedule firing more often than ``min_interval`` included. ``calendars``: the
    ``fork_scheduler_calendars`` setting (checked), which the ``calendar`` key names.
    ``schedule_memo``: Celery schedule objects already resolved in this batch of entries
    (see :func:`entries_from_config`).
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"entry names must be non-empty strings, not {shown(name)}")
    _check_name(name, source)
    if not isinstance(definition, Mapping):
        raise ConfigError(f"must be a dict, not {type(definition).__name__}", entry=name)
    unknown = sorted(set(definition) - ENTRY_KEYS)
    if unknown:
        known = ", ".join(sorted(ENTRY_KEYS))
        raise _fail(name, unknown[0], f"unknown key; known keys are: {known}")

    task = definition.get("task")
    if not isinstance(task, str) or not task.strip():
        raise _fail(name, "task", f"must be a task name (non-empty string), not {shown(task)}")
    if len(task) > MAX_TASK_LENGTH or has_control_characters(task):
        raise _fail(
            name,
            "task",
            f"task names are at most {MAX_TASK_LENGTH} characters, without control characters",
        )
    if "schedule" not in definition:
        raise _fail(name, "schedule", "is missing")
    _flag(name, "relative", definition.get("relative"), False)  # accepted from Celery, unused

    own, own_name = _zone(name, definition.get("timezone"))
    zone = own or default_timezone
    own_zone = own is not None
    try:
        schedule = _entry_schedule(definition["schedule"], zone, own_zone, schedule_memo)
    except ScheduleError as exc:
        raise _fail(name, "schedule", str(exc)) from None
    _check_interval(name, schedule, min_interval)

    args = definition.get("args") or ()
    if not isinstance(args, (list, tuple)) and not callable(args):
        raise _fail(name, "args", f"must be a list or tuple, not {shown(args)}")
    kwargs = definition.get("kwargs") or {}
    if not isinstance(kwargs, Mapping) and not callable(kwargs):
        raise _fail(name, "kwargs", f"must be a dict, not {shown(kwargs)}")
    if isinstance(kwargs, Mapping) and not all(isinstance(key, str) for key in kwargs):
        raise _fail(name, "kwargs", f"keys must be strings (argument names), not {shown(kwargs)}")
    args, kwargs = with_lazy_items(args), with_lazy_items(kwargs)  # Celery's BeatLazyFunc
    options = _options(name, definition.get("options"))
    # One walk of the three together (one level more); each alone names the one too deep.
    flat = _flat(args) and _flat(kwargs) and _flat(options)  # the usual case, at a glance
    if not flat and json_depth((args, kwargs, options), MAX_JSON_DEPTH + 1) > MAX_JSON_DEPTH + 1:
        for field_name, value in (("args", args), ("kwargs", kwargs), ("options", options)):
            _check_depth(name, field_name, value)
    description = _text(
        name, "description", definition.get("description") or "", MAX_DESCRIPTION_LENGTH
    )

    start_at = _instant(name, "start_at", definition.get("start_at"), zone)
    end_at = _instant(name, "end_at", definition.get("end_at"), zone)
    if start_at is not None and end_at is not None and end_at <= start_at:
        raise _fail(name, "end_at", "must be later than start_at")

    exclude, calendar, exclusions = _exclusions(name, definition, calendars or {}, zone)
    overlap = _overlap(name, definition)
    _check_json(name, overlap, {"args": args, "kwargs": kwargs, "options": options})
    return Entry(
        name=name,
        task=sys.intern(task),
        schedule=schedule,
        args=args,
        kwargs=kwargs if kwargs or callable(kwargs) else NO_MAPPING,
        options=dict(options) if options else NO_MAPPING,
        tags=_tags(name, definition.get("tags")),
        overlap=overlap,
        enabled=_flag(name, "enabled", definition.get("enabled"), True),
        start_at=start_at,
        end_at=end_at,
        description=description,
        max_runs=_max_runs(name, definition),
        catchup=_choice(name, "catchup", definition.get("catchup", "latest"), CATCHUPS),  # type: ignore[arg-type]
        catchup_window=_window(name, definition.get("catchup_window")),
        pause_on_failure=_flag(name, "pause_on_failure", definition.get("pause_on_failure"), False),
        exclude=exclude,
        calendar=calendar,
        exclusions=exclusions,
        jitter=_jitter(name, definition.get("jitter"), schedule),
        source=source,
        timezone=own_name,
        schedule_zone=_own_schedule_zone(definition["schedule"]) if own_zone else None,
    )


def _own_schedule_zone(raw: object) -> str | None:
    """The IANA zone a (valid) schedule value names itself, before an entry's ``timezone``
    overrides it (``None``: it names none, or one without an IANA name)."""
    try:
        decoded = schedule_from_dict(raw) if isinstance(raw, Mapping) else raw
        zone = coerce_schedule(decoded).tz
        return None if zone is None else to_zone(zone).key
    except ScheduleError:
        return None


def entries_from_config(
    beat_schedule: Mapping[str, Any] | None,
    *,
    default_timezone: tzinfo,
    source: EntrySource = "config",
    min_interval: timedelta = DEFAULT_MIN_INTERVAL,
    calendars: Mapping[str, tuple[str, ...]] | None = None,
) -> dict[str, Entry]:
    """Validate a whole ``beat_schedule``; the first bad entry raises :class:`ConfigError`."""
    if not beat_schedule:
        return {}
    if not isinstance(beat_schedule, Mapping):
        raise ConfigError(
            f"must be a dict, not {type(beat_schedule).__name__}", field="beat_schedule"
        )
    memo: ScheduleMemo = {}
    return {
        name: entry_from_config(
            name,
            definition,
            default_timezone=default_timezone,
            source=source,
            min_interval=min_interval,
            calendars=calendars,
            schedule_memo=memo,
        )
        for name, definition in beat_schedule.items()
    }


#: Version of the JSON form of stored entries; an unknown version is an error, never a reset.
ENTRY_SCHEMA = 1


def stored_fields(entry: Entry, schedule: dict[str, Any]) -> dict[str, Any]:
    """The stored form of ``entry`` as it is (no checks; see :func:`entry_to_dict`), with
    ``schedule`` the stored form of its schedule. ``jitter``, ``pause_on_failure``,
    ``exclude``, ``calendar`` and ``timezone`` are there only when set (a replica of an earlier
    version still reads the others)."""
    if entry.timezone is not None:  # the schedule keeps its own zone under the override
        schedule = {key: value for key, value in schedule.items() if key != "tz"}
        if entry.schedule_zone is not None:
            schedule["tz"] = entry.schedule_zone
    fields: dict[str, Any] = {
        "schema": ENTRY_SCHEMA,
        "task": entry.task,
        "schedule": schedule,
        "args": list(entry.args),
        "kwargs": dict(entry.kwargs),
        "options": dict(entry.options),
        "tags": sorted(entry.tags),
        "overlap": entry.overlap,
        "enabled": entry.enabled,
        "start_at": entry.start_at.isoformat() if entry.start_at else None,
        "end_at": entry.end_at.isoformat() if entry.end_at else None,
        "description": entry.description,
        "max_runs": entry.max_runs,
        "catchup": entry.catchup,
        "catchup_window": (
            entry.catchup_window.total_seconds() if entry.catchup_window is not None else None
        ),
    }
    if entry.jitter is not None:
        fields["jitter"] = entry.jitter.total_seconds()
    if entry.pause_on_failure:
        fields["pause_on_failure"] = True
    if entry.exclude:
        fields["exclude"] = list(entry.exclude)
    if entry.calendar:
        fields["calendar"] = list(entry.calendar)
    if entry.timezone is not None:
        fields["timezone"] = entry.timezone
    return fields


def entry_to_dict(entry: Entry, *, max_size: int = DEFAULT_MAX_ENTRY_SIZE) -> dict[str, Any]:
    """The JSON-safe stored form of a runtime entry (``schema`` included).

    Raises :class:`ConfigError` naming the field when a value cannot be stored as JSON, or
    when the whole is larger than ``max_size`` bytes of JSON.
    """
    if entry.lazy:
        raise _fail(entry.name, "args", "runtime entries need plain values, not callables")
    data = stored_fields(entry, entry.schedule.to_dict())
    for key, value in data.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise _fail(entry.name, key, f"cannot be stored as JSON: {exc}") from None
    check_size(entry.name, data, max_size)
    return data


def check_size(name: str, data: Mapping[str, Any], max_size: int) -> None:
    """Refuse a stored entry whose JSON is larger than ``max_size`` bytes, naming the
    largest field."""
    size = len(json.dumps(data, default=str).encode())
    if size > max_size:
        largest = max(data, key=lambda key: len(json.dumps(data[key], default=str)))
        raise _fail(
            name,
            largest,
            f"the entry is {size} bytes of JSON, more than {max_size} "
            "(fork_scheduler_max_entry_size)",
        )


def entry_from_dict(
    name: str,
    data: Mapping[str, Any],
    *,
    default_timezone: tzinfo,
    min_interval: timedelta = DEFAULT_MIN_INTERVAL,
    calendars: Mapping[str, tuple[str, ...]] | None = None,
) -> Entry:
    """Rebuild a runtime entry from its stored form, validating it like a config entry."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"stored entry is not a JSON object: {type(data).__name__}", entry=name)
    if data.get("schema") != ENTRY_SCHEMA:
        raise _fail(name, "schema", f"unknown stored entry schema {data.get('schema')!r:.60}")
    definition = {key: value for key, value in data.items() if key != "schema"}
    if type(definition.get("args")) is list:  # the decoder's list has room to grow: a tight copy
        definition["args"] = list(definition["args"])
    return entry_from_config(
        name,
        definition,
        default_timezone=default_timezone,
        source="runtime",
        min_interval=min_interval,
        calendars=calendars,
    )
