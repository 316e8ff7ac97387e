"""Overlap policies ``buffer_all``, ``cancel_other`` and ``terminate_other`` (issue 22, item 5).

Validation is pure; the claims run on a real Redis, beat on a fake clock for the slot maths; the
runs on an in-process Celery worker (thread pool, 4 threads: runs could overlap if the policy
let them) whose broker is the same real Redis. Each run notes its start and end in Redis.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
import replica_helpers
from celery import Celery
from celery import signals as celery_signals
from celery.contrib.testing.worker import start_worker
from celery.worker import state as worker_state

from celery_fork_scheduler import Scheduler, every, install
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.entry import entry_from_config
from celery_fork_scheduler.errors import ConfigError
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.signals import entry_skipped
from celery_fork_scheduler.testing import FakeClock, wait_until
from celery_fork_scheduler.worker import Run, WorkerHooks

KEYS = Keys("scheduler:")
RUNS_KEY = "overlap-test:runs"
UTC = datetime.fromisoformat(replica_helpers.START).tzinfo


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlap", ["buffer_all", "cancel_other", "terminate_other"])
def test_the_new_policies_are_accepted_alone_and_with_singleton(overlap: str) -> None:
    for extra in ({}, {"singleton": True}):
        definition = {"task": "t", "schedule": "every 5 minutes", "overlap": overlap, **extra}
        entry = entry_from_config("e", definition, default_timezone=UTC)
        assert (entry.overlap, entry.singleton) == (overlap, True)


def test_an_unknown_policy_is_refused_naming_the_entry_and_the_field() -> None:
    definition = {"task": "t", "schedule": "every 5 minutes", "overlap": "buffer_two"}
    with pytest.raises(ConfigError, match="buffer_all") as refused:
        entry_from_config("e", definition, default_timezone=UTC)
    assert (refused.value.entry, refused.value.field) == ("e", "overlap")


def test_singleton_true_still_contradicts_allow() -> None:
    definition = {"task": "t", "schedule": "every 5 minutes", "overlap": "allow", "singleton": True}
    with pytest.raises(ConfigError, match="contradicts") as refused:
        entry_from_config("e", definition, default_timezone=UTC)
    assert (refused.value.entry, refused.value.field) == ("e", "overlap")


def test_a_buffer_all_entry_whose_args_are_not_json_is_refused() -> None:
    definition = {
        "task": "t",
        "schedule": "every 5 minutes",
        "overlap": "buffer_all",
        "args": [datetime(2026, 1, 1)],
    }
    with pytest.raises(ConfigError, match="overlap 'buffer_all' holds runs back") as refused:
        entry_from_config("e", definition, default_timezone=UTC)
    assert (refused.value.entry, refused.value.field) == ("e", "args")


@pytest.mark.parametrize(
    ("setting", "value"),
    [("buffer_limit", 0), ("buffer_limit", "10"), ("replace_wait", -1)],
    ids=["zero-limit", "text-limit", "negative-wait"],
)
def test_bad_buffer_and_replace_settings_are_refused(setting: str, value: Any) -> None:
    app = Celery("settings", set_as_current=False)
    app.conf[f"fork_scheduler_{setting}"] = value
    with pytest.raises(ConfigError, match=f"fork_scheduler_{setting}"):
        read_settings(app.conf)


def test_the_settings_have_their_documented_defaults() -> None:
    settings = read_settings(Celery("settings", set_as_current=False).conf)
    assert (settings.buffer_limit, settings.replace_wait) == (100, None)


# -- claims (beat, fake clock, real Redis) -------------------------------------------------------


@pytest.fixture
def skips() -> Iterator[list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []

    def receiver(sender: Any = None, **kwargs: Any) -> None:
        seen.append((kwargs["slot"].isoformat(), kwargs["reason"]))

    entry_skipped.connect(receiver)
    yield seen
    entry_skipped.disconnect(receiver)


def second(value: int) -> str:
    return f"2026-03-02T10:00:{value:02}+00:00"


def test_buffer_all_queues_every_busy_slot_in_order_up_to_the_limit(
    redis_url: str, redis_client: redis.Redis, skips: list[tuple[str, str]]
) -> None:
    redis_client.set(KEYS.running("e"), "a-run-still-executing", px=60_000)
    beat = replica_helpers.Beat(
        redis_url,
        FakeClock(replica_helpers.START),
        replica_helpers.make_app(
            redis_url,
            {"e": {"task": "t", "schedule": every(1).seconds, "overlap": "buffer_all"}},
            fork_scheduler_buffer_limit=3,
        ),
        "replica-a",
    )
    try:
        beat.run_for(4)
    finally:
        beat.scheduler.close()
    assert beat.publisher.fired("e") == []
    assert skips == [
        (second(1), "buffered"),
        (second(2), "buffered"),
        (second(3), "buffered"),
        (second(4), "buffer_full"),
    ]
    queued = [json.loads(raw) for raw in redis_client.lrange(KEYS.buffered("e"), 0, -1)]
    assert [message["slot"] for message in queued] == [second(1), second(2), second(3)]
    history = [json.loads(raw)["outcome"] for raw in redis_client.lrange(KEYS.history("e"), 0, -1)]
    assert history == ["skipped:buffer_full", *["skipped:buffered"] * 3]


def test_a_queue_whose_runner_died_is_released_by_the_next_claim(
    redis_url: str, redis_client: redis.Redis, skips: list[tuple[str, str]]
) -> None:
    clock = FakeClock(replica_helpers.START)
    definition = {"e": {"task": "t", "schedule": every(1).seconds, "overlap": "buffer_all"}}
    app = replica_helpers.make_app(redis_url, definition)
    app.conf.broker_url = redis_url
    redis_client.set(KEYS.running("e"), "a-run-whose-worker-dies", px=60_000)
    beat = replica_helpers.Beat(redis_url, clock, app, "replica-a")
    try:
        beat.run_for(2)  # slots 1 and 2 queued
        redis_client.delete(KEYS.running("e"))  # the runner died: its lease ran out
        beat.run_for(1)  # slot 3: queued behind slot 1, which runs now
    finally:
        beat.scheduler.close()
    first = task_id_for("e", datetime.fromisoformat(second(1)))
    assert redis_client.get(KEYS.running("e")) == first.encode()
    sent = [json.loads(raw)["headers"]["id"] for raw in redis_client.lrange("celery", 0, -1)]
    assert sent == [first]
    queued = [json.loads(raw)["slot"] for raw in redis_client.lrange(KEYS.buffered("e"), 0, -1)]
    assert queued == [second(2), second(3)]
    assert [reason for _, reason in skips] == ["buffered"] * 3


# -- runs on an in-process worker ----------------------------------------------------------------


def make_app(redis_url: str, definition: dict[str, Any]) -> Celery:
    app = Celery("overlap_policies", broker=redis_url, set_as_current=False)
    app.conf.update(
        timezone="UTC",
        beat_schedule={"e": definition},
        fork_scheduler_redis_url=redis_url,
        fork_scheduler_owner_grace=0,
        fork_scheduler_singleton_lease=5,
        result_expires=None,
        broker_connection_retry_on_startup=False,
    )

    @app.task(bind=True, name="overlap.slow", shared=False)
    def slow(self: Any, seconds: float) -> None:
        client = redis.Redis.from_url(redis_url)
        slot = self.request.get("fork_scheduler_slot")
        note = {"slot": slot, "id": self.request.id}
        client.rpush(RUNS_KEY, json.dumps({**note, "event": "start", "at": time.time()}))
        time.sleep(seconds)
        client.rpush(RUNS_KEY, json.dumps({**note, "event": "end", "at": time.time()}))
        client.close()

    install(app)
    return app


def runs(client: redis.Redis) -> list[dict[str, Any]]:
    """The runs noted by the task, by start: slot, start, end (absent while running)."""
    found: dict[str, dict[str, Any]] = {}
    for raw in client.lrange(RUNS_KEY, 0, -1):
        note = json.loads(raw)
        found.setdefault(note["slot"], {"slot": note["slot"]})[note["event"]] = note["at"]
    return sorted(found.values(), key=lambda run: run["start"])


def assert_never_two_at_once(found: list[dict[str, Any]]) -> None:
    for before, after in itertools.pairwise(found):
        assert after["start"] >= before["end"], f"{after['slot']} overlaps {before['slot']}"


def history(client: redis.Redis) -> dict[str, str]:
    """Slot (ISO) -> outcomes of the entry's history, oldest first, joined by commas."""
    outcomes: dict[str, list[str]] = {}
    for raw in reversed(client.lrange(KEYS.history("e"), 0, -1)):
        item = json.loads(raw)
        slot = datetime.fromtimestamp(item["slot"] / 1e6, UTC).isoformat()
        outcomes.setdefault(slot, []).append(item["outcome"])
    return {slot: ",".join(items) for slot, items in outcomes.items()}


