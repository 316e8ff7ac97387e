"""``@periodic``: a task module declares its own schedule.

    @periodic("every 10 minutes", tags=["reports"], singleton=True)
    @app.task
    def refresh_reports(): ...

The entry is registered with the task's app and picked up by every beat replica, like an entry
of ``beat_schedule`` (a "decorator" entry: static, never removed at runtime).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta, timezone, tzinfo
from typing import Any, TypeVar

from .entry import DEFAULT_MIN_INTERVAL, Entry, entries_from_config, entry_from_config
from .errors import ConfigError

T = TypeVar("T")

#: Attribute of the Celery app holding the decorated entries (name -> definition).
REGISTRY_ATTRIBUTE = "fork_scheduler_periodic"


def periodic(
    schedule: object,
    *,
    name: str | None = None,
    tags: Sequence[str] = (),
    singleton: bool = False,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    **policies: Any,
) -> Callable[[T], T]:
    """Schedule the decorated Celery task; stack it on ``@app.task``.

    ``schedule`` is anything ``beat_schedule`` accepts (an ``every(...)`` schedule, a string
    such as ``"daily at 10:30"``, a cron expression, a Celery schedule); ``name`` defaults to
    the task name; ``policies`` are the other entry keys (``overlap``, ``timezone``,
    ``max_runs``, ``one_off``, ``start_at``, ``end_at``, ``catchup``, ``catchup_window``,
    ``jitter``, ``enabled``, ``description``). A bad value raises :class:`ConfigError` at
    import.
    """

    def decorate(task: T) -> T:
        app = getattr(task, "app", None)
        task_name = getattr(task, "name", None)
        if app is None or not isinstance(task_name, str):
            raise TypeError("@periodic decorates a Celery task: put it above @app.task")
        entry_name = name or task_name
        definition = {
            "task": task_name,
            "schedule": schedule,
            # As given, for the entry check to take or name them as in beat_schedule (a string
            # of tags is one tag; a string of args is refused).
            "args": args,
            "kwargs": {} if kwargs is None else kwargs,
            "options": options,
            "tags": tags,
            "singleton": singleton,
            **policies,
        }
        # The interval floor and the calendars are settings, checked when the entries are loaded.
        entry_from_config(
            entry_name,
            {key: value for key, value in definition.items() if key != "calendar"},
            default_timezone=timezone.utc,
            source="decorator",
            min_interval=timedelta(0),
        )
        registry = app.__dict__.setdefault(REGISTRY_ATTRIBUTE, {})
        earlier = registry.get(entry_name)
        if earlier is not None and _comparable(earlier) != _comparable(definition):
            raise ConfigError(
                "another @periodic already declares an entry of this name (the task name, "
                "unless name= is given): give each entry its own name",
                entry=entry_name,
                field="name",
            )
        registry[entry_name] = definition
        return task

    return decorate


def _comparable(definition: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A definition in a form that is the same when its module runs again (imported under a
    second name, say): a function stands for where its code is (file, line, and the code
    itself: two lambdas are told apart)."""

    def form(value: Any) -> str:
        code = getattr(value, "__code__", None)
        if code is not None:
            where = f"{code.co_filename}:{code.co_firstlineno}"
            return f"{where}:{code.co_code.hex()}:{code.co_consts!r}"
        return repr(value)

    return sorted((key, form(value)) for key, value in definition.items())


def periodic_entries(
    app: Any,
    *,
    default_timezone: tzinfo,
    min_interval: timedelta = DEFAULT_MIN_INTERVAL,
    calendars: Mapping[str, tuple[str, ...]] | None = None,
) -> dict[str, Entry]:
    """The entries declared with :func:`periodic` on tasks of ``app``."""
    registry = app.__dict__.get(REGISTRY_ATTRIBUTE) or {}
    return entries_from_config(
        registry,
        default_timezone=default_timezone,
        source="decorator",
        min_interval=min_interval,
        calendars=calendars,
    )
