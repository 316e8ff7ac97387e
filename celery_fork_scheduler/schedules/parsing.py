"""The string forms of schedules accepted in configuration.

=====================================  ===========================================
form                                   meaning
=====================================  ===========================================
``every 5 minutes``, ``every 10s``,     UTC interval anchored at the Unix epoch
``every 2h``, ``every minute``
``every 2 days``, ``every day``         every n-th local day (from 1970-01-01) at 00:00
``every 2 days at 10:30``               … at the given time(s)
``at 10:30``, ``at 10:30, 22:30``,      daily at each time
``daily at 10:30``, ``daily``
``monday at 09:00``,                    weekly (``mon``…``sun`` and lists ``mon, fri``)
``every monday at 09:00``
``monthly on 1,15,-1 at 00:00``,        days of the month (-1 = last day)
``every 3 months on 1 at 06:00``
``cron */5 * * * *``, ``*/5 * * * *``,  cron: 5 fields, 6 with seconds first, macros
``*/10 * * * * *``, ``@daily``
=====================================  ===========================================

Any form may end with `` in <IANA zone>``, e.g. ``daily at 10:30 in Europe/Berlin``.
"""

from __future__ import annotations

import re
from datetime import time, timedelta

from ..durations import DAY_UNITS, UNIT_SECONDS
from ..errors import ScheduleError
from .base import SlotSchedule, in_zone, parse_time
from .calendar import WEEKDAY_NAMES, Daily, Monthly, Weekly
from .cron_fields import MACROS
from .cron_schedule import Cron
from .interval import Interval

__all__ = ["parse_schedule"]

_EXPECTED = (
    "expected e.g. 'every 5 minutes', 'every 10s', 'at 10:30', 'daily at 10:30', "
    "'monday at 09:00', 'every 2 days at 10:30', 'monthly on 1,15,-1 at 00:00', "
    "'cron */5 * * * *', a 5- or 6-field cron expression or a macro such as '@daily', "
    "optionally followed by ' in <IANA zone>'"
)

_WEEKDAYS = {
    **{name: index for index, name in enumerate(WEEKDAY_NAMES)},
    **{name[:3]: index for index, name in enumerate(WEEKDAY_NAMES)},
}

_TIMES = r"(?P<times>\d[\d:,\s]*)"
_ZONE = re.compile(r"(?P<body>.+?)\s+in\s+(?P<zone>[A-Za-z][\w+\-/]*)", re.IGNORECASE)
_EVERY_UNIT = re.compile(
    r"every\s+(?:(?P<n>\d+)\s*)?(?P<unit>[a-z]+)(?:\s+at\s+" + _TIMES + ")?", re.ASCII
)
_AT = re.compile(r"(?:daily\s+)?at\s+" + _TIMES + r"|daily", re.ASCII)
_WEEKLY = re.compile(
    r"(?:every\s+)?(?P<days>[a-z]+(?:\s*,\s*[a-z]+)*)(?:\s+at\s+" + _TIMES + ")?", re.ASCII
)
_MONTHLY = re.compile(
    r"(?:monthly|every\s+(?:(?P<n>\d+)\s+)?months?)\s+on\s+(?P<days>-?\d+(?:\s*,\s*-?\d+)*)"
    r"(?:\s+at\s+" + _TIMES + ")?",
    re.ASCII,
)
_CRON_TOKEN = re.compile(r"[\w*/,\-#?]+")


class _Unparsable(Exception):
    """A form was recognised but a part of it is wrong; carries the reason."""


def parse_schedule(text: str) -> SlotSchedule:
    """Parse a configuration string into a schedule; ScheduleError quotes it and says why."""
    if not isinstance(text, str):
        raise ScheduleError(f"schedule {text!r} is not a string: {_EXPECTED}")
    source = " ".join(text.split())
    body, zone = source, None
    zoned = _ZONE.fullmatch(source)
    if zoned is not None:
        body, zone = zoned["body"], zoned["zone"]
    failed = f"cannot parse schedule {text!r}"
    try:
        schedule = _parse_body(body)
    except (_Unparsable, ScheduleError) as exc:
        raise ScheduleError(f"{failed}: {exc}") from None
    return in_zone(schedule, zone, failed)


