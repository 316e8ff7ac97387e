"""Scheduler replicas in one test process: a real Redis, a fake clock for the slot maths.

Claims, leases and Redis ``TIME`` are real; the replica id is set, since real replicas differ
by process.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from celery import Celery

from celery_fork_scheduler import Scheduler
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

#: Slot maths on a fake clock well in the past of Redis TIME: claims are never `early`.
START = "2026-03-02T10:00:00.300+00:00"


def make_app(redis_url: str, beat_schedule: dict[str, Any], **conf: Any) -> Celery:
    """An app whose claims go to ``redis_url`` (the broker is in memory)."""
    app = Celery("replicas", set_as_current=False, broker="memory://")
    app.conf.update(
        timezone="UTC",
        beat_schedule=beat_schedule,
        result_expires=None,
        fork_scheduler_redis_url=redis_url,
        **conf,
    )
    return app


def make_scheduler(
    redis_url: str,
    clock: FakeClock,
    beat_schedule: dict[str, Any],
    *,
    publisher: Any = None,
    replica_id: str = "replica-a",
    app: Celery | None = None,
    **conf: Any,
) -> Scheduler:
    """One replica with its own Redis connection, recording what it publishes."""
    app = app or make_app(redis_url, beat_schedule, **conf)
    backend = RedisBackend.from_url(redis_url, read_settings(app.conf))
    backend.replica_id = replica_id
    return Scheduler(
        app,
        clock=clock,
        backend=backend,
        publisher=publisher or RecordingPublisher(),
        monotonic=lambda: clock.now.timestamp(),
        exit_on_config_error=False,
    )


def fired(*publishers: RecordingPublisher) -> Counter[tuple[str, str]]:
    """How often each (entry, slot) was published, across ``publishers``."""
    return Counter((o.entry, o.slot.isoformat()) for p in publishers for o in p.occurrences)


def run_for(scheduler: Scheduler, clock: FakeClock, seconds: float, step: float = 0.25) -> None:
    """Tick ``scheduler`` every ``step`` seconds of the fake clock for ``seconds``."""
    for _ in range(int(seconds / step)):
        clock.advance(step)
        scheduler.tick()
