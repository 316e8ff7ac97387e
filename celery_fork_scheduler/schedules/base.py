"""The abstract schedule and what every schedule shares: zones, times of day, aware instants.

Every schedule is a frozen, keyword-only dataclass and a ``celery.schedules.BaseSchedule``, so
it also works under Celery's own beat (:meth:`SlotSchedule.is_due` is the only place that reads
the clock).
"""

from __future__ import annotations

import abc
import dataclasses
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import celery.schedules

from ..errors import ScheduleError

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from typing import Self
    else:
        from typing_extensions import Self

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_SECOND = timedelta(seconds=1)
#: Instant from which :meth:`SlotSchedule.validate` looks for a first slot (never ``now()``).
_VALIDATION_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)
#: What :meth:`SlotSchedule.is_due` tells Celery when a schedule has no further slot.
_NEVER_RECHECK = timedelta(days=1)


# --------------------------------------------------------------------------------------------
# boundary converters
# --------------------------------------------------------------------------------------------


def to_zone(tz: str | tzinfo) -> ZoneInfo:
    """Return the IANA zone named by ``tz`` (a name or a tzinfo); :class:`ScheduleError` if none."""
    if isinstance(tz, ZoneInfo):
        if tz.key is None:  # ZoneInfo.from_file: nothing to store and read back by name
            raise ScheduleError(
                f"time zone {tz!s} has no IANA name (ZoneInfo.from_file?): "
                "use ZoneInfo('Area/City') or the name itself"
            )
        return tz
    if isinstance(tz, str):
        name = tz
    elif tz == UTC:
        name = "UTC"
    elif isinstance(tz, timezone) and not _names_a_zone(str(tz)):
        name = _fixed_offset_zone(tz)  # (one named after an IANA zone is read by its name)
    else:
        # pytz zones carry ``zone``, zoneinfo-like objects ``key``, dateutil's the file they
        # were read from; a fixed offset (dateutil's ``tzoffset``, ``tzutc``) is its offset's.
        name = str(
            getattr(tz, "key", None)
            or getattr(tz, "zone", None)
            or _zone_file_name(getattr(tz, "_filename", None))
            or (str(tz) if _names_a_zone(str(tz)) else None)
            or _fixed_offset_of(tz)
            or tz
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ScheduleError(
            f"unknown time zone {name!r}: expected an IANA name such as 'Europe/Berlin'"
        ) from exc


def _zone_file_name(path: object) -> str | None:
    """``Europe/Berlin`` of ``/usr/share/zoneinfo/Europe/Berlin`` (dateutil's ``gettz``)."""
    if not isinstance(path, str) or "zoneinfo/" not in path:
        return None
    return path.rsplit("zoneinfo/", 1)[1]


def _fixed_offset_of(tz: tzinfo) -> str | None:
    """The zone of a tzinfo with one offset and no daylight saving, else ``None``."""
    try:
        offset, dst = tz.utcoffset(None), tz.dst(None)
    except Exception:  # a tzinfo that needs a datetime
        return None
    if not isinstance(offset, timedelta) or dst not in (None, timedelta(0)):
        return None
    return _fixed_offset_zone(timezone(offset))


def _names_a_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return False
    return True


def _fixed_offset_zone(tz: timezone) -> str:
    """The IANA name of a fixed offset of whole hours (``Etc/GMT-2`` is UTC+02:00: POSIX signs);
    :class:`ScheduleError` for any other offset (no IANA zone is that offset all year)."""
    offset = tz.utcoffset(None)
    hours, rest = divmod(offset, timedelta(hours=1))
    if rest or not -12 <= hours <= 14:
        raise ScheduleError(
            f"time zone {tz!s} is a fixed offset no IANA zone names: give an IANA name such as "
            "'Asia/Kolkata', or whole hours (they become 'Etc/GMT-2' and the like)"
        )
    return f"Etc/GMT{-hours:+d}" if hours else "UTC"


def parse_time(value: str | time) -> time:
    """``"HH:MM"`` or ``"HH:MM:SS"`` (or a naive ``time``) to a ``time``; ScheduleError names it."""
    if isinstance(value, time):
        if value.tzinfo is not None:
            raise ScheduleError(f"invalid time {value!r}: give a wall time without tzinfo")
        return value.replace(microsecond=0)
    if not isinstance(value, str):
        raise ScheduleError(f"invalid time {value!r}: expected a string 'HH:MM' or 'HH:MM:SS'")
    match = re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2}))?", value.strip(), re.ASCII)
    if match is not None:
        hour, minute, second = (int(part or 0) for part in match.groups())
        if hour < 24 and minute < 60 and second < 60:
            return time(hour, minute, second)
    raise ScheduleError(
        f"invalid time {value!r}: expected 'HH:MM' or 'HH:MM:SS' between 00:00 and 23:59:59"
    )