class _WorkerStandIn:
    """The sender of ``worker_init``: what the hooks read of a worker (its app)."""

    def __init__(self, app: Celery) -> None:
        self.app = app


class Cluster:
    """One beat replica (fake clock, real publishes) and an in-process worker."""

    def __init__(self, redis_url: str, definition: dict[str, Any]) -> None:
        self.app = make_app(redis_url, definition)
        self.clock = FakeClock(replica_helpers.START)
        backend = RedisBackend.from_url(redis_url, read_settings(self.app.conf))
        self.scheduler = Scheduler(
            self.app,
            clock=self.clock,
            backend=backend,
            monotonic=lambda: self.clock.now.timestamp(),
            exit_on_config_error=False,
        )
        # The in-process worker does not send worker_init: let the hooks guard the tasks.
        celery_signals.worker_init.send(sender=_WorkerStandIn(self.app))

    def run_for(self, seconds: float) -> None:
        replica_helpers.tick_for(self.scheduler.tick, self.clock, seconds)

    def close(self) -> None:
        self.scheduler.close()
        self.app.close()


@pytest.fixture
def cluster(redis_url: str) -> Iterator[Any]:
    """``make(definition)``: a :class:`Cluster` of the entry ``e``. Task ids are the same in
    every test (entry and slot): the in-process worker's revoked ids (process-wide) are
    forgotten before and after."""
    made: list[Cluster] = []
    worker_state.revoked.clear()

    def make(definition: dict[str, Any]) -> Cluster:
        made.append(Cluster(redis_url, definition))
        return made[-1]

    yield make
    for cluster in made:
        cluster.close()
    worker_state.revoked.clear()


