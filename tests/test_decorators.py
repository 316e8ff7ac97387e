"""``@periodic`` on ``@app.task``: a task module declares its own schedule."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import replica_helpers
from celery import Celery

from celery_fork_scheduler import ConfigError, Manager, Scheduler, every, periodic
from celery_fork_scheduler.backends import LocalBackend
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

START = "2026-03-02T10:00:00.300+00:00"


def make_app(beat_schedule: dict[str, Any] | None = None) -> Celery:
    return replica_helpers.make_app(None, beat_schedule or {}, main="decorator_tests")


@pytest.fixture
def app() -> Iterator[Celery]:
    app = make_app()
    yield app
    app.close()


class Beat:
    """One single-replica scheduler of ``app`` on a fake clock."""

    def __init__(self, app: Celery, state: Path) -> None:
        self.clock = FakeClock(START)
        self.publisher = RecordingPublisher()
        self.scheduler = Scheduler(
            app,
            clock=self.clock,
            publisher=self.publisher,
            backend=LocalBackend(state),
            exit_on_config_error=False,
        )

    def run_for(self, seconds: float, step: float = 0.25) -> None:
        replica_helpers.tick_for(self.scheduler.tick, self.clock, seconds, step)


@pytest.fixture
def start_beat(tmp_path: Path) -> Iterator[Any]:
    made: list[Beat] = []

    def factory(app: Celery) -> Beat:
        beat = Beat(app, tmp_path / f"state-{len(made)}.json")
        made.append(beat)
        return beat

    yield factory
    for beat in made:
        beat.scheduler.close()


def test_a_decorated_task_is_picked_up_by_beat_as_a_decorator_entry(
    app: Celery, start_beat: Any
) -> None:
    @periodic(every(2).seconds, args=[1], kwargs={"mode": "fast"}, options={"queue": "q"})
    @app.task(name="tasks.refresh")
    def refresh(number: int, mode: str) -> None:
        """Refresh something."""

    beat = start_beat(app)
    entry = beat.scheduler.entries["tasks.refresh"]
    assert (entry.source, entry.task) == ("decorator", "tasks.refresh")
    beat.run_for(4)
    assert beat.publisher.fired("tasks.refresh") == [
        "2026-03-02T10:00:02+00:00",
        "2026-03-02T10:00:04+00:00",
    ]
    occurrence = beat.publisher.occurrences[0]
    assert (occurrence.args, dict(occurrence.kwargs)) == ((1,), {"mode": "fast"})
    assert occurrence.options == {"queue": "q"}


def test_the_decorator_returns_the_task_unchanged(app: Celery) -> None:
    def same() -> int:
        return 42

    task = app.task(name="tasks.same")(same)
    assert periodic("every 5 minutes")(task) is task
    assert task() == 42


def test_name_tags_singleton_and_policies_reach_the_entry(app: Celery, start_beat: Any) -> None:
    @periodic(
        "every 10 seconds",
        name="reports-refresh",
        tags=["reports", "nightly"],
        singleton=True,
        max_runs=5,
        catchup="all",
        description="refreshes the reports",
    )
    @app.task(name="tasks.reports")
    def reports() -> None:
        """Build reports."""

    entries = start_beat(app).scheduler.entries
    entry = entries["reports-refresh"]
    assert entry.tags == frozenset({"reports", "nightly"})
    assert entry.overlap == "skip"
    assert (entry.max_runs, entry.catchup) == (5, "all")
    assert entry.description == "refreshes the reports"
    assert "tasks.reports" not in entries


def test_one_task_may_carry_several_schedules_under_different_names(
    app: Celery, start_beat: Any
) -> None:
    @periodic("every 3 seconds", name="often")
    @periodic("0 4 * * *", name="nightly")
    @app.task(name="tasks.sync")
    def sync() -> None:
        """Sync."""

    entries = start_beat(app).scheduler.entries
    assert {entries["often"].task, entries["nightly"].task} == {"tasks.sync"}


@pytest.mark.parametrize(
    ("schedule", "policies", "field"),
    [
        pytest.param("every banana", {}, "schedule", id="unparsable-string"),
        pytest.param("*/61 * * * *", {}, "schedule", id="cron-step-out-of-range"),
        pytest.param("0 0 30 2 *", {}, "schedule", id="february-30"),
        pytest.param(every(1).minutes, {"overlap": "sometimes"}, "overlap", id="bad-overlap"),
        pytest.param(every(1).minutes, {"sheduel": 1}, "sheduel", id="unknown-key"),
        pytest.param(every(1).minutes, {"timezone": "Mars/Olympus"}, "timezone", id="bad-zone"),
    ],
)
def test_a_bad_definition_raises_config_error_at_decoration(
    app: Celery, schedule: Any, policies: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as raised:

        @periodic(schedule, name="broken", **policies)
        @app.task(name="tasks.broken")
        def broken() -> None:
            """Never scheduled."""

    assert (raised.value.entry, raised.value.field) == ("broken", field)
    assert Manager(app).jobs() == []


def test_periodic_on_a_plain_function_says_where_it_belongs() -> None:
    with pytest.raises(TypeError, match=r"above @app\.task"):

        @periodic("every 5 minutes")
        def not_a_task() -> None:
            """A plain function."""


def test_a_beat_schedule_entry_of_the_same_name_wins(
    start_beat: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app({"tasks.both": {"task": "tasks.both", "schedule": every(5).seconds}})

    @periodic(every(1).seconds)
    @app.task(name="tasks.both")
    def both() -> None:
        """Scheduled twice."""

    with caplog.at_level(logging.WARNING, logger="celery_fork_scheduler"):
        beat = start_beat(app)
    assert beat.scheduler.entries["tasks.both"].source == "config"
    assert "shadowed by beat_schedule" in caplog.text
    beat.run_for(5)
    assert beat.publisher.fired("tasks.both") == ["2026-03-02T10:00:05+00:00"]


def test_the_manager_agrees_that_the_beat_schedule_entry_wins() -> None:
    app = make_app({"tasks.both": {"task": "tasks.both", "schedule": every(5).seconds}})

    @periodic(every(1).seconds)
    @app.task(name="tasks.both")
    def both() -> None:
        """Scheduled twice."""

    assert Manager(app).get("tasks.both").source == "config"


def test_the_manager_lists_decorator_entries_and_refuses_to_remove_them(app: Celery) -> None:
    @periodic("every 5 minutes", tags=["reports"])
    @app.task(name="tasks.listed")
    def listed() -> None:
        """Listed."""

    manager = Manager(app)
    [job] = manager.jobs("reports")
    assert (job.name, job.source, job.schedule_text) == (
        "tasks.listed",
        "decorator",
        "every 5 minutes",
    )
    with pytest.raises(ConfigError, match="cannot be removed") as raised:
        manager.remove("tasks.listed")
    assert raised.value.entry == "tasks.listed"


def test_entries_belong_to_the_app_of_their_task() -> None:
    first, second = make_app(), make_app()

    @periodic("every 5 minutes")
    @first.task(name="tasks.only_first")
    def only_first() -> None:
        """Only on the first app."""

    assert [job.name for job in Manager(first).jobs()] == ["tasks.only_first"]
    assert Manager(second).jobs() == []
