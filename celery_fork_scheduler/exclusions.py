"""Exclusion dates: the days on which an entry's slots are skipped (``exclude``, ``calendar``).

An item is one of:

- a date, ``"2026-12-24"`` (or a :class:`datetime.date`);
- an inclusive range of dates, ``"2026-12-24..2027-01-01"`` (or a 2-item list or tuple of
  dates or date strings);
- a yearly date, ``"12-25"`` (every year; ``"02-29"`` matches leap years only).

A slot (a UTC instant) is excluded when its date *in the entry's time zone* matches an item.
Pure: no clock, no I/O. Items are parsed once into sets of day ordinals, merged ranges and
(month, day) pairs, so that a lookup is a few set and bisect operations.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo

__all__ = [
    "MAX_ITEMS",
    "RANGE_SEPARATOR",
    "ExclusionError",
    "Exclusions",
    "compile_exclusions",
    "normalise_items",
]

#: Between the two dates of a range: ``"2026-12-24..2027-01-01"`` (both days included).
RANGE_SEPARATOR = ".."
#: Most items in one ``exclude`` list or one calendar (a stored entry stays small).
MAX_ITEMS = 1000

_YEARLY = re.compile(r"([0-9]{2})-([0-9]{2})")
#: A leap year, to check that a yearly ``MM-DD`` exists at all (``02-29`` does).
_LEAP_YEAR = 2000


class ExclusionError(ValueError):
    """An item that is not a date, a range or a yearly date; the message names it."""


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _date(value: object, item: object) -> date:
    if isinstance(value, datetime):
        raise ExclusionError(f"a date has no time of day: {_shown(item)}")
    if isinstance(value, date):
        return value
    if isinstance(value, str) and len(value) == 10:
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ExclusionError(
        f"not a date 'YYYY-MM-DD', a range 'YYYY-MM-DD..YYYY-MM-DD' or a yearly 'MM-DD': "
        f"{_shown(item)}"
    )


def _range(first: object, last: object, item: object) -> str:
    start, end = _date(first, item), _date(last, item)
    if end < start:
        raise ExclusionError(f"a range must not end before it starts: {_shown(item)}")
    return f"{start.isoformat()}{RANGE_SEPARATOR}{end.isoformat()}"


def _normalise(item: object) -> str:
    """The canonical text of one item (how it is stored and shown)."""
    if isinstance(item, (list, tuple)):
        if len(item) != 2:
            raise ExclusionError(f"a range is a list of 2 dates: {_shown(item)}")
        return _range(item[0], item[1], item)
    if isinstance(item, str):
        if RANGE_SEPARATOR in item:
            first, _, last = item.partition(RANGE_SEPARATOR)
            return _range(first.strip(), last.strip(), item)
        match = _YEARLY.fullmatch(item)  # (not "$", which matches before a final newline)
        if match:
            month, day = int(match[1]), int(match[2])
            try:
                date(_LEAP_YEAR, month, day)
            except ValueError:
                raise ExclusionError(f"no such day of the year: {_shown(item)}") from None
            return item
    return _date(item, item).isoformat()


def normalise_items(items: object) -> tuple[str, ...]:
    """Check a list of items and give their canonical texts (``None`` is none).

    Raises :class:`ExclusionError` naming the first bad item.
    """
    if items is None:
        return ()
    if isinstance(items, (str, date)):
        items = [items]
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise ExclusionError(
            f"must be a list of dates, ranges or yearly dates, not {_shown(items)}"
        )
    if len(items) > MAX_ITEMS:
        raise ExclusionError(f"at most {MAX_ITEMS} items, not {len(items)}")
    canonical = [_normalise(item) for item in items]
    if isinstance(items, (set, frozenset)):  # no order of its own: one for every replica
        canonical.sort()
    return tuple(dict.fromkeys(canonical))


@dataclass(frozen=True, kw_only=True, slots=True)
class Exclusions:
    """Compiled items, in one time zone: :meth:`excludes` tells whether a slot is skipped."""

    zone: tzinfo
    #: Day ordinals of single dates.
    days: frozenset[int]
    #: Merged, sorted, disjoint ranges of day ordinals (inclusive), as two parallel tuples.
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    #: (month, day) pairs excluded every year.
    yearly: frozenset[tuple[int, int]]

    def excludes_day(self, day: date) -> bool:
        """True when the local date ``day`` is excluded."""
        ordinal = day.toordinal()
        if ordinal in self.days or (day.month, day.day) in self.yearly:
            return True
        index = bisect.bisect_right(self.starts, ordinal) - 1
        return index >= 0 and ordinal <= self.ends[index]

    def excludes(self, slot: datetime) -> bool:
        """True when the slot's date in :attr:`zone` is excluded."""
        return self.excludes_day(slot.astimezone(self.zone).date())


def _merged(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    starts: list[int] = []
    ends: list[int] = []
    for start, end in sorted(ranges):
        if ends and start <= ends[-1] + 1:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return tuple(starts), tuple(ends)


def compile_exclusions(items: Sequence[str], zone: tzinfo) -> Exclusions | None:
    """Compile canonical items (see :func:`normalise_items`) for ``zone``; ``None`` when
    there are none."""
    if not items:
        return None
    days: set[int] = set()
    ranges: list[tuple[int, int]] = []
    yearly: set[tuple[int, int]] = set()
    for item in items:
        if RANGE_SEPARATOR in item:
            first, _, last = item.partition(RANGE_SEPARATOR)
            ranges.append(
                (date.fromisoformat(first).toordinal(), date.fromisoformat(last).toordinal())
            )
        elif len(item) == 5:
            month, day = item.split("-")
            yearly.add((int(month), int(day)))
        else:
            days.add(date.fromisoformat(item).toordinal())
    starts, ends = _merged(ranges)
    return Exclusions(
        zone=zone, days=frozenset(days), starts=starts, ends=ends, yearly=frozenset(yearly)
    )


def calendars_from_setting(value: object) -> Mapping[str, tuple[str, ...]]:
    """Check ``fork_scheduler_calendars``: names to lists of items, in canonical form.

    Raises :class:`ExclusionError` naming the calendar (and the bad item).
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ExclusionError(
            f"must be a dict of calendar names to lists of dates, not {_shown(value)}"
        )
    calendars: dict[str, tuple[str, ...]] = {}
    for name, items in value.items():
        if not isinstance(name, str) or not name:
            raise ExclusionError(f"calendar names must be non-empty strings, not {_shown(name)}")
        try:
            calendars[name] = normalise_items(items)
        except ExclusionError as exc:
            raise ExclusionError(f"calendar {name!r}: {exc}") from None
    return calendars
