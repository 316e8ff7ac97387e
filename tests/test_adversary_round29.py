"""Adversary round 29: the round-28 fixes and their edges (commit dbcb769).

- ``message_template.capture_safe``: a capture must send nothing (docs/guarantees.md, "Message
  templates": an override "may publish with a producer of its own, past the capture, so a
  capture could send the message (and a second one would follow)").

All three found failing by round 29, fixed: templates are off for an app whose ``send_task``
is set on the app object or whose ``amqp`` is not Celery's ``AMQP``
(``message_template.templates_allowed``), and no entry whose options name a ``connection`` or
``producer`` is captured or made a sibling (``message_template.capture_safe``); the task
checks now come before the sibling path too.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from celery import Celery
from celery.app.amqp import AMQP
from kombu.utils.objects import cached_property
from publish_helpers import ONE_SLOT, one_entry, queued_after

from celery_fork_scheduler.ids import task_id_for

SLOT = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)


# --- 1. Other ways a publish leaves the captured channel ---------------------------------------


def test_an_app_whose_instance_send_task_publishes_on_its_own_producer_sends_the_slot_once(
    redis_url: str,
) -> None:
    """Found failing by round 29, fixed. Promise: each slot is published exactly once; a
    capture sends nothing.

    Reproduction: the app's ``send_task`` replaced on the app *object* (``app.send_task =
    wrapper``, as instrumentation patches it, or ``mock.patch.object``) by a wrapper that drops
    the ``producer`` it is given. ``Task.apply_async`` ends in ``app.send_task`` (the
    instance's). ``capture_safe`` (message_template.py:112) checks ``type(app).send_task`` only
    -- round 28 added the instance check for the task's ``apply_async`` (line 116-117) but not
    for the app's ``send_task`` -- so ``render`` captures: the message leaves through the
    pool's producer, nothing is recorded, and Celery sends it again.
    """
    app = Celery("instance-send-task", broker=redis_url, set_as_current=False)

    @app.task(name="t.plain", shared=False)  # type: ignore[untyped-decorator]
    def plain(number: int) -> None: ...

    original = app.send_task

    def traced(name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        options.pop("producer", None)
        return original(name, args, kwargs, **options)

    app.send_task = traced  # type: ignore[method-assign]
    assert queued_after(app, redis_url, one_entry("t.plain")) == [task_id_for("own", ONE_SLOT)]


class OwnProducerAMQP(AMQP):  # type: ignore[misc]
    """An AMQP class (``Celery(amqp=...)``) whose ``send_task_message`` publishes on a
    producer of its own (one acquired from the app's pool), not the one Celery hands it."""

    @cached_property
    def send_task_message(self) -> Any:
        inner = self._create_task_sender()

        def send(producer: Any, name: str, message: Any, **options: Any) -> Any:
            with self.app.producer_or_acquire() as own:
                return inner(own, name, message, **options)

        return send


def test_an_amqp_class_publishing_on_its_own_producer_sends_the_slot_once(
    redis_url: str,
) -> None:
    """Found failing by round 29, fixed. Promise: each slot is published exactly once; a
    capture sends nothing.

    Reproduction: ``Celery(amqp=OwnProducerAMQP)``: ``Celery.send_task`` (Celery's own, so
    ``capture_safe`` passes, message_template.py:106-117) hands the message to
    ``app.amqp.send_task_message``, which publishes on a pool producer, another channel than
    the one whose ``_put`` the capture replaced: the message is sent during the capture, the
    capture records nothing, and ``publish_many`` sends it through Celery again.
    """
    app = Celery("own-amqp", broker=redis_url, set_as_current=False, amqp=OwnProducerAMQP)

    @app.task(name="t.plain", shared=False)  # type: ignore[untyped-decorator]
    def plain(number: int) -> None: ...

    assert queued_after(app, redis_url, one_entry("t.plain")) == [task_id_for("own", ONE_SLOT)]


def test_an_entry_with_a_connection_option_sends_the_slot_once(redis_url: str) -> None:
    """Found failing by round 29, fixed. Promise: each slot is published exactly once; a
    capture sends nothing.

    Reproduction: an entry whose options carry Celery's documented ``apply_async`` option
    ``connection`` ("Reuse existing broker connection", celery/app/task.py), accepted by
    ``entry._options`` (unknown option names are passed through, entry.py:547-561).
    ``Celery.send_task`` then builds ``amqp.Producer(connection)`` (celery/app/base.py:1207),
    a channel of that connection, not the publisher's: ``capture`` (message_template.py:120)
    swaps ``_put`` on the wrong channel, the message is really sent during the capture, nothing
    is recorded, and ``publish_many`` sends it again through Celery. Celery's beat sends it
    once.
    """
    app = Celery("connection-option", broker=redis_url, set_as_current=False)

    @app.task(name="t.plain", shared=False)  # type: ignore[untyped-decorator]
    def plain(number: int) -> None: ...

    connection = app.connection_for_write()
    try:
        entry = one_entry("t.plain", connection=connection)
        assert queued_after(app, redis_url, entry) == [task_id_for("own", ONE_SLOT)]
    finally:
        connection.release()


def test_an_app_whose_producer_or_acquire_hands_another_producer_sends_the_slot_once(
    redis_url: str,
) -> None:
    """Found while fixing round 29, fixed: ``Celery.send_task`` publishes on
    ``app.producer_or_acquire(producer)``; an app whose override hands back a producer of its
    own published past the capture, and then again through Celery. Templates are off for such
    an app (``templates_allowed``): the slot goes through Celery once."""

    class OwnPool(Celery):
        def producer_or_acquire(self, producer: Any = None) -> Any:
            return super().producer_or_acquire(None)  # ignores the one it is handed

    app = OwnPool("own-pool", broker=redis_url, set_as_current=False)
    entry = one_entry("t.unregistered", "pooled")
    assert queued_after(app, redis_url, entry) == [task_id_for("pooled", ONE_SLOT)]
