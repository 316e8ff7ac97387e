"""Scheduler replicas in one test process: a real Redis, a fake clock for the slot maths.

Claims, leases and Redis ``TIME`` are real; the replica id is set, since real replicas differ
by process.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import redis
from celery import Celery

from celery_fork_scheduler import Scheduler
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.publishing import Occurrence
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

#: Slot maths on a fake clock well in the past of Redis TIME: claims are never `early`.
START = "2026-03-02T10:00:00.300+00:00"


def store_raw(client: redis.Redis, name: str | bytes, raw: str | bytes) -> None:
    """A runtime entry as the Manager writes it (default prefix), with ``raw`` as its value."""
    keys = Keys("scheduler:")
    version = client.incr(keys.runtime_version)
    client.hset(keys.runtime_entries, name, raw)
    client.zadd(keys.runtime_changes, {name: version})


def make_app(
    redis_url: str | None,
    beat_schedule: dict[str, Any] | None = None,
    *,
    main: str = "replicas",
    **conf: Any,
) -> Celery:
    """An app named ``main`` whose claims go to ``redis_url`` (none: the app sets no Redis URL).

    The broker is in memory; no ``beat_schedule`` is an empty one. Every replica asks about
    every slot at once (``fork_scheduler_owner_grace=0``): these tests race replicas for the
    same claims on purpose; tests/test_ownership.py turns the division of entries on.
    """
    app = Celery(main, set_as_current=False, broker="memory://")
    if redis_url is not None:
        conf["fork_scheduler_redis_url"] = redis_url
    conf.setdefault("fork_scheduler_owner_grace", 0)
    app.conf.update(
        timezone="UTC",
        beat_schedule={} if beat_schedule is None else beat_schedule,
        result_expires=None,
        **conf,
    )
    return app


def make_scheduler(
    redis_url: str,
    clock: FakeClock,
    beat_schedule: dict[str, Any] | None = None,
    *,
    publisher: Any = None,
    replica_id: str | None = "replica-a",
    app: Celery | None = None,
    monotonic: Callable[[], float] | None = None,
    **conf: Any,
) -> Scheduler:
    """One replica with its own Redis connection, recording what it publishes.

    ``replica_id`` None keeps the backend's own id; ``monotonic`` defaults to the fake clock.
    """
    app = app or make_app(redis_url, beat_schedule, **conf)
    backend = RedisBackend.from_url(redis_url, read_settings(app.conf))
    if replica_id is not None:
        backend.replica_id = replica_id
    return Scheduler(
        app,
        clock=clock,
        backend=backend,
        publisher=publisher or RecordingPublisher(),
        monotonic=monotonic or (lambda: clock.now.timestamp()),
        exit_on_config_error=False,
    )


@contextlib.contextmanager
def schedulers(redis_url: str, **defaults: Any) -> Iterator[Callable[..., Scheduler]]:
    """``make(clock, replica_id, **options)``: a :func:`make_scheduler` replica with ``defaults``
    (``options`` win); every replica made is closed on exit."""
    made: list[Scheduler] = []

    def make(clock: FakeClock, replica_id: str, **options: Any) -> Scheduler:
        scheduler = make_scheduler(redis_url, clock, replica_id=replica_id, **defaults, **options)
        made.append(scheduler)
        return scheduler

    try:
        yield make
    finally:
        for scheduler in made:
            scheduler.close()


def tick_for(
    tick: Callable[[], object], clock: FakeClock, seconds: float, step: float = 0.25
) -> None:
    """Tick, then move the fake clock on by ``step``, until ``seconds`` passed; tick once more."""
    end = clock() + timedelta(seconds=seconds)
    while clock() < end:
        tick()
        clock.advance(step)
    tick()


def fired(*publishers: RecordingPublisher) -> Counter[tuple[str, str]]:
    """How often each (entry, slot) was published, across ``publishers``."""
    return Counter((o.entry, o.slot.isoformat()) for p in publishers for o in p.occurrences)


def run_for(scheduler: Scheduler, clock: FakeClock, seconds: float, step: float = 0.25) -> None:
    """Tick ``scheduler`` every ``step`` seconds of the fake clock for ``seconds``."""
    for _ in range(int(seconds / step)):
        clock.advance(step)
        scheduler.tick()


class BrokenPublisher(RecordingPublisher):
    """Records what it publishes, but the occurrences of the entry ``broken`` raise ``error``."""

    def __init__(self, error: Callable[[], Exception] = lambda: ConnectionError("broker down")):
        super().__init__()
        self.error = error

    def publish(self, occurrence: Occurrence) -> None:
        if occurrence.entry == "broken":
            raise self.error()
        super().publish(occurrence)


class Beat:
    """One replica of ``app`` on the test Redis, ticking on a fake clock."""

    def __init__(self, redis_url: str, clock: FakeClock, app: Celery, replica_id: str) -> None:
        self.app = app
        self.clock = clock
        self.publisher = RecordingPublisher()
        self.scheduler = make_scheduler(
            redis_url, clock, app=app, publisher=self.publisher, replica_id=replica_id
        )

    def run_for(self, seconds: float, step: float = 0.25) -> None:
        """Tick every ``step`` s of the fake clock for ``seconds``; tick once more at the end."""
        tick_for(self.scheduler.tick, self.clock, seconds, step)


def closed_after(make: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """For a fixture: ``make`` (which returns a beat), closing each made beat's scheduler after
    the test. ``yield from closed_after(...)`` in the fixture."""
    made: list[Any] = []

    def factory(*args: Any, **kwargs: Any) -> Any:
        made.append(make(*args, **kwargs))
        return made[-1]

    yield factory
    for beat in made:
        beat.scheduler.close()


class SteppedReplica:
    """One replica of ``app`` on the test Redis (its own replica id): a fake clock from
    ``START``, and a monotonic clock that starts at 0 and moves with it."""

    def __init__(self, redis_url: str, app: Celery, clock: FakeClock | None = None) -> None:
        self.app = app
        self.clock = clock or FakeClock(START)
        self.monotonic = 0.0
        self.publisher = RecordingPublisher()
        self.scheduler = make_scheduler(
            redis_url,
            self.clock,
            app=app,
            publisher=self.publisher,
            replica_id=None,
            monotonic=lambda: self.monotonic,
        )

    def run(self, seconds: float, step: float = 0.25) -> None:
        """Move both clocks on by ``step`` and tick, for ``seconds``."""
        for _ in range(int(seconds / step)):
            self.clock.advance(step)
            self.monotonic += step
            self.scheduler.tick()

    def close(self) -> None:
        self.scheduler.close()
