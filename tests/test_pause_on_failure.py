"""Issue 22, item 3: ``pause_on_failure``. A run that fails for good (after its retries) pauses
its entry for every replica, with a note naming the task and the error. Real Redis (the broker
too), a real Scheduler publishing through Celery, an in-process worker running the tasks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import redis
from celery import Celery
from celery.bin.base import CLIContext
from celery.contrib.testing.worker import start_worker
from click.testing import CliRunner, Result

from celery_fork_scheduler import ConfigError, Manager, Scheduler, every, install
from celery_fork_scheduler.backends.base import to_epoch_us
from celery_fork_scheduler.backends.redis import RedisBackend, record_outcome
from celery_fork_scheduler.cli import schedule
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.entry import entry_from_config, entry_to_dict
from celery_fork_scheduler.ids import PAUSE_ON_FAILURE_HEADER
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.publishing import build_occurrence
from celery_fork_scheduler.signals import entry_paused_on_failure, entry_skipped
from celery_fork_scheduler.testing import FakeClock, wait_until

KEYS = Keys("scheduler:")
#: Slot maths on a fake clock well before Redis TIME: claims are never ``early``.
START = datetime(2026, 3, 2, 10, 0, 0, 300000, tzinfo=timezone.utc)
EVERY_SECOND = every(1).seconds


def make_app(redis_url: str, beat_schedule: dict[str, Any]) -> Celery:
    app = Celery("pause_on_failure", broker=redis_url, set_as_current=False)
    app.conf.update(
        timezone="UTC",
        beat_schedule=beat_schedule,
        fork_scheduler_redis_url=redis_url,
        fork_scheduler_owner_grace=0,
        result_expires=None,
    )
    calls = redis.Redis.from_url(redis_url)

    @app.task(name="tasks.boom", shared=False)
    def boom() -> None:
        calls.incr("test:calls:boom")
        raise ValueError("boom")

    @app.task(name="tasks.fine", shared=False)
    def fine() -> str:
        calls.incr("test:calls:fine")
        return "ok"

    @app.task(bind=True, name="tasks.flaky", shared=False, max_retries=3)
    def flaky(self: Any) -> str:
        calls.incr("test:calls:flaky")
        if self.request.retries < 1:
            raise self.retry(exc=ValueError("flaky"), countdown=0)
        return "ok"

    @app.task(bind=True, name="tasks.always_retries", shared=False, max_retries=1)
    def always_retries(self: Any) -> None:
        calls.incr("test:calls:always_retries")
        raise self.retry(exc=ValueError("again"), countdown=0)

    install(app)
    return app


class Cluster:
    """One beat replica (fake clock, real Redis, real publish) and an in-process worker."""

    def __init__(self, redis_url: str, beat_schedule: dict[str, Any]) -> None:
        self.app = make_app(redis_url, beat_schedule)
        self.clock = FakeClock(START)
        self.client = redis.Redis.from_url(redis_url, decode_responses=True)
        self.manager = Manager(self.app, clock=self.clock)
        self.scheduler = Scheduler(
            self.app,
            clock=self.clock,
            backend=RedisBackend.from_url(redis_url, read_settings(self.app.conf)),
            monotonic=lambda: self.clock.now.timestamp(),
            exit_on_config_error=False,
        )

    def run_for(self, seconds: float, step: float = 0.25) -> None:
        for _ in range(int(seconds / step)):
            self.clock.advance(step)
            self.scheduler.tick()

    def state(self, name: str) -> dict[str, str]:
        return self.client.hgetall(KEYS.state(name))

    def history(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.client.lrange(KEYS.history(name), 0, -1)]

    def calls(self, task: str) -> int:
        return int(self.client.get(f"test:calls:{task}") or 0)

    def wait_for_end(self, name: str, count: int = 1) -> None:
        """Until ``count`` runs of ``name`` ended on the worker (completed or error)."""

        def ended() -> bool:
            state = self.state(name)
            return int(state.get("completed", 0)) + int(state.get("errors", 0)) >= count

        wait_until(ended, timeout=15, what=f"{count} run(s) of {name} to end")

    def close(self) -> None:
        self.scheduler.close()
        self.client.close()
        self.app.close()


@pytest.fixture
def cluster_of(redis_url: str) -> Iterator[Any]:
    made: list[Cluster] = []

    def make(beat_schedule: dict[str, Any]) -> Cluster:
        made.append(Cluster(redis_url, beat_schedule))
        return made[-1]

    yield make
    for cluster in made:
        cluster.close()


@pytest.fixture
def paused_events() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def receiver(sender: Any = None, **kwargs: Any) -> None:
        seen.append(kwargs)

    entry_paused_on_failure.connect(receiver, weak=False)
    yield seen
    entry_paused_on_failure.disconnect(receiver)


def test_a_failed_run_pauses_its_entry_with_a_note_and_later_slots_are_skipped_paused(
    cluster_of: Any, paused_events: list[dict[str, Any]]
) -> None:
    cluster = cluster_of(
        {"boom": {"task": "tasks.boom", "schedule": EVERY_SECOND, "pause_on_failure": True}}
    )
    skips: list[tuple[str, str]] = []

    def skipped(sender: Any = None, entry: str = "", reason: str = "", **_: Any) -> None:
        skips.append((entry, reason))

    entry_skipped.connect(skipped, weak=False)
    try:
        with start_worker(cluster.app, pool="solo", perform_ping_check=False):
            cluster.run_for(1)  # one slot published
            cluster.wait_for_end("boom")
            job = cluster.manager.get("boom")
            task_id = cluster.history("boom")[0]["task_id"]
            assert job.paused
            assert job.pause_note == f"paused on failure: task {task_id} raised ValueError('boom')"
            assert job.paused_at is not None
            cluster.run_for(3)  # the next slots: skipped, never published
    finally:
        entry_skipped.disconnect(skipped)
    assert cluster.calls("boom") == 1
    assert skips.count(("boom", "paused")) == 3
    state = cluster.state("boom")
    assert (state["runs"], state["errors"], state["skips:paused"]) == ("1", "1", "3")
    failure = next(item for item in cluster.history("boom") if item["outcome"] == "error")
    assert failure["error"] == "ValueError: boom"
    assert failure["note"] == job.pause_note
    assert [(e["entry"], e["task_id"], e["note"]) for e in paused_events] == [
        ("boom", task_id, job.pause_note)
    ]
    assert isinstance(paused_events[0]["exception"], ValueError)

    cluster.manager.resume("boom")
    resumed = cluster.manager.get("boom")
    assert (resumed.paused, resumed.pause_note, resumed.paused_at) == (False, "", None)
    assert "pause_note" not in cluster.state("boom")


def test_a_retry_then_a_success_does_not_pause(cluster_of: Any) -> None:
    cluster = cluster_of(
        {"flaky": {"task": "tasks.flaky", "schedule": EVERY_SECOND, "pause_on_failure": True}}
    )
    with start_worker(cluster.app, pool="solo", perform_ping_check=False):
        cluster.run_for(1)
        cluster.wait_for_end("flaky")
    assert cluster.calls("flaky") == 2
    assert not cluster.manager.get("flaky").paused
    state = cluster.state("flaky")
    assert (state["completed"], state.get("errors")) == ("1", None)


def test_a_run_that_fails_after_its_retries_pauses_once(cluster_of: Any) -> None:
    cluster = cluster_of(
        {
            "retries": {
                "task": "tasks.always_retries",
                "schedule": EVERY_SECOND,
                "pause_on_failure": True,
            }
        }
    )
    with start_worker(cluster.app, pool="solo", perform_ping_check=False):
        cluster.run_for(1)
        cluster.wait_for_end("retries")
    assert cluster.calls("always_retries") == 2  # the first attempt and its one retry
    job = cluster.manager.get("retries")
    assert job.paused
    assert "raised ValueError('again')" in job.pause_note
    assert cluster.state("retries")["errors"] == "1"


def test_an_entry_without_the_key_is_not_paused_by_a_failure(cluster_of: Any) -> None:
    cluster = cluster_of({"plain": {"task": "tasks.boom", "schedule": EVERY_SECOND}})
    with start_worker(cluster.app, pool="solo", perform_ping_check=False):
        cluster.run_for(1)
        cluster.wait_for_end("plain")
    assert not cluster.manager.get("plain").paused
    assert cluster.state("plain")["errors"] == "1"
    assert "note" not in cluster.history("plain")[0]


def test_a_triggered_run_of_a_runtime_entry_pauses_it_too(
    cluster_of: Any, paused_events: list[dict[str, Any]]
) -> None:
    cluster = cluster_of({})
    cluster.manager.add("nightly", "tasks.boom", "every 1 hour", pause_on_failure=True)
    with start_worker(cluster.app, pool="solo", perform_ping_check=False):
        result = cluster.manager.trigger("nightly")
        cluster.wait_for_end("nightly")
    job = cluster.manager.get("nightly")
    assert job.paused and job.pause_on_failure
    assert job.pause_note == (f"paused on failure: task {result.task_id} raised ValueError('boom')")
    assert [e["entry"] for e in paused_events] == ["nightly"]
    cluster.manager.resume("nightly")
    assert not cluster.manager.get("nightly").paused


def test_an_entry_paused_already_keeps_its_note_and_no_event_is_sent(
    cluster_of: Any, paused_events: list[dict[str, Any]]
) -> None:
    cluster = cluster_of({})
    cluster.manager.add("nightly", "tasks.boom", "every 1 hour", pause_on_failure=True)
    cluster.manager.pause("nightly", note="maintenance")
    with start_worker(cluster.app, pool="solo", perform_ping_check=False):
        cluster.manager.trigger("nightly", force=True)
        cluster.wait_for_end("nightly")
    assert cluster.manager.get("nightly").pause_note == "maintenance"
    assert paused_events == []


def test_the_failure_of_a_removed_entry_does_not_pause_it(redis_client: redis.Redis) -> None:
    redis_client.hset(KEYS.state("gone"), mapping={"hwm": "1", "removed": "1"})
    paused = record_outcome(
        redis_client,
        KEYS,
        "gone",
        slot_us=to_epoch_us(START),
        task_id="t-1",
        who="worker",
        outcome="error",
        counter="errors",
        history_size=10,
        error="ValueError: boom",
        pause_note="paused on failure: task t-1 raised ValueError('boom')",
        paused_at=START.isoformat(),
    )
    assert paused is False
    assert redis_client.hget(KEYS.state("gone"), "paused") is None
    assert redis_client.hget(KEYS.state("gone"), "errors") == b"1"


# -- the entry key and the header ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["yes", 1, [True]], ids=["text", "number", "list"])
def test_a_pause_on_failure_that_is_not_a_bool_is_refused_naming_the_entry(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"pause_on_failure.*must be True or False") as caught:
        entry_from_config(
            "job",
            {"task": "t", "schedule": 60, "pause_on_failure": value},
            default_timezone=timezone.utc,
        )
    assert (caught.value.entry, caught.value.field) == ("job", "pause_on_failure")


def test_only_entries_that_set_it_carry_the_header_and_store_the_key() -> None:
    on = entry_from_config(
        "on", {"task": "t", "schedule": 60, "pause_on_failure": True}, default_timezone=timezone.utc
    )
    off = entry_from_config("off", {"task": "t", "schedule": 60}, default_timezone=timezone.utc)
    assert build_occurrence(on, START, "id-1").headers[PAUSE_ON_FAILURE_HEADER] is True
    assert PAUSE_ON_FAILURE_HEADER not in build_occurrence(off, START, "id-2").headers
    assert entry_to_dict(on)["pause_on_failure"] is True
    assert "pause_on_failure" not in entry_to_dict(off)


# -- the command line ------------------------------------------------------------------------------


def test_the_cli_adds_the_key_and_shows_the_pause_and_its_note_until_resumed(
    cluster_of: Any,
) -> None:
    cluster = cluster_of({})

    def run(*args: str) -> Result:
        obj = CLIContext(app=cluster.app, no_color=True, workdir=None)
        result = CliRunner().invoke(schedule, list(args), obj=obj)
        assert result.exit_code == 0, result.output
        return result

    run("add", "nightly", "tasks.boom", "every 1 hour", "--pause-on-failure")
    assert cluster.manager.get("nightly").pause_on_failure
    assert "on failure   pause" in run("show", "nightly").stdout
    with start_worker(cluster.app, pool="solo", perform_ping_check=False):
        task_id = cluster.manager.trigger("nightly").task_id
        cluster.wait_for_end("nightly")
    note = f"paused on failure: task {task_id} raised ValueError('boom')"
    assert f": {note}" in run("show", "nightly").stdout
    shown = json.loads(run("show", "nightly", "--json").stdout)
    assert (shown["paused"], shown["pause_note"], shown["pause_on_failure"]) == (True, note, True)
    assert [job["name"] for job in json.loads(run("list", "--paused", "--json").stdout)] == [
        "nightly"
    ]
    run("resume", "nightly")
    shown = json.loads(run("show", "nightly", "--json").stdout)
    assert (shown["paused"], shown["pause_note"]) == (False, "")
