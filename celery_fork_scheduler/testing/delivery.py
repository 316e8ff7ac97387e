"""Hand what the fake-clock harness fired to a real Celery worker (issue 17).

The harness records occurrences instead of sending them. :func:`send_occurrences` sends them
through the app exactly as beat would (task id, ``fork_scheduler_*`` headers, options), so that
an in-process worker (``celery.contrib.pytest``'s ``celery_app`` with
``celery.contrib.testing.worker.start_worker``, or pytest-celery's) runs them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..publishing import CeleryPublisher, Occurrence

__all__ = ["send_occurrences"]


def send_occurrences(app: Any, occurrences: Iterable[Occurrence]) -> list[Any]:
    """Send each occurrence through ``app`` as beat does; return their ``AsyncResult``s."""
    publisher = CeleryPublisher(app, lambda: None)
    results = []
    for occurrence in occurrences:
        publisher.publish(occurrence)
        results.append(app.AsyncResult(occurrence.task_id))
    return results
