"""Adversarial tests of the template / one-step publish path (issue 19).

Each test here FAILS today and shows a broken promise of ``message_template.py`` /
``CeleryPublisher``: "a templated message equals, field by field, what Celery+Kombu would send
for the same occurrence; when it can't, the occurrence goes through Celery as before;
capturing never sends anything by itself".
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from celery import Celery, signals
from kombu import Exchange, Queue
from publish_helpers import declare_queues, sent_by_celery

from celery_fork_scheduler.entry import entry_from_config
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.publishing import CeleryPublisher, DeliveryUncertain, build_occurrence
from celery_fork_scheduler.testing import RedisServer

SLOTS = [datetime(2026, 3, 2, 10, minute, tzinfo=timezone.utc) for minute in range(10)]


def entry(name: str, **definition: Any) -> Any:
    return entry_from_config(
        name, {"task": "tasks.report", "schedule": 60, **definition}, default_timezone=timezone.utc
    )


def occurrence(the_entry: Any, number: int) -> Any:
    slot = SLOTS[number]
    return build_occurrence(the_entry, slot, task_id_for(the_entry.name, slot))


def new_app(broker: str, **conf: Any) -> Celery:
    app = Celery("adversary", broker=broker, set_as_current=False)
    app.conf.update({"timezone": "UTC", **conf})
    return app


def declared_producer(app: Celery) -> Any:
    """A producer like beat's (``auto_declare=False``), the app's queues bound as a worker
    binds them."""
    producer = app.amqp.Producer(app.connection_for_write(), auto_declare=False)
    declare_queues(app, producer)
    return producer


def ours_and_celerys(app: Celery, job: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The message the template renders for ``job``'s second occurrence, and Celery's own."""
    producer = declared_producer(app)
    publisher = templated(app, producer, job, 0)
    rendered = publisher.render(occurrence(job, 1), producer, producer.channel)
    assert rendered is not None
    [(_, ours)] = rendered.messages
    [(_, theirs)] = sent_by_celery(app, producer, occurrence(job, 1))
    return ours, theirs


def templated(app: Celery, producer: Any, the_entry: Any, number: int) -> Any:
    """Occurrence ``number`` of ``the_entry`` as the template path renders it, after occurrence
    0 made the template."""
    publisher = CeleryPublisher(app, lambda: producer)
    assert publisher.render(occurrence(the_entry, 0), producer, producer.channel) is not None
    return publisher


def queued(client: redis.Redis, queue: str) -> list[str]:
    return [
        json.loads(raw)["headers"]["fork_scheduler_slot"] for raw in client.lrange(queue, 0, -1)
    ]


@pytest.fixture
def broker_server() -> Any:
    """A broker Redis of its own (claims elsewhere: the fence path), that can be restarted
    with its data (a production Redis persists its data)."""
    server = RedisServer(extra_args=["--save", "3600 1"])
    server.start()
    yield server
    server.cleanup()


def restart_during(server: RedisServer, action: Any, down_for: float = 0.3) -> Any:
    """Run ``action`` while ``server`` restarts (stopped now, back ``down_for`` s later)."""
    client = redis.Redis.from_url(server.url)
    client.save()  # what a persisted Redis keeps through the restart (bindings included)
    client.close()
    server.stop()
    starter = threading.Thread(target=lambda: (time.sleep(down_for), server.start()))
    starter.start()
    try:
        return action()
    finally:
        starter.join()


# -- 1. capturing sends: a publish retried by Kombu escapes the capture ---------------------


def test_a_capture_during_a_broker_restart_sends_the_slot_twice(
    broker_server: RedisServer,
) -> None:
    """Promise: "Capturing never sends anything by itself" / each slot published once.

    Seen: the first occurrence of an exchange-routed entry is captured while the broker Redis
    restarts. Kombu's publish retry (``connection.ensure``) revives the producer on a NEW
    channel and publishes again there; only the OLD channel's ``_put`` was replaced, so the
    message really goes to Redis during the capture. The capture then records nothing, returns
    ``None`` ("nothing was sent either way") and the occurrence is published through Celery a
    second time: two messages with the same task id in ``nightly-q``. With ``templates=False``
    no duplicate is sent."""
    app = new_app(
        broker_server.url,
        task_queues=[
            Queue("celery"),
            Queue("nightly-q", Exchange("jobs"), routing_key="jobs.nightly"),
        ],
    )
    plain = entry("plain")
    routed = entry("routed", options={"exchange": "jobs", "routing_key": "jobs.nightly"})
    producer = declared_producer(app)
    publisher = CeleryPublisher(app, lambda: producer)
    assert publisher.publish_many([occurrence(plain, 0)]) == [None]

    [error] = restart_during(broker_server, lambda: publisher.publish_many([occurrence(routed, 1)]))
    client = redis.Redis.from_url(broker_server.url)
    if error is not None:  # refused before anything left: the pipeline asks again later
        assert not isinstance(error, DeliveryUncertain), error
        assert queued(client, "nightly-q") == []
        assert publisher.publish_many([occurrence(routed, 1)]) == [None]
    assert queued(client, "nightly-q") == ["2026-03-02T10:01:00+00:00"], "sent twice"
    app.close()


