"""Calendar schedules: daily, weekly and monthly, at times of day in local wall time."""

from __future__ import annotations

import abc
import dataclasses
import sys
from dataclasses import dataclass
from datetime import MAXYEAR, MINYEAR, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ScheduleError
from .base import _accept_celery_assignments, _format_time, _positive_int, parse_time
from .wall_clock import _WallClockSchedule

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from typing import Self
    else:
        from typing_extensions import Self

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
WEEKDAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


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
    """The first day of month ``index`` (months since January 1970). Past the years a
    ``date`` holds it raises ``OverflowError``, as date arithmetic does: no slot there."""
    year, month = divmod(index, 12)
    if not MINYEAR <= 1970 + year <= MAXYEAR:
        raise OverflowError(f"year {1970 + year} is out of range")
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
