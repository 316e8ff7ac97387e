"""An entry's ``options``, Celery's ``beat_cron_starting_deadline`` and the app's ``timezone``
are checked when they are read: a mistake is one ``ConfigError`` naming the entry and field (or
the setting), never a failure at every publish, a traceback, or a blamed entry."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Exchange, Queue

from celery_fork_scheduler import ConfigError, Manager, Scheduler, periodic
from celery_fork_scheduler.backends import LocalBackend
from celery_fork_scheduler.config import app_timezone, read_settings
from celery_fork_scheduler.entry import entry_from_config
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher
from celery_fork_scheduler.validation import check_app_report

START = "2026-03-02T10:00:00+00:00"


def entry_with(options: object) -> Any:
    return entry_from_config(
        "bad",
        {"task": "t", "schedule": "every 5 seconds", "options": options},
        default_timezone=timezone.utc,
    )


def make_app(**conf: Any) -> Celery:
    app = Celery("options_test", broker="memory://", set_as_current=False)
    app.conf.update(result_expires=None, **conf)

    @app.task(name="t", shared=False)  # type: ignore[untyped-decorator]
    def t() -> None: ...

    return app


def start_beat(app: Celery, tmp_path: Path) -> Scheduler:
    """Beat's scheduler on ``app`` with a fake clock, raising (not exiting) on a config error."""
    return Scheduler(
        app,
        clock=FakeClock(START),
        publisher=RecordingPublisher(),
        backend=LocalBackend(tmp_path / "state.json"),
        exit_on_config_error=False,
    )


# -- entry options ----------------------------------------------------------------------------


def test_options_may_be_left_out_but_are_a_dict_when_given() -> None:
    assert entry_with(None).options == {}
    with pytest.raises(ConfigError, match=r"^entry 'bad', field 'options': must be a dict of"):
        entry_with([])


def test_other_options_pass_through_unchecked_but_are_named_by_strings() -> None:
    link = object()
    assert entry_with({"link": link, "some_future_option": [1]}).options == {
        "link": link,
        "some_future_option": [1],
    }
    with pytest.raises(ConfigError, match=r"option names must be strings, not 5"):
        entry_with({5: "x"})


@pytest.mark.parametrize(
    ("option", "accepted", "refused", "message"),
    [
        ("queue", "reports", 5, "a queue name (a non-empty string) or a kombu Queue, not 5"),
        ("queue", Queue("reports"), "", "a queue name (a non-empty string) or a kombu Queue"),
        ("exchange", Exchange("jobs"), 1, "a string or a kombu Exchange, not 1"),
        ("exchange", "", 2.5, "a string or a kombu Exchange, not 2.5"),
        ("routing_key", "reports.daily", b"k", "a string, not b'k'"),
        ("priority", 0, -1, "a whole number from 0 to 255, not -1"),
        ("priority", 255, 256, "a whole number from 0 to 255, not 256"),
        ("priority", 9, "9", "a whole number from 0 to 255, not '9'"),
        ("priority", 1, True, "a whole number from 0 to 255, not True"),
        ("countdown", 0, -1, "a number of seconds from 0 to 315360000, not -1"),
        ("countdown", 2.5, "abc", "a number of seconds from 0 to 315360000, not 'abc'"),
        ("countdown", 10, float("nan"), "a number of seconds from 0 to 315360000, not nan"),
        ("expires", 12 * 3600, -5, "a number of seconds > 0 and <= 315360000, a datetime"),
        ("expires", 60, 1e308, "a number of seconds > 0 and <= 315360000, a datetime"),
        ("countdown", 60, 1e308, "a number of seconds from 0 to 315360000, not 1e+308"),
        ("expires", 0.5, 0, "a number of seconds > 0"),
        ("expires", datetime(2030, 1, 1), "tomorrow", "not 'tomorrow'"),
        ("expires", datetime(2030, 1, 1, tzinfo=timezone.utc), [], "not []"),
        ("expires", "2030-01-01T00:00:00+00:00", "2030-13-01", "not '2030-13-01'"),
        ("eta", datetime(2030, 1, 1), 5, "a datetime or an ISO-8601 string, not 5"),
        ("serializer", "json", 1, "a string, not 1"),
        ("compression", "gzip", ["gzip"], "a string, not ['gzip']"),
        ("shadow", "report for today", 1, "a string, not 1"),
        ("ignore_result", True, 1, "True or False, not 1"),
        ("retry", False, "no", "True or False, not 'no'"),
        ("retry_policy", {"max_retries": 3}, 3, "a dict, not 3"),
        ("time_limit", 60, "60", "a number of seconds > 0 and <= 315360000, not '60'"),
        ("soft_time_limit", 30.5, 0, "a number of seconds > 0 and <= 315360000, not 0"),
    ],
    ids=lambda value: repr(value)[:30],
)
def test_a_checked_option_takes_celery_s_kinds_and_refuses_others(
    option: str, accepted: object, refused: object, message: str
) -> None:
    assert entry_with({option: accepted}).options == {option: accepted}
    with pytest.raises(ConfigError) as caught:
        entry_with({option: refused})
    assert (caught.value.entry, caught.value.field) == ("bad", "options")
    assert caught.value.reason.startswith(f"{option!r} must be ")
    assert message in caught.value.reason


def test_periodic_refuses_options_that_are_not_a_dict() -> None:
    app = make_app()

    @app.task(name="tasks.cleanup", shared=False)  # type: ignore[untyped-decorator]
    def cleanup() -> None: ...

    with pytest.raises(
        ConfigError, match=r"entry 'tasks.cleanup', field 'options': must be a dict"
    ):
        periodic("every 5 minutes", options=[("queue", "q")])(cleanup)
    with pytest.raises(ConfigError, match=r"field 'options': 'queue' must be a queue name"):
        periodic("every 5 minutes", options={"queue": 5})(cleanup)
    app.close()


