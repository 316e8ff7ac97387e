"""Small apps the tests drive: the CLI and dashboard app (two tasks and their static entries),
and an in-memory app for the fake-clock harness."""

from __future__ import annotations

from typing import Any

from celery import Celery


def two_task_app(
    main: str, broker: str, nightly: dict[str, Any] | None = None, **conf: Any
) -> Celery:
    """Tasks ``tasks.cleanup`` and ``tasks.report``; entries ``cleanup`` and ``nightly`` (with
    ``nightly``'s extra fields) and any ``extra_entries``; ``conf`` is the app's configuration."""
    app = Celery(main, broker=broker, set_as_current=False)
    app.conf.update(timezone="UTC", **conf)

    @app.task(name="tasks.cleanup", shared=False)  # type: ignore[untyped-decorator]
    def cleanup() -> None: ...

    @app.task(name="tasks.report", shared=False)  # type: ignore[untyped-decorator]
    def report(day: str = "today") -> None: ...

    app.conf.beat_schedule = {
        "cleanup": {"task": "tasks.cleanup", "schedule": "every 5 minutes", "tags": ["ops"]},
        "nightly": {
            "task": "tasks.report",
            "schedule": "daily at 02:00",
            "timezone": "Europe/Berlin",
            "tags": ["reports"],
            "description": "the nightly PDF",
            **(nightly or {}),
        },
        **conf.pop("extra_entries", {}),
    }
    return app


def berlin_app(main: str, beat_schedule: dict[str, Any]) -> Celery:
    """An app on the in-memory broker, in Europe/Berlin, with ``beat_schedule``."""
    app = Celery(main, set_as_current=False, broker="memory://")
    app.conf.update(timezone="Europe/Berlin", result_expires=None, beat_schedule=beat_schedule)
    return app


def memory_app(beat_schedule: dict[str, Any], main: str = "tests", **conf: Any) -> Celery:
    """An app on the ``memory://`` broker, in UTC, with ``beat_schedule`` and ``conf``."""
    app = Celery(main, set_as_current=False, broker="memory://")
    app.conf.update(timezone="UTC", beat_schedule=beat_schedule, result_expires=None, **conf)
    return app
