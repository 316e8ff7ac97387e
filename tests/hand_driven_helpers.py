"""Helpers of the worker-side adversary rounds (45-48): beat replicas on a fake clock (one that
records what it publishes, one that publishes to the Redis broker), the worker-side handlers
called by hand as Celery's signals call them, the broker's queue and an entry's history."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import redis
from celery import Celery
from celery import signals as celery_signals
from celery.exceptions import Ignore
from replica_helpers import START, tick_for

from celery_fork_scheduler import Scheduler
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher
from celery_fork_scheduler.worker import WorkerHooks


class RecordingBeat:
    """One beat replica on a fake clock, recording what it publishes (no broker)."""

    def __init__(
        self,
        app: Celery,
        clock: FakeClock,
        replica_id: str = "replica-a",
        publisher: RecordingPublisher | None = None,
    ) -> None:
        self.clock = clock
        self.publisher = publisher or RecordingPublisher()
        backend = RedisBackend.from_url(app.conf.fork_scheduler_redis_url, read_settings(app.conf))
        backend.replica_id = replica_id
        self.scheduler = Scheduler(
            app,
            clock=clock,
            backend=backend,
            publisher=self.publisher,
            monotonic=lambda: clock.now.timestamp(),
            exit_on_config_error=False,
        )

    def run_until(self, until: datetime, step: float = 0.25) -> None:
        tick_for(self.scheduler.tick, self.clock, (until - self.clock()).total_seconds(), step)

    def headers(self, entry: str, slot: datetime) -> tuple[str, dict[str, Any]]:
        """Task id and headers of the message this replica published for ``slot``."""
        [occurrence] = [
            o for o in self.publisher.occurrences if o.entry == entry and o.slot == slot
        ]
        return occurrence.task_id, dict(occurrence.headers)


class HandDrivenWorker:
    """The worker-side handlers of ``app`` for its task ``task``, a run's start and end driven
    by hand as Celery's signals call them (``task_prerun`` -> ``before_start`` -> body ->
    ``task_postrun``); revokes are only noted (``revoked``)."""

    def __init__(self, app: Celery, task: str) -> None:
        self.app = app
        self.hooks = WorkerHooks(app)
        self.task = app.tasks[task]
        self.revoked: list[str] = []
        app.control.revoke = lambda task_id, **kwargs: self.revoked.append(task_id)  # type: ignore[method-assign]

    def start(self, task_id: str, headers: dict[str, Any], retries: int = 0) -> bool:
        """The run starts: whether its body executes (``before_start`` does not ``Ignore`` it)."""
        self.task.push_request(**{**headers, "id": task_id, "retries": retries})
        self.hooks.on_prerun(task_id=task_id, task=self.task)
        try:
            self.hooks.prevent(task_id)
        except Ignore:
            return False
        return True

    def end(self, task_id: str, state: str = "SUCCESS") -> None:
        """The run's body returned (``state`` ``RETRY``: it called ``self.retry``)."""
        self.hooks.on_postrun(task_id=task_id, task=self.task, state=state)
        self.task.pop_request()


def queued(client: redis.Redis) -> list[dict[str, Any]]:
    """The messages in the broker's ``celery`` queue, oldest first."""
    return [json.loads(raw) for raw in reversed(client.lrange("celery", 0, -1))]


class _WorkerStandIn:
    """The sender of ``worker_init``: what the hooks read of a worker (its app)."""

    def __init__(self, app: Celery) -> None:
        self.app = app


class BrokerBeat:
    """One beat replica on a fake clock (real claims, real publishes to the app's Redis
    broker), for rounds 45 and 46, whose in-process workers run what it sends."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.clock = FakeClock(START)
        backend = RedisBackend.from_url(app.conf.fork_scheduler_redis_url, read_settings(app.conf))
        self.scheduler = Scheduler(
            app,
            clock=self.clock,
            backend=backend,
            monotonic=lambda: self.clock.now.timestamp(),
            exit_on_config_error=False,
        )
        # The in-process worker does not send worker_init: let the hooks guard the tasks.
        celery_signals.worker_init.send(sender=_WorkerStandIn(app))

    def run_for(self, seconds: float) -> None:
        tick_for(self.scheduler.tick, self.clock, seconds)

    def close(self) -> None:
        self.scheduler.close()


def outcomes_by_slot(client: redis.Redis, name: str = "e") -> dict[str, str]:
    """Slot (ISO) -> outcomes of the entry's history, oldest first, joined by commas."""
    outcomes: dict[str, list[str]] = {}
    for raw in reversed(client.lrange(Keys("scheduler:").history(name), 0, -1)):
        item = json.loads(raw)
        slot = datetime.fromtimestamp(item["slot"] / 1e6, timezone.utc).isoformat()
        outcomes.setdefault(slot, []).append(item["outcome"])
    return {slot: ",".join(items) for slot, items in outcomes.items()}
