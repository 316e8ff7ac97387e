"""The Manager API against a real Redis: building, storing, reading and steering jobs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from celery import Celery

from celery_fork_scheduler import (
    ConfigError,
    JobNotFoundError,
    Manager,
    StaleVersionError,
    every,
    install,
)
from celery_fork_scheduler.ids import ENTRY_HEADER
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.manager import ReplicaInfo, RunRecord, TriggerResult
from celery_fork_scheduler.testing import FakeClock

START = "2026-03-02T10:00:00+00:00"
KEYS = Keys("scheduler:")
US = timedelta(microseconds=1)
STATIC = {
    "nightly-report": {
        "task": "tasks.report",
        "schedule": "0 3 * * *",
        "tags": ["reports"],
    }
}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(timezone.utc)


def make_app(redis_url: str, beat_schedule: dict[str, Any] | None = None, **conf: Any) -> Celery:
    app = Celery("manager_tests", set_as_current=False, broker=redis_url)
    app.conf.update(
        timezone="UTC",
        beat_schedule=beat_schedule if beat_schedule is not None else STATIC,
        result_expires=None,
        **conf,
    )

    app.task(name="tasks.report", shared=False)(report)
    return app


def report(*args: Any, **kwargs: Any) -> None:
    """The task the jobs name (one function, registered with each test's app)."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = make_app(redis_url)
    yield app
    app.close()


@pytest.fixture
def manager(app: Celery, clock: FakeClock) -> Manager:
    return Manager(app, clock=clock)


def snapshot(client: redis.Redis) -> dict[str, Any]:
    """Everything the runtime store holds, to compare before and after a refused call."""
    return {
        "entries": client.hgetall(KEYS.runtime_entries),
        "changes": client.zrange(KEYS.runtime_changes, 0, -1, withscores=True),
        "version": client.get(KEYS.runtime_version),
    }


def broker_messages(client: redis.Redis) -> list[dict[str, Any]]:
    """The messages waiting in the default ``celery`` queue of the Redis broker."""
    return [json.loads(raw) for raw in client.lrange("celery", 0, -1)]


# -- builders ---------------------------------------------------------------------------------


def test_every_builds_a_named_tagged_singleton_job_with_its_arguments(
    manager: Manager, app: Celery
) -> None:
    job = (
        manager.every(5)
        .minutes.tag("reports", "hourly")
        .name("report-5m")
        .singleton()
        .do(app.tasks["tasks.report"], 1, "two", region="eu")
    )
    assert job.name == "report-5m"
    assert job.task == "tasks.report"
    assert job.tags == frozenset({"reports", "hourly"})
    assert job.overlap == "skip"
    assert job.source == "runtime"
    assert (job.args, dict(job.kwargs)) == ((1, "two"), {"region": "eu"})
    assert job.schedule_text == "every 5 minutes"
    assert job.next_run == utc("2026-03-02T10:05:00+00:00")
    assert job.version == 1
    assert manager.get("report-5m") == job


def test_a_job_without_a_name_is_named_after_its_task_and_schedule(manager: Manager) -> None:
    job = manager.every(30).seconds.do("tasks.report")
    assert job.name == "tasks.report@every 30 seconds"
    assert manager.get("tasks.report@every 30 seconds").task == "tasks.report"


def test_at_builds_a_daily_job_at_each_time(manager: Manager) -> None:
    manager.at("10:30", "18:00").name("twice-daily").do("tasks.report")
    assert manager.next_runs("twice-daily", 3) == [
        utc("2026-03-02T10:30:00+00:00"),
        utc("2026-03-02T18:00:00+00:00"),
        utc("2026-03-03T10:30:00+00:00"),
    ]


def test_a_six_field_cron_job_runs_on_its_seconds(manager: Manager) -> None:
    manager.cron("*/10 * * * * *").name("ten-seconds").do("tasks.report")
    assert manager.next_runs("ten-seconds", 3, after=utc("2026-03-02T10:00:05+00:00")) == [
        utc("2026-03-02T10:00:10+00:00"),
        utc("2026-03-02T10:00:20+00:00"),
        utc("2026-03-02T10:00:30+00:00"),
    ]


def test_a_five_field_cron_job_with_a_timezone_runs_in_that_zone(manager: Manager) -> None:
    manager.cron("30 7 * * *").timezone("Europe/Berlin").name("berlin").do("tasks.report")
    assert manager.next_runs("berlin", 2) == [
        utc("2026-03-03T06:30:00+00:00"),
        utc("2026-03-04T06:30:00+00:00"),
    ]


def test_next_runs_counts_from_now_by_default_and_from_after_when_given(
    manager: Manager, clock: FakeClock
) -> None:
    manager.every(1).hours.name("hourly").do("tasks.report")
    assert manager.next_runs("hourly", 2) == [
        utc("2026-03-02T11:00:00+00:00"),
        utc("2026-03-02T12:00:00+00:00"),
    ]
    assert manager.next_runs("hourly", 1, after=utc("2026-03-05T00:30:00+00:00")) == [
        utc("2026-03-05T01:00:00+00:00")
    ]
    clock.advance(timedelta(hours=2))
    assert manager.next_runs("hourly", 1) == [utc("2026-03-02T13:00:00+00:00")]


def test_an_incomplete_every_is_refused(manager: Manager, redis_client: redis.Redis) -> None:
    with pytest.raises(ConfigError, match="incomplete schedule"):
        manager.every(5).do("tasks.report")
    assert redis_client.hlen(KEYS.runtime_entries) == 0


def test_name_on_the_manager_names_only_the_next_job(manager: Manager) -> None:
    first = manager.name("first").every(1).minutes.do("tasks.report")
    second = manager.every(2).minutes.do("tasks.report")
    assert first.name == "first"
    assert second.name == "tasks.report@every 2 minutes"


def test_singleton_mode_makes_every_later_built_job_a_singleton(manager: Manager) -> None:
    before = manager.every(1).minutes.name("before").do("tasks.report")
    assert manager.singleton_mode() is manager
    after = manager.every(2).minutes.name("after").do("tasks.report")
    cron_job = manager.cron("0 * * * *").name("cron-after").do("tasks.report")
    assert before.overlap == "allow"
    assert after.overlap == "skip"
    assert cron_job.overlap == "skip"


def test_singleton_mode_also_applies_to_jobs_added_directly(manager: Manager) -> None:
    job = manager.singleton_mode().add("direct", "tasks.report", every(1).minutes)
    assert job.overlap == "skip"


def test_the_builder_passes_policies_through_to_the_entry(manager: Manager) -> None:
    job = (
        manager.every(10)
        .seconds.name("limited")
        .limit_runs(3)
        .options(queue="reports", priority=5)
        .do("tasks.report")
    )
    stored = manager.store().get("limited")
    assert stored is not None
    assert stored.data["max_runs"] == 3
    assert dict(job.options) == {"queue": "reports", "priority": 5}


# -- add / update / remove ----------------------------------------------------------------------


def test_add_accepts_a_schedule_string_and_entry_keys(manager: Manager) -> None:
    job = manager.add(
        "cleanup",
        "tasks.report",
        "every 15 minutes",
        args=[7],
        tags=["maintenance"],
        overlap="buffer_one",
        description="drops old rows",
    )
    assert job.schedule_text == "every 15 minutes"
    assert job.overlap == "buffer_one"
    assert job.tags == frozenset({"maintenance"})
    assert job.description == "drops old rows"
    assert manager.get("cleanup").args == (7,)


def test_a_second_runtime_entry_of_the_same_name_is_refused(
    manager: Manager, redis_client: redis.Redis
) -> None:
    manager.add("dup", "tasks.report", every(1).minutes)
    before = snapshot(redis_client)
    with pytest.raises(ConfigError, match="replace_existing") as raised:
        manager.add("dup", "tasks.report", every(2).minutes)
    assert raised.value.entry == "dup"
    assert snapshot(redis_client) == before
    assert manager.get("dup").schedule_text == "every minute"


def test_replace_existing_replaces_and_bumps_the_version(manager: Manager) -> None:
    first = manager.add("job", "tasks.report", every(1).minutes)
    second = manager.add("job", "tasks.report", every(2).minutes, replace_existing=True)
    assert second.version > first.version
    assert manager.get("job").schedule_text == "every 2 minutes"


def test_update_changes_only_the_given_fields(manager: Manager) -> None:
    first = manager.add("job", "tasks.report", every(1).minutes, args=[1], tags=["a"])
    updated = manager.update("job", args=[2], schedule=every(3).minutes)
    assert updated.version > first.version
    job = manager.get("job")
    assert job.args == (2,)
    assert job.schedule_text == "every 3 minutes"
    assert job.tags == frozenset({"a"})


def test_an_update_with_the_version_it_read_succeeds(manager: Manager) -> None:
    read = manager.add("job", "tasks.report", every(1).minutes)
    updated = manager.update("job", expected_version=read.version, args=[5])
    assert manager.get("job").version == updated.version


def test_a_stale_update_is_refused_and_the_entry_stays_as_it_was(
    manager: Manager, redis_client: redis.Redis
) -> None:
    read = manager.add("job", "tasks.report", every(1).minutes)
    manager.update("job", args=["someone else"])
    before = snapshot(redis_client)
    with pytest.raises(StaleVersionError) as raised:
        manager.update("job", expected_version=read.version, args=["mine"])
    assert (raised.value.name, raised.value.expected) == ("job", read.version)
    assert raised.value.current > read.version
    assert snapshot(redis_client) == before
    assert manager.get("job").args == ("someone else",)


def test_a_stale_replacement_through_add_is_refused(
    manager: Manager, redis_client: redis.Redis
) -> None:
    read = manager.add("job", "tasks.report", every(1).minutes)
    manager.update("job", args=[1])
    before = snapshot(redis_client)
    with pytest.raises(StaleVersionError):
        manager.add("job", "tasks.report", every(9).minutes, expected_version=read.version)
    assert snapshot(redis_client) == before


def test_a_stale_remove_is_refused(manager: Manager) -> None:
    read = manager.add("job", "tasks.report", every(1).minutes)
    manager.update("job", args=[1])
    with pytest.raises(StaleVersionError):
        manager.remove("job", expected_version=read.version)
    assert manager.get("job").args == (1,)


BAD_SCHEDULES = [
    pytest.param({"schedule": "every banana"}, "schedule", id="bad-schedule"),
    pytest.param({"schedule": "*/61 * * * *"}, "schedule", id="cron-step-out-of-range"),
]
BAD_CHANGES = [
    *BAD_SCHEDULES,
    pytest.param({"overlap": "sometimes"}, "overlap", id="bad-overlap"),
    pytest.param({"options": {"task_id": "fixed"}}, "options", id="task-id-option"),
    pytest.param({"max_runs": 0}, "max_runs", id="zero-max-runs"),
    pytest.param({"catchup": "never"}, "catchup", id="bad-catchup"),
    pytest.param({"timezone": "Mars/Olympus"}, "timezone", id="bad-zone"),
    pytest.param({"sheduel": "every minute"}, "sheduel", id="unknown-key"),
]


@pytest.mark.parametrize(("changes", "field"), BAD_CHANGES)
def test_a_bad_update_is_refused_naming_the_field_and_changes_nothing(
    manager: Manager, redis_client: redis.Redis, changes: dict[str, Any], field: str
) -> None:
    manager.add("job", "tasks.report", every(1).minutes, args=[1])
    before = snapshot(redis_client)
    with pytest.raises(ConfigError) as raised:
        manager.update("job", **changes)
    assert (raised.value.entry, raised.value.field) == ("job", field)
    assert snapshot(redis_client) == before
    assert manager.get("job").schedule_text == "every minute"


@pytest.mark.parametrize(
    ("changes", "field"),
    BAD_SCHEDULES + BAD_CHANGES[len(BAD_SCHEDULES) :],
)
def test_a_bad_replacement_is_refused_and_changes_nothing(
    manager: Manager, redis_client: redis.Redis, changes: dict[str, Any], field: str
) -> None:
    manager.add("job", "tasks.report", every(1).minutes)
    before = snapshot(redis_client)
    definition: dict[str, Any] = {"schedule": every(2).minutes, **changes}
    schedule = definition.pop("schedule")
    with pytest.raises(ConfigError) as raised:
        manager.add("job", "tasks.report", schedule, replace_existing=True, **definition)
    assert raised.value.field == field
    assert snapshot(redis_client) == before


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("x" * 10_000, id="10000-chars"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("a{b}c", id="braces"),
        pytest.param("line\nbreak", id="newline"),
    ],
)
def test_a_bad_name_is_refused_and_changes_nothing(
    manager: Manager, redis_client: redis.Redis, name: str
) -> None:
    manager.add("existing", "tasks.report", every(1).minutes)
    before = snapshot(redis_client)
    with pytest.raises(ConfigError, match="entry names"):
        manager.add(name, "tasks.report", every(1).minutes)
    assert snapshot(redis_client) == before


