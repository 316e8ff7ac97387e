"""The template path sends what Celery would send (issue 19): for each option the docs allow,
an occurrence made from its entry's template equals, field by field, the message Celery and
Kombu build for the same occurrence (delivery tag aside; times computed at send within a
second)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from celery import Celery, signals
from kombu import Exchange, Queue
from publish_helpers import declare_queues, sent_by_celery

from celery_fork_scheduler.entry import entry_from_config
from celery_fork_scheduler.ids import PUBLISH_AT_HEADER, task_id_for
from celery_fork_scheduler.publishing import CeleryPublisher, build_occurrence

JOB_EU = {"task": "tasks.report", "schedule": 60, "args": ["eu"]}
SLOTS = [datetime(2026, 3, 2, 10, minute, tzinfo=timezone.utc) for minute in range(3)]

OPTIONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name: (entry options, app configuration)
    "defaults": ({}, {}),
    "queue": ({"queue": "reports"}, {}),
    "exchange-routing-key": (
        {"exchange": "jobs", "routing_key": "jobs.nightly"},
        {"task_queues": [Queue("nightly-q", Exchange("jobs"), routing_key="jobs.nightly")]},
    ),
    "priority": ({"priority": 7}, {"broker_transport_options": {"priority_steps": [0, 3, 6, 9]}}),
    "expires-seconds": ({"expires": 120}, {}),
    "expires-datetime": ({"expires": datetime(2030, 1, 1, tzinfo=timezone.utc)}, {}),
    "countdown": ({"countdown": 30}, {}),
    "headers": ({"headers": {"tenant": "acme", "trace": [1, 2]}}, {}),
    "serializer-compression": ({"serializer": "pickle", "compression": "zlib"}, {}),
    "task-routes": ({}, {"task_routes": {"tasks.report": {"queue": "routed"}}}),
    "task-default": (
        {},
        {
            "task_default_queue": "default-q",
            "task_default_exchange": "default-x",
            "task_default_routing_key": "default-rk",
            "task_default_priority": 4,
        },
    ),
    "declared-queue": (
        {"queue": "bound"},
        {"task_queues": [Queue("bound", Exchange("bound-x", type="direct"), routing_key="bound")]},
    ),
}


@pytest.fixture(params=["redis", "memory"])
def broker(request: pytest.FixtureRequest, redis_url: str) -> str:
    return redis_url if request.param == "redis" else "memory://"


def make_app(broker: str, conf: dict[str, Any]) -> Celery:
    app = Celery("templates", broker=broker, set_as_current=False)
    app.conf.update(timezone="Europe/Berlin", accept_content=["json", "pickle"], **conf)

    @app.task(name="tasks.report", shared=False)  # type: ignore[untyped-decorator]
    def report(region: str, *, day: str = "today") -> None: ...

    return app


def same_message(templated: dict[str, Any], celery: dict[str, Any]) -> None:
    """Field by field, the delivery tag aside and times computed at send within a second."""
    templated, celery = json.loads(json.dumps(templated)), json.loads(json.dumps(celery))
    assert templated["properties"].pop("delivery_tag") != celery["properties"].pop("delivery_tag")
    for field in ("expires", "eta"):
        ours, theirs = templated["headers"].pop(field), celery["headers"].pop(field)
        assert (ours is None) == (theirs is None), field
        if ours is not None:
            gap = datetime.fromisoformat(ours) - datetime.fromisoformat(theirs)
            assert abs(gap) < timedelta(seconds=1), (field, ours, theirs)
            assert (
                datetime.fromisoformat(ours).utcoffset()
                == datetime.fromisoformat(theirs).utcoffset()
            )
    ours, theirs = (
        templated["properties"].pop("expiration", None),
        celery["properties"].pop("expiration", None),
    )
    assert (ours is None) == (theirs is None)
    if ours is not None:  # milliseconds left, computed at send from a datetime ``expires``
        assert abs(int(ours) - int(theirs)) < 1000, (ours, theirs)
    assert templated == celery


@pytest.mark.parametrize("case", list(OPTIONS))
@pytest.mark.parametrize("capped_first", [False, True])
def test_a_templated_occurrence_is_the_message_celery_builds(
    broker: str, case: str, capped_first: bool
) -> None:
    options, conf = OPTIONS[case]
    app = make_app(broker, conf)
    definition = {
        "task": "tasks.report",
        "schedule": 60,
        "args": ["eu"],
        "kwargs": {"day": "monday"},
        "options": options,
        "singleton": True,
        "pause_on_failure": True,  # its header is copied like the others
    }
    entry = entry_from_config("nightly", definition, default_timezone=timezone.utc)
    with app.producer_or_acquire() as producer:
        declare_queues(app, producer)
        publisher = CeleryPublisher(app, lambda: producer)
        for number, slot in enumerate(SLOTS):
            capped = capped_first != (number % 2 == 1)  # a run under the cap, or not
            occurrence = build_occurrence(entry, slot, task_id_for("nightly", slot), capped=capped)
            rendered = publisher.render(occurrence, producer, producer.channel)
            expected = sent_by_celery(app, producer, occurrence)
            if rendered is None:  # published through Celery: only where the docs say so
                assert case == "expires-datetime" and number > 0, case
                continue
            assert [queue for queue, _ in rendered.messages] == [queue for queue, _ in expected]
            for (_, ours), (_, theirs) in zip(rendered.messages, expected, strict=True):
                same_message(ours, theirs)
    app.close()


def test_the_template_follows_a_changed_entry(redis_url: str) -> None:
    app = make_app(redis_url, {})
    first = entry_from_config("job", JOB_EU, default_timezone=timezone.utc)
    changed = entry_from_config("job", {**JOB_EU, "args": ["us"]}, default_timezone=timezone.utc)
    with app.producer_or_acquire() as producer:
        publisher = CeleryPublisher(app, lambda: producer)
        bodies = []
        for entry, slot in ((first, SLOTS[0]), (first, SLOTS[1]), (changed, SLOTS[2])):
            occurrence = build_occurrence(entry, slot, task_id_for("job", slot))
            rendered = publisher.render(occurrence, producer, producer.channel)
            assert rendered is not None
            bodies.append(rendered.messages[0][1]["body"])
    assert bodies[0] == bodies[1] != bodies[2]
    app.close()


def publish_three(broker_url: str) -> list[Any]:
    """Publish three occurrences of one entry in one batch; they are all sent."""
    app = make_app(broker_url, {})
    entry = entry_from_config("job", JOB_EU, default_timezone=timezone.utc)
    occurrences = [build_occurrence(entry, s, task_id_for("job", s)) for s in SLOTS]
    with app.producer_or_acquire() as producer:
        assert CeleryPublisher(app, lambda: producer).publish_many(occurrences) == [None] * 3
    app.close()
    return occurrences


@pytest.fixture
def publish_hook() -> Iterator[list[str]]:
    seen: list[str] = []

    def receiver(sender: Any = None, headers: Any = None, **_: Any) -> None:
        seen.append(headers["id"])

    signals.before_task_publish.connect(receiver)
    yield seen
    signals.before_task_publish.disconnect(receiver)


def test_publish_hooks_of_celery_turn_templates_off(
    redis_url: str, redis_client: redis.Redis, publish_hook: list[str]
) -> None:
    """A ``before_task_publish`` receiver (tracing, say) sees every message, as without
    templates."""
    occurrences = publish_three(redis_url)
    assert publish_hook == [o.task_id for o in occurrences]
    assert redis_client.llen("celery") == 3


def test_templated_messages_reach_the_broker_in_order_once(
    redis_url: str, redis_client: redis.Redis
) -> None:
    occurrences = publish_three(redis_url)
    queued = [json.loads(raw) for raw in reversed(redis_client.lrange("celery", 0, -1))]
    assert [m["headers"]["id"] for m in queued] == [o.task_id for o in occurrences]
    assert len({m["properties"]["delivery_tag"] for m in queued}) == 3


@pytest.mark.parametrize("jitter", [0, 30], ids=["none", "30s"])
def test_a_templated_jittered_occurrence_is_the_message_celery_builds(
    broker: str, jitter: int
) -> None:
    app = make_app(broker, {})
    definition = {"task": "tasks.report", "schedule": 60, "args": ["eu"], "jitter": jitter}
    entry = entry_from_config("jittered", definition, default_timezone=timezone.utc)
    with app.producer_or_acquire() as producer:
        declare_queues(app, producer)
        publisher = CeleryPublisher(app, lambda: producer)
        for slot in SLOTS:
            occurrence = build_occurrence(entry, slot, task_id_for("jittered", slot))
            assert (PUBLISH_AT_HEADER in occurrence.headers) == bool(jitter)
            rendered = publisher.render(occurrence, producer, producer.channel)
            expected = sent_by_celery(app, producer, occurrence)
            if rendered is None:
                continue
            for (_, ours), (_, theirs) in zip(rendered.messages, expected, strict=True):
                same_message(ours, theirs)
                assert ours["headers"].get(PUBLISH_AT_HEADER) == occurrence.headers.get(
                    PUBLISH_AT_HEADER
                )
    app.close()