def _parse_body(body: str) -> SlotSchedule:
    lowered = body.lower()
    if lowered.startswith("cron "):
        return Cron(expr=body[5:])
    if lowered.startswith("@"):
        if lowered not in MACROS:
            raise _Unparsable(f"unknown macro, expected one of {', '.join(sorted(MACROS))}")
        return Cron(expr=lowered)
    for parser in (_parse_every_unit, _parse_at, _parse_monthly, _parse_weekly):
        schedule = parser(lowered)
        if schedule is not None:
            return schedule
    tokens = body.split()
    if len(tokens) in (5, 6) and all(_CRON_TOKEN.fullmatch(token) for token in tokens):
        return Cron(expr=body)
    raise _Unparsable(_EXPECTED)


def _times(text: str | None) -> tuple[time, ...]:
    if text is None:
        return (time(0, 0),)
    # parse_time raises ScheduleError naming the bad time
    return tuple(parse_time(part.strip()) for part in text.split(","))


def _parse_every_unit(text: str) -> SlotSchedule | None:
    match = _EVERY_UNIT.fullmatch(text)
    if match is None:
        return None
    unit = match["unit"]
    count = int(match["n"]) if match["n"] is not None else 1
    if unit not in UNIT_SECONDS and unit not in DAY_UNITS:
        if match["n"] is None:
            return None  # maybe a weekday: "every monday at 09:00"
        if unit in ("month", "months"):
            raise _Unparsable(
                f"{unit!r} needs the days of the month: 'every {count} months on <days> [at "
                "<time>]', e.g. 'every 3 months on 1 at 06:00'"
            )
        raise _Unparsable(f"unknown unit {unit!r}, expected seconds, minutes, hours, days or weeks")
    if count < 1:
        raise _Unparsable(f"the count must be at least 1, got {count}")
    if unit in DAY_UNITS:
        return Daily(every_days=count, times=_times(match["times"]))
    if match["times"] is not None:
        raise _Unparsable(f"'at' needs a day unit ('every 2 days at 10:30'), not {unit!r}")
    try:
        return Interval(every=timedelta(seconds=count * UNIT_SECONDS[unit]))
    except OverflowError:
        raise _Unparsable(f"interval too long: {count} {unit}") from None


def _parse_at(text: str) -> SlotSchedule | None:
    match = _AT.fullmatch(text)
    if match is None:
        return None
    return Daily(times=_times(match["times"]))


def _parse_monthly(text: str) -> SlotSchedule | None:
    match = _MONTHLY.fullmatch(text)
    if match is None:
        if text.startswith("monthly"):
            raise _Unparsable("expected 'monthly on <days> at <time>', e.g. 'monthly on 1,-1'")
        return None
    days = tuple(int(day) for day in match["days"].split(","))
    count = int(match["n"]) if match["n"] is not None else 1
    return Monthly(every_months=count, days=days, times=_times(match["times"]))


def _parse_weekly(text: str) -> SlotSchedule | None:
    match = _WEEKLY.fullmatch(text)
    if match is None:
        return None
    names = [name.strip() for name in match["days"].split(",")]
    if not all(name in _WEEKDAYS for name in names):
        if text.startswith("every ") or match["times"] is not None:
            unknown = next(name for name in names if name not in _WEEKDAYS)
            raise _Unparsable(
                f"unknown unit or weekday {unknown!r}: expected seconds, minutes, hours, days, "
                "weeks, 'months on …' or monday … sunday"
            )
        return None
    return Weekly(weekdays=tuple(_WEEKDAYS[name] for name in names), times=_times(match["times"]))