def test_a_long_name_error_is_short(manager: Manager) -> None:
    with pytest.raises(ConfigError) as raised:
        manager.add("x" * 10_000, "tasks.report", every(1).minutes)
    assert len(str(raised.value)) < 300


def test_a_task_that_is_neither_a_name_nor_a_task_is_refused(manager: Manager) -> None:
    with pytest.raises(ConfigError) as raised:
        manager.add("job", object(), every(1).minutes)
    assert (raised.value.entry, raised.value.field) == ("job", "task")


def test_a_runtime_entry_cannot_take_the_name_of_a_static_one(
    manager: Manager, redis_client: redis.Redis
) -> None:
    with pytest.raises(ConfigError, match="static entry") as raised:
        manager.add("nightly-report", "tasks.report", every(1).minutes)
    assert raised.value.entry == "nightly-report"
    assert "nightly-report" in str(raised.value)
    assert redis_client.hlen(KEYS.runtime_entries) == 0
    assert manager.get("nightly-report").source == "config"


def test_a_static_entry_cannot_be_removed_or_updated(manager: Manager) -> None:
    with pytest.raises(ConfigError, match="cannot be removed") as removed:
        manager.remove("nightly-report")
    assert removed.value.entry == "nightly-report"
    with pytest.raises(ConfigError, match="cannot be changed") as updated:
        manager.update("nightly-report", args=[1])
    assert updated.value.entry == "nightly-report"
    assert manager.get("nightly-report").schedule_text == "cron 0 3 * * * in UTC"


