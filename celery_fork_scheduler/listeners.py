"""Event listeners, as in the original design: plain objects with ``on_*`` methods.

A listener implements any of :class:`EventListener`'s methods; registered listeners are called
from the Celery signals of :mod:`.signals` (worker side: run / complete / error, and the
optional paused on failure; beat side: due / dispatched / skipped / failed / outage ended).
Register with :func:`register_event_listeners`, ``Manager.register_event_listeners``, or the
setting ``fork_scheduler_event_listeners``
(dotted paths, resolved by :func:`celery_fork_scheduler.install`). A listener that raises is
logged and changes nothing else.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from . import signals
from .outages import Outage

logger = logging.getLogger("celery_fork_scheduler.events")

__all__ = ["EventListener", "LoggingEventListener", "register_event_listeners"]


@runtime_checkable
class EventListener(Protocol):
    """The worker-side hooks every listener has (beat-side hooks are optional)."""

    def on_job_run(self, job_id: str, job_name: str) -> None:
        """A scheduled run started on a worker."""

    def on_job_complete(self, job_id: str, job_name: str, duration: float) -> None:
        """A scheduled run finished; ``duration`` in seconds."""

    def on_job_error(self, job_id: str, job_name: str, error: BaseException) -> None:
        """A scheduled run raised ``error``."""


class LoggingEventListener:
    """Logs every event at INFO (errors at ERROR) on ``celery_fork_scheduler.events``."""

    def on_job_run(self, job_id: str, job_name: str) -> None:
        """Log the start of a run."""
        logger.info("job %s started (id %s)", job_name, job_id)

    def on_job_complete(self, job_id: str, job_name: str, duration: float) -> None:
        """Log the end of a run."""
        logger.info("job %s completed in %.3f s (id %s)", job_name, duration, job_id)

    def on_job_error(self, job_id: str, job_name: str, error: BaseException) -> None:
        """Log a failed run."""
        logger.error("job %s failed (id %s): %r", job_name, job_id, error)

    def on_entry_dispatched(self, job_name: str, slot: datetime, job_id: str, replica: str) -> None:
        """Log a publish."""
        logger.info("job %s slot %s dispatched by %s (id %s)", job_name, slot, replica, job_id)

    def on_outage_ended(self, outage: Outage) -> None:
        """Log what an outage cost."""
        logger.warning("replica %s: %s", outage.replica, outage.summary())

    def on_entry_skipped(self, job_name: str, slot: datetime, reason: str) -> None:
        """Log a skipped slot."""
        logger.info("job %s slot %s skipped: %s", job_name, slot, reason)

    def on_entry_paused(self, job_id: str, job_name: str, note: str) -> None:
        """Log an entry paused because a run failed (``pause_on_failure``)."""
        logger.warning("job %s paused (id %s): %s", job_name, job_id, note)


_LISTENERS: list[Any] = []
#: Listeners made from ``fork_scheduler_event_listeners``, by dotted path: one per process.
_RESOLVED: dict[str, Any] = {}


def _call(method: str, *args: Any) -> None:
    for listener in list(_LISTENERS):
        hook = getattr(listener, method, None)
        if hook is None:
            continue
        try:
            hook(*args)
        except Exception:
            logger.exception("event listener %r raised in %s", listener, method)


def _on_started(sender: Any = None, entry: str = "", task_id: str = "", **_: Any) -> None:
    _call("on_job_run", task_id, entry)


def _on_completed(
    sender: Any = None, entry: str = "", task_id: str = "", duration: float = 0.0, **_: Any
) -> None:
    _call("on_job_complete", task_id, entry, duration)


def _on_failed(
    sender: Any = None,
    entry: str = "",
    task_id: str = "",
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    _call("on_job_error", task_id, entry, exception)


def _on_due(sender: Any = None, entry: str = "", slot: datetime | None = None, **_: Any) -> None:
    _call("on_entry_due", entry, slot)


def _on_dispatched(
    sender: Any = None,
    entry: str = "",
    slot: datetime | None = None,
    task_id: str = "",
    replica: str = "",
    **_: Any,
) -> None:
    _call("on_entry_dispatched", entry, slot, task_id, replica)


def _on_skipped(
    sender: Any = None, entry: str = "", slot: datetime | None = None, reason: str = "", **_: Any
) -> None:
    _call("on_entry_skipped", entry, slot, reason)


def _on_entry_failed(
    sender: Any = None,
    entry: str = "",
    slot: datetime | None = None,
    task_id: str = "",
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    _call("on_entry_failed", entry, slot, task_id, exception)


def _on_paused_on_failure(
    sender: Any = None, entry: str = "", task_id: str = "", note: str = "", **_: Any
) -> None:
    _call("on_entry_paused", task_id, entry, note)


def _on_outage_ended(sender: Any = None, outage: Outage | None = None, **_: Any) -> None:
    _call("on_outage_ended", outage)


_CONNECTIONS = (
    (signals.job_started, _on_started),
    (signals.job_completed, _on_completed),
    (signals.job_failed, _on_failed),
    (signals.entry_due, _on_due),
    (signals.entry_dispatched, _on_dispatched),
    (signals.entry_skipped, _on_skipped),
    (signals.entry_failed, _on_entry_failed),
    (signals.outage_ended, _on_outage_ended),
    (signals.entry_paused_on_failure, _on_paused_on_failure),
)


#: Every hook a listener may implement.
HOOKS = (
    "on_job_run",
    "on_job_complete",
    "on_job_error",
    "on_entry_due",
    "on_entry_dispatched",
    "on_entry_skipped",
    "on_entry_failed",
    "on_outage_ended",
    "on_entry_paused",
)


def register_event_listeners(*listeners: Any) -> None:
    """Call these listeners on every event of this process (idempotent per listener)."""
    for listener in listeners:
        if not any(callable(getattr(listener, hook, None)) for hook in HOOKS):
            raise TypeError(f"{listener!r} has none of the hooks {', '.join(HOOKS)}")
        if listener not in _LISTENERS:
            _LISTENERS.append(listener)
    for signal, receiver in _CONNECTIONS:
        signal.connect(receiver, weak=False, dispatch_uid=f"fork-scheduler-{receiver.__name__}")


def unregister_event_listeners(*listeners: Any) -> None:
    """Stop calling these listeners."""
    for listener in listeners:
        if listener in _LISTENERS:
            _LISTENERS.remove(listener)


def resolve_listeners(paths: tuple[str, ...]) -> list[Any]:
    """Import and register the listeners named by ``fork_scheduler_event_listeners``.

    A path names a listener object, or a class (instantiated without arguments).
    """
    from celery.utils.imports import symbol_by_name

    from .errors import ConfigError

    listeners = []
    for path in paths:
        try:
            target = symbol_by_name(path)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError(
                f"cannot import {path!r}: {exc}", field="fork_scheduler_event_listeners"
            ) from None
        if path not in _RESOLVED:
            _RESOLVED[path] = target() if isinstance(target, type) else target
        listeners.append(_RESOLVED[path])
    if listeners:
        register_event_listeners(*listeners)
    return listeners