@pytest.fixture
def redis_app(redis_url: str) -> Iterator[Celery]:
    app = make_app(timezone="UTC", fork_scheduler_redis_url=redis_url)
    yield app
    app.close()


def test_manager_add_refuses_a_bad_option_and_stores_nothing(
    redis_app: Celery, redis_client: redis.Redis
) -> None:
    manager = Manager(redis_app, clock=FakeClock(START))
    with pytest.raises(ConfigError, match=r"entry 'bad', field 'options': 'queue' must be"):
        manager.add("bad", "tasks.report", "every 5 minutes", options={"queue": 5})
    assert redis_client.hgetall(Keys("scheduler:").runtime_entries) == {}


def test_check_reports_a_bad_option_as_one_problem_of_that_entry() -> None:
    app = make_app(
        timezone="UTC",
        beat_schedule={
            "good": {"task": "t", "schedule": "every 5 minutes"},
            "bad": {"task": "t", "schedule": "every 5 minutes", "options": {"expires": -5}},
        },
    )
    problems = [p for p in check_app_report(app).errors if p.entry is not None]
    assert [(p.entry, p.field) for p in problems] == [("bad", "options")]
    app.close()


# -- beat_cron_starting_deadline --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (0, timedelta(0)), (60, timedelta(seconds=60)), (2.5, timedelta(seconds=2.5))],
)
def test_the_starting_deadline_is_read_as_a_duration(
    value: object, expected: timedelta | None
) -> None:
    conf = {"beat_cron_starting_deadline": value}
    assert read_settings(conf, strict=True).starting_deadline == expected


def test_an_unset_starting_deadline_is_none() -> None:
    assert read_settings({}, strict=True).starting_deadline is None


@pytest.mark.parametrize("value", ["60", -1, float("inf"), True, [60]], ids=repr)
def test_a_bad_starting_deadline_is_refused_naming_it(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^field 'beat_cron_starting_deadline': ") as caught:
        read_settings({"beat_cron_starting_deadline": value}, strict=True)
    assert caught.value.field == "beat_cron_starting_deadline"


def test_a_worker_logs_a_bad_starting_deadline_and_uses_none() -> None:
    settings = read_settings({"beat_cron_starting_deadline": "60"}, strict=False)
    assert settings.starting_deadline is None


def test_check_reports_a_bad_starting_deadline() -> None:
    app = make_app(timezone="UTC", beat_cron_starting_deadline="60")
    fields = [p.field for p in check_app_report(app).errors]
    assert "beat_cron_starting_deadline" in fields
    app.close()


def test_beat_refuses_a_string_starting_deadline_before_it_starts(tmp_path: Path) -> None:
    app = make_app(timezone="UTC", beat_cron_starting_deadline="60")
    with pytest.raises(ConfigError, match=r"field 'beat_cron_starting_deadline'"):
        start_beat(app, tmp_path)
    app.close()


# -- the app's timezone -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("Europe/Berln", "field 'timezone': unknown time zone 'Europe/Berln'"),
        ("../etc/passwd", "field 'timezone': unknown time zone '../etc/passwd'"),
        (5, "field 'timezone': must be an IANA zone name such as 'Europe/Berlin' or a tzinfo"),
    ],
    ids=repr,
)
def test_a_bad_app_timezone_is_one_error_naming_the_setting(value: object, message: str) -> None:
    app = make_app(timezone=value)
    with pytest.raises(ConfigError) as caught:
        app_timezone(app)
    assert caught.value.field == "timezone"
    assert str(caught.value).startswith(message)
    app.close()


def test_the_app_timezone_is_the_zone_set_utc_when_unset_and_never_a_typo() -> None:
    unset, berlin, typo = make_app(), make_app(timezone="Europe/Berlin"), make_app(timezone="UTX")
    assert app_timezone(unset).utcoffset(None) == timedelta(0)
    assert str(app_timezone(berlin)) == "Europe/Berlin"
    with pytest.raises(ConfigError, match=r"^field 'timezone': unknown time zone 'UTX'"):
        app_timezone(typo)
    for app in (unset, berlin, typo):
        app.close()


NIGHTLY = {"nightly": {"task": "t", "schedule": "daily at 02:00"}}


@pytest.mark.parametrize("value", ["Europe/Berln", 5], ids=repr)
def test_check_blames_the_timezone_setting_not_the_entries(value: object) -> None:
    app = make_app(timezone=value, beat_schedule=NIGHTLY)
    report = check_app_report(app)
    assert [(p.entry, p.field) for p in report.errors] == [(None, "timezone")]
    app.close()


@pytest.mark.parametrize("value", ["Europe/Berln", 5], ids=repr)
def test_beat_refuses_a_bad_app_timezone_naming_it(value: object, tmp_path: Path) -> None:
    app = make_app(timezone=value, beat_schedule=NIGHTLY)
    with pytest.raises(ConfigError, match=r"^field 'timezone': "):
        start_beat(app, tmp_path)
    app.close()


def test_the_manager_blames_a_bad_app_timezone(redis_url: str) -> None:
    app = make_app(
        timezone="Europe/Berln", fork_scheduler_redis_url=redis_url, beat_schedule=NIGHTLY
    )
    with pytest.raises(ConfigError, match=r"^field 'timezone': unknown time zone 'Europe/Berln'"):
        Manager(app, clock=FakeClock(START)).jobs()
    app.close()