def test_remove_deletes_a_runtime_entry(manager: Manager) -> None:
    manager.add("job", "tasks.report", every(1).minutes)
    assert manager.remove("job") is True
    with pytest.raises(JobNotFoundError, match="job"):
        manager.get("job")


def test_removing_an_unknown_entry_says_so(manager: Manager) -> None:
    with pytest.raises(JobNotFoundError) as raised:
        manager.remove("nothing-here")
    assert raised.value.name == "nothing-here"


def test_remove_by_tag_removes_only_runtime_entries_with_that_tag(manager: Manager) -> None:
    manager.every(1).minutes.name("r1").tag("reports").do("tasks.report")
    manager.every(2).minutes.name("r2").tag("reports", "eu").do("tasks.report")
    manager.every(3).minutes.name("other").tag("billing").do("tasks.report")
    assert sorted(manager.remove_by_tag("reports")) == ["r1", "r2"]
    assert [job.name for job in manager.jobs()] == ["nightly-report", "other"]


def test_clear_removes_every_runtime_entry_and_keeps_static_ones(manager: Manager) -> None:
    manager.every(1).minutes.name("a").do("tasks.report")
    manager.every(2).minutes.name("b").do("tasks.report")
    assert manager.clear() == 2
    assert [job.name for job in manager.jobs()] == ["nightly-report"]
    assert manager.clear() == 0


