"""Wall-clock schedules: local wall times in the schedule's zone, mapped to UTC.

A wall-clock schedule names local wall times in its zone; each wall time is mapped to UTC with
these rules:

- a wall time that does not exist (spring forward) maps to the first instant after the gap, so
  all the nonexistent times of one gap collapse into that one instant, which fires once;
- a wall time that occurs twice (fall back) maps to its first occurrence (``fold=0``).

The mapping never decreases, so slots strictly increase once equal instants are merged.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast
from zoneinfo import ZoneInfo

from .base import EPOCH, UTC, SlotSchedule, _as_utc

_ONE_MICROSECOND = timedelta(microseconds=1)


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


def wall_to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
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
            slot = wall_to_utc(wall, zone)
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
        return None if wall is None else wall_to_utc(wall, zone)
