"""A scheduler harness driven by a fake clock: what would have been published, and when.

No sleeping, no broker and no Redis: the app's schedule (``beat_schedule``, ``@periodic``
tasks, and runtime entries you add) runs on an in-process claim backend, and every occurrence
is recorded instead of sent::

    harness = ScheduleHarness(app, start="2026-03-29T00:00:00+01:00")
    harness.advance(hours=6)
    assert harness.fired("nightly") == ["2026-03-29T01:00:00+00:00"]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from ..backends import Claim, ClaimOutcome, ClaimResult, LocalBackend
from ..entry import entry_from_config
from ..publishing import Occurrence
from ..scheduler import Scheduler
from .clock import FakeClock
from .recording import RecordingPublisher

__all__ = ["ScheduleHarness", "assert_fires", "assert_never_fires"]


class _HarnessBackend(LocalBackend):
    """The in-process backend, plus pause state."""

    #: A harness is one replica on purpose: no "NOT protected" warning in the user's tests.
    warns_single_replica = False

    def __init__(self) -> None:
        super().__init__(None)
        self.paused: set[str] = set()

    def claim(self, claims: Sequence[Claim]) -> list[ClaimResult]:
        paused = [c for c in claims if c.entry in self.paused]
        results = {id(r.claim): r for r in super().claim([c for c in claims if c not in paused])}
        results.update({id(c): ClaimResult(c, ClaimOutcome.PAUSED) for c in paused})
        return [results[id(c)] for c in claims]


class ScheduleHarness:
    """Run an app's schedule on a fake clock and record the occurrences it publishes."""

    def __init__(self, app: Any, *, start: datetime | str) -> None:
        self.app = app
        self.clock = FakeClock(start)
        self.publisher = RecordingPublisher()
        self._backend = _HarnessBackend()
        self._monotonic = 0.0
        self.scheduler = Scheduler(
            app,
            clock=self.clock,
            backend=self._backend,
            publisher=self.publisher,
            monotonic=lambda: self._monotonic,
            exit_on_config_error=False,
        )

    @property
    def now(self) -> datetime:
        """The fake current instant (UTC)."""
        return self.clock.now

    @property
    def occurrences(self) -> list[Occurrence]:
        """Everything published so far, in order."""
        return self.publisher.occurrences

    def advance(self, delta: timedelta | None = None, **units: float) -> list[Occurrence]:
        """Move the clock forward (``advance(minutes=5)`` or a timedelta); return what fired."""
        step = delta if delta is not None else timedelta(**units)
        return self.advance_to(self.clock.now + step)

    def advance_to(self, instant: datetime | str) -> list[Occurrence]:
        """Move the clock to ``instant``, ticking at every wake-up on the way."""
        target = FakeClock(instant).now if isinstance(instant, str) else instant
        before = len(self.publisher.occurrences)
        while True:
            wakeup = self.scheduler.queue.next_wakeup()
            if wakeup is None or wakeup > target.timestamp():
                break
            self._move_to(max(wakeup, self.clock.now.timestamp()))
            self.scheduler.tick()
        self._move_to(target.timestamp())
        self.scheduler.tick()
        return self.publisher.occurrences[before:]

    def _move_to(self, timestamp: float) -> None:
        moved = timestamp - self.clock.now.timestamp()
        if moved > 0:
            self.clock.advance(moved)
            self._monotonic += moved

    def fired(self, entry: str | None = None) -> list[str]:
        """The slots published (ISO-8601 UTC), of one entry or all."""
        return self.publisher.fired(entry)

    def add(self, name: str, definition: Mapping[str, Any]) -> None:
        """Add (or replace) an entry as a runtime entry would be, from its next slot."""
        entry = entry_from_config(
            name,
            definition,
            default_timezone=self.scheduler.default_timezone,
            source="runtime",
            calendars=self.scheduler.settings.calendars,
        )
        self.scheduler.put_entry(entry, self.clock.now)

    def remove(self, name: str) -> None:
        """Remove an entry."""
        self.scheduler.remove_entry(name)

    def pause(self, *names: str) -> None:
        """Pause entries: their slots are skipped with reason ``paused``."""
        self._backend.paused.update(names)

    def resume(self, *names: str) -> None:
        """Resume paused entries."""
        self._backend.paused.difference_update(names)

    def close(self) -> None:
        """Release what the scheduler holds."""
        self.scheduler.close()


def _iso(values: Iterable[datetime | str]) -> list[str]:
    return [v if isinstance(v, str) else v.isoformat() for v in values]


def assert_fires(
    harness: ScheduleHarness,
    entry: str,
    expected: Iterable[datetime | str],
    *,
    between: tuple[datetime | str, datetime | str] | None = None,
) -> None:
    """Advance through ``between`` (if given) and assert ``entry`` fired exactly at ``expected``."""
    if between is not None:
        start, end = (FakeClock(v).now if isinstance(v, str) else v for v in between)
        if start > harness.now:
            harness.advance_to(start)
        harness.publisher.clear()
        harness.advance_to(end)
    wanted = _iso(expected)
    got = harness.fired(entry)
    assert got == wanted, f"{entry} fired at {got}, expected {wanted}"


def assert_never_fires(harness: ScheduleHarness, entry: str, *, during: timedelta) -> None:
    """Advance by ``during`` and assert ``entry`` did not fire."""
    fired = [o.slot.isoformat() for o in harness.advance(during) if o.entry == entry]
    assert not fired, f"{entry} fired at {fired}"
