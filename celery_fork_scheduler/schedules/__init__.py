"""Schedules: pure slot maths, no I/O and no clock.

A *slot* is one nominal fire time of a schedule, an aware UTC ``datetime`` computed from the
schedule's definition alone, so every beat replica computes the same slots.

Two families:

* :class:`Interval` — ``anchor + phase + k * every`` in UTC (time zones are irrelevant).
* wall-clock schedules (:class:`Daily`, :class:`Weekly`, :class:`Monthly`, :class:`Cron`) — the
  schedule names local wall times in its zone; each wall time is mapped to UTC with these rules:

  - a wall time that does not exist (spring forward) maps to the first instant after the gap, so
    all the nonexistent times of one gap collapse into that one instant, which fires once;
  - a wall time that occurs twice (fall back) maps to its first occurrence (``fold=0``).

  The mapping never decreases, so slots strictly increase once equal instants are merged.

:class:`Solar` delegates to Celery's ``solar`` maths (needs ``ephem``).

Every schedule is a frozen, keyword-only dataclass and a ``celery.schedules.BaseSchedule``, so
it also works under Celery's own beat (:meth:`SlotSchedule.is_due` is the only place that reads
the clock).
"""

from __future__ import annotations

import abc
import bisect
import calendar
import dataclasses
import functools
import math
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import MAXYEAR, MINYEAR, date, datetime, time, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any, ClassVar, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import celery.schedules

from ..errors import ScheduleError

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from typing import Self
    else:
        from typing_extensions import Self

__all__ = [
    "Cron",
    "Daily",
    "EveryBuilder",
    "Interval",
    "Monthly",
    "SlotSchedule",
    "Solar",
    "Weekly",
    "at",
    "coerce_schedule",
    "cron",
    "every",
    "from_celery",
    "parse_time",
    "schedule_from_dict",
    "to_zone",
]

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_ONE_MICROSECOND = timedelta(microseconds=1)
_ONE_SECOND = timedelta(seconds=1)
#: Instant from which :meth:`SlotSchedule.validate` looks for a first slot (never ``now()``).
_VALIDATION_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)
#: What :meth:`SlotSchedule.is_due` tells Celery when a schedule has no further slot.
_NEVER_RECHECK = timedelta(days=1)
WEEKDAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_UNITS = (("week", 604_800), ("day", 86_400), ("hour", 3_600), ("minute", 60), ("second", 1))


# --------------------------------------------------------------------------------------------
# boundary converters
# --------------------------------------------------------------------------------------------


def to_zone(tz: str | tzinfo) -> ZoneInfo:
    """Return the IANA zone named by ``tz`` (a name or a tzinfo); :class:`ScheduleError` if none."""
    if isinstance(tz, ZoneInfo):
        return tz
    if isinstance(tz, str):
        name = tz
    elif tz == UTC:
        name = "UTC"
    else:
        # pytz zones carry ``zone``, zoneinfo-like objects ``key``; anything else by its name.
        name = str(getattr(tz, "key", None) or getattr(tz, "zone", None) or tz)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ScheduleError(
            f"unknown time zone {name!r}: expected an IANA name such as 'Europe/Berlin'"
        ) from exc


def parse_time(value: str | time) -> time:
    """``"HH:MM"`` or ``"HH:MM:SS"`` (or a naive ``time``) to a ``time``; ScheduleError names it."""
    if isinstance(value, time):
        if value.tzinfo is not None:
            raise ScheduleError(f"invalid time {value!r}: give a wall time without tzinfo")
        return value.replace(microsecond=0)
    if not isinstance(value, str):
        raise ScheduleError(f"invalid time {value!r}: expected a string 'HH:MM' or 'HH:MM:SS'")
    match = re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2}))?", value.strip())
    if match is not None:
        hour, minute, second = (int(part or 0) for part in match.groups())
        if hour < 24 and minute < 60 and second < 60:
            return time(hour, minute, second)
    raise ScheduleError(
        f"invalid time {value!r}: expected 'HH:MM' or 'HH:MM:SS' between 00:00 and 23:59:59"
    )


def _format_time(value: time) -> str:
    return value.strftime("%H:%M:%S" if value.second else "%H:%M")


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ScheduleError(f"naive datetime {moment.isoformat()!r}: expected an aware datetime")
    return moment.astimezone(UTC)


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ScheduleError(f"{what} must be a positive integer, got {value!r}")
    return value


