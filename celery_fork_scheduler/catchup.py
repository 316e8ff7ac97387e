"""Which slots of an entry to claim now: recent ones, and missed ones by the catch-up policy.

Pure functions of the entry, two instants and the settings: no clock, no I/O.

A slot is *recent* when it is no older than ``fork_scheduler_catchup_grace``: it fires even if a
little late (a slow tick, a short hiccup). Older slots were *missed* — every replica was down,
paused or cut off from Redis — and the entry's ``catchup`` policy decides:

- ``"latest"`` (default, Celery's behaviour): the latest missed slot fires once, unless a recent
  slot fires anyway;
- ``"all"``: every missed slot fires (at most :data:`MAX_CATCH_UP_SLOTS`);
- ``"skip"``: missed slots never fire.

``catchup_window`` (and, at start-up, ``beat_cron_starting_deadline``) bounds how old a missed slot
may be and still fire.

A slot on one of the entry's exclusion dates (``exclude``, ``calendar``) would not have fired:
it is never the missed slot ``"latest"`` fires, and a recent one does not stand in for it. It
is still claimed when it comes up (recent, or with ``"all"``), to be recorded skipped.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import islice

from .entry import Entry, slots_of

#: At most this many slots of one entry are claimed at once (``catchup="all"`` after a long outage).
MAX_CATCH_UP_SLOTS = 1000


def slots_due(
    entry: Entry,
    after: datetime,
    now: datetime,
    *,
    grace: timedelta,
    window: timedelta | None = None,
) -> list[datetime]:
    """Slots of ``entry`` in ``(after, now]`` that should be claimed now, oldest first.

    Lateness is measured from a slot's publish instant (the slot plus its jitter offset, see
    :meth:`.Entry.publish_at`): a slot is due once that instant has come, recent while it is
    no older than the grace, and within a window while it is no older than the window.
    """
    cutoff = entry.due_edge(now - grace)
    recent = _bounded(entry, max(after, cutoff), entry.due_edge(now))
    limits = [w for w in (entry.catchup_window, window) if w is not None]
    oldest = max([after, *(entry.due_edge(now - w) for w in limits)])
    if oldest >= cutoff or entry.catchup == "skip":
        return recent
    if entry.catchup == "all":
        return _bounded(entry, oldest, cutoff) + recent
    if any(not entry.excludes(slot) for slot in recent):
        return recent
    latest = _latest_included(entry, cutoff, oldest)
    return ([latest] if latest is not None else []) + recent


def _latest_included(entry: Entry, at: datetime, oldest: datetime) -> datetime | None:
    """The latest slot in ``(oldest, at]`` not on an exclusion date (looking back at most
    :data:`MAX_CATCH_UP_SLOTS` slots)."""
    for _ in range(MAX_CATCH_UP_SLOTS):
        slot = entry.last_slot_at_or_before(at)
        if slot is None or slot <= oldest:
            return None
        if not entry.excludes(slot):
            return slot
        at = slot - timedelta(microseconds=1)
    return None


def _bounded(entry: Entry, after: datetime, until: datetime) -> list[datetime]:
    """Slots in ``(after, until]`` inside the entry's start/end, at most MAX_CATCH_UP_SLOTS."""
    if entry.start_at is not None and after < entry.start_at:
        after = entry.start_at - timedelta(microseconds=1)
    if entry.end_at is not None and until > entry.end_at:
        until = entry.end_at
    if until <= after:
        return []
    return list(islice(slots_of(entry.schedule, after, until), MAX_CATCH_UP_SLOTS))
