"""Checking a whole schedule entry by entry: every problem found, not only the first.

:func:`check_app` loads the settings, the ``beat_schedule`` and ``@periodic`` entries and the
runtime entries in Redis one by one, then checks each valid entry's task against the app. A bad
entry is a :class:`Problem` and the check goes on; nothing here raises for a bad definition.
Used by :meth:`Manager.check <celery_fork_scheduler.Manager.check>` and
``celery schedule validate``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timezone, tzinfo
from typing import Any, Literal

import redis

from .backends.factory import redis_client_for, redis_url_for
from .backends.redis_connection import mask_url
from .config import Settings, app_timezone, read_settings
from .decorators import REGISTRY_ATTRIBUTE
from .entry import Entry, EntrySource, entry_from_config, entry_from_dict
from .errors import ConfigError
from .keys import Keys
from .store import RuntimeStore, StoredEntry
from .store_shards import ShardedStore, runtime_store

__all__ = ["CheckReport", "Problem", "check_app", "check_app_report"]

Severity = Literal["error", "warning"]


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One finding: what is wrong, where (entry, field, source) and how bad."""

    message: str
    severity: Severity = "error"
    entry: str | None = None
    field: str | None = None
    source: str | None = None


@dataclass(frozen=True, kw_only=True)
class CheckReport:
    """The outcome of a check: the names of the valid entries and every problem found."""

    valid: tuple[str, ...]
    problems: tuple[Problem, ...]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


def check_app(app: Any, *, client: Any = None) -> list[Problem]:
    """Every problem of the app's schedule (see :func:`check_app_report`)."""
    return list(check_app_report(app, client=client).problems)


def check_app_report(app: Any, *, client: Any = None) -> CheckReport:
    """Check settings, static entries, runtime entries and tasks; ``client`` is the Redis
    client to read runtime entries with (default: one built from the settings, then closed)."""
    problems: list[Problem] = []
    settings = _settings(app, problems)
    zone = _timezone(app, problems)
    _import_tasks(app, problems)
    static, found = _static_entries(app, settings, zone)
    problems += found
    entries = dict(static)
    entries.update(_runtime_entries(app, settings, zone, static, client, problems))
    valid = []
    for entry in sorted(entries.values(), key=lambda e: e.name):
        problem = _task_problem(app, entry)
        if problem is None:
            valid.append(entry.name)
        else:
            problems.append(problem)
    return CheckReport(valid=tuple(valid), problems=tuple(problems))


# -- settings and task modules ------------------------------------------------------------------


def _config_problem(exc: ConfigError, source: str | None = None) -> Problem:
    return Problem(message=str(exc), entry=exc.entry, field=exc.field, source=source)


def _settings(app: Any, problems: list[Problem]) -> Settings:
    try:
        settings = read_settings(app.conf, strict=True)
    except ConfigError as exc:
        problems.append(_config_problem(exc))
        return _fallback_settings(app.conf)
    _check_listeners(settings.event_listeners, problems)
    return settings


def _check_listeners(paths: tuple[str, ...], problems: list[Problem]) -> None:
    """Each ``fork_scheduler_event_listeners`` path imports (nothing is registered)."""
    from celery.utils.imports import symbol_by_name

    for path in paths:
        try:
            symbol_by_name(path)
        except (ImportError, AttributeError, ValueError) as exc:
            problems.append(
                Problem(
                    message=f"cannot import {path!r}: {exc}",
                    field="fork_scheduler_event_listeners",
                )
            )


def _fallback_settings(conf: Mapping[str, Any]) -> Settings:
    """Defaults plus the Redis URL and key prefix, to go on checking despite a bad setting."""
    url = conf.get("fork_scheduler_redis_url")
    prefix = conf.get("fork_scheduler_key_prefix")
    return Settings(
        redis_url=url if isinstance(url, str) and url else None,
        key_prefix=prefix if isinstance(prefix, str) and prefix else Settings().key_prefix,
    )


def _timezone(app: Any, problems: list[Problem]) -> tzinfo:
    """The app's ``timezone``; UTC, to go on checking the entries, when it is bad."""
    try:
        return app_timezone(app)
    except ConfigError as exc:
        problems.append(_config_problem(exc))
        return timezone.utc


def _import_tasks(app: Any, problems: list[Problem]) -> None:
    try:
        app.loader.import_default_modules()
    except Exception as exc:  # user code: any import error is a finding, not a crash
        problems.append(Problem(message=f"importing the app's task modules failed: {exc}"))


# -- entries --------------------------------------------------------------------------------------