def _microseconds(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _describe_seconds(delta: timedelta) -> str:
    total = _microseconds(delta)
    if total % 1_000_000:
        return f"{total / 1_000_000:g} seconds"
    seconds = total // 1_000_000
    for unit, size in _UNITS:
        if seconds % size == 0:
            count = seconds // size
            return unit if count == 1 else f"{count} {unit}s"
    raise AssertionError("unreachable: a whole number of seconds is a number of seconds")


def _seconds_value(delta: timedelta) -> int | float:
    total = _microseconds(delta)
    return total // 1_000_000 if total % 1_000_000 == 0 else total / 1_000_000


# --------------------------------------------------------------------------------------------
# wall clock <-> UTC
# --------------------------------------------------------------------------------------------


def _first_offset_change(zone: ZoneInfo, low: datetime, high: datetime) -> datetime:
    """The first whole-second instant in ``(low, high]`` whose UTC offset differs from ``low``'s.

    The caller guarantees that exactly one transition lies in between.
    """
    before = low.astimezone(zone).utcoffset()
    lo = math.floor((low - EPOCH).total_seconds())
    hi = math.ceil((high - EPOCH).total_seconds())
    while hi - lo > 1:
        middle = (lo + hi) // 2
        if (EPOCH + timedelta(seconds=middle)).astimezone(zone).utcoffset() == before:
            lo = middle
        else:
            hi = middle
    return EPOCH + timedelta(seconds=hi)


def _wall_to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    """Map a naive wall time to UTC: a skipped time to the end of its gap, a repeated time to
    its first occurrence (fold 0)."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # Nonexistent: fold=1 reads it with the offset after the gap (an instant before the
    # transition), fold=0 with the offset before it (an instant after the transition).
    earlier = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    return _first_offset_change(zone, earlier, first)


def _end_of_repeat(local: datetime, zone: ZoneInfo) -> datetime:
    """For ``local`` in the second pass of a repeated hour (fold=1): the naive wall time at
    which the repetition ends, the first wall time after it that is read only once."""
    repeat = cast(timedelta, local.replace(fold=0).utcoffset()) - cast(timedelta, local.utcoffset())
    at_utc = local.astimezone(UTC)
    transition = _first_offset_change(zone, at_utc - repeat, at_utc)
    return (transition + repeat).astimezone(zone).replace(tzinfo=None)


# --------------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SlotSchedule(celery.schedules.BaseSchedule, metaclass=abc.ABCMeta):  # type: ignore[misc]
    """Abstract base of every schedule: slots are pure functions of the definition."""

    #: IANA zone of the wall clock; ``None`` means "use the app default" (see resolve_timezone).
    tz: ZoneInfo | None = None

    type_name: ClassVar[str] = ""

    # -- slot maths ----------------------------------------------------------------------

    @abc.abstractmethod
    def next_slot(self, after: datetime) -> datetime | None:
        """The first slot strictly after ``after`` (aware, any zone), as aware UTC; None if none."""

    @abc.abstractmethod
    def previous_slot(self, at: datetime) -> datetime | None:
        """The last slot at or before ``at`` (aware), as aware UTC; None if none."""

    def slots(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """Slots with ``start < slot <= end``, ascending."""
        current = _as_utc(start)
        stop = _as_utc(end)
        while True:
            following = self.next_slot(current)
            if following is None or following > stop:
                return
            yield following
            current = following

    # -- definition ----------------------------------------------------------------------

    def with_timezone(self, tz: str | tzinfo) -> Self:
        """A copy evaluated in the IANA zone ``tz`` (ScheduleError on an unknown zone)."""
        return dataclasses.replace(self, tz=to_zone(tz))

    def resolve_timezone(self, default: str | tzinfo | None) -> Self:
        """A copy with ``tz=default`` if this schedule has no zone of its own, else ``self``."""
        if self.tz is not None or default is None:
            return self
        return self.with_timezone(default)

    @property
    def zone(self) -> ZoneInfo:
        """The zone slots are computed in: ``tz``, or UTC while it is unresolved."""
        return self.tz if self.tz is not None else _UTC_ZONE

    @abc.abstractmethod
    def describe(self) -> str:
        """Human form, e.g. ``"every 5 minutes"`` or ``"daily at 10:30"``."""

    def validate(self) -> None:
        """Raise ScheduleError if the schedule can never fire (bounded in time)."""
        if self.next_slot(_VALIDATION_REFERENCE) is None:
            raise ScheduleError(f"schedule {self.describe()!r} never fires")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form with a ``"type"`` key and the zone name; see schedule_from_dict."""
        return {"type": self.type_name, **self._fields_to_dict(), "tz": _zone_name(self.tz)}

    @abc.abstractmethod
    def _fields_to_dict(self) -> dict[str, Any]: ...

    def _tz_suffix(self) -> str:
        return f" in {self.tz.key}" if self.tz is not None else ""

    # -- Celery compatibility --------------------------------------------------------------

    def now(self) -> datetime:
        """The current time; read only by the Celery-compatibility methods, never by slot maths."""
        return datetime.now(UTC)

    def is_due(self, last_run_at: datetime) -> celery.schedules.schedstate:
        """Celery's contract: ``(due, seconds until the next check)``."""
        now = self.now()
        following = self.next_slot(_celery_aware(last_run_at))
        if following is not None and following <= now:
            after_now = self.next_slot(now)
            wait = _NEVER_RECHECK if after_now is None else after_now - now
            return celery.schedules.schedstate(True, wait.total_seconds())
        if following is None:
            return celery.schedules.schedstate(False, _NEVER_RECHECK.total_seconds())
        return celery.schedules.schedstate(False, (following - now).total_seconds())

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        """Time left until the first slot after ``last_run_at`` (may be negative if overdue)."""
        following = self.next_slot(_celery_aware(last_run_at))
        if following is None:
            return _NEVER_RECHECK
        return following - self.now()


_UTC_ZONE = ZoneInfo("UTC")


def _zone_name(zone: ZoneInfo | None) -> str | None:
    return None if zone is None else zone.key


def _celery_aware(moment: datetime) -> datetime:
    """Celery hands naive datetimes around meaning UTC (enable_utc); accept them here only."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _frozen_setattr(self: object, name: str, value: object) -> None:
    if name in ("app", "nowfun"):
        # Celery's beat assigns ``schedule.app = app``; slots never depend on it.
        return
    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _accept_celery_assignments(cls: type[SlotSchedule]) -> None:
    """Let Celery's ``schedule.app = app`` pass on a frozen schedule (it is ignored)."""
    setattr(cls, "__setattr__", _frozen_setattr)  # noqa: B010


# --------------------------------------------------------------------------------------------
# intervals
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Interval(SlotSchedule):
    """``slot = anchor + phase + k * every``; anchor is ``start`` or the Unix epoch.

    Without ``start`` the slots extend in both directions; with it, ``start + phase`` is the first.
    """

    every: timedelta
    phase: timedelta = timedelta(0)
    start: datetime | None = None

    type_name: ClassVar[str] = "interval"

    def __post_init__(self) -> None:
        if not isinstance(self.every, timedelta) or self.every <= timedelta(0):
            raise ScheduleError(f"interval must be a positive duration, got {self.every!r}")
        if not isinstance(self.phase, timedelta):
            raise ScheduleError(f"offset must be a duration, got {self.phase!r}")
        if self.start is not None:
            if not isinstance(self.start, datetime):
                raise ScheduleError(f"start must be a datetime, got {self.start!r}")
            object.__setattr__(self, "start", _as_utc(self.start))
        else:
            # Without an anchor the phase only matters modulo the interval.
            phase = _microseconds(self.phase) % _microseconds(self.every)
            object.__setattr__(self, "phase", timedelta(microseconds=phase))

    # builders
    def offset(self, **delta: float) -> Self:
        """A copy whose slots are shifted by ``timedelta(**delta)`` (a phase)."""
        try:
            phase = timedelta(**delta)
        except TypeError as exc:
            raise ScheduleError(f"offset() takes timedelta keywords, got {delta!r}") from exc
        return dataclasses.replace(self, phase=phase)

    def starting(self, start: datetime) -> Self:
        """A copy anchored at ``start`` (aware): the first slot is ``start`` (plus the offset)."""
        if not isinstance(start, datetime):
            raise ScheduleError(f"starting() takes an aware datetime, got {start!r}")
        return dataclasses.replace(self, start=_as_utc(start))

    @property
    def _base(self) -> datetime:
        return (self.start if self.start is not None else EPOCH) + self.phase

    def next_slot(self, after: datetime) -> datetime | None:
        step = _microseconds(self.every)
        base = self._base
        index = _microseconds(_as_utc(after) - base) // step + 1
        if self.start is not None:
            index = max(index, 0)
        try:
            return base + timedelta(microseconds=index * step)
        except OverflowError:
            return None

    def previous_slot(self, at: datetime) -> datetime | None:
        step = _microseconds(self.every)
        base = self._base
        index = _microseconds(_as_utc(at) - base) // step
        if self.start is not None and index < 0:
            return None
        try:
            return base + timedelta(microseconds=index * step)
        except OverflowError:
            return None

    def describe(self) -> str:
        text = f"every {_describe_seconds(self.every)}"
        if self.phase:
            text += f" offset by {_describe_seconds(self.phase)}"
        if self.start is not None:
            text += f" starting {self.start.isoformat()}"
        return text

    def _fields_to_dict(self) -> dict[str, Any]:
        return {
            "every": _seconds_value(self.every),
            "offset": _seconds_value(self.phase),
            "start": None if self.start is None else self.start.isoformat(),
        }


_accept_celery_assignments(Interval)


# --------------------------------------------------------------------------------------------
# wall-clock schedules
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _WallClockSchedule(SlotSchedule):
    """A schedule that names naive local wall times; maps them to UTC with the DST rules."""

    @abc.abstractmethod
    def _wall_next(self, wall: datetime) -> datetime | None:
        """The first matching naive wall time strictly after ``wall``."""

    @abc.abstractmethod
    def _wall_previous(self, wall: datetime) -> datetime | None:
        """The last matching naive wall time at or before ``wall``."""

    def next_slot(self, after: datetime) -> datetime | None:
        after_utc = _as_utc(after)
        zone = self.zone
        local = after_utc.astimezone(zone)
        start = local.replace(tzinfo=None, fold=0)
        if local.fold:
            # The rest of the repeated hour was already read at its first occurrence.
            start = _end_of_repeat(local, zone) - _ONE_MICROSECOND
        while True:
            wall = self._wall_next(start)
            if wall is None:
                return None
            slot = _wall_to_utc(wall, zone)
            if slot > after_utc:
                return slot
            start = wall

    def previous_slot(self, at: datetime) -> datetime | None:
        zone = self.zone
        local = _as_utc(at).astimezone(zone)
        limit = local.replace(tzinfo=None, fold=0)
        if local.fold:
            limit = _end_of_repeat(local, zone) - _ONE_MICROSECOND
        wall = self._wall_previous(limit)
        return None if wall is None else _wall_to_utc(wall, zone)


def _times(values: tuple[str | time, ...]) -> tuple[time, ...]:
    if not values:
        raise ScheduleError("at least one time of day is required, e.g. '10:30'")
    return tuple(sorted({parse_time(value) for value in values}))


@dataclass(frozen=True, kw_only=True)
class _CalendarSchedule(_WallClockSchedule):
    """Matching dates times matching times of day."""

    times: tuple[time, ...] = (time(0, 0),)

    def __post_init__(self) -> None:
        object.__setattr__(self, "times", _times(tuple(self.times)))

    def at(self, *times: str | time) -> Self:
        """A copy firing at each of ``times`` (``"HH:MM"`` or ``"HH:MM:SS"``) local time."""
        return dataclasses.replace(self, times=_times(times))

    @abc.abstractmethod
    def _date_on_or_after(self, day: date) -> date:
        """The first matching date >= ``day``."""

    @abc.abstractmethod
    def _date_on_or_before(self, day: date) -> date:
        """The last matching date <= ``day``."""

    def _wall_next(self, wall: datetime) -> datetime | None:
        day = wall.date()
        try:
            while True:
                day = self._date_on_or_after(day)
                for moment in self.times:
                    candidate = datetime.combine(day, moment)
                    if candidate > wall:
                        return candidate
                day += timedelta(days=1)
        except OverflowError:
            return None

    def _wall_previous(self, wall: datetime) -> datetime | None:
        day = wall.date()
        try:
            while True:
                day = self._date_on_or_before(day)
                for moment in reversed(self.times):
                    candidate = datetime.combine(day, moment)
                    if candidate <= wall:
                        return candidate
                day -= timedelta(days=1)
        except OverflowError:
            return None

    def _times_text(self) -> str:
        return ", ".join(_format_time(moment) for moment in self.times)

    def _times_list(self) -> list[str]:
        return [_format_time(moment) for moment in self.times]


@dataclass(frozen=True, kw_only=True)
class Daily(_CalendarSchedule):
    """Every ``every_days``-th local day counted from 1970-01-01, at each of ``times``."""

    every_days: int = 1

    type_name: ClassVar[str] = "daily"

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_int(self.every_days, "every(n).days: n")

    def _date_on_or_after(self, day: date) -> date:
        return day + timedelta(days=-(day.toordinal() - _EPOCH_ORDINAL) % self.every_days)

    def _date_on_or_before(self, day: date) -> date:
        return day - timedelta(days=(day.toordinal() - _EPOCH_ORDINAL) % self.every_days)

    def describe(self) -> str:
        days = "daily" if self.every_days == 1 else f"every {self.every_days} days"
        return f"{days} at {self._times_text()}{self._tz_suffix()}"

    def _fields_to_dict(self) -> dict[str, Any]:
        return {"every": self.every_days, "times": self._times_list()}


@dataclass(frozen=True, kw_only=True)
class Weekly(_CalendarSchedule):
    """On each of ``weekdays`` (0 = Monday) at each of ``times``."""

    weekdays: tuple[int, ...] = (0,)

    type_name: ClassVar[str] = "weekly"

    def __post_init__(self) -> None:
        super().__post_init__()
        days = tuple(self.weekdays)
        if not days or any(isinstance(d, bool) or d not in range(7) for d in days):
            raise ScheduleError(f"weekdays must be 0 (Monday) to 6 (Sunday), got {days!r}")
        object.__setattr__(self, "weekdays", tuple(sorted(set(days))))

    def _date_on_or_after(self, day: date) -> date:
        wait = min((weekday - day.weekday()) % 7 for weekday in self.weekdays)
        return day + timedelta(days=wait)

    def _date_on_or_before(self, day: date) -> date:
        back = min((day.weekday() - weekday) % 7 for weekday in self.weekdays)
        return day - timedelta(days=back)

    def describe(self) -> str:
        names = ", ".join(WEEKDAY_NAMES[d] for d in self.weekdays)
        return f"every {names} at {self._times_text()}{self._tz_suffix()}"

    def _fields_to_dict(self) -> dict[str, Any]:
        return {"weekdays": [WEEKDAY_NAMES[d] for d in self.weekdays], "times": self._times_list()}


def _month_index(day: date) -> int:
    return (day.year - 1970) * 12 + day.month - 1


def _month_start(index: int) -> date:
    year, month = divmod(index, 12)
    return date(1970 + year, month + 1, 1)


def _month_length(first: date) -> int:
    following = _month_start(_month_index(first) + 1)
    return (following - first).days


@dataclass(frozen=True, kw_only=True)
class Monthly(_CalendarSchedule):
    """On each of ``days`` of every ``every_months``-th month (counted from January 1970).

    ``-1`` is the last day of the month, ``-2`` the one before; a day the month does not have
    (31 in April) is skipped that month.
    """

    days: tuple[int, ...] = (1,)
    every_months: int = 1

    type_name: ClassVar[str] = "monthly"

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_int(self.every_months, "every(n).months: n")
        days = tuple(self.days)
        if not days or any(
            isinstance(d, bool) or not isinstance(d, int) or d == 0 or not -31 <= d <= 31
            for d in days
        ):
            raise ScheduleError(f"days of month must be 1..31 or -1..-31, got {days!r}")
        object.__setattr__(self, "days", tuple(sorted(set(days), key=lambda d: (d < 0, d))))

    def on(self, *days: int) -> Self:
        """A copy firing on each of ``days`` (1..31, or -1 = last day, -2 = second to last)."""
        return dataclasses.replace(self, days=days)

    def _days_in(self, first: date) -> list[int]:
        length = _month_length(first)
        resolved = {d if d > 0 else length + 1 + d for d in self.days}
        return sorted(d for d in resolved if 1 <= d <= length)

    def _date_on_or_after(self, day: date) -> date:
        index = _month_index(day)
        index += -index % self.every_months
        lowest = day.day if index == _month_index(day) else 1
        while True:  # a month with a matching day comes within a year for any every_months
            first = _month_start(index)
            for number in self._days_in(first):
                if number >= lowest:
                    return first.replace(day=number)
            index += self.every_months
            lowest = 1

    def _date_on_or_before(self, day: date) -> date:
        index = _month_index(day)
        index -= index % self.every_months
        highest = day.day if index == _month_index(day) else 31
        while True:
            first = _month_start(index)
            for number in reversed(self._days_in(first)):
                if number <= highest:
                    return first.replace(day=number)
            index -= self.every_months
            highest = 31

    def describe(self) -> str:
        months = "monthly" if self.every_months == 1 else f"every {self.every_months} months"
        days = ",".join(str(d) for d in self.days)
        return f"{months} on {days} at {self._times_text()}{self._tz_suffix()}"

    def _fields_to_dict(self) -> dict[str, Any]:
        return {"every": self.every_months, "days": list(self.days), "times": self._times_list()}


for _calendar_class in (Daily, Weekly, Monthly):
    _accept_celery_assignments(_calendar_class)


# --------------------------------------------------------------------------------------------
# cron
# --------------------------------------------------------------------------------------------

MACROS: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_DOW_NAMES = {name: n for n, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}


@dataclass(frozen=True)
class _CronField:
    name: str
    low: int
    high: int
    names: Mapping[str, int]

    @property
    def span(self) -> int:
        return self.high - self.low + 1


_SECOND = _CronField("second", 0, 59, {})
_MINUTE = _CronField("minute", 0, 59, {})
_HOUR = _CronField("hour", 0, 23, {})
_DOM = _CronField("day-of-month", 1, 31, {})
_MONTH = _CronField("month", 1, 12, _MONTH_NAMES)
_DOW = _CronField("day-of-week", 0, 7, _DOW_NAMES)
_NEAREST_WEEKDAY = re.compile(r"(?P<day>[0-9]+)w")
_NTH_WEEKDAY = re.compile(r"(?P<day>[a-z0-9]+)#(?P<nth>[a-z0-9]*)")
_LAST_WEEKDAY_OF_MONTH = re.compile(r"l(?P<before>[0-9]+)|(?P<after>[0-9]+)l")
_STEP_ITEM = re.compile(r"(?P<base>[^/]+)/(?P<step>[^/]*)")
_RANGE_ITEM = re.compile(r"(?P<low>[a-z0-9]+)-(?P<high>[a-z0-9]+)")
#: A Gregorian calendar repeats, weekdays included, every 400 years (146 097 days = 20 871 weeks):
#: a cron expression with no slot in 400 years never fires.
_CALENDAR_CYCLE_MONTHS = 400 * 12
_LAST_SECOND = time(23, 59, 59)


def _is_number(token: str) -> bool:
    return token.isascii() and token.isdigit()


def _cron_value(token: str, spec: _CronField) -> int:
    number = int(token) if _is_number(token) else spec.names.get(token)
    if number is None or not spec.low <= number <= spec.high:
        names = f" or a name ({', '.join(spec.names)})" if spec.names else ""
        raise ValueError(f"{token!r} is not a value {spec.low}-{spec.high}{names}")
    return number


def _cron_range(item: str, spec: _CronField) -> range:
    """The values of a plain item: ``*``, ``a``, ``a-b``, each with an optional ``/step``.

    ``a/step`` means ``a-<field maximum>/step``; a range must not run backwards.
    """
    base, step = item, 1
    stepped = _STEP_ITEM.fullmatch(item)
    if stepped is not None:
        base = stepped["base"]
        if not _is_number(stepped["step"]) or not 1 <= int(stepped["step"]) <= spec.span:
            raise ValueError(f"step in {item!r} must be 1-{spec.span}")
        step = int(stepped["step"])
    if base == "*":
        return range(spec.low, spec.high + 1, step)
    bounds = _RANGE_ITEM.fullmatch(base)
    if bounds is None:
        low = _cron_value(base, spec)
        return range(low, (spec.high if stepped is not None else low) + 1, step)
    low, high = _cron_value(bounds["low"], spec), _cron_value(bounds["high"], spec)
    if low > high:
        hint = f"; for Sunday write 7: '{low}-7'" if spec is _DOW and high == 0 else ""
        raise ValueError(
            f"range {base!r} runs backwards ({low} > {high}): cron ranges do not wrap around, "
            f"write two ranges instead{hint}"
        )
    return range(low, high + 1, step)


@dataclass(frozen=True)
class _DaySpec:
    """What the day-of-month and day-of-week fields of a cron expression select."""

    month_days: frozenset[int]
    last_day: bool
    last_weekday: bool
    nearest_weekday: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    nth_weekday: frozenset[tuple[int, int]]  # (weekday, n): the n-th such weekday of the month
    last_of_weekday: frozenset[int]  # the last such weekday of the month
    #: Vixie cron: a day field starting with ``*`` (or ``?``) makes the two fields AND, else OR.
    star: bool


def _parse_day_fields(dom: str, dow: str) -> _DaySpec:
    """Parse the two day fields (lowercase); ValueError names the field."""
    month_days: set[int] = set()
    last_day = last_weekday = False
    nearest: set[int] = set()
    for item in dom.split(","):
        try:
            if item == "l":
                last_day = True
            elif item == "lw":
                last_weekday = True
            elif (near := _NEAREST_WEEKDAY.fullmatch(item)) is not None:
                nearest.add(_cron_value(near["day"], _DOM))
            else:
                month_days.update(_cron_range("*" if item == "?" else item, _DOM))
        except ValueError as exc:
            raise ValueError(f"{_DOM.name} field {dom!r}: {exc}") from None
    weekdays: set[int] = set()
    nth: set[tuple[int, int]] = set()
    last_of: set[int] = set()
    for item in dow.split(","):
        try:
            if (hashed := _NTH_WEEKDAY.fullmatch(item)) is not None:
                if not _is_number(hashed["nth"]) or not 1 <= int(hashed["nth"]) <= 5:
                    raise ValueError(f"{item!r}: the n in day#n must be 1-5")
                nth.add((_cron_value(hashed["day"], _DOW) % 7, int(hashed["nth"])))
            elif (last := _LAST_WEEKDAY_OF_MONTH.fullmatch(item)) is not None:
                last_of.add(_cron_value(last["before"] or last["after"], _DOW) % 7)
            else:
                weekdays.update(d % 7 for d in _cron_range("*" if item == "?" else item, _DOW))
        except ValueError as exc:
            raise ValueError(f"{_DOW.name} field {dow!r}: {exc}") from None
    return _DaySpec(
        month_days=frozenset(month_days),
        last_day=last_day,
        last_weekday=last_weekday,
        nearest_weekday=frozenset(nearest),
        weekdays=frozenset(weekdays),
        nth_weekday=frozenset(nth),
        last_of_weekday=frozenset(last_of),
        star=dom.startswith(("*", "?")) or dow.startswith(("*", "?")),
    )


def _nearest_weekday(day: int, length: int, first_weekday: int) -> int | None:
    """The Monday-to-Friday day nearest to ``day`` within the month (None if the month is
    shorter); ``first_weekday`` is the weekday of the 1st, 0 = Monday."""
    if day > length:
        return None
    weekday = (first_weekday + day - 1) % 7
    if weekday == 5:  # Saturday: the Friday before, or the Monday after the 1st
        return day - 1 if day > 1 else day + 2
    if weekday == 6:  # Sunday: the Monday after, or the Friday before the last day
        return day + 1 if day < length else day - 2
    return day


@dataclass(frozen=True)
class _CronSpec:
    """A parsed cron expression: sorted times of day, months and the day fields."""

    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: frozenset[int]
    days: _DaySpec

    def month_days(self, year: int, month: int, day_and: bool) -> list[int]:
        """The days of ``year``-``month`` that match, ascending."""
        first_weekday, length = calendar.monthrange(year, month)
        spec = self.days
        by_date = {d for d in spec.month_days if d <= length}
        if spec.last_day:
            by_date.add(length)
        if spec.last_weekday:
            by_date.add(cast(int, _nearest_weekday(length, length, first_weekday)))
        for wanted in spec.nearest_weekday:
            near = _nearest_weekday(wanted, length, first_weekday)
            if near is not None:
                by_date.add(near)
        by_weekday = set()
        for day in range(1, length + 1):
            weekday = (first_weekday + day) % 7  # 0 = Sunday
            if (
                weekday in spec.weekdays
                or (weekday, (day + 6) // 7) in spec.nth_weekday
                or (weekday in spec.last_of_weekday and day + 7 > length)
            ):
                by_weekday.add(day)
        return sorted(by_date & by_weekday if day_and else by_date | by_weekday)

    def time_at_or_after(self, clock: time) -> time | None:
        """The first matching time of day at or after ``clock``."""
        hour, minute, second = clock.hour, clock.minute, clock.second
        for h in self.hours[bisect.bisect_left(self.hours, hour) :]:
            if h > hour:
                return time(h, self.minutes[0], self.seconds[0])
            for m in self.minutes[bisect.bisect_left(self.minutes, minute) :]:
                if m > minute:
                    return time(h, m, self.seconds[0])
                index = bisect.bisect_left(self.seconds, second)
                if index < len(self.seconds):
                    return time(h, m, self.seconds[index])
        return None

    def time_at_or_before(self, clock: time) -> time | None:
        """The last matching time of day at or before ``clock`` (whole seconds)."""
        hour, minute, second = clock.hour, clock.minute, clock.second
        for h in reversed(self.hours[: bisect.bisect_right(self.hours, hour)]):
            if h < hour:
                return time(h, self.minutes[-1], self.seconds[-1])
            for m in reversed(self.minutes[: bisect.bisect_right(self.minutes, minute)]):
                if m < minute:
                    return time(h, m, self.seconds[-1])
                index = bisect.bisect_right(self.seconds, second)
                if index:
                    return time(h, m, self.seconds[index - 1])
        return None


def _parse_plain_field(part: str, spec: _CronField) -> tuple[int, ...]:
    """The sorted values of a seconds, minutes, hours or months field; ValueError names it."""
    try:
        if "?" in part:
            raise ValueError("'?' is only allowed in day-of-month and day-of-week")
        return tuple(sorted({v for item in part.split(",") for v in _cron_range(item, spec)}))
    except ValueError as exc:
        raise ValueError(f"{spec.name} field {part!r}: {exc}") from None


@functools.lru_cache(maxsize=4096)
def _parse_cron(expr: str) -> _CronSpec:
    """Parse a normalised expression (or macro); ScheduleError names the field and why."""
    effective = MACROS.get(expr.lower(), expr)
    if effective.startswith("@"):
        raise ScheduleError(
            f"cron {expr!r}: unknown macro, expected one of {', '.join(sorted(MACROS))}"
        )
    parts = effective.lower().split()
    if len(parts) == 5:
        parts.insert(0, "0")
    elif len(parts) != 6:
        raise ScheduleError(
            f"cron {expr!r}: expected 5 fields (minute hour day-of-month month day-of-week) "
            f"or 6 with seconds first, got {len(parts)}"
        )
    try:
        seconds, minutes, hours, months = (
            _parse_plain_field(parts[index], spec)
            for index, spec in ((0, _SECOND), (1, _MINUTE), (2, _HOUR), (4, _MONTH))
        )
        days = _parse_day_fields(parts[3], parts[5])
    except ValueError as exc:
        raise ScheduleError(f"cron {expr!r}: {exc}") from None
    return _CronSpec(seconds, minutes, hours, frozenset(months), days)


@dataclass(frozen=True, kw_only=True)
class Cron(_WallClockSchedule):
    """A cron expression in local wall time: 5 fields, 6 with seconds first, or a macro.

    ``day_or=True`` is Vixie cron's day rule: when one day field starts with ``*`` both must
    match, else either; ``day_or=False`` is Celery ``crontab``'s rule, both must always match.
    """

    expr: str
    day_or: bool = True

    type_name: ClassVar[str] = "cron"

    def __post_init__(self) -> None:
        if not isinstance(self.expr, str):
            raise ScheduleError(f"cron expression must be a string, got {self.expr!r}")
        expr = " ".join(self.expr.split())
        if expr.lower() in MACROS:
            expr = expr.lower()
        object.__setattr__(self, "expr", expr)
        star = _parse_cron(expr).days.star  # ScheduleError names a bad field
        # With a day field starting with '*' both rules AND the fields: keep one definition.
        object.__setattr__(self, "day_or", bool(self.day_or) or star)

    @property
    def _day_and(self) -> bool:
        return not self.day_or or _parse_cron(self.expr).days.star

    def _wall_next(self, wall: datetime) -> datetime | None:
        spec, day_and = _parse_cron(self.expr), self._day_and
        try:
            start = wall.replace(microsecond=0) + _ONE_SECOND
        except OverflowError:
            return None
        year, month, first, clock = start.year, start.month, start.day, start.time()
        for _ in range(_CALENDAR_CYCLE_MONTHS + 1):
            if month in spec.months:
                for day in spec.month_days(year, month, day_and):
                    if day >= first:
                        moment = spec.time_at_or_after(clock if day == first else time(0))
                        if moment is not None:
                            return datetime.combine(date(year, month, day), moment)
            year, month = (year, month + 1) if month < 12 else (year + 1, 1)
            if year > MAXYEAR:
                return None
            first, clock = 1, time(0)
        return None

    def _wall_previous(self, wall: datetime) -> datetime | None:
        spec, day_and = _parse_cron(self.expr), self._day_and
        year, month, last, clock = wall.year, wall.month, wall.day, wall.time()
        for _ in range(_CALENDAR_CYCLE_MONTHS + 1):
            if month in spec.months:
                for day in reversed(spec.month_days(year, month, day_and)):
                    if day <= last:
                        moment = spec.time_at_or_before(clock if day == last else _LAST_SECOND)
                        if moment is not None:
                            return datetime.combine(date(year, month, day), moment)
            year, month = (year, month - 1) if month > 1 else (year - 1, 12)
            if year < MINYEAR:
                return None
            last, clock = 31, _LAST_SECOND
        return None

    def validate(self) -> None:
        """Syntax was checked at construction; also require a first slot (a calendar repeats
        every 400 years, so none in 400 years means never), so ``0 0 30 2 *`` fails at load."""
        if self.next_slot(_VALIDATION_REFERENCE) is None:
            raise ScheduleError(f"cron {self.expr!r} never fires (no matching date)")

    def describe(self) -> str:
        text = f"cron {self.expr}"
        if not self.day_or:
            text += " (day of month and day of week)"
        return text + self._tz_suffix()

    def _fields_to_dict(self) -> dict[str, Any]:
        return {"expr": self.expr, "day_or": self.day_or}


_accept_celery_assignments(Cron)


# --------------------------------------------------------------------------------------------
# solar (Celery's maths, needs ephem)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _celery_solar(event: str, lat: float, lon: float) -> Any:
    try:
        return celery.schedules.solar(event, lat, lon)
    except Exception as exc:  # ImproperlyConfigured without ephem, ValueError on bad input
        raise ScheduleError(f"solar {event!r} at ({lat}, {lon}): {exc}") from exc


def _ceil_second(moment: datetime) -> datetime:
    whole = moment.replace(microsecond=0)
    return whole if whole == moment else whole + _ONE_SECOND


_DAY_MICROSECONDS = 86_400 * 1_000_000
_EPHEM_LOCK = threading.Lock()


def _solar_day_start(lon: float, index: int) -> datetime:
    """Start of solar day ``index`` at longitude ``lon``: local mean midnight, whole seconds."""
    return EPOCH + timedelta(days=index, seconds=-round(lon * 240))


def _solar_day_index(lon: float, moment: datetime) -> int:
    """The solar day (see _solar_day_start) that contains ``moment``."""
    shifted = _microseconds(moment - EPOCH) + round(lon * 240) * 1_000_000
    return shifted // _DAY_MICROSECONDS


#: Events of one kind in one solar day, at most (near the poles, one that drifts across local
#: midnight can happen twice in a day).
_SOLAR_EVENTS_PER_DAY = 3
#: After ephem finds no crossing around a start, the next search starts this much later.
_SOLAR_RETRY_STEP = timedelta(hours=4)


@functools.lru_cache(maxsize=8192)
def _solar_slots(event: str, lat: float, lon: float, index: int) -> tuple[datetime, ...]:
    """The slots of ``event`` in solar day ``index``, in order: each event in the day, rounded
    up to the second.

    The searches start at the day's start, then just after the event found before (or a few
    hours later, when ephem finds no crossing around a start):
    ephem's result moves by milliseconds with the start of the search, and the slots must not
    depend on who asks, or when.
    """
    solar = _celery_solar(event, lat, lon)
    start, end = _solar_day_start(lon, index), _solar_day_start(lon, index + 1)
    method = getattr(solar.cal, solar.method)
    kwargs = {"use_center": True} if solar.use_center else {}
    slots: list[datetime] = []
    while len(slots) < _SOLAR_EVENTS_PER_DAY and start < end:
        try:
            with _EPHEM_LOCK:  # ephem moves the shared observer's date while it searches
                found = method(
                    solar.ephem.Sun(), start=solar.ephem.Date(start.replace(tzinfo=None)), **kwargs
                )
        except solar.ephem.CircumpolarError:
            # Not around this start (the first or last such night of a season): later in
            # the day the sun may cross that horizon.
            start += _SOLAR_RETRY_STEP
            continue
        moment = found.datetime().replace(tzinfo=UTC)
        if moment >= end:
            break
        slots.append(_ceil_second(moment))
        start = moment + timedelta(minutes=1)
    return tuple(slots)


@dataclass(frozen=True, kw_only=True)
class Solar(SlotSchedule):
    """A solar event at a place, with Celery's ``solar`` maths (ephem).

    Each solar day (local mean midnight to midnight) is searched from its start (and then from
    just after each event found), every event rounded up to the whole second, so that every
    replica computes the same instants whatever ``after`` it asks with. Near the poles an event
    that drifts across local midnight can happen twice in one solar day: both fire.
    """

    event: str
    lat: float
    lon: float

    type_name: ClassVar[str] = "solar"
    #: How many days next_slot and previous_slot look for an event that does not happen daily.
    max_search_days: ClassVar[int] = 366

    def __post_init__(self) -> None:
        events = sorted(celery.schedules.solar._all_events)
        if self.event not in events:
            raise ScheduleError(f"solar event {self.event!r}: expected one of {', '.join(events)}")
        if not -90 <= self.lat <= 90 or not -180 <= self.lon <= 180:
            raise ScheduleError(f"solar position ({self.lat}, {self.lon}) is out of range")

    def _slots(self, index: int) -> tuple[datetime, ...]:
        return _solar_slots(self.event, self.lat, self.lon, index)

    def next_slot(self, after: datetime) -> datetime | None:
        moment = _as_utc(after)
        # A day's slots are after the day's start, so days before moment's own have none after it.
        first = _solar_day_index(self.lon, moment)
        for index in range(first, first + self.max_search_days + 1):
            for slot in self._slots(index):
                if slot > moment:
                    return slot
        return None

    def previous_slot(self, at: datetime) -> datetime | None:
        moment = _as_utc(at)
        last = _solar_day_index(self.lon, moment)
        for index in range(last, last - self.max_search_days - 1, -1):
            for slot in reversed(self._slots(index)):
                if slot <= moment:
                    return slot
        return None

    def describe(self) -> str:
        return f"solar {self.event} at ({self.lat}, {self.lon})"

    def _fields_to_dict(self) -> dict[str, Any]:
        return {"event": self.event, "lat": self.lat, "lon": self.lon}


_accept_celery_assignments(Solar)


# --------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------


class EveryBuilder:
    """``every(n)`` — pick a unit: ``.seconds`` … ``.weeks`` (UTC intervals), ``.days`` (local
    days at 00:00, see ``.at``), ``.monday`` … ``.sunday``, ``.months`` (see ``.on``)."""

    __slots__ = ("_n",)

    def __init__(self, n: int = 1) -> None:
        self._n = _positive_int(n, "every(n): n")

    def __repr__(self) -> str:
        return f"every({self._n})"

    def _interval(self, seconds: int) -> Interval:
        try:
            return Interval(every=_seconds_delta(self._n * seconds))
        except ScheduleError:
            raise ScheduleError(f"every({self._n}): interval too long") from None

    @property
    def second(self) -> Interval:
        return self._interval(1)

    seconds = second

    @property
    def minute(self) -> Interval:
        return self._interval(60)

    minutes = minute

    @property
    def hour(self) -> Interval:
        return self._interval(3_600)

    hours = hour

    @property
    def week(self) -> Interval:
        return self._interval(604_800)

    weeks = week

    @property
    def day(self) -> Daily:
        return Daily(every_days=self._n)

    days = day

    @property
    def month(self) -> Monthly:
        return Monthly(every_months=self._n)

    months = month

    def _weekday(self, weekday: int) -> Weekly:
        if self._n != 1:
            raise ScheduleError(
                f"every({self._n}).{WEEKDAY_NAMES[weekday]}: weekday schedules take every(1)"
            )
        return Weekly(weekdays=(weekday,))

    @property
    def monday(self) -> Weekly:
        return self._weekday(0)

    @property
    def tuesday(self) -> Weekly:
        return self._weekday(1)

    @property
    def wednesday(self) -> Weekly:
        return self._weekday(2)

    @property
    def thursday(self) -> Weekly:
        return self._weekday(3)

    @property
    def friday(self) -> Weekly:
        return self._weekday(4)

    @property
    def saturday(self) -> Weekly:
        return self._weekday(5)

    @property
    def sunday(self) -> Weekly:
        return self._weekday(6)


def every(n: int = 1) -> EveryBuilder:
    """Start a schedule: ``every(5).minutes``, ``every(1).day.at("10:30")``, …"""
    return EveryBuilder(n)


def at(*times: str | time) -> Daily:
    """Daily at each of ``times`` (``"HH:MM"`` or ``"HH:MM:SS"``), local time."""
    return Daily(times=_times(times))


def cron(expr: str, tz: str | tzinfo | None = None) -> Cron:
    """A cron schedule (5 fields, 6 with seconds first, or a macro) in zone ``tz``."""
    return Cron(expr=expr, tz=None if tz is None else to_zone(tz))


# --------------------------------------------------------------------------------------------
# Celery schedules and other values
# --------------------------------------------------------------------------------------------


def _compress(values: set[int], low: int, high: int) -> str:
    """``{1, 2, 3, 7}`` -> ``"1-3,7"``; the whole range -> ``"*"``."""
    ordered = sorted(values)
    if ordered == list(range(low, high + 1)):
        return "*"
    runs: list[str] = []
    first = previous = ordered[0]
    for value in [*ordered[1:], None]:
        if value is not None and value == previous + 1:
            previous = value
            continue
        runs.append(str(first) if first == previous else f"{first}-{previous}")
        if value is not None:
            first = previous = value
    return ",".join(runs)


def _crontab_zone(schedule: Any, default_tz: str | tzinfo | None) -> str | tzinfo | None:
    app = getattr(schedule, "_app", None)
    if app is not None and app.conf.timezone:
        return cast("str | tzinfo", app.conf.timezone)
    return default_tz


def _from_crontab(schedule: Any, default_tz: str | tzinfo | None) -> Cron:
    fields = (
        _compress(schedule.minute, 0, 59),
        _compress(schedule.hour, 0, 23),
        _compress(schedule.day_of_month, 1, 31),
        _compress(schedule.month_of_year, 1, 12),
        _compress(schedule.day_of_week, 0, 6),
    )
    zone = _crontab_zone(schedule, default_tz)
    # Celery ANDs a restricted day-of-month with a restricted day-of-week.
    return Cron(expr=" ".join(fields), day_or=False, tz=None if zone is None else to_zone(zone))


def _seconds_delta(seconds: float) -> timedelta:
    """``timedelta(seconds=...)``, refusing what does not fit (ScheduleError, not OverflowError)."""
    if not math.isfinite(seconds):
        raise ScheduleError(f"interval must be a finite number of seconds, got {seconds!r}")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ScheduleError(f"interval too long: {seconds!r} seconds") from None


def _interval_from(value: timedelta | float) -> Interval:
    every = value if isinstance(value, timedelta) else _seconds_delta(value)
    if every <= timedelta(0):
        raise ScheduleError(f"interval must be positive, got {value!r}")
    return Interval(every=every)


def from_celery(schedule: object, default_tz: str | tzinfo | None = None) -> SlotSchedule:
    """Turn a Celery schedule (crontab, schedule, solar), a timedelta or seconds into slots."""
    result: SlotSchedule
    if isinstance(schedule, SlotSchedule):
        result = schedule
    elif isinstance(schedule, celery.schedules.crontab):
        result = _from_crontab(schedule, default_tz)
    elif isinstance(schedule, celery.schedules.solar):
        result = Solar(event=schedule.event, lat=schedule.lat, lon=schedule.lon)
    elif isinstance(schedule, celery.schedules.schedule):
        result = _interval_from(schedule.run_every)
    elif isinstance(schedule, timedelta) or (
        isinstance(schedule, (int, float)) and not isinstance(schedule, bool)
    ):
        result = _interval_from(schedule)
    else:
        raise ScheduleError(
            f"cannot use {schedule!r} as a schedule: expected a schedule, a string, seconds, "
            "a timedelta or a Celery crontab/schedule/solar"
        )
    return result.resolve_timezone(default_tz)


def coerce_schedule(value: object, default_tz: str | tzinfo | None = None) -> SlotSchedule:
    """Any accepted schedule value (string forms included) to a SlotSchedule with tz resolved."""
    if isinstance(value, str):
        from .parsing import parse_schedule

        return parse_schedule(value).resolve_timezone(default_tz)
    return from_celery(value, default_tz)


# --------------------------------------------------------------------------------------------
# dict codec
# --------------------------------------------------------------------------------------------


def _field(
    data: Mapping[str, Any], name: str, kinds: type | tuple[type, ...], default: Any = ...
) -> Any:
    if name not in data and default is not ...:
        return default
    if name not in data:
        raise ScheduleError(f"schedule field {name!r} is missing")
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ScheduleError(f"schedule field {name!r} has a bad value {value!r}")
    return value


def _field_times(data: Mapping[str, Any]) -> tuple[time, ...]:
    values = _field(data, "times", list)
    try:
        return _times(tuple(values))
    except ScheduleError as exc:
        raise ScheduleError(f"schedule field 'times': {exc}") from None


def _decode(kind: str, data: Mapping[str, Any]) -> SlotSchedule:
    if kind == "interval":
        text = None if data.get("start") is None else _field(data, "start", str)
        try:
            start = None if text is None else datetime.fromisoformat(text)
        except ValueError:
            raise ScheduleError(f"schedule field 'start' has a bad value {text!r}") from None
        return Interval(
            every=timedelta(seconds=_field(data, "every", (int, float))),
            phase=timedelta(seconds=_field(data, "offset", (int, float), 0)),
            start=start,
        )
    if kind == "daily":
        return Daily(every_days=_field(data, "every", int), times=_field_times(data))
    if kind == "weekly":
        names = _field(data, "weekdays", list)
        if not all(name in WEEKDAY_NAMES for name in names):
            raise ScheduleError(f"schedule field 'weekdays' has a bad value {names!r}")
        return Weekly(
            weekdays=tuple(WEEKDAY_NAMES.index(n) for n in names), times=_field_times(data)
        )
    if kind == "monthly":
        return Monthly(
            every_months=_field(data, "every", int),
            days=tuple(_field(data, "days", list)),
            times=_field_times(data),
        )
    if kind == "cron":
        day_or = data.get("day_or", True)
        if not isinstance(day_or, bool):
            raise ScheduleError(f"schedule field 'day_or' has a bad value {day_or!r}")
        return Cron(expr=_field(data, "expr", str), day_or=day_or)
    if kind == "solar":
        return Solar(
            event=_field(data, "event", str),
            lat=_field(data, "lat", (int, float)),
            lon=_field(data, "lon", (int, float)),
        )
    raise ScheduleError(
        f"schedule field 'type' has an unknown value {kind!r}: expected one of "
        "interval, daily, weekly, monthly, cron, solar"
    )


def schedule_from_dict(data: Mapping[str, Any]) -> SlotSchedule:
    """The inverse of :meth:`SlotSchedule.to_dict`; ScheduleError names a bad field."""
    if not isinstance(data, Mapping):
        raise ScheduleError(f"schedule must be a mapping, got {data!r}")
    kind = _field(data, "type", str)
    zone_name = data.get("tz")
    if zone_name is not None and not isinstance(zone_name, str):
        raise ScheduleError(f"schedule field 'tz' has a bad value {zone_name!r}")
    try:
        result = _decode(kind, data)
    except ScheduleError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise ScheduleError(f"schedule of type {kind!r} is invalid: {exc}") from exc
    if zone_name is None:
        return result
    try:
        return result.with_timezone(zone_name)
    except ScheduleError as exc:
        raise ScheduleError(f"schedule field 'tz': {exc}") from None
