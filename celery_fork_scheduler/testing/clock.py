"""A fake clock for driving the scheduler without sleeping."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

__all__ = ["FakeClock"]


class FakeClock:
    """A callable returning an aware UTC instant that only moves when told to."""

    def __init__(self, start: datetime | str) -> None:
        if isinstance(start, str):
            start = datetime.fromisoformat(start)
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime (add a UTC offset)")
        self.now = start.astimezone(timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta | float) -> datetime:
        """Move forward by ``delta`` (seconds or timedelta); return the new instant."""
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        if step < timedelta(0):
            raise ValueError("a FakeClock only moves forward; use set() to jump back")
        self.now += step
        return self.now

    def set(self, instant: datetime | str) -> datetime:
        """Jump to ``instant`` (backwards too, to model a clock step)."""
        if isinstance(instant, str):
            instant = datetime.fromisoformat(instant)
        self.now = instant.astimezone(timezone.utc)
        return self.now
