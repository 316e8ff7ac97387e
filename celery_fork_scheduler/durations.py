"""Conversion of user-given durations (seconds as numbers, or timedelta) at the boundary.

Where a field says so (``jitter``), a duration may also be written as text with the units of
the ``every 10s`` / ``every 5 minutes`` schedule strings: ``"30s"``, ``"1.5 minutes"``,
``"2h"``, ``"1 day"``.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

#: Seconds per unit word, shared with the ``every <n> <unit>`` schedule strings.
UNIT_SECONDS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3_600),
    **dict.fromkeys(("w", "week", "weeks"), 604_800),
}
#: Day units: a schedule string means local calendar days by them, a duration 86 400 s.
DAY_UNITS = ("d", "day", "days")

_DURATION_TEXT = re.compile(
    r"\s*(?P<n>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[a-z]+)\s*", re.IGNORECASE | re.ASCII
)


def parse_duration(text: str, *, what: str) -> float:
    """Seconds of a duration written as ``"<number> <unit>"`` (``"30s"``, ``"2 minutes"``).

    Raises ``ValueError`` naming ``what`` when the text is not of that form.
    """
    match = _DURATION_TEXT.fullmatch(text)
    unit = match["unit"].lower() if match is not None else ""
    per_unit = 86_400 if unit in DAY_UNITS else UNIT_SECONDS.get(unit)
    if match is None or per_unit is None:
        raise ValueError(
            f"{what} must be a number of seconds, a timedelta or a duration such as "
            f"'30s' or '2 minutes', not {text[:60]!r}"
        )
    return float(match["n"]) * per_unit


def to_timedelta(
    value: object, *, what: str, allow_zero: bool = True, allow_text: bool = False
) -> timedelta:
    """Convert ``value`` (int/float seconds or ``timedelta``; with ``allow_text``, also a
    string for :func:`parse_duration`) to a ``timedelta``.

    Raises ``ValueError`` naming ``what`` for negative, NaN, infinite or non-numeric values.
    """
    if allow_text and isinstance(value, str):
        value = parse_duration(value, what=what)
    if isinstance(value, timedelta):
        if value < timedelta(0) or (value == timedelta(0) and not allow_zero):
            bound = "zero or more" if allow_zero else "positive"
            raise ValueError(f"{what} must be {bound}, not {value!r}")
        return value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValueError(f"{what} must be a number of seconds or a timedelta, not {value!r}")
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"{what} must be a finite duration, not {value!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "positive"
        raise ValueError(f"{what} must be {bound}, not {value!r}")
    try:
        result = timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"{what} is too large: {value!r}") from None
    if result == timedelta(0) and not allow_zero:
        raise ValueError(f"{what} must be at least one microsecond, not {value!r}")
    return result
