"""A run that ends while Redis cannot free its markers (simulator seed 5503).

Promise (docs/singleton.md, ``buffer_one``): the held-back run "is published as soon as the
running one ends". Before the fix, a prefork worker's parent kept renewing the marker of a run
that had ended in a pool process whose release failed (Redis restarting): the entry answered
``busy`` for good and the held run was never published. Now the parent forgets runs its
consumer has not held for a lease, and a release that failed is tried again by the heartbeat
once Redis answers (the same answer again when Redis ran the first request but its reply was
lost).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.app.task import Context
from celery.worker import state as worker_state
from heartbeat_helpers import OnePass

from celery_fork_scheduler import worker as worker_module
from celery_fork_scheduler.ids import ENTRY_HEADER, OVERLAP_HEADER, SLOT_HEADER
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.worker import Run, WorkerHooks

KEYS = Keys("scheduler:")
LEASE_S = 30
SLOT = "2026-03-02T10:00:00+00:00"


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = Celery("unfreed", set_as_current=False, broker="memory://")
    app.conf.update(
        fork_scheduler_redis_url=redis_url,
        fork_scheduler_singleton_lease=LEASE_S,
        fork_scheduler_max_retries=0,
    )
    yield app
    app.close()


def received(hooks: WorkerHooks, task_id: str) -> None:
    """The consumer of ``hooks``' process received a singleton run of ``nightly``."""
    headers = {ENTRY_HEADER: "nightly", SLOT_HEADER: SLOT, OVERLAP_HEADER: "buffer_one"}
    hooks.on_received(request=Context(id=task_id, headers=headers, **headers))


class Later:
    """``time`` inside the worker module, ``seconds`` ahead for its monotonic clock."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def monotonic(self) -> float:
        return time.monotonic() + self.seconds

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def test_a_parent_stops_renewing_the_marker_of_a_run_that_ended_in_a_pool_process(
    app: Celery, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run ``ended`` finished in a pool process that could not free its marker; the run
    ``waiting`` is still held by the consumer. Once the consumer let ``ended`` go (after the
    receipt's settle time), the heartbeat renews the second only."""
    parent = WorkerHooks(app)
    for task_id in ("ended", "waiting"):
        received(parent, task_id)
    parent._received["waiting"].entry = "other"
    monkeypatch.setitem(worker_state.requests, "waiting", object())
    parent._beat_hearts(OnePass())  # type: ignore[arg-type]  # "ended" is seen let go
    monkeypatch.setattr(worker_module, "time", Later(worker_module.RECEIPT_SETTLE_SECONDS + 1))
    redis_client.set(KEYS.running("nightly"), "ended", px=2_000)
    redis_client.set(KEYS.running("other"), "waiting", px=2_000)

    parent._beat_hearts(OnePass())  # type: ignore[arg-type]

    assert 0 < redis_client.pttl(KEYS.running("nightly")) <= 2_000, "the ended run is renewed"
    assert redis_client.pttl(KEYS.running("other")) > 2_000, "the waiting run is not renewed"


def test_a_run_just_received_is_renewed_before_the_consumer_files_it(
    app: Celery, redis_client: redis.Redis
) -> None:
    """Celery sends ``task_received`` before it files the request: within the settle time,
    the run is renewed."""
    parent = WorkerHooks(app)
    received(parent, "fresh")
    redis_client.set(KEYS.running("nightly"), "fresh", px=2_000)

    parent._beat_hearts(OnePass())  # type: ignore[arg-type]
    parent._beat_hearts(OnePass())  # type: ignore[arg-type]

    assert redis_client.pttl(KEYS.running("nightly")) > 2_000


class ReplyLost:
    """A client whose script calls run on the real Redis, then lose their reply (a timeout
    while reading it: Redis ran the request, the worker cannot know)."""

    def __init__(self, real: redis.Redis) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def eval(self, *args: Any) -> Any:
        self.real.eval(*args)
        raise redis.TimeoutError("Timeout reading from socket")


