"""What Celery itself would send: the reference the message templates are compared with."""

from __future__ import annotations

from typing import Any

from celery import Celery

from celery_fork_scheduler.message_template import capture
from celery_fork_scheduler.publishing import CeleryPublisher


def sent_by_celery(app: Celery, producer: Any, occurrence: Any) -> list[tuple[str, dict[str, Any]]]:
    """What Celery and Kombu hand the transport for this occurrence (captured, not sent)."""
    celery_path = CeleryPublisher(app, lambda: producer, templates=False)
    captured = capture(producer.channel, lambda: celery_path._send(occurrence, producer))
    assert captured is not None
    return captured


def declare_queues(app: Celery, producer: Any) -> None:
    """Bind the app's queues on the producer's channel, as a worker declares them (Kombu
    remembers bindings per process: the test's Redis may have been emptied since)."""
    producer.channel.connection.state.clear()
    for queue in app.amqp.queues.values():
        queue(producer.channel).declare()
