"""The dict codec: the JSON-safe form of :meth:`SlotSchedule.to_dict` back to a schedule."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, time, timedelta
from typing import Any

from ..errors import ScheduleError
from .base import SlotSchedule, in_zone
from .calendar import WEEKDAY_NAMES, Daily, Monthly, Weekly, _times
from .cron_schedule import Cron
from .interval import Interval
from .solar import Solar


def _field(
    data: Mapping[str, Any], name: str, kinds: type | tuple[type, ...], default: Any = ...
) -> Any:
    if name not in data and default is not ...:
        return default
    if name not in data:
        raise ScheduleError(f"schedule field {name!r} is missing")
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ScheduleError(f"schedule field {name!r} has a bad value {value!r}")
    return value


def _field_times(data: Mapping[str, Any]) -> tuple[time, ...]:
    values = _field(data, "times", list)
    try:
        return _times(tuple(values))
    except ScheduleError as exc:
        raise ScheduleError(f"schedule field 'times': {exc}") from None


def _decode(kind: str, data: Mapping[str, Any]) -> SlotSchedule:
    if kind == "interval":
        text = None if data.get("start") is None else _field(data, "start", str)
        try:
            start = None if text is None else datetime.fromisoformat(text)
        except ValueError:
            raise ScheduleError(f"schedule field 'start' has a bad value {text!r}") from None
        return Interval(
            every=timedelta(seconds=_field(data, "every", (int, float))),
            phase=timedelta(seconds=_field(data, "offset", (int, float), 0)),
            start=start,
        )
    if kind == "daily":
        return Daily(every_days=_field(data, "every", int), times=_field_times(data))
    if kind == "weekly":
        names = _field(data, "weekdays", list)
        if not all(name in WEEKDAY_NAMES for name in names):
            raise ScheduleError(f"schedule field 'weekdays' has a bad value {names!r}")
        return Weekly(
            weekdays=tuple(WEEKDAY_NAMES.index(n) for n in names), times=_field_times(data)
        )
    if kind == "monthly":
        return Monthly(
            every_months=_field(data, "every", int),
            days=tuple(_field(data, "days", list)),
            times=_field_times(data),
        )
    if kind == "cron":
        day_or = data.get("day_or", True)
        if not isinstance(day_or, bool):
            raise ScheduleError(f"schedule field 'day_or' has a bad value {day_or!r}")
        return Cron(expr=_field(data, "expr", str), day_or=day_or)
    if kind == "solar":
        return Solar(
            event=_field(data, "event", str),
            lat=_field(data, "lat", (int, float)),
            lon=_field(data, "lon", (int, float)),
        )
    raise ScheduleError(
        f"schedule field 'type' has an unknown value {kind!r}: expected one of "
        "interval, daily, weekly, monthly, cron, solar"
    )


def schedule_from_dict(data: Mapping[str, Any]) -> SlotSchedule:
    """The inverse of :meth:`SlotSchedule.to_dict`; ScheduleError names a bad field."""
    if not isinstance(data, Mapping):
        raise ScheduleError(f"schedule must be a mapping, got {data!r}")
    kind = _field(data, "type", str)
    zone_name = data.get("tz")
    if zone_name is not None and not isinstance(zone_name, str):
        raise ScheduleError(f"schedule field 'tz' has a bad value {zone_name!r}")
    try:
        result = _decode(kind, data)
    except ScheduleError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise ScheduleError(f"schedule of type {kind!r} is invalid: {exc}") from exc
    return in_zone(result, zone_name, "schedule field 'tz'")
