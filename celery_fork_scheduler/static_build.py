"""The static entries (``beat_schedule``, ``@periodic`` tasks, Celery's default entry), built
page by page at start-up.

Building and checking an entry takes tens of microseconds: half a million of them would hold
the first tick back for seconds. So :class:`StaticBuild` knows every name at once (a runtime
entry never takes a static name) and builds the entries in name order, a page at a time, for
as long as the scheduler lets it; meanwhile the entries built so far fire. A bad entry found on
a later page stops beat as it would at start-up.

The build also fingerprints the definitions (:func:`static_digest`, chained page by page in
name order): replicas whose static entries differ never trust each other's progress.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping
from datetime import timedelta, tzinfo
from typing import Any

from .config import shown
from .entry import (
    DEFAULT_MIN_INTERVAL,
    Entry,
    ScheduleMemo,
    entry_from_config,
    stored_fields,
)
from .errors import ConfigError
from .schedules.base import SlotSchedule

#: Entries built per page (and encoded together by one ``json.dumps`` for the digest).
PAGE_SIZE = 1000

#: The dict form of each schedule met so far, by identity (entries share schedule objects).
SchedulesSeen = dict[int, tuple[SlotSchedule, dict[str, Any]]]


def static_digest(
    entries: Iterable[Entry], digest: int = 0, schedules: SchedulesSeen | None = None
) -> int:
    """``digest`` carried on over the definitions of ``entries`` (in the order given), a page
    of :data:`PAGE_SIZE` per ``json.dumps``."""
    seen: SchedulesSeen = {} if schedules is None else schedules
    page: list[Entry] = []
    for entry in entries:
        page.append(entry)
        if len(page) == PAGE_SIZE:
            digest = _page_digest(page, digest, seen)
            page = []
    return _page_digest(page, digest, seen) if page else digest


def _page_digest(page: list[Entry], digest: int, schedules: SchedulesSeen) -> int:
    try:
        fields = [_definition(entry, schedules) for entry in page]
        text = json.dumps(fields, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):  # one cannot be stored (lazy args): each on its own
        text = "".join(_definition_text(entry) for entry in page)
    return zlib.crc32(text.encode(), digest)


def _definition(entry: Entry, schedules: SchedulesSeen) -> dict[str, Any]:
    """An entry's name and stored fields (the name decides its owner)."""
    if entry.lazy:
        raise TypeError("lazy arguments")
    known = schedules.get(id(entry.schedule))
    if known is None:
        known = schedules[id(entry.schedule)] = (entry.schedule, entry.schedule.to_dict())
    return {"name": entry.name, **stored_fields(entry, known[1])}


def _definition_text(entry: Entry) -> str:
    """An entry's definition as JSON; what JSON cannot hold (a ``datetime`` argument) as its
    repr, so that equal definitions give equal texts in every process (tags are sorted, not a
    set's repr). Lazy arguments (a callable) are their repr: never equal across processes."""
    try:
        return json.dumps(_definition(entry, {}), sort_keys=True, allow_nan=False)
    except Exception:
        pass
    try:
        if entry.lazy:
            raise TypeError("lazy arguments")
        fields = {"name": entry.name, **stored_fields(entry, entry.schedule.to_dict())}
        return json.dumps(fields, sort_keys=True, default=repr)
    except Exception:
        return repr(entry)


class StaticBuild:
    """Builds the static entries a page at a time, in name order.

    ``beat_schedule`` is the app's setting as written (checked here, entry by entry, as it is
    built); ``built``: entries from other sources, already built, that the pages hand out in
    their turn (``@periodic`` tasks, Celery's default entry; a ``beat_schedule`` entry of the
    same name wins).
    """

    def __init__(
        self,
        beat_schedule: Mapping[str, Any] | None,
        built: Mapping[str, Entry],
        *,
        default_timezone: tzinfo,
        min_interval: timedelta = DEFAULT_MIN_INTERVAL,
        calendars: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        config: Mapping[str, Any] = beat_schedule or {}
        if not isinstance(config, Mapping):
            raise ConfigError(f"must be a dict, not {type(config).__name__}", field="beat_schedule")
        for name in config:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"entry names must be non-empty strings, not {shown(name)}")
        self._config = config
        self._built = {name: entry for name, entry in built.items() if name not in config}
        #: Every static name, known before any entry is built.
        self.names = frozenset(config).union(self._built)
        self._order = sorted(self.names)
        self._position = 0
        self._default_timezone = default_timezone
        self._min_interval = min_interval
        self._calendars = calendars
        self._memo: ScheduleMemo = {}
        self._schedules: SchedulesSeen = {}
        #: The fingerprint of the definitions built so far (final once :attr:`complete`).
        self.digest = 0

    @property
    def complete(self) -> bool:
        """Whether every static entry is built."""
        return self._position >= len(self._order)

    @property
    def remaining(self) -> int:
        """How many static entries are not built yet."""
        return len(self._order) - self._position

    def page(self) -> list[Entry]:
        """The next :data:`PAGE_SIZE` entries, built and checked (:class:`ConfigError` names
        the first bad one; the page is then not counted as built)."""
        names = self._order[self._position : self._position + PAGE_SIZE]
        entries = [self._build(name) for name in names]
        self._position += len(names)
        if entries:
            self.digest = _page_digest(entries, self.digest, self._schedules)
        if self.complete:  # what only the build needed
            self._order, self._position = [], 0
            self._memo, self._schedules = {}, {}
        return entries

    def _build(self, name: str) -> Entry:
        built = self._built.get(name)
        if built is not None:
            return built
        return entry_from_config(
            name,
            self._config[name],
            default_timezone=self._default_timezone,
            min_interval=self._min_interval,
            calendars=self._calendars,
            schedule_memo=self._memo,
        )
