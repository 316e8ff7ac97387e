"""The Django settings snippet (examples/django_settings) reaches the scheduler.

Django is not needed: the snippet is loaded as a plain module and given to Celery the way a
Django project gives it ``django.conf:settings``, with ``namespace="CELERY"``.
"""

from __future__ import annotations

import importlib.util
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery

from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.entry import entries_from_config
from celery_fork_scheduler.errors import ConfigError
from celery_fork_scheduler.testing import ScheduleHarness, assert_fires, assert_never_fires

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "django_settings"

#: Monday 2026-01-05, 00:00 in Berlin (the snippet's CELERY_TIMEZONE)
MONDAY = "2026-01-05T00:00:00+01:00"


def load_snippet() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "settings_snippet", EXAMPLE / "settings_snippet.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def django_like_app(settings: Any) -> Celery:
    app = Celery("shop", set_as_current=False)
    app.config_from_object(settings, namespace="CELERY")
    return app


@pytest.fixture
def snippet() -> ModuleType:
    return load_snippet()


def test_readme_shows_the_celery_py_lines() -> None:
    readme = (EXAMPLE / "README.md").read_text()
    assert 'app.config_from_object("django.conf:settings", namespace="CELERY")' in readme
    assert "install(app)" in readme


def test_celery_settings_reach_celery(snippet: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # Celery would prefer it
    app = django_like_app(snippet)
    assert app.conf.beat_scheduler == "fork"
    assert app.conf.timezone == "Europe/Berlin"
    assert app.conf.broker_url == snippet.CELERY_BROKER_URL
    assert set(app.conf.beat_schedule) == set(snippet.CELERY_BEAT_SCHEDULE)


def test_install_keeps_the_namespaced_values(snippet: ModuleType) -> None:
    from celery_fork_scheduler import install

    app = django_like_app(snippet)
    install(app)
    assert read_settings(app.conf).key_prefix == "shop-scheduler:"


def test_fork_scheduler_settings_reach_read_settings(snippet: ModuleType) -> None:
    settings = read_settings(django_like_app(snippet).conf)
    assert settings.key_prefix == "shop-scheduler:"
    assert settings.claim_lease == timedelta(seconds=15)
    assert settings.history_size == 50


def test_a_typo_in_a_namespaced_setting_is_an_error(snippet: ModuleType) -> None:
    snippet.CELERY_FORK_SCHEDULER_KEY_PREFIXX = "typo:"
    with pytest.raises(ConfigError) as raised:
        read_settings(django_like_app(snippet).conf)
    assert raised.value.field == "CELERY_FORK_SCHEDULER_KEY_PREFIXX"


def test_entries_are_valid(snippet: ModuleType) -> None:
    app = django_like_app(snippet)
    entries = entries_from_config(
        app.conf.beat_schedule, default_timezone=ZoneInfo("Europe/Berlin")
    )
    assert set(entries) == set(snippet.CELERY_BEAT_SCHEDULE)
    assert entries["poll-payments"].singleton
    assert entries["weekly-sales-report"].tags == frozenset({"reports"})
    assert entries["close-month"].catchup == "all"


def test_entries_fire_at_the_expected_instants_over_a_day(snippet: ModuleType) -> None:
    harness = ScheduleHarness(django_like_app(snippet), start=MONDAY)
    try:
        harness.advance(days=1)
        # crontab(minute=0, hour=3) in Berlin (CET, UTC+1)
        assert harness.fired("purge-sessions") == ["2026-01-05T02:00:00+00:00"]
        # "monday at 09:00" in Berlin
        assert harness.fired("weekly-sales-report") == ["2026-01-05T08:00:00+00:00"]
        # 09:30 in New York (EST, UTC-5), whatever the app's zone
        assert harness.fired("us-market-open") == ["2026-01-05T14:30:00+00:00"]
        # timedelta(minutes=15): on the quarter hours, 96 in a day
        rates = harness.fired("sync-exchange-rates")
        assert len(rates) == 96
        assert rates[:2] == ["2026-01-04T23:15:00+00:00", "2026-01-04T23:30:00+00:00"]
        assert rates[-1] == "2026-01-05T23:00:00+00:00"
        # every(30).seconds: 2880 in a day
        assert len(harness.fired("poll-payments")) == 2 * 60 * 24
        assert harness.fired("close-month") == []
        # options and kwargs travel with the occurrence
        rate = next(o for o in harness.occurrences if o.entry == "sync-exchange-rates")
        assert rate.options == {"queue": "io"}
        report = next(o for o in harness.occurrences if o.entry == "weekly-sales-report")
        assert report.kwargs == {"period": "week"}
        assert report.headers["fork_scheduler_slot"] == "2026-01-05T08:00:00+00:00"

        # the rest of the week: no other Monday, so no second report
        assert_never_fires(harness, "weekly-sales-report", during=timedelta(days=5))
        # the last day of January at 23:00 in Berlin
        assert_fires(
            harness,
            "close-month",
            ["2026-01-31T22:00:00+00:00"],
            between=(harness.now, "2026-02-01T00:00:00+00:00"),
        )
    finally:
        harness.close()
