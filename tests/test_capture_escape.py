"""A publish that leaves past the message capture is never sent twice (defence in depth).

Every publish path known to leave past the publisher's channel (an ``apply_async`` or
``send_task`` override, another producer or connection, eager mode) is refused before a
capture (``capture_safe``, rounds 27-29). These tests stand for a path nobody knows yet: they
switch that check off.

- A publish through Kombu on another channel (a producer of its own) is intercepted by the
  capture: nothing is sent then, and the slot goes through Celery once.
- A publish past Kombu altogether cannot be intercepted: the capture says so
  (``CaptureEscaped``); the slot is reported uncertain and never sent again by this replica,
  and the entry's later slots go through Celery (once each).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from kombu.utils import json as kombu_json
from publish_helpers import ONE_SLOT, one_entry, register_task_publishing_past_kombu

import celery_fork_scheduler.publishing as publishing
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.message_template import CaptureEscaped, capture
from celery_fork_scheduler.publishing import CeleryPublisher, DeliveryUncertain, build_occurrence

NEXT_SLOT = ONE_SLOT.replace(minute=1)


@pytest.fixture
def app(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    monkeypatch.setattr(publishing, "capture_safe", lambda task, options: True)
    app = Celery("escape", broker=redis_url, set_as_current=False)
    yield app
    app.close()


def own_producer_task(app: Celery) -> None:
    """``t.own``: a task whose ``apply_async`` publishes through Kombu on a producer of its
    own (it drops the producer it is given)."""

    class OwnProducer(app.Task):  # type: ignore[name-defined,misc]
        def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
            options.pop("producer", None)
            return super().apply_async(args, kwargs, **options)

    @app.task(name="t.own", base=OwnProducer, shared=False)  # type: ignore[untyped-decorator]
    def own(number: int) -> None: ...


def queued(redis_url: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [kombu_json.loads(raw)["headers"]["id"] for raw in client.lrange("celery", 0, -1)]
    finally:
        client.close()


def test_capture_says_when_the_publish_reached_neither_the_channel_nor_kombu(
    app: Celery,
) -> None:
    with app.producer_or_acquire() as producer, pytest.raises(CaptureEscaped):
        capture(producer.channel, lambda: None)


def test_a_publish_on_another_kombu_channel_is_kept_from_the_broker_then_sent_once(
    app: Celery, redis_url: str
) -> None:
    own_producer_task(app)
    entry = one_entry("t.own")
    with app.producer_or_acquire() as producer:
        publisher = CeleryPublisher(app, lambda: producer)
        first = build_occurrence(entry, ONE_SLOT, task_id_for(entry.name, ONE_SLOT))
        publisher.warm(first)
        assert queued(redis_url) == []  # the capture's publish was intercepted
        assert publisher.commands_for([first]) == [None]  # no template: the fence path
        assert publisher.publish_many([first]) == [None]
        later = build_occurrence(entry, NEXT_SLOT, task_id_for(entry.name, NEXT_SLOT))
        assert publisher.publish_many([later]) == [None]
    assert sorted(queued(redis_url)) == sorted([first.task_id, later.task_id])


def test_an_escaped_capture_is_reported_uncertain_and_sent_once(
    app: Celery, redis_url: str
) -> None:
    register_task_publishing_past_kombu(app)
    entry = one_entry("t.own")
    with app.producer_or_acquire() as producer:
        publisher = CeleryPublisher(app, lambda: producer)
        first = build_occurrence(entry, ONE_SLOT, task_id_for(entry.name, ONE_SLOT))
        [error] = publisher.publish_many([first])
        assert isinstance(error, DeliveryUncertain)
        later = build_occurrence(entry, NEXT_SLOT, task_id_for(entry.name, NEXT_SLOT))
        assert publisher.publish_many([later]) == [None]
    assert sorted(queued(redis_url)) == sorted([first.task_id, later.task_id])


def test_a_slot_whose_message_escaped_while_warming_is_refused_on_both_paths(
    app: Celery, redis_url: str
) -> None:
    register_task_publishing_past_kombu(app)
    entry = one_entry("t.own")
    with app.producer_or_acquire() as producer:
        publisher = CeleryPublisher(app, lambda: producer)
        occurrence = build_occurrence(entry, ONE_SLOT, task_id_for(entry.name, ONE_SLOT))
        publisher.warm(occurrence)
        assert queued(redis_url) == [occurrence.task_id]  # what the escape sent
        [commands] = publisher.commands_for([occurrence]) or [None]  # the one-step path
        assert isinstance(commands, DeliveryUncertain)
        [error] = publisher.publish_many([occurrence])  # the fence path: the same answer
        assert isinstance(error, DeliveryUncertain)
    assert queued(redis_url) == [occurrence.task_id]
