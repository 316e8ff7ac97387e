"""Conversion of user-given durations (seconds as numbers, or timedelta) at the boundary."""

from __future__ import annotations

import math
from datetime import timedelta


def to_timedelta(value: object, *, what: str, allow_zero: bool = True) -> timedelta:
    """Convert ``value`` (int/float seconds or ``timedelta``) to a ``timedelta``.

    Raises ``ValueError`` naming ``what`` for negative, NaN, infinite or non-numeric values.
    """
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
