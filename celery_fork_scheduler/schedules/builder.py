"""The builders: ``every(5).minutes``, ``every(1).day.at("10:30")``, ``at(...)``, ``cron(...)``."""

from __future__ import annotations

from datetime import time, tzinfo

from ..errors import ScheduleError
from .base import _positive_int, to_zone
from .calendar import WEEKDAY_NAMES, Daily, Monthly, Weekly, _times
from .cron_schedule import Cron
from .interval import Interval, _seconds_delta


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