# -- 2. the template path keeps a channel Kombu closed: every later slot is lost ------------


def test_after_a_broker_restart_every_templated_slot_is_lost(broker_server: RedisServer) -> None:
    """Promise: templated messages are what Celery would send; only a message that MAY have
    left is given up (``DeliveryUncertain``).

    Seen: the broker restarts while Celery declares a queue for a first publish (Kombu's
    ``maybe_declare`` retry revives the queue and closes the producer's channel, whose
    ``connection`` is now ``None``). The template path keeps handing messages to that dead
    channel: every later occurrence of EVERY templated entry fails with ``AttributeError:
    'NoneType' object has no attribute 'client'``, wrapped as ``DeliveryUncertain`` (reported
    in_flight, never sent again), forever, though nothing left. With ``templates=False`` the
    same publisher recovers at the next slot and delivers them all."""
    app = new_app(broker_server.url)
    plain = entry("plain")
    reports = entry("reports", options={"queue": "reports"})
    producer = app.amqp.Producer(app.connection_for_write(), auto_declare=False)
    publisher = CeleryPublisher(app, lambda: producer)
    assert publisher.publish_many([occurrence(plain, 0)]) == [None]

    restart_during(broker_server, lambda: publisher.publish_many([occurrence(reports, 1)]))

    later = [publisher.publish_many([occurrence(plain, n), occurrence(reports, n)]) for n in (2, 3)]
    client = redis.Redis.from_url(broker_server.url)
    assert later == [[None, None], [None, None]], later
    assert queued(client, "celery")[:2] == [
        "2026-03-02T10:03:00+00:00",
        "2026-03-02T10:02:00+00:00",
    ]
    app.close()


# -- 3. expires / eta computed with wall-clock arithmetic across a DST change ---------------


@pytest.mark.parametrize("option", ["expires", "countdown"])
def test_expires_and_eta_across_a_dst_change_are_an_hour_off(redis_url: str, option: str) -> None:
    """Promise: ``headers.expires`` / ``headers.eta`` from numeric ``expires`` / ``countdown``
    are recomputed at send "as Celery does" (within a second).

    Seen: with ``timezone='Europe/Berlin'`` at 01:30 CET on 2026-03-29 (DST starts at 02:00),
    ``expires=7200`` / ``countdown=7200``: Celery adds the seconds in UTC
    (``add_seconds_to_datetime``) -> 02:30 UTC; the template adds a wall-clock ``timedelta`` to
    the zoned ``app.now()`` -> 03:30+02:00 = 01:30 UTC: the message expires (or runs) one
    hour EARLY (one hour late at the autumn change)."""
    app = new_app(redis_url, timezone="Europe/Berlin")
    before_dst = datetime(2026, 3, 29, 0, 30, tzinfo=timezone.utc)
    app.now = lambda: before_dst.astimezone(app.timezone)  # type: ignore[method-assign]
    job = entry("job", options={option: 7200})
    ours, theirs = ours_and_celerys(app, job)
    field = "expires" if option == "expires" else "eta"
    gap = datetime.fromisoformat(ours["headers"][field]) - datetime.fromisoformat(
        theirs["headers"][field]
    )
    assert abs(gap) < timedelta(seconds=1), (ours["headers"][field], theirs["headers"][field])
    app.close()


# -- 4. a router consulted once: later routing decisions are ignored ------------------------


