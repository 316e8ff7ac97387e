"""The cron schedule: a cron expression (see :mod:`.cron_fields`) in local wall time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import MAXYEAR, MINYEAR, date, datetime, time
from typing import Any, ClassVar

from ..errors import ScheduleError
from .base import _ONE_SECOND, _VALIDATION_REFERENCE, _accept_celery_assignments
from .cron_fields import MACROS, _parse_cron
from .wall_clock import _WallClockSchedule

#: A Gregorian calendar repeats, weekdays included, every 400 years (146 097 days = 20 871 weeks):
#: a cron expression with no slot in 400 years never fires.
_CALENDAR_CYCLE_MONTHS = 400 * 12
_LAST_SECOND = time(23, 59, 59)


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