# -- reading ------------------------------------------------------------------------------------


def test_jobs_lists_static_and_runtime_entries_by_name(manager: Manager) -> None:
    manager.every(1).minutes.name("zeta").do("tasks.report")
    manager.every(1).minutes.name("alpha").tag("reports").do("tasks.report")
    jobs = manager.jobs()
    assert [(job.name, job.source) for job in jobs] == [
        ("alpha", "runtime"),
        ("nightly-report", "config"),
        ("zeta", "runtime"),
    ]
    assert [job.name for job in manager.jobs("reports")] == ["alpha", "nightly-report"]
    assert manager.jobs("no-such-tag") == []


def test_get_returns_a_plain_snapshot_with_the_static_entry_version_zero(
    manager: Manager,
) -> None:
    job = manager.get("nightly-report")
    assert job.version == 0
    assert job.next_run == utc("2026-03-03T03:00:00+00:00")
    assert (job.run_count, job.last_run, job.paused) == (0, None, False)


def test_getting_an_unknown_entry_raises_job_not_found(manager: Manager) -> None:
    with pytest.raises(JobNotFoundError, match="'ghost'"):
        manager.get("ghost")
    with pytest.raises(JobNotFoundError):
        manager.next_runs("ghost")


# -- pause, resume, run now -----------------------------------------------------------------------


