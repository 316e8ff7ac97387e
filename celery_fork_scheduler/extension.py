"""``install(app)``: the app extension (the original design's ServiceProvider Register/Boot)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import DEFAULTS, SETTING_PREFIX, read_settings
from .listeners import resolve_listeners

if TYPE_CHECKING:
    from .manager import Manager

SCHEDULER_PATH = "celery_fork_scheduler.scheduler:Scheduler"


def install(app: Any) -> Manager:
    """Make ``app`` use celery-fork-scheduler everywhere; idempotent.

    - registers the default of every ``fork_scheduler_*`` setting (shown by ``celery inspect
      conf`` and readable as ``app.conf.fork_scheduler_...``);
    - sets ``beat_scheduler``, so a plain ``celery beat`` uses this scheduler;
    - connects the worker-side handlers: job events, singleton and cap release, ``buffer_one``;
    - exposes the :class:`~celery_fork_scheduler.Manager` as ``app.fork_scheduler``.
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
    resolve_listeners(read_settings(app.conf).event_listeners)
    manager = Manager(app)
    app.fork_scheduler = manager
    return manager