def _static_entries(
    app: Any, settings: Settings, zone: tzinfo
) -> tuple[dict[str, Entry], list[Problem]]:
    """Every valid config and @periodic entry, and a problem for each bad one."""
    entries: dict[str, Entry] = {}
    problems: list[Problem] = []
    tables: tuple[tuple[EntrySource, Any], ...] = (
        ("config", app.conf.beat_schedule),
        ("decorator", app.__dict__.get(REGISTRY_ATTRIBUTE)),
    )
    for source, table in tables:
        if not table:
            continue
        if not isinstance(table, Mapping):
            message = f"beat_schedule must be a dict, not {type(table).__name__}"
            problems.append(Problem(message=message, source=source))
            continue
        for name, definition in table.items():
            if name in entries:
                message = f"entry {name!r} is in beat_schedule and @periodic; the decorator wins"
                problems.append(
                    Problem(severity="warning", message=message, entry=name, source=source)
                )
            try:
                entries[name] = entry_from_config(
                    name,
                    definition,
                    default_timezone=zone,
                    source=source,
                    min_interval=settings.min_interval,
                    calendars=settings.calendars,
                )
            except ConfigError as exc:
                problems.append(_config_problem(exc, source))
    return entries, problems


def _runtime_entries(
    app: Any,
    settings: Settings,
    zone: tzinfo,
    static: Mapping[str, Entry],
    client: Any,
    problems: list[Problem],
) -> dict[str, Entry]:
    """The valid runtime entries in Redis; problems for bad ones and for Redis itself."""
    url = redis_url_for(app, settings)
    if client is None and url is None:
        problems.append(
            Problem(
                severity="warning",
                message="no Redis configured (fork_scheduler_redis_url or a Redis broker): "
                "beat runs as a single replica; runtime entries and pause are unavailable",
            )
        )
        return {}
    owned = client is None
    try:
        if owned:
            client = redis_client_for(app, settings)
        client.ping()
        store = runtime_store(client, Keys(settings.key_prefix), settings.runtime_shards)
        store.check_layout(record=False)
        entries, found = _stored_entries(store, static, settings, zone)
        problems += found
        problems += _singleton_problems(store, {**static, **entries})
        return entries
    except ConfigError as exc:
        problems.append(_config_problem(exc))
    except (redis.RedisError, OSError) as exc:
        where = f"Redis at {mask_url(url)}" if url else "Redis"
        problems.append(Problem(message=f"cannot reach {where}: {exc}"))
    finally:
        if owned and client is not None:
            client.close()
    return {}


def _stored_entries(
    store: RuntimeStore | ShardedStore,
    static: Mapping[str, Entry],
    settings: Settings,
    zone: tzinfo,
) -> tuple[dict[str, Entry], list[Problem]]:
    entries: dict[str, Entry] = {}
    problems: list[Problem] = []
    _, stored = store.all()
    for name, item in sorted(stored.items()):
        if name in static:
            message = f"runtime entry {name!r} is shadowed by a static entry of that name"
            problems.append(
                Problem(severity="warning", message=message, entry=name, source="runtime")
            )
        elif not isinstance(item, StoredEntry):
            message = f"entry {name!r}: stored JSON cannot be decoded"
            problems.append(Problem(message=message, entry=name, source="runtime"))
        else:
            try:
                entries[name] = entry_from_dict(
                    name,
                    item.data,
                    default_timezone=zone,
                    min_interval=settings.min_interval,
                    calendars=settings.calendars,
                )
            except ConfigError as exc:
                problems.append(_config_problem(exc, "runtime"))
    return entries, problems


def _singleton_problems(
    store: RuntimeStore | ShardedStore, entries: Mapping[str, Entry]
) -> list[Problem]:
    """A warning when singleton entries exist but no worker frees their markers."""
    singletons = [e.name for e in entries.values() if e.singleton]
    if not singletons or store.client.exists(store.keys.workers_seen):
        return []
    return [
        Problem(
            severity="warning",
            message="singleton entries exist but no worker announced that it frees singleton "
            f"markers: call install(app) in the worker ({', '.join(singletons)})",
        )
    ]


# -- tasks ----------------------------------------------------------------------------------------


def _task_problem(app: Any, entry: Entry) -> Problem | None:
    """An unknown task, or args that do not fit the task's signature."""
    task = app.tasks.get(entry.task)
    if task is None:
        message = (
            f"entry {entry.name!r}: unknown task {entry.task!r} "
            "(not registered in the app after importing its modules)"
        )
        return Problem(message=message, entry=entry.name, field="task", source=entry.source)
    check = getattr(task, "__header__", None)
    if not task.typing or check is None or entry.lazy:
        return None
    try:
        check(*entry.args, **entry.kwargs)
    except TypeError as exc:
        message = f"entry {entry.name!r}: args/kwargs do not fit task {entry.task!r}: {exc}"
        return Problem(message=message, entry=entry.name, field="args", source=entry.source)
    return None