def test_pause_by_name_records_the_note_and_the_time(manager: Manager, clock: FakeClock) -> None:
    manager.every(1).minutes.name("job").do("tasks.report")
    assert manager.pause("job", note="ops: database migration") == ["job"]
    state = manager.is_paused("job")
    assert state.paused
    assert state.note == "ops: database migration"
    assert state.since == clock()
    job = manager.get("job")
    assert (job.paused, job.pause_note, job.paused_at) == (True, "ops: database migration", clock())
    assert manager.resume("job") == ["job"]
    assert not manager.is_paused("job").paused
    assert manager.get("job").pause_note == ""


def test_pause_and_resume_by_tag_reach_static_and_runtime_entries(manager: Manager) -> None:
    manager.every(1).minutes.name("weekly-report").tag("reports").do("tasks.report")
    manager.every(1).minutes.name("billing").tag("billing").do("tasks.report")
    assert manager.pause(tag="reports", note="quarter close") == [
        "nightly-report",
        "weekly-report",
    ]
    assert {job.name: job.paused for job in manager.jobs()} == {
        "billing": False,
        "nightly-report": True,
        "weekly-report": True,
    }
    assert manager.resume(tag="reports") == ["nightly-report", "weekly-report"]
    assert not any(job.paused for job in manager.jobs())


def test_pause_needs_either_a_name_or_a_tag(manager: Manager) -> None:
    with pytest.raises(ValueError, match="either a name or a tag"):
        manager.pause()
    with pytest.raises(ValueError, match="either a name or a tag"):
        manager.pause("nightly-report", tag="reports")


def test_pausing_an_unknown_entry_raises_job_not_found(manager: Manager) -> None:
    with pytest.raises(JobNotFoundError):
        manager.pause("ghost")
    with pytest.raises(JobNotFoundError):
        manager.is_paused("ghost")


def test_run_now_publishes_through_celery_and_counts_the_run(
    manager: Manager, redis_client: redis.Redis
) -> None:
    manager.every(1).hours.name("job").do("tasks.report", 42, mode="full")
    task_id = manager.run_now("job")
    assert task_id is not None
    [message] = broker_messages(redis_client)
    assert message["headers"]["id"] == task_id
    assert message["headers"]["task"] == "tasks.report"
    assert message["headers"][ENTRY_HEADER] == "job"
    job = manager.get("job")
    assert (job.run_count, job.manual_runs) == (0, 1)  # a trigger does not consume max_runs


def test_run_now_works_for_a_static_entry(manager: Manager, redis_client: redis.Redis) -> None:
    task_id = manager.run_now("nightly-report")
    assert [m["headers"]["id"] for m in broker_messages(redis_client)] == [task_id]


def test_run_now_respects_a_singleton_whose_run_is_still_executing(
    manager: Manager, redis_client: redis.Redis, clock: FakeClock
) -> None:
    manager.every(1).hours.name("job").singleton().do("tasks.report")
    first = manager.run_now("job")
    assert first is not None
    assert redis_client.get(KEYS.running("job")) == first.encode()
    clock.advance(1)
    assert manager.run_now("job") is None
    assert len(broker_messages(redis_client)) == 1
    assert manager.get("job").manual_runs == 1
    redis_client.delete(KEYS.running("job"))  # the worker released it
    assert manager.run_now("job") is not None
    assert len(broker_messages(redis_client)) == 2


