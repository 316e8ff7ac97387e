"""What Celery itself would send: the reference the message templates are compared with."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any

import redis
from celery import Celery
from kombu.utils import json as kombu_json

from celery_fork_scheduler.entry import Entry, entry_from_config
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.message_template import capture
from celery_fork_scheduler.publishing import CeleryPublisher, build_occurrence


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


#: The slot the "sent once" helpers publish.
ONE_SLOT = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)


def one_entry(task: str, name: str = "own", **options: Any) -> Entry:
    """An entry ``name`` of ``task`` (one argument) with these message ``options``."""
    definition = {"task": task, "schedule": 60, "args": [1], "options": options}
    return entry_from_config(name, definition, default_timezone=timezone.utc)


def queued_after(app: Celery, redis_url: str, entry: Entry, *, warm: bool = False) -> list[str]:
    """The task ids in the default queue after a ``CeleryPublisher`` on the app's broker
    published :data:`ONE_SLOT` of ``entry`` (with ``warm``: only made its template ahead,
    which sends nothing). Closes ``app``."""
    client = redis.Redis.from_url(redis_url)
    try:
        with app.producer_or_acquire() as producer:
            publisher = CeleryPublisher(app, lambda: producer)
            occurrence = build_occurrence(entry, ONE_SLOT, task_id_for(entry.name, ONE_SLOT))
            if warm:
                publisher.warm(occurrence)
            else:
                assert publisher.publish_many([occurrence]) == [None]
        return [kombu_json.loads(raw)["headers"]["id"] for raw in client.lrange("celery", 0, -1)]
    finally:
        client.close()
        app.close()


def register_task_publishing_past_kombu(app: Celery, name: str = "t.own") -> None:
    """Register ``name``: a task whose ``apply_async`` pushes a message (with the task id it is
    given) to the broker's ``celery`` list itself, with redis-py, past Kombu. It stands for a
    publish path nobody knows yet (tests switch ``capture_safe`` off for it): a capture sees
    nothing of it, and the message leaves anyway."""

    class PastKombu(app.Task):  # type: ignore[name-defined,misc]
        def apply_async(
            self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **_: Any
        ) -> Any:
            task_id = task_id or str(uuid.uuid4())
            client = redis.Redis.from_url(app.conf.broker_url)
            try:
                message = {
                    "headers": {"id": task_id, "task": self.name},
                    "body": "",
                    "properties": {},
                }
                client.lpush("celery", json.dumps(message))
            finally:
                client.close()
            return self.AsyncResult(task_id)

    @app.task(name=name, base=PastKombu, shared=False)  # type: ignore[untyped-decorator]
    def own(number: int) -> None: ...
