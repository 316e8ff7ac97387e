"""What beat says at start-up about entries whose task it does not know or whose arguments do
not fit: once, naming the entries, without a line per entry for a large schedule."""

from __future__ import annotations

import logging
from datetime import timezone

import pytest
from celery import Celery

from celery_fork_scheduler import every
from celery_fork_scheduler.entry import entry_from_config
from celery_fork_scheduler.startup_checks import warn_about_tasks


def entries(task: str, count: int, args: tuple = ()) -> list:
    return [
        entry_from_config(
            f"e{i:02}",
            {"task": task, "schedule": every(1).minutes, "args": args},
            default_timezone=timezone.utc,
        )
        for i in range(count)
    ]


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture
def app() -> Celery:
    app = Celery("checks", set_as_current=False, broker="memory://")

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    return app


def test_one_entry_of_an_unknown_task_is_named(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="celery_fork_scheduler"):
        warn_about_tasks(app, entries("recrod", 1))
    assert warnings(caplog) == [
        "fork scheduler: entry e00: task 'recrod' is not registered in this app; it is sent by "
        "name (check the name, and that the app imports the task's module)"
    ]


def test_many_entries_of_one_unknown_task_make_one_line(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="celery_fork_scheduler"):
        warn_about_tasks(app, entries("bench.noop", 12) + entries("other.typo", 2)[1:])
    lines = warnings(caplog)
    assert len(lines) == 2
    assert lines[0].startswith(
        "fork scheduler: entries e00, e01, e02, e03, e04 and 7 more: task 'bench.noop' is not"
    )
    assert lines[1].startswith("fork scheduler: entry e01: task 'other.typo'")


def test_arguments_that_do_not_fit_are_named_per_entry(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="celery_fork_scheduler"):
        warn_about_tasks(app, entries("add", 2, args=(1,)) + entries("add", 1, args=(1, 2)))
    lines = warnings(caplog)
    assert len(lines) == 2
    assert all("field args/kwargs: they do not fit task add" in line for line in lines)