def test_a_pool_process_does_not_renew_the_runs_its_parent_received(
    app: Celery, redis_client: redis.Redis
) -> None:
    """A pool process forked from the worker's main process (a new child after
    ``max_tasks_per_child``) starts with a copy of the runs the parent received; its own
    heartbeat must not renew them (nothing there ever forgets them: adversary round 34)."""
    app.conf.fork_scheduler_singleton_lease = 1.5
    hooks = WorkerHooks(app)
    received(hooks, "inherited")
    hooks.on_worker_shutdown()  # this process renews nothing itself from here on
    redis_client.set(KEYS.running("nightly"), "inherited", px=1_000)

    child = os.fork()
    if child == 0:  # the pool process: its first run starts its own heartbeat
        hooks._ensure_heartbeat()
        time.sleep(4)
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while redis_client.exists(KEYS.running("nightly")):
            assert time.monotonic() < deadline, "the inherited run's marker is renewed"
            time.sleep(0.05)
    finally:
        os.waitpid(child, 0)


def held_message(task_id: str) -> str:
    return json.dumps({"task_id": task_id, "entry": "nightly", "slot": SLOT})


class ReadOnly(ReplyLost):
    """A client talking to a replica during a failover: script calls are refused."""

    def eval(self, *args: Any) -> Any:
        raise redis.ReadOnlyError("You can't write against a read only replica.")


def ended_with_held_run(redis_client: redis.Redis, app: Celery) -> tuple[WorkerHooks, list[Any]]:
    """The run ``runner`` of ``nightly`` holds the marker, the run ``held`` is held back;
    hooks whose hand-overs are recorded in the list instead of published."""
    redis_client.set(KEYS.running("nightly"), "runner", px=LEASE_S * 1000)
    redis_client.set(KEYS.buffered("nightly"), held_message("held"))
    hooks = WorkerHooks(app)
    published: list[Any] = []
    hooks._publish_held = published.append  # type: ignore[method-assign,assignment]
    return hooks, published


def finish_through(hooks: WorkerHooks, client: Any) -> None:
    """``runner`` ends, its release sent through ``client``."""
    working = hooks.client
    hooks._client = client
    hooks._finish(Run("nightly", SLOT, "runner", 0.0, True, False, "w@h"))
    hooks._client = working


@pytest.mark.parametrize("failure", ["refused", "reply_lost", "read_only"])
def test_a_release_that_failed_hands_the_held_run_over_once_redis_answers(
    app: Celery, redis_client: redis.Redis, failure: str
) -> None:
    """``refused``: the release never reached Redis (a client that cannot connect);
    ``reply_lost``: Redis ran it, its reply was lost; ``read_only``: a replica refused it (a
    failover). Either way the heartbeat hands the held run over, exactly once."""
    hooks, published = ended_with_held_run(redis_client, app)
    if failure == "refused":
        finish_through(hooks, redis.Redis(port=1, socket_connect_timeout=0.3))
    elif failure == "read_only":
        finish_through(hooks, ReadOnly(hooks.client))
    else:
        finish_through(hooks, ReplyLost(hooks.client))
        assert redis_client.get(KEYS.running("nightly")) == b"held"  # handed over in Redis
    assert published == []

    hooks._beat_hearts(OnePass())  # type: ignore[arg-type]
    hooks._beat_hearts(OnePass())  # type: ignore[arg-type]

    assert [json.loads(m)["task_id"] for m in published] == ["held"]
    assert redis_client.get(KEYS.running("nightly")) == b"held"
    assert redis_client.get(KEYS.buffered("nightly")) is None


def test_a_release_asked_again_after_the_held_run_was_superseded_hands_nothing_over(
    app: Celery, redis_client: redis.Redis
) -> None:
    """The held run's marker expired and a later slot won before the heartbeat asked again:
    the held run is not published (the later one replaced it)."""
    hooks, published = ended_with_held_run(redis_client, app)
    finish_through(hooks, ReplyLost(hooks.client))
    redis_client.set(KEYS.running("nightly"), "later", px=LEASE_S * 1000)

    hooks._beat_hearts(OnePass())  # type: ignore[arg-type]

    assert published == []
    assert redis_client.get(KEYS.running("nightly")) == b"later"