def test_run_now_of_an_unknown_entry_raises_job_not_found(manager: Manager) -> None:
    with pytest.raises(JobNotFoundError):
        manager.run_now("ghost")


def test_trigger_says_a_singleton_still_running_is_busy(manager: Manager) -> None:
    manager.every(1).hours.name("job").singleton().do("tasks.report")
    sent = manager.trigger("job")
    assert (sent.skipped, sent.task_id is not None) == (None, True)
    assert manager.trigger("job") == TriggerResult(skipped="busy")
    assert manager.run_now("job") is None


def test_trigger_says_when_the_concurrency_cap_is_reached(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    app = make_app(redis_url, fork_scheduler_max_concurrent=1)
    try:
        manager = Manager(app, clock=clock)
        assert manager.trigger("nightly-report").task_id is not None
        clock.advance(1)
        assert manager.trigger("nightly-report") == TriggerResult(skipped="capped")
        assert len(broker_messages(redis_client)) == 1
    finally:
        app.close()


# -- history, stats, replicas ----------------------------------------------------------------


def test_history_items_keep_what_cannot_be_decoded_and_history_refuses_it(
    manager: Manager, redis_client: redis.Redis
) -> None:
    slot = int(utc(START).timestamp() * 1_000_000)
    item = {"slot": slot, "outcome": "sent", "task_id": "t", "replica": "r", "at": slot + 5}
    redis_client.lpush(KEYS.history("nightly-report"), json.dumps(item))
    assert manager.history("nightly-report") == [
        RunRecord(slot=utc(START), outcome="sent", task_id="t", by="r", at=utc(START) + US * 5)
    ]
    redis_client.lpush(KEYS.history("nightly-report"), b"not json")
    first, second = manager.history_items("nightly-report")
    assert (first.data, first.to_dict()) == (None, {"raw": "not json"})
    assert second.to_dict() == {**item, "slot": START, "at": "2026-03-02T10:00:00.000005+00:00"}
    with pytest.raises(ValueError, match="not a JSON object"):
        manager.history("nightly-report")


def test_stats_reads_the_counters_of_an_entry(manager: Manager, redis_client: redis.Redis) -> None:
    state = {"runs": 3, "completed": 2, "errors": 1, "skips:busy": 4}
    redis_client.hset(KEYS.state("nightly-report"), mapping=state)
    stats = manager.stats("nightly-report")
    assert (stats.runs, stats.completed, stats.errors, stats.failures) == (3, 2, 1, 0)
    assert stats.skips == {"busy": 4}


def test_replicas_lists_recent_ones_and_marks_the_silent_ones_stale(
    manager: Manager, redis_client: redis.Redis
) -> None:
    def record(seconds_ago: float) -> str:
        tick = (utc(START) - timedelta(seconds=seconds_ago)).isoformat()
        return json.dumps(
            {"hostname": "h", "pid": 7, "last_tick": tick, "runtime_version": 3, "entries": 2}
        )

    redis_client.hset(
        KEYS.replicas,
        mapping={"b": record(30), "a": record(2), "old": record(3600), "bad": "{not json"},
    )
    live, stale, bad = manager.replicas()  # by id
    assert live == ReplicaInfo(
        id="a",
        hostname="h",
        pid=7,
        last_tick=utc(START) - timedelta(seconds=2),
        age=2.0,
        runtime_version=3,
        entries=2,
    )
    assert not live.stale
    assert (bad.id, bad.last_tick, bad.stale) == ("bad", None, True)
    assert (stale.id, stale.stale) == ("b", True)
    assert [r.id for r in manager.replicas(within=10)] == ["a", "bad"]
    assert [r.id for r in manager.replicas(within=7200)] == ["a", "b", "bad", "old"]


def test_a_job_carries_the_limits_of_its_entry(manager: Manager) -> None:
    job = manager.add(
        "limited",
        "tasks.report",
        every(1).minutes,
        start_at="2026-04-01T00:00:00+00:00",
        end_at="2026-05-01T00:00:00+00:00",
        max_runs=3,
        catchup="all",
        catchup_window=600,
    )
    assert manager.get("limited") == job
    assert (job.start_at, job.end_at) == (
        utc("2026-04-01T00:00:00+00:00"),
        utc("2026-05-01T00:00:00+00:00"),
    )
    assert (job.max_runs, job.catchup, job.catchup_window) == (3, "all", timedelta(minutes=10))
    static = manager.get("nightly-report")
    assert (static.start_at, static.max_runs, static.catchup, static.catchup_window) == (
        None,
        None,
        "latest",
        None,
    )


# -- install -----------------------------------------------------------------------------------


def test_install_is_idempotent_and_makes_plain_beat_use_this_scheduler(redis_url: str) -> None:
    app = make_app(redis_url)
    try:
        manager = install(app)
        assert isinstance(manager, Manager)
        assert app.fork_scheduler is manager
        assert install(app) is manager
        assert app.conf.beat_scheduler == "celery_fork_scheduler.scheduler:Scheduler"
        assert app.conf.fork_scheduler_singleton_lease == timedelta(seconds=60)
        assert app.conf.fork_scheduler_key_prefix == "scheduler:"
    finally:
        app.close()


def test_install_keeps_settings_the_app_already_has(redis_url: str) -> None:
    app = make_app(redis_url, fork_scheduler_key_prefix="mine:")
    try:
        install(app)
        assert app.conf.fork_scheduler_key_prefix == "mine:"
    finally:
        app.close()


def test_the_manager_uses_the_configured_key_prefix(
    redis_url: str, redis_client: redis.Redis
) -> None:
    app = make_app(redis_url, fork_scheduler_key_prefix="tenant-a:")
    try:
        Manager(app).every(1).minutes.name("job").do("tasks.report")
        assert redis_client.hexists(Keys("tenant-a:").runtime_entries, "job")
        assert not redis_client.exists(KEYS.runtime_entries)
    finally:
        app.close()


def test_update_can_turn_a_job_into_a_singleton(manager: Manager) -> None:
    manager.add("job", "tasks.report", every(1).minutes)
    assert manager.update("job", singleton=True).overlap == "skip"


def test_update_can_change_the_overlap_policy(manager: Manager) -> None:
    manager.add("job", "tasks.report", every(1).minutes)
    assert manager.update("job", overlap="buffer_one").overlap == "buffer_one"


def test_an_embedded_beat_publishes_runtime_jobs_until_stopped(
    redis_url: str, redis_client: redis.Redis, tmp_path: Any
) -> None:
    app = make_app(
        redis_url, beat_max_loop_interval=1, beat_schedule_filename=str(tmp_path / "beat")
    )
    manager = Manager(app)
    manager.every(1).seconds.name("tick").do("tasks.report")
    try:
        assert manager.start() is manager
        assert manager.is_running()
        deadline = time.monotonic() + 10
        while redis_client.llen("celery") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {m["headers"][ENTRY_HEADER] for m in broker_messages(redis_client)} == {"tick"}
        assert len(broker_messages(redis_client)) >= 2
    finally:
        manager.stop()
        app.close()
    assert not manager.is_running()


def test_a_call_reads_the_settings_once_and_the_next_call_reads_them_again(
    manager: Manager, app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the settings scans every Celery setting: ``add`` and ``update`` read them once
    per call, and a setting changed between two calls applies to the second."""
    import celery_fork_scheduler.manager as manager_module

    reads: list[object] = []
    read = manager_module.read_settings

    def counted(conf: Any, **options: Any) -> Any:
        reads.append(conf)
        return read(conf, **options)

    monkeypatch.setattr(manager_module, "read_settings", counted)
    manager.add("rt", "tasks.report", every(5).minutes)
    manager.update("rt", description="changed")
    manager.pause("rt")
    assert len(reads) == 3
    app.conf.fork_scheduler_max_entry_size = 1024
    with pytest.raises(ConfigError, match="fork_scheduler_max_entry_size"):
        manager.add("big", "tasks.report", every(5).minutes, description="x" * 2000)