def test_buffer_all_runs_every_queued_slot_one_after_another_in_slot_order(
    cluster: Any, redis_client: redis.Redis
) -> None:
    beat = cluster(
        {
            "task": "overlap.slow",
            "schedule": every(1).seconds,
            "args": [0.6],
            "overlap": "buffer_all",
        }
    )
    with start_worker(beat.app, pool="threads", concurrency=4, perform_ping_check=False):
        beat.run_for(1)  # slot 1 runs
        wait_until(lambda: len(runs(redis_client)) == 1, timeout=10, what="the first run")
        beat.run_for(3)  # slots 2, 3 and 4 find it running: queued
        wait_until(
            lambda: sum("end" in run for run in runs(redis_client)) == 4,
            timeout=15,
            what="four runs",
        )
    found = runs(redis_client)
    assert [run["slot"] for run in found] == [second(i) for i in (1, 2, 3, 4)]
    assert_never_two_at_once(found)
    # The next queued run is published as the previous one ends: no lease to wait for.
    for before, after in itertools.pairwise(found):
        assert after["start"] - before["end"] < 2.0
    assert redis_client.exists(KEYS.buffered("e"), KEYS.running("e")) == 0
    assert history(redis_client)[second(3)] == "skipped:buffered,completed"


def test_cancel_other_replaces_a_run_that_has_not_started(
    cluster: Any, redis_client: redis.Redis
) -> None:
    beat = cluster(
        {
            "task": "overlap.slow",
            "schedule": every(1).seconds,
            "args": [0.3],
            "overlap": "cancel_other",
        }
    )
    beat.run_for(2)  # no worker yet: slot 1 waits in the broker when slot 2 is sent
    assert redis_client.llen("celery") == 2
    with start_worker(beat.app, pool="threads", concurrency=4, perform_ping_check=False):
        wait_until(
            lambda: (
                sum("end" in run for run in runs(redis_client)) == 1
                and "skipped:replaced" in history(redis_client).get(second(1), "")
            ),
            timeout=15,
            what="slot 2 run, slot 1 replaced",
        )
    assert [run["slot"] for run in runs(redis_client)] == [second(2)]
    assert history(redis_client)[second(2)] == "sent,completed"
    assert redis_client.exists(KEYS.running("e")) == 0


