"""Solar events at a place, with Celery's ``solar`` maths (needs ``ephem``)."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

import celery.schedules

from ..errors import ScheduleError
from .base import (
    _ONE_SECOND,
    EPOCH,
    UTC,
    SlotSchedule,
    _accept_celery_assignments,
    _as_utc,
    _microseconds,
)


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
