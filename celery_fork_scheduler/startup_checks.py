"""What beat says once at start-up about entries it will run anyway: unknown tasks, arguments
that do not fit, singleton and cap policies that cannot be enforced."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from .backends import ClaimBackend
from .config import Settings
from .entry import Entry
from .runtime import RuntimeEntries

logger = logging.getLogger("celery_fork_scheduler")

#: Entries named in the warning about a task the app does not know; the rest are counted.
UNKNOWN_TASK_NAMES_SHOWN = 5


def warn_about_tasks(app: Any, entries: Iterable[Entry]) -> None:
    """Once per task name this app does not know (it is sent by name and may be a typo),
    naming the entries that send it; once per entry whose arguments the task's signature
    refuses (they would fail at every slot; the publish is then recorded failed, not retried)."""
    tasks = app.tasks
    unknown: dict[str, list[str]] = {}
    for entry in entries:
        task = tasks.get(entry.task)
        if task is None:
            unknown.setdefault(entry.task, []).append(entry.name)
            continue
        header = getattr(task, "__header__", None)
        if header is None or entry.lazy:
            continue  # untyped task, or lazy arguments known only at publish time
        try:
            header(*entry.args, **entry.kwargs)
        except TypeError as exc:
            logger.warning(
                "fork scheduler: entry %s, field args/kwargs: they do not fit task %s: %s",
                entry.name,
                entry.task,
                exc,
            )
    for task_name, names in unknown.items():
        logger.warning(
            "fork scheduler: %s: task %r is not registered in this app; it is sent by name "
            "(check the name, and that the app imports the task's module)",
            _entries_named(names),
            task_name,
        )


def _entries_named(names: list[str]) -> str:
    """``entry a``, or ``entries a, b`` (the first few of a long list, and how many more):
    ten thousand entries of one unknown task make one line, not ten thousand."""
    if len(names) == 1:
        return f"entry {names[0]}"
    shown = ", ".join(names[:UNKNOWN_TASK_NAMES_SHOWN])
    more = len(names) - UNKNOWN_TASK_NAMES_SHOWN
    return f"entries {shown}" + (f" and {more} more" if more > 0 else "")


def warn_about_unsupported_policies(
    entries: Iterable[Entry],
    settings: Settings,
    backend: ClaimBackend,
    runtime: RuntimeEntries | None,
) -> None:
    """Say so when singleton or cap settings cannot be enforced."""
    singletons = sorted(e.name for e in entries if e.singleton)
    needs_workers = bool(singletons) or settings.max_concurrent > 0
    if not needs_workers:
        return
    if not backend.protects_replicas:
        logger.warning(
            "fork scheduler: singleton entries (%s) and fork_scheduler_max_concurrent need "
            "Redis; without it they are not enforced",
            ", ".join(singletons[:5]) or "-",
        )
    elif runtime is not None and not runtime.workers_seen():
        logger.warning(
            "fork scheduler: no worker has announced that it frees singleton markers; call "
            "celery_fork_scheduler.install(app) in the app the workers load, or singleton "
            "entries will wait for fork_scheduler_singleton_lease after every run"
        )
