"""``check_app``: the whole schedule checked entry by entry, one test per kind of problem."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from celery_fork_scheduler import Manager, periodic
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.validation import CheckReport, Problem, check_app, check_app_report

KEYS = Keys("scheduler:")
GOOD = {
    "cleanup": {"task": "checked.cleanup", "schedule": "every 5 minutes"},
    "nightly": {"task": "checked.report", "schedule": "daily at 02:00", "singleton": True},
}

Check = Callable[..., CheckReport]


def make_app(broker: str, extra: dict[str, Any] | None = None, **conf: Any) -> Celery:
    app = Celery("validation_test", broker=broker, set_as_current=False)
    app.conf.update(timezone="UTC", beat_schedule={**GOOD, **(extra or {})}, **conf)

    @app.task(name="checked.cleanup", shared=False)  # type: ignore[untyped-decorator]
    def cleanup() -> None: ...

    @app.task(name="checked.report", shared=False)  # type: ignore[untyped-decorator]
    def report(day: str = "today") -> None: ...

    return app


@pytest.fixture
def check(redis_url: str, redis_client: redis.Redis) -> Iterator[Check]:
    """Check an app on the test Redis (where a worker has announced itself)."""
    redis_client.set(KEYS.workers_seen, "1")
    apps: list[Celery] = []

    def run(
        extra: dict[str, Any] | None = None, broker: str = redis_url, **conf: Any
    ) -> CheckReport:
        app = make_app(broker, extra, **conf)
        apps.append(app)
        return check_app_report(app)

    yield run
    for app in apps:
        app.close()


def only(problems: tuple[Problem, ...] | list[Problem]) -> Problem:
    assert len(problems) == 1, problems
    return problems[0]


def test_a_good_schedule_has_no_problems(check: Check) -> None:
    report = check()
    assert report.problems == ()
    assert report.valid == ("cleanup", "nightly")


def bad(field: str, match: str, case: str, task: str = "checked.cleanup", **definition: Any) -> Any:
    """A case: an entry (``schedule`` ``@daily`` unless given) and the field its error names."""
    return pytest.param({"task": task, "schedule": "@daily", **definition}, field, match, id=case)


@pytest.mark.parametrize(
    ("definition", "field", "match"),
    [
        bad(
            "schedule",
            "cannot parse schedule 'every 5 minuets'",
            "invalid-expression",
            schedule="every 5 minuets",
        ),
        bad("schedule", "cron '0 0 30 2 *' never fires", "impossible-date", schedule="0 0 30 2 *"),
        bad("task", "unknown task 'tasks.missing'", "unknown-task", task="tasks.missing"),
        bad("singelton", "unknown key", "unknown-key", singelton=True),
        bad("args", "args/kwargs do not fit task 'checked.cleanup'", "args-do-not-fit", args=[1]),
    ],
)
def test_a_bad_config_entry_is_one_error_naming_entry_field_and_source(
    check: Check, definition: dict[str, Any], field: str, match: str
) -> None:
    report = check({"bad": definition})
    problem = only(report.problems)
    assert (problem.severity, problem.entry, problem.field, problem.source) == (
        "error",
        "bad",
        field,
        "config",
    )
    assert match in problem.message
    assert report.valid == ("cleanup", "nightly")


def test_every_problem_is_listed_not_only_the_first(check: Check) -> None:
    bad = {f"bad-{n}": {"task": "checked.cleanup", "schedule": "0 0 30 2 *"} for n in range(3)}
    report = check(bad)
    assert sorted(p.entry or "" for p in report.errors) == ["bad-0", "bad-1", "bad-2"]
    assert len(report.valid) == 2


def test_an_unknown_setting_is_an_error_and_the_check_goes_on(check: Check) -> None:
    report = check({"bad": {"task": "tasks.missing", "schedule": "@daily"}}, fork_scheduler_x=5)
    assert [(p.field, "unknown setting" in p.message) for p in report.errors] == [
        ("fork_scheduler_x", True),
        ("task", False),
    ]


def test_a_beat_schedule_that_is_not_a_dict_is_an_error(redis_url: str) -> None:
    app = make_app(redis_url)
    app.conf.beat_schedule = ["not", "a", "dict"]
    problem = only(check_app(app))
    assert (problem.severity, problem.source) == ("error", "config")
    assert "beat_schedule must be a dict, not list" in problem.message


@pytest.mark.usefixtures("check")  # a worker has announced itself
def test_an_entry_in_config_and_periodic_is_a_warning(redis_url: str) -> None:
    app = make_app(redis_url)
    periodic("@hourly", name="cleanup")(app.tasks["checked.cleanup"])
    problem = only(check_app(app))
    assert (problem.severity, problem.entry, problem.source) == ("warning", "cleanup", "decorator")
    assert "the decorator wins" in problem.message


@pytest.mark.usefixtures("check")  # a worker has announced itself
def test_a_failing_task_module_import_is_an_error(redis_url: str) -> None:
    app = make_app(redis_url, imports=["no_such_module_for_validation"])
    problem = only(check_app(app))
    assert problem.severity == "error"
    assert problem.message.startswith("importing the app's task modules failed")


def test_runtime_entries_redis_cannot_decode_are_errors(
    check: Check, redis_client: redis.Redis
) -> None:
    redis_client.hset(KEYS.runtime_entries, "corrupt", "{not json")
    redis_client.hset(KEYS.runtime_entries, "old", json.dumps({"schema": 99}))
    report = check()
    assert {(p.entry, p.source, p.severity) for p in report.problems} == {
        ("corrupt", "runtime", "error"),
        ("old", "runtime", "error"),
    }


def test_a_good_runtime_entry_is_valid_and_its_task_checked(check: Check, redis_url: str) -> None:
    app = make_app(redis_url)
    Manager(app).add("rt", "checked.cleanup", "@daily")
    Manager(app).add("rt-ghost", "tasks.ghost", "@daily")
    app.close()
    report = check()
    assert report.valid == ("cleanup", "nightly", "rt")
    problem = only(report.problems)
    assert (problem.entry, problem.field, problem.source) == ("rt-ghost", "task", "runtime")


def test_a_runtime_entry_shadowed_by_a_static_one_is_a_warning(
    check: Check, redis_client: redis.Redis
) -> None:
    definition = {"schema": 1, "task": "checked.cleanup", "schedule": "@daily"}
    redis_client.hset(KEYS.runtime_entries, "cleanup", json.dumps(definition))
    problem = only(check().problems)
    assert (problem.severity, problem.entry, problem.source) == ("warning", "cleanup", "runtime")
    assert "shadowed by a static entry" in problem.message


def test_singletons_without_a_worker_that_frees_them_are_a_warning(
    check: Check, redis_client: redis.Redis
) -> None:
    redis_client.delete(KEYS.workers_seen)
    problem = only(check().problems)
    assert problem.severity == "warning"
    assert "no worker announced that it frees singleton markers" in problem.message
    assert problem.message.endswith("(nightly)")


def test_without_redis_there_is_one_warning_and_static_entries_are_checked(check: Check) -> None:
    report = check(broker="memory://")
    problem = only(report.problems)
    assert (problem.severity, problem.message.startswith("no Redis configured")) == (
        "warning",
        True,
    )
    assert report.valid == ("cleanup", "nightly")


def test_unreachable_redis_is_an_error_with_the_password_masked(check: Check) -> None:
    report = check(broker="redis://:hunter2@127.0.0.1:1/0")
    problem = only(report.problems)
    assert problem.severity == "error"
    assert problem.message.startswith("cannot reach Redis at redis://:**@127.0.0.1:1/0")
    assert "hunter2" not in problem.message
    assert report.valid == ("cleanup", "nightly")


def test_the_manager_checks_with_its_own_redis_client(redis_url: str) -> None:
    app = make_app(redis_url, {"ghost": {"task": "tasks.ghost", "schedule": "@daily"}})
    manager = Manager(app)
    problems = manager.check()
    assert [(p.entry, p.severity) for p in problems] == [
        (None, "warning"),  # no worker announced itself on this Redis (the app has a singleton)
        ("ghost", "error"),
    ]
    assert manager.check_report().valid == ("cleanup", "nightly")
    app.close()
