"""What a starting replica owes: the slots its entries missed while no replica ran (by their
catch-up policy), and the claims a dead replica left unsent (taken over).

Reading the high-water marks of 100 000 entries takes seconds, so it happens in batches over
the first ticks, while every entry's next slot is already queued.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta

from .backends import ClaimBackend
from .backends.base import Restart, to_epoch_us
from .backends.redis import EARLY_TOLERANCE
from .catchup import slots_due
from .config import Settings
from .entry import Entry
from .errors import BackendUnavailableError
from .pipeline import BACKEND_RETRY_SECONDS
from .reports import SlotReports
from .timequeue import TimeQueue

#: High-water marks read per tick at start-up.
MARKS_BATCH = 5000
#: A Redis start this far after a replica's now is on another clock (an injected one).
CLOCKS_DISAGREE = timedelta(hours=1)
#: An entry to check at start-up: (entry, its first queued slot, the instant it was read as
#: of, the instant its definition was made — a runtime entry's add or change — if known).
Unchecked = tuple[Entry, "datetime | None", datetime, "datetime | None"]


class StartupCatchUp:
    """The entries whose high-water marks are still to be read, each with its first queued
    slot, and what to queue once they are read."""

    def __init__(
        self,
        backend: Callable[[], ClaimBackend],
        settings: Settings,
        queue: TimeQueue,
        reports: SlotReports,
        monotonic: Callable[[], float],
        known_marks: dict[str, int],
    ) -> None:
        """``known_marks`` (entry -> us) is the scheduler's record of claimed slots; the marks
        read here raise it."""
        self._backend = backend
        self.settings = settings
        self.queue = queue
        self.reports = reports
        self.monotonic = monotonic
        self.known_marks = known_marks
        #: (entry, its first queued slot, the instant its missed slots are counted at), in
        #: the order they are read; those already read out of turn are passed over.
        self.unchecked: list[Unchecked] = []
        #: The items of :attr:`unchecked` not read yet, by entry name.
        self._pending: dict[str, list[Unchecked]] = {}
        #: No high-water marks are read before this (monotonic): a failed read backs off.
        self.next_read = 0.0

    def add(
        self, entry: Entry, upcoming: datetime | None, at: datetime, changed: datetime | None
    ) -> None:
        """Check ``entry`` in a coming batch; ``upcoming`` is its first queued slot, ``at``
        the instant it was read as of (beat's start, or a later change): what it missed is
        counted at that instant, however late its batch is read, and not before ``changed``,
        the instant this definition was made (a runtime entry that never ran counts from
        there)."""
        item = (entry, upcoming, at, changed)
        self.unchecked.append(item)
        self._pending.setdefault(entry.name, []).append(item)

    def pending(self, name: str) -> bool:
        """Whether the missed slots of the entry ``name`` are still to be looked for: none of
        its slots may be claimed before (a claim raises its high-water mark, and an older
        missed slot would then be refused; see :meth:`check_now`)."""
        return name in self._pending

    def forget(self, name: str) -> None:
        """The entry ``name`` was removed: nothing it missed is owed any more (an entry added
        again under its name starts afresh)."""
        self._pending.pop(name, None)

    def seconds_to_next_read(self) -> float | None:
        """How long until the next batch may be read (``None``: nothing left to read)."""
        if not self.unchecked:
            return None
        return max(self.next_read - self.monotonic(), 0.0)

    def run_batch(
        self,
        now: datetime,
        entries: Mapping[str, Entry],
        starting_deadline: timedelta | None,
    ) -> None:
        """Read the high-water marks of the next batch of entries and queue what they missed.

        An entry with a high-water mark (or a runtime entry that never ran, from the instant
        its definition was made) catches up by its policy (see :mod:`.catchup`), bounded by
        ``beat_cron_starting_deadline``. Every slot claimed and never recorded sent (its
        replica died, and so may have every replica that saw it pending) is asked for again,
        so that it is taken over or reported, as long as it is no older than a lease and the
        grace; older ones are missed slots like the others, and the catch-up rule decides.
        While the backend cannot be reached, the batch waits for a later tick. Entries removed
        since they were added are passed over (see :meth:`forget`).
        """
        if not self.unchecked or self.monotonic() < self.next_read:
            return
        batch = [item for item in self.unchecked[:MARKS_BATCH] if self._is_pending(item)]
        if self._check(batch, now, entries, starting_deadline) is None:
            del self.unchecked[:MARKS_BATCH]

    def check_now(
        self,
        names: Iterable[str],
        now: datetime,
        entries: Mapping[str, Entry],
        starting_deadline: timedelta | None,
    ) -> BackendUnavailableError | None:
        """Read the marks of the entries ``names`` out of turn (slots of theirs are due now),
        as :meth:`run_batch` does; the error when the backend cannot be reached."""
        batch = [item for name in names for item in self._pending.get(name, ())]
        return self._check(batch, now, entries, starting_deadline)

    def _is_pending(self, item: Unchecked) -> bool:
        return any(known is item for known in self._pending.get(item[0].name, ()))

    def _check(
        self,
        batch: list[Unchecked],
        now: datetime,
        entries: Mapping[str, Entry],
        starting_deadline: timedelta | None,
    ) -> BackendUnavailableError | None:
        """Read the marks of ``batch`` and queue what it missed; the error when the backend
        cannot be reached (the batch is left pending, and reads back off)."""
        if not batch:
            return None
        try:
            backend = self._backend()
            marks = backend.high_water_marks([item[0].name for item in batch])
            restart = backend.last_restart()
        except BackendUnavailableError as exc:
            self.reports.warn_rate_limited("marks", f"cannot read high-water marks yet: {exc}")
            self.next_read = self.monotonic() + BACKEND_RETRY_SECONDS
            return exc
        for item in batch:
            left = [known for known in self._pending.pop(item[0].name, []) if known is not item]
            if left:
                self._pending[item[0].name] = left
        grace = self.settings.catchup_grace
        for entry, upcoming, at, changed in batch:
            if entry.name not in entries:
                continue  # removed meanwhile (see forget)
            # An entry changed since still owes its missed slots and its unsent claims (what
            # it missed before beat started): their retries follow the entry by name.
            mark = marks.get(entry.name)
            # A runtime entry's slots before its last change are not its current definition's.
            reference = mark.slot if mark is not None else changed
            if reference is None:
                continue
            if changed is not None and reference < changed <= at:
                reference = changed
            missed = [
                slot
                for slot in slots_due(entry, reference, at, grace=grace, window=starting_deadline)
                if upcoming is None or slot < upcoming
            ]
            # (A start long after ``at`` says the clocks disagree: a test's fake clock. On
            # Redis's clock, which replicas follow, Redis started before now.)
            restarted_since = (
                restart
                if mark is not None
                and restart is not None
                and mark.slot < restart.at < at + CLOCKS_DISAGREE
                else None
            )
            if restarted_since is not None:
                missed = self._unknown_left_out(entry.name, missed, restarted_since)
            for slot in missed:
                self.queue.push(now.timestamp(), entry, slot, retry=True)
            if mark is None:
                continue
            slot_us = to_epoch_us(mark.slot)
            if slot_us > self.known_marks.get(entry.name, 0):
                self.known_marks[entry.name] = slot_us
            unsent = set(mark.unsent)
            if not mark.sent:
                unsent.add(mark.slot)
            # A missed slot on an exclusion date is recorded skipped, not run: it does not
            # stand in for an older unsent claim under "latest".
            fires = any(not entry.excludes(slot) for slot in missed)
            asks = self._unsent_to_ask(
                entry, unsent.difference(missed), fires, at, starting_deadline
            )
            if restarted_since is not None:  # an unsent claim of the snapshot: sent since?
                asks = self._unknown_left_out(entry.name, asks, restarted_since)
            for slot in asks:
                self.queue.push(now.timestamp(), entry, slot, takeover=True)
        return None

    def _unknown_left_out(
        self, name: str, slots: list[datetime], restart: Restart
    ) -> list[datetime]:
        """``slots`` without those that may have been published before Redis restarted
        (reported skipped ``unknown``): the entry's mark predates that start, and Redis may
        have come back from data older than what was published then (a snapshot; an
        append-only file loses the last writes before a crash, whose instant is unknown)."""
        latest = restart.at + EARLY_TOLERANCE
        kept = []
        for slot in slots:
            if slot <= latest:
                self.reports.skipped_slot(name, slot, "unknown")
            else:
                kept.append(slot)
        return kept

    def _unsent_to_ask(
        self,
        entry: Entry,
        unsent: set[datetime],
        caught_up: bool,
        at: datetime,
        window: timedelta | None,
    ) -> list[datetime]:
        """The unsent claims found at start-up to take over, oldest first, as of ``at`` (the
        instant the entry was read as of).

        One published no longer than a claim lease plus the grace before ``at`` (its jitter
        included) is a claim a replica just died with: it is taken over. An older one was
        missed while every replica was down, and follows the entry's catch-up policy like any
        missed slot:
        ``"all"`` takes each over, ``"latest"`` the latest one unless another slot fires
        anyway, ``"skip"`` none.
        """
        recent_after = at - self.settings.claim_lease - self.settings.catchup_grace
        # Ages count from the publish instant (jitter included), as for every missed slot.
        published = {slot: entry.publish_at(slot) for slot in unsent}
        recent = sorted(slot for slot in unsent if published[slot] >= recent_after)
        limits = [w for w in (entry.catchup_window, window) if w is not None]
        old = sorted(
            slot
            for slot in unsent
            if published[slot] < recent_after and all(at - published[slot] <= w for w in limits)
        )
        if entry.catchup == "all":
            return old + recent
        if entry.catchup == "latest" and not caught_up and not recent:
            return old[-1:]
        return recent
