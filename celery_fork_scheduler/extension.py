"""``install(app)``: the app extension (the original design's ServiceProvider Register/Boot)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .config import DEFAULTS, SETTING_PREFIX, read_settings, tolerate_bad_settings
from .errors import ConfigError
from .listeners import resolve_listeners

if TYPE_CHECKING:
    from .manager import Manager

SCHEDULER_PATH = "celery_fork_scheduler.scheduler:Scheduler"

logger = logging.getLogger("celery_fork_scheduler")


def install(app: Any) -> Manager:
    """Make ``app`` use celery-fork-scheduler everywhere; idempotent.

    - registers the default of every ``fork_scheduler_*`` setting (shown by ``celery inspect
      conf`` and readable as ``app.conf.fork_scheduler_...``);
    - sets ``beat_scheduler``, so a plain ``celery beat`` uses this scheduler;
    - connects the worker-side handlers: job events, singleton and cap release, ``buffer_one``;
    - exposes the :class:`~celery_fork_scheduler.Manager` as ``app.fork_scheduler``.

    It never raises for a bad ``fork_scheduler_*`` setting (it runs while the app module is
    imported, by workers too): ``celery beat`` stops with one line naming the setting,
    ``celery schedule validate`` reports it, and a worker logs it once and runs.
    """
    existing: Manager | None = getattr(app, "fork_scheduler", None)
    if existing is not None:
        return existing
    from .manager import Manager
    from .worker import WorkerHooks

    missing = object()
    for name, default in DEFAULTS.items():
        # ``get`` also finds a Django-style CELERY_FORK_SCHEDULER_* value: keep it.
        if app.conf.get(SETTING_PREFIX + name, missing) is missing:
            app.conf[SETTING_PREFIX + name] = default
    app.conf.beat_scheduler = SCHEDULER_PATH
    WorkerHooks(app).connect()
    # A bad setting is reported by what reads the settings next (beat, validate, the worker).
    listener_error: ConfigError | None = None
    try:
        paths = read_settings(app.conf).event_listeners
    except ConfigError:
        resolved = False  # a worker resolves them from the settings it tolerates
    else:
        resolved = True
        try:
            resolve_listeners(paths)
        except ConfigError as exc:
            listener_error = exc
    _connect_worker_init(app, resolve=not resolved, error=listener_error)
    manager = Manager(app)
    app.fork_scheduler = manager
    return manager


def _connect_worker_init(app: Any, *, resolve: bool, error: ConfigError | None) -> None:
    """In a worker, bad settings are logged once (at start) and never raised."""
    from celery.signals import worker_init

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", app) is not app:
            return
        tolerate_bad_settings(app.conf)
        settings = read_settings(app.conf)  # logs each problem now, once
        problem = error
        if resolve:
            try:
                resolve_listeners(settings.event_listeners)
            except ConfigError as exc:
                problem = exc
        if problem is not None:
            logger.error("fork scheduler: %s (the worker runs without these listeners)", problem)

    worker_init.connect(on_worker_init, weak=False)
