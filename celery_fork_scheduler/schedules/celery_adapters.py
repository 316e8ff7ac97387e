"""Celery schedules and other values to slot schedules.

Celery's ``crontab``, ``schedule`` and ``solar``, a ``timedelta``, seconds or a string.
"""

from __future__ import annotations

from datetime import timedelta, tzinfo
from typing import Any, cast

import celery.schedules

from ..errors import ScheduleError
from .base import SlotSchedule, to_zone
from .cron_schedule import Cron
from .interval import Interval, _seconds_delta
from .parsing import parse_schedule
from .solar import Solar


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


def _from_crontab(schedule: Any, default_tz: str | tzinfo | None) -> Cron:
    fields = (
        _compress(schedule.minute, 0, 59),
        _compress(schedule.hour, 0, 23),
        _compress(schedule.day_of_month, 1, 31),
        _compress(schedule.month_of_year, 1, 12),
        _compress(schedule.day_of_week, 0, 6),
    )
    # The zone of the entry (its key, else beat's app): Celery's beat binds every schedule to
    # its own app (``maybe_schedule``), so a crontab's ``app=`` plays no part (round 61).
    zone = default_tz
    # Celery ANDs a restricted day-of-month with a restricted day-of-week.
    return Cron(expr=" ".join(fields), day_or=False, tz=None if zone is None else to_zone(zone))


#: The fields of a Celery ``crontab`` as its ``_orig_*`` attributes name them.
CRONTAB_FIELDS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")


def crontab_key(schedule: object) -> tuple[object, ...] | None:
    """A hashable key equal for two Celery ``crontab`` objects that give the same slots (their
    fields as written when they are strings or numbers, else as expanded); ``None`` for
    anything else, subclasses included."""
    if type(schedule) is not celery.schedules.crontab:
        return None
    crontab = cast("Any", schedule)
    written = tuple(getattr(crontab, f"_orig_{name}", []) for name in CRONTAB_FIELDS)
    if all(type(value) in (str, int) for value in written):  # as written: cheaper
        return ("written", *written)
    return (
        frozenset(crontab.minute),
        frozenset(crontab.hour),
        frozenset(crontab.day_of_month),
        frozenset(crontab.month_of_year),
        frozenset(crontab.day_of_week),
    )


#: The Celery schedule classes turned into slots, and the methods that decide when they fire.
_CELERY_BASES = (celery.schedules.crontab, celery.schedules.solar, celery.schedules.schedule)
_DECIDING = ("is_due", "remaining_estimate", "remaining_delta", "now", "tz", "to_local")


def _check_own_logic(schedule: object) -> None:
    """Refuse a subclass of a Celery schedule that decides itself when it is due: its slots
    would be those of the base class, its own logic lost (round 61: an hourly ``schedule``
    that skips weekends fired every hour)."""
    kind = type(schedule)
    base = next(b for b in _CELERY_BASES if isinstance(schedule, b))
    overridden = [
        name for name in _DECIDING if getattr(kind, name, None) is not getattr(base, name, None)
    ]
    if overridden:
        raise ScheduleError(
            f"{kind.__name__} overrides {' and '.join(overridden)} of Celery's {base.__name__}: "
            "replicas agree on slots computed ahead, not on is_due; write it as a cron string "
            "or a crontab, or as a SlotSchedule (see the docs: Schedules)"
        )


def _interval_from(value: timedelta | float) -> Interval:
    every = value if isinstance(value, timedelta) else _seconds_delta(value)
    if every <= timedelta(0):
        raise ScheduleError(f"interval must be positive, got {value!r}")
    return Interval(every=every)


def from_celery(schedule: object, default_tz: str | tzinfo | None = None) -> SlotSchedule:
    """Turn a Celery schedule (crontab, schedule, solar), a timedelta or seconds into slots."""
    result: SlotSchedule
    if isinstance(schedule, _CELERY_BASES) and type(schedule) not in _CELERY_BASES:
        _check_own_logic(schedule)
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
        return parse_schedule(value).resolve_timezone(default_tz)
    return from_celery(value, default_tz)