def test_cancel_other_revokes_the_old_run_and_never_runs_both_at_once(
    cluster: Any, redis_client: redis.Redis
) -> None:
    """A run already executing cannot be stopped by a plain revoke (Celery only stops runs
    that have not started): the new run waits for it to end, then runs."""
    beat = cluster(
        {
            "task": "overlap.slow",
            "schedule": every(1).seconds,
            "args": [1.0],
            "overlap": "cancel_other",
        }
    )
    with start_worker(beat.app, pool="threads", concurrency=4, perform_ping_check=False):
        beat.run_for(1)
        wait_until(lambda: len(runs(redis_client)) == 1, timeout=10, what="the first run")
        beat.run_for(1)  # slot 2 is published while slot 1 runs
        wait_until(
            lambda: sum("end" in run for run in runs(redis_client)) == 2,
            timeout=15,
            what="both runs",
        )
    found = runs(redis_client)
    assert [run["slot"] for run in found] == [second(1), second(2)]
    assert_never_two_at_once(found)
    assert redis_client.exists(KEYS.running("e")) == 0


def test_a_revoked_run_is_recorded_in_the_history(cluster: Any, redis_client: redis.Redis) -> None:
    beat = cluster({"task": "overlap.slow", "schedule": every(1).seconds, "args": [0.1]})
    revoked = task_id_for("e", datetime.fromisoformat(second(1)))
    with start_worker(beat.app, pool="threads", concurrency=2, perform_ping_check=False):
        wait_until(lambda: bool(beat.app.control.ping(timeout=0.5)), timeout=10, what="a ping")
        beat.app.control.revoke(revoked)  # before it is sent: the worker drops it on arrival
        beat.run_for(2)
        wait_until(
            lambda: (
                history(redis_client).get(second(1), "").endswith("revoked")
                and "completed" in history(redis_client).get(second(2), "")
            ),
            timeout=15,
            what="slot 1 revoked, slot 2 run",
        )
    assert [run["slot"] for run in runs(redis_client)] == [second(2)]
    assert redis_client.hget(KEYS.state("e"), "revoked") == b"1"


def test_settings_reach_the_claim(redis_url: str) -> None:
    backend = RedisBackend.from_url(redis_url, read_settings(make_app(redis_url, {}).conf))
    try:
        assert backend.settings.buffer_limit == 100
        assert backend.settings.singleton_lease == timedelta(seconds=5)
    finally:
        backend.close()


def test_a_replacing_run_revokes_the_holder_waits_and_takes_the_marker(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(redis_url, {})
    app.conf.fork_scheduler_replace_wait = 0  # no wait: the answer after one look
    revoked: list[tuple[str, bool]] = []
    monkeypatch.setattr(
        app.control,
        "revoke",
        lambda task_id, terminate, signal: revoked.append((task_id, terminate)),
    )
    hooks = WorkerHooks(app)
    run = Run("e", second(1), "new", 0.0, True, False, "w@h", overlap="terminate_other")
    redis_client.set(KEYS.running("e"), "old", px=60_000)
    redis_client.hset(KEYS.state("e"), "latest_run", "new")
    assert hooks._take_over(hooks.client, run) == "busy"
    assert revoked == [("old", True)]
    redis_client.hset(KEYS.state("e"), "latest_run", "newer")  # a later slot was claimed
    assert hooks._take_over(hooks.client, run) == "replaced"
    redis_client.hset(KEYS.state("e"), "latest_run", "new")
    redis_client.delete(KEYS.running("e"))  # the old run stopped
    assert hooks._take_over(hooks.client, run) is None
    assert redis_client.get(KEYS.running("e")) == b"new"
    app.close()
