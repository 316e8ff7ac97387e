"""Schedules: pure slot maths, no I/O and no clock.

A *slot* is one nominal fire time of a schedule, an aware UTC ``datetime`` computed from the
schedule's definition alone, so every beat replica computes the same slots.

Two families:

* :class:`Interval` — ``anchor + phase + k * every`` in UTC (time zones are irrelevant).
* wall-clock schedules (:class:`Daily`, :class:`Weekly`, :class:`Monthly`, :class:`Cron`) — the
  schedule names local wall times in its zone, mapped to UTC with the DST rules of
  :mod:`.wall_clock`.

:class:`Solar` delegates to Celery's ``solar`` maths (needs ``ephem``).

One module per part, each importing only the ones listed before it: :mod:`.base` (the abstract
:class:`SlotSchedule`, zones, times of day), :mod:`.wall_clock`, :mod:`.interval`,
:mod:`.calendar` (daily, weekly, monthly), :mod:`.cron_fields` and :mod:`.cron_schedule`,
:mod:`.solar`, :mod:`.builder` (``every(...)``, ``at(...)``, ``cron(...)``), :mod:`.parsing`
(the string forms), :mod:`.celery_adapters` (Celery's schedules and other values) and
:mod:`.codec` (the dict form).
"""

from .base import SlotSchedule, parse_time, to_zone
from .builder import EveryBuilder, at, cron, every
from .calendar import WEEKDAY_NAMES, Daily, Monthly, Weekly
from .celery_adapters import coerce_schedule, from_celery
from .codec import schedule_from_dict
from .cron_schedule import Cron
from .interval import Interval
from .parsing import parse_schedule
from .solar import Solar

__all__ = [
    "WEEKDAY_NAMES",
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
    "parse_schedule",
    "parse_time",
    "schedule_from_dict",
    "to_zone",
]
