"""A replica on the one-step path (its broker is the claims' Redis), what reached its queue, and
backend calls that fail as if Redis went away: shared by the lane's tests."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis
from replica_helpers import make_app, make_scheduler

from celery_fork_scheduler import Scheduler, every
from celery_fork_scheduler.errors import BackendUnavailableError
from celery_fork_scheduler.keys import Keys
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


def history(client: redis.Redis, entry: str) -> list[str]:
    """The outcomes in ``entry``'s history list (default prefix), newest first."""
    raw = client.lrange(Keys("scheduler:").history(entry), 0, -1)
    return [json.loads(item)["outcome"] for item in raw]


def lose_next_reply(scheduler: Scheduler, method: str) -> None:
    """The next call of the backend's ``method`` (``claim_and_send`` or ``publish_once``) runs
    in Redis, then its reply is lost once (a connection error while reading it, a socket
    timeout, a WAIT too few replicas confirmed): the backend's own retry (``_retrying``) sends
    the very same request again."""
    backend: Any = scheduler.backend
    real_call, real_pipelined = getattr(backend, method), backend._pipelined
    state = {"armed": False, "lost": 0}

    def call(*args: Any) -> Any:
        state["armed"] = state["lost"] == 0
        try:
            return real_call(*args)
        finally:
            state["armed"] = False

    def pipelined(commands: Any, **kwargs: Any) -> Any:
        replies = real_pipelined(commands, **kwargs)
        if state["armed"]:
            state["armed"] = False
            state["lost"] += 1
            raise redis.ConnectionError("simulated: the reply was lost after the script ran")
        return replies

    setattr(backend, method, call)
    backend._pipelined = pipelined


class Seen:
    """What replicas reported, per slot: entry_dispatched, entry_skipped, entry_failed (the
    ``seen`` fixture of tests/conftest.py connects it)."""

    def __init__(self) -> None:
        self.dispatched: list[tuple[str, str]] = []
        self.skipped: list[tuple[str, str, str]] = []
        self.failed: list[tuple[str, str]] = []

    def on_dispatched(self, sender: Any, entry: str, slot: datetime, **_: Any) -> None:
        self.dispatched.append((entry, slot.isoformat()))

    def on_skipped(self, sender: Any, entry: str, slot: datetime, reason: str, **_: Any) -> None:
        self.skipped.append((entry, slot.isoformat(), reason))

    def on_failed(self, sender: Any, entry: str, slot: datetime, **_: Any) -> None:
        self.failed.append((entry, slot.isoformat()))
