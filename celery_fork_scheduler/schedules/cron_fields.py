"""Cron expressions: the fields, their parsing, and the parsed expression.

The parsed expression (``_CronSpec``) finds the matching days of a month and times of day.
"""

from __future__ import annotations

import bisect
import calendar
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import time
from typing import cast

from ..errors import ScheduleError

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
