"""Intervals: ``anchor + phase + k * every`` in UTC (time zones are irrelevant)."""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ScheduleError
from .base import EPOCH, SlotSchedule, _accept_celery_assignments, _as_utc, _microseconds

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from typing import Self
    else:
        from typing_extensions import Self

_UNITS = (("week", 604_800), ("day", 86_400), ("hour", 3_600), ("minute", 60), ("second", 1))


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


def _seconds_delta(seconds: float) -> timedelta:
    """``timedelta(seconds=...)``, refusing what does not fit (ScheduleError, not OverflowError)."""
    if not math.isfinite(seconds):
        raise ScheduleError(f"interval must be a finite number of seconds, got {seconds!r}")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ScheduleError(f"interval too long: {seconds!r} seconds") from None


@dataclass(frozen=True, kw_only=True)
class Interval(SlotSchedule):
    """``slot = anchor + phase + k * every``; anchor is ``start`` or the Unix epoch.

    Without ``start`` the slots extend in both directions; with it, ``start + phase`` is the first.
    """

    every: timedelta
    phase: timedelta = timedelta(0)
    start: datetime | None = None
    #: The offset as given, before an interval without an anchor reduced it: ``starting()``
    #: anchors that one (the first slot is the anchor plus the offset given).
    given_phase: timedelta | None = field(default=None, compare=False, repr=False)

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
            try:
                self.start + self.phase  # the first slot must be representable
            except OverflowError:
                raise ScheduleError(
                    f"start {self.start.isoformat()} plus offset {self.phase} is outside "
                    "the years 1-9999"
                ) from None
        else:
            # Without an anchor the phase only matters modulo the interval.
            phase = _microseconds(self.phase) % _microseconds(self.every)
            if self.given_phase is None:
                object.__setattr__(self, "given_phase", self.phase)
            object.__setattr__(self, "phase", timedelta(microseconds=phase))

    # builders
    def offset(self, **delta: float) -> Self:
        """A copy whose slots are shifted by ``timedelta(**delta)`` (a phase)."""
        try:
            phase = timedelta(**delta)
        except TypeError as exc:
            raise ScheduleError(f"offset() takes timedelta keywords, got {delta!r}") from exc
        except (ValueError, OverflowError) as exc:  # NaN, infinity, beyond a timedelta
            raise ScheduleError(f"offset() takes a finite timedelta, got {delta!r}") from exc
        return dataclasses.replace(self, phase=phase, given_phase=None)

    def starting(self, start: datetime) -> Self:
        """A copy anchored at ``start`` (aware): the first slot is ``start`` (plus the offset)."""
        if not isinstance(start, datetime):
            raise ScheduleError(f"starting() takes an aware datetime, got {start!r}")
        phase = self.phase if self.given_phase is None else self.given_phase
        return dataclasses.replace(self, start=_as_utc(start), phase=phase, given_phase=None)

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