def test_a_router_that_decides_per_call_is_asked_only_once(redis_url: str) -> None:
    """Promise: a templated message equals what Celery would send for the same occurrence.

    Seen: ``task_routes`` is a function (Celery calls it for every message); it reads a
    setting that an operator switches (reports go to ``reports-b`` from now on). Celery sends
    the next occurrence to ``reports-b``; the template keeps sending to ``reports-a``, for the
    life of the process."""
    target = {"queue": "reports-a"}

    def route(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
        return dict(target)

    app = new_app(redis_url, task_routes=[route])
    job = entry("job")
    producer = declared_producer(app)
    publisher = CeleryPublisher(app, lambda: producer)
    assert publisher.publish_many([occurrence(job, 0)]) == [None]
    target["queue"] = "reports-b"
    assert publisher.publish_many([occurrence(job, 1)]) == [None]
    client = redis.Redis.from_url(redis_url)
    assert queued(client, "reports-a") == ["2026-03-02T10:00:00+00:00"]
    assert queued(client, "reports-b") == ["2026-03-02T10:01:00+00:00"]
    app.close()


# -- 5. exchange bindings frozen at capture time -------------------------------------------


def test_a_queue_bound_after_the_capture_never_gets_the_message(redis_url: str) -> None:
    """Promise: a templated message goes where Celery+Kombu would send it.

    Seen: an entry published to a topic exchange (``events`` / ``report.daily``). After the
    first occurrence another service's worker binds its queue ``audit-q`` to ``report.*``
    (Kombu keeps bindings in Redis and looks them up at every publish). Celery delivers the
    next occurrence to ``reports-q`` AND ``audit-q``; the template only to ``reports-q``, until
    beat restarts."""
    events = Exchange("events", type="topic")
    app = new_app(redis_url, task_queues=[Queue("reports-q", events, routing_key="report.#")])
    job = entry("job", options={"exchange": "events", "routing_key": "report.daily"})
    producer = declared_producer(app)
    publisher = templated(app, producer, job, 0)
    other = Celery("audit", broker=redis_url, set_as_current=False)
    with other.connection_for_write() as connection:
        Queue("audit-q", events, routing_key="report.*")(connection.default_channel).declare()
    other.close()
    rendered = publisher.render(occurrence(job, 1), producer, producer.channel)
    assert rendered is not None
    expected = sent_by_celery(app, producer, occurrence(job, 1))
    assert sorted(q for q, _ in rendered.messages) == sorted(q for q, _ in expected)
    app.close()


# -- 6. a task registered after the template ------------------------------------------------


def test_a_task_registered_after_the_template_keeps_the_unregistered_message(
    redis_url: str,
) -> None:
    """Promise: a templated message equals what Celery would send for the same occurrence.

    Seen: the first occurrence of ``tasks.report`` is sent before its module is imported
    (``send_task`` by name: queue ``celery``). Once the task is registered with
    ``queue='reports'`` Celery sends the next occurrence through ``apply_async`` to
    ``reports``; the template keeps ``celery``."""
    app = new_app(redis_url)
    job = entry("job")
    producer = declared_producer(app)
    publisher = templated(app, producer, job, 0)

    @app.task(name="tasks.report", queue="reports", shared=False)  # type: ignore[untyped-decorator]
    def report() -> None: ...

    rendered = publisher.render(occurrence(job, 1), producer, producer.channel)
    assert rendered is not None
    expected = sent_by_celery(app, producer, occurrence(job, 1))
    assert [q for q, _ in rendered.messages] == [q for q, _ in expected]
    app.close()


# -- 7. root_id option overwritten -------------------------------------------------------


def test_a_root_id_option_is_overwritten_by_the_task_id(redis_url: str) -> None:
    """Promise: only the task id fields are patched; others are Celery's.

    Seen: an entry with the ``apply_async`` option ``root_id='nightly-workflow'`` (accepted by
    the entry validation): Celery sends ``headers.root_id == 'nightly-workflow'`` for every
    occurrence; the template rewrites it to each occurrence's task id."""
    app = new_app(redis_url)
    job = entry("job", options={"root_id": "nightly-workflow"})
    ours, theirs = ours_and_celerys(app, job)
    assert ours["headers"]["root_id"] == theirs["headers"]["root_id"] == "nightly-workflow"
    app.close()


# -- 8. Celery's task_sent signal ignored ---------------------------------------------------


def test_task_sent_receivers_do_not_turn_templates_off(redis_url: str) -> None:
    """Promise: receivers of Celery's publish signals turn templates off ("they are not sent
    for templated messages").

    Seen: Celery still sends ``task_sent`` (compat, emitted after each publish) to its
    receivers; ``templates_allowed`` checks only ``before_task_publish`` / ``after_task_publish``:
    a ``task_sent`` receiver hears the first occurrence only."""
    seen: list[str] = []

    def receiver(sender: Any = None, task_id: Any = None, **_: Any) -> None:
        seen.append(task_id)

    signals.task_sent.connect(receiver)
    try:
        app = new_app(redis_url)
        job = entry("job")
        occurrences = [occurrence(job, n) for n in range(3)]
        with app.producer_or_acquire() as producer:
            assert CeleryPublisher(app, lambda: producer).publish_many(occurrences) == [None] * 3
        app.close()
    finally:
        signals.task_sent.disconnect(receiver)
    assert seen == [o.task_id for o in occurrences]
