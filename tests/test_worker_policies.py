"""Issue 14, the parts that are not a worker's: the cap's own place, re-added runtime entries,
and what a manual trigger means for pause, ``max_runs``, the singleton marker and the cap.
Real Redis (the broker too); the worker-side parts are in ``tests/e2e/test_worker_policies_e2e``.
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
from click.testing import CliRunner
from kombu.exceptions import OperationalError

from celery_fork_scheduler import Manager, install
from celery_fork_scheduler.backends.base import Claim
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.cli import schedule
from celery_fork_scheduler.config import Settings
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.manager import BrokerUnavailableError, TriggerResult
from celery_fork_scheduler.publishing import CeleryPublisher
from celery_fork_scheduler.testing import FakeClock

KEYS = Keys("scheduler:")
START = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)


def make_app(redis_url: str, **conf: Any) -> Celery:
    app = Celery("policies", broker=redis_url, set_as_current=False)
    app.conf.update(timezone="UTC", fork_scheduler_redis_url=redis_url, **conf)

    @app.task(name="tasks.report", shared=False)
    def report(*args: Any, **kwargs: Any) -> None:
        """The task the entries name."""

    install(app)
    return app


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = make_app(redis_url, fork_scheduler_max_concurrent=1)
    yield app
    app.close()


@pytest.fixture
def manager(app: Celery) -> Manager:
    return Manager(app, clock=FakeClock(START))


def queued(client: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange("celery", 0, -1)]


# -- 5: a run's own place never counts against it --------------------------------------------------


def test_a_slot_asked_about_again_keeps_its_own_place_under_the_cap(redis_url: str) -> None:
    backend = RedisBackend.from_url(redis_url, Settings(max_concurrent=1))
    try:
        claim = Claim("capped", START, task_id_for("capped", START))
        other = Claim("other", START, task_id_for("other", START))
        assert backend.take_cap_places([claim], 1) == [True]
        # Asked again (a failed publish, a takeover): its own place, not a full cap.
        assert backend.take_cap_places([claim], 1) == [True]
        assert backend.take_cap_places([other], 1) == [False]
        # Behind a new run the full cap refuses, in the same batch: it keeps its own place
        # (seeds 552 and 5070 of the simulator refused it and gave its claim back).
        assert backend.take_cap_places([other, claim], 1) == [False, True]
        assert backend.client.zrange(KEYS.cap, 0, -1) == [claim.task_id.encode()]
    finally:
        backend.close()


# -- 6 and 8: removed and re-added runtime entries -------------------------------------------------


def test_a_removed_entry_loses_its_held_run(manager: Manager, redis_client: redis.Redis) -> None:
    manager.add("held", "tasks.report", "every 10 seconds", overlap="buffer_one")
    redis_client.set(KEYS.buffered("held"), json.dumps({"task_id": "stale"}))
    manager.remove("held")
    assert not redis_client.exists(KEYS.buffered("held"))


def test_a_re_added_entry_starts_afresh_but_keeps_its_high_water_mark(
    manager: Manager, redis_client: redis.Redis
) -> None:
    manager.add("again", "tasks.report", "every 10 seconds", max_runs=1)
    redis_client.hset(
        KEYS.state("again"),
        mapping={"hwm": "123", "runs": "1", "finished": "1", "paused": "1", "pause_note": "x"},
    )
    manager.remove("again")
    redis_client.set(KEYS.buffered("again"), json.dumps({"task_id": "stale"}))  # a late claim
    job = manager.add("again", "tasks.report", "every 10 seconds", max_runs=1)
    assert (job.run_count, job.finished, job.paused) == (0, False, False)
    assert job.next_run is not None
    assert redis_client.hget(KEYS.state("again"), "hwm") == b"123"
    assert not redis_client.exists(KEYS.buffered("again"))


# -- 9: a manual trigger ---------------------------------------------------------------------------


def test_a_trigger_of_a_paused_entry_is_refused_unless_forced(
    manager: Manager, redis_client: redis.Redis
) -> None:
    manager.add("paused", "tasks.report", "every 10 seconds")
    manager.pause("paused")
    assert manager.trigger("paused") == TriggerResult(skipped="paused")
    assert queued(redis_client) == []
    assert manager.trigger("paused", force=True).task_id is not None
    assert len(queued(redis_client)) == 1


def test_a_trigger_of_a_disabled_entry_is_refused_unless_forced(
    manager: Manager, redis_client: redis.Redis
) -> None:
    """``enabled: False`` never fires the entry, by hand either, unless forced (the pause's
    rule; adversary round 56 found a trigger ran it)."""
    manager.add("off", "tasks.report", "every 10 seconds", enabled=False)
    assert manager.trigger("off") == TriggerResult(skipped="disabled")
    assert queued(redis_client) == []
    assert manager.trigger("off", force=True).task_id is not None
    assert len(queued(redis_client)) == 1


def test_a_trigger_does_not_consume_max_runs(manager: Manager, redis_client: redis.Redis) -> None:
    manager.add("once", "tasks.report", "every 10 seconds", max_runs=1)
    assert manager.trigger("once").task_id is not None
    # The first manual run ended: its worker freed its place under the cap of 1 (two manual
    # runs are two runs, each with a task id of its own).
    redis_client.delete(KEYS.cap)
    assert manager.trigger("once").task_id is not None
    job = manager.get("once")
    assert (job.run_count, job.manual_runs, job.finished) == (0, 2, False)
    assert [m["headers"]["fork_scheduler_manual"] for m in queued(redis_client)] == [True, True]


def test_a_trigger_whose_publish_is_lost_gives_back_its_marker_and_place(
    manager: Manager, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager.add("single", "tasks.report", "every 10 seconds", singleton=True)

    def lost(self: CeleryPublisher, occurrence: Any) -> None:
        raise OperationalError("connection lost")

    monkeypatch.setattr(CeleryPublisher, "publish", lost)
    with pytest.raises(BrokerUnavailableError) as caught:
        manager.trigger("single")
    assert caught.value.task_id is not None
    assert not redis_client.exists(KEYS.running("single"))
    assert redis_client.zcard(KEYS.cap) == 0


def test_the_cli_trigger_says_paused_and_runs_with_force(
    app: Celery, manager: Manager, redis_client: redis.Redis
) -> None:
    manager.add("cli", "tasks.report", "every 10 seconds")
    manager.pause("cli")

    def run(*args: str) -> Any:
        obj = CLIContext(app=app, no_color=True, workdir=None)
        return CliRunner().invoke(schedule, list(args), obj=obj)

    refused = run("trigger", "cli")
    assert refused.exit_code == 0 and "paused" in refused.stdout, refused.stdout
    assert json.loads(run("trigger", "cli", "--json").stdout)["reason"] == "paused"
    forced = run("trigger", "cli", "--force")
    assert forced.exit_code == 0 and forced.stdout.startswith("sent 'cli'"), forced.stdout
    assert len(queued(redis_client)) == 1
