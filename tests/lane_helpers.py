"""A replica on the one-step path (its broker is the claims' Redis), what reached its queue, and
backend calls that fail as if Redis went away: shared by the lane's tests."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis
from replica_helpers import make_app, make_scheduler

from celery_fork_scheduler import Scheduler, every
from celery_fork_scheduler.errors import BackendUnavailableError
from celery_fork_scheduler.publishing import CeleryPublisher
from celery_fork_scheduler.testing import FakeClock


def one_step_beat(
    redis_url: str,
    clock: FakeClock,
    schedule: dict[str, Any],
    publisher: type[CeleryPublisher] = CeleryPublisher,
    *,
    sent_with_claim: bool = True,
    **conf: Any,
) -> Scheduler:
    """A replica whose broker is the claims' Redis: each slot is sent by its claim's script
    (``sent_with_claim``, the default where it applies) or, once claimed, published by one
    script per batch, the next chunk's claim starting in the lane as soon as the first batch's
    script has (``sent_with_claim=False``: the path of the slots the claim cannot send)."""
    app = make_app(redis_url, schedule, **conf)
    app.conf.broker_url = redis_url
    scheduler = make_scheduler(redis_url, clock, {}, app=app)
    scheduler.publisher = publisher(app, lambda: scheduler.producer)
    if not sent_with_claim:
        scheduler.pipeline.sends_for = lambda due: None  # type: ignore[method-assign]
    return scheduler


def fired(client: redis.Redis) -> Counter[tuple[str, str]]:
    """(entry, slot) of every message in the queue, with how many times it is there."""
    messages = [json.loads(raw) for raw in client.lrange("celery", 0, -1)]
    return Counter(
        (m["headers"]["fork_scheduler_entry"], m["headers"]["fork_scheduler_slot"])
        for m in messages
    )


def fail_calls(scheduler: Scheduler, method: str, failing: Callable[[int], bool]) -> None:
    """Make the backend's ``method`` raise as if Redis went away on the calls (counted from
    1) for which ``failing`` says so; the others run."""
    backend: Any = scheduler.backend
    real = getattr(backend, method)
    calls = 0

    def call(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if failing(calls):
            raise BackendUnavailableError("simulated: Redis went away")
        return real(*args)

    setattr(backend, method, call)


def burst_schedule(count: int, width: int = 3, **special: dict[str, Any]) -> dict[str, Any]:
    """``count`` entries ``e000``... every 10 s (names ``width`` digits wide); ``special``
    adds options to the named ones."""
    schedule: dict[str, Any] = {
        f"e{i:0{width}}": {"task": "t", "schedule": every(10).seconds} for i in range(count)
    }
    for name, options in special.items():
        schedule[name] = {**schedule[name], **options}
    return schedule