def _format_time(value: time) -> str:
    return value.strftime("%H:%M:%S" if value.second else "%H:%M")


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ScheduleError(f"naive datetime {moment.isoformat()!r}: expected an aware datetime")
    return moment.astimezone(UTC)


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ScheduleError(f"{what} must be a positive integer, got {value!r}")
    return value


def _microseconds(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# --------------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SlotSchedule(celery.schedules.BaseSchedule, metaclass=abc.ABCMeta):  # type: ignore[misc]
    """Abstract base of every schedule: slots are pure functions of the definition."""

    #: IANA zone of the wall clock; ``None`` means "use the app default" (see resolve_timezone).
    tz: ZoneInfo | None = None

    type_name: ClassVar[str] = ""

    # -- slot maths ----------------------------------------------------------------------

    @abc.abstractmethod
    def next_slot(self, after: datetime) -> datetime | None:
        """The first slot strictly after ``after`` (aware, any zone), as aware UTC; None if none."""

    @abc.abstractmethod
    def previous_slot(self, at: datetime) -> datetime | None:
        """The last slot at or before ``at`` (aware), as aware UTC; None if none."""

    def slots(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """Slots with ``start < slot <= end``, ascending."""
        current = _as_utc(start)
        stop = _as_utc(end)
        while True:
            following = self.next_slot(current)
            if following is None or following > stop:
                return
            yield following
            current = following

    # -- definition ----------------------------------------------------------------------

    def with_timezone(self, tz: str | tzinfo) -> Self:
        """A copy evaluated in the IANA zone ``tz`` (ScheduleError on an unknown zone)."""
        return dataclasses.replace(self, tz=to_zone(tz))

    def resolve_timezone(self, default: str | tzinfo | None) -> Self:
        """A copy with ``tz=default`` if this schedule has no zone of its own, else ``self``."""
        if self.tz is not None or default is None:
            return self
        return self.with_timezone(default)

    @property
    def zone(self) -> ZoneInfo:
        """The zone slots are computed in: ``tz``, or UTC while it is unresolved."""
        return self.tz if self.tz is not None else _UTC_ZONE

    @abc.abstractmethod
    def describe(self) -> str:
        """Human form, e.g. ``"every 5 minutes"`` or ``"daily at 10:30"``."""

    def validate(self) -> None:
        """Raise ScheduleError if the schedule can never fire (bounded in time)."""
        if self.next_slot(_VALIDATION_REFERENCE) is None:
            raise ScheduleError(f"schedule {self.describe()!r} never fires")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form with a ``"type"`` key and the zone name; see schedule_from_dict."""
        return {"type": self.type_name, **self._fields_to_dict(), "tz": _zone_name(self.tz)}

    @abc.abstractmethod
    def _fields_to_dict(self) -> dict[str, Any]: ...

    def _tz_suffix(self) -> str:
        return f" in {self.tz.key}" if self.tz is not None else ""

    # -- Celery compatibility --------------------------------------------------------------

    def now(self) -> datetime:
        """The current time; read only by the Celery-compatibility methods, never by slot maths."""
        return datetime.now(UTC)

    def is_due(self, last_run_at: datetime) -> celery.schedules.schedstate:
        """Celery's contract: ``(due, seconds until the next check)``."""
        now = self.now()
        following = self.next_slot(_celery_aware(last_run_at))
        if following is not None and following <= now:
            after_now = self.next_slot(now)
            wait = _NEVER_RECHECK if after_now is None else after_now - now
            return celery.schedules.schedstate(True, wait.total_seconds())
        if following is None:
            return celery.schedules.schedstate(False, _NEVER_RECHECK.total_seconds())
        return celery.schedules.schedstate(False, (following - now).total_seconds())

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        """Time left until the first slot after ``last_run_at`` (may be negative if overdue)."""
        following = self.next_slot(_celery_aware(last_run_at))
        if following is None:
            return _NEVER_RECHECK
        return following - self.now()


_UTC_ZONE = ZoneInfo("UTC")


def _zone_name(zone: ZoneInfo | None) -> str | None:
    return None if zone is None else zone.key


def _celery_aware(moment: datetime) -> datetime:
    """Celery hands naive datetimes around meaning UTC (enable_utc); accept them here only."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _frozen_setattr(self: object, name: str, value: object) -> None:
    if name in ("app", "nowfun"):
        # Celery's beat assigns ``schedule.app = app``; slots never depend on it.
        return
    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _accept_celery_assignments(cls: type[SlotSchedule]) -> None:
    """Let Celery's ``schedule.app = app`` pass on a frozen schedule (it is ignored)."""
    setattr(cls, "__setattr__", _frozen_setattr)  # noqa: B010


def in_zone(schedule: SlotSchedule, zone: str | None, context: str) -> SlotSchedule:
    """``schedule`` in the IANA zone ``zone`` (``None``: as it is); an unknown zone is a
    :class:`ScheduleError` that begins with ``context``."""
    if zone is None:
        return schedule
    try:
        return schedule.with_timezone(zone)
    except ScheduleError as exc:
        raise ScheduleError(f"{context}: {exc}") from None
