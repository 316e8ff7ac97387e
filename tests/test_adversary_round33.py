"""Adversary round 33: ``message_template.capture`` swapping the class attribute
``kombu.messaging.Producer._publish`` (and the channel's ``_put`` / ``_put_fanout``) while a
``CeleryPublisher`` captures a template.

Each test's docstring names the promise it breaks and how. Tests named ``test_probe_...`` are
things that were checked and held.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from kombu.messaging import Producer
from kombu.serialization import register as register_serializer
from kombu.utils import json as kombu_json
from publish_helpers import ONE_SLOT, one_entry

import celery_fork_scheduler.publishing as publishing
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.publishing import CeleryPublisher, build_occurrence

NEXT_SLOT = ONE_SLOT.replace(minute=1)
WAIT = 10.0

#: Per thread ident: a one-shot hook run inside the serializer (inside ``Producer.publish``,
#: after ``capture`` installed its guard, before ``_publish``).
HOOKS: dict[int, Callable[[], None]] = {}


def _encode(obj: Any) -> str:
    hook = HOOKS.pop(threading.get_ident(), None)
    if hook is not None:
        hook()
    return kombu_json.dumps(obj)


register_serializer("hookjson", _encode, kombu_json.loads, "application/x-hookjson", "utf-8")


@pytest.fixture(autouse=True)
def _producer_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Whatever a test leaves on ``Producer._publish``, the next test gets Kombu's own."""
    monkeypatch.setattr(Producer, "_publish", Producer.__dict__["_publish"])
    HOOKS.clear()
    yield
    HOOKS.clear()


def make_app(redis_url: str, name: str = "adv33") -> Celery:
    app = Celery(name, broker=redis_url, set_as_current=False)
    app.conf.task_serializer = "hookjson"
    app.conf.accept_content = ["hookjson", "json"]
    return app


def queued(redis_url: str, queue: str = "celery") -> list[str]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [kombu_json.loads(raw)["headers"]["id"] for raw in client.lrange(queue, 0, -1)]
    finally:
        client.close()


def occurrence_of(entry: Any, slot: Any = ONE_SLOT) -> Any:
    return build_occurrence(entry, slot, task_id_for(entry.name, slot))


def run_thread(target: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, errors


def own_producer_task(app: Celery, name: str = "t.own") -> None:
    """``name``: a task whose ``apply_async`` drops the producer it is given (publishes through
    Kombu on a producer of its own). ``capture_safe`` refuses it; tests switch that off to
    stand for a path nobody knows yet, as tests/test_capture_escape.py does."""

    class OwnProducer(app.Task):  # type: ignore[name-defined,misc]
        def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
            hook = HOOKS.pop(threading.get_ident(), None)  # the test's pause, before Kombu
            if hook is not None:
                hook()
            options.pop("producer", None)
            return super().apply_async(args, kwargs, **options)

    @app.task(name=name, base=OwnProducer, shared=False)  # type: ignore[untyped-decorator]
    def own(number: int) -> None: ...


def overlapping_warms(
    publisher_a: CeleryPublisher,
    occurrence_a: Any,
    publisher_b: CeleryPublisher,
    occurrence_b: Any,
    after_a: Callable[[], None] = lambda: None,
) -> None:
    """Two captures in two threads, overlapping: A installs its guard first, B second; A
    finishes (restores) first, then B. ``after_a`` runs in A's thread once both are done."""
    a_in, b_in, a_done, b_done = (threading.Event() for _ in range(4))

    def thread_a() -> None:
        HOOKS[threading.get_ident()] = lambda: (a_in.set(), b_in.wait(WAIT))
        publisher_a.warm(occurrence_a)
        a_done.set()
        assert b_done.wait(WAIT)
        after_a()

    def thread_b() -> None:
        assert a_in.wait(WAIT)
        HOOKS[threading.get_ident()] = lambda: (b_in.set(), a_done.wait(WAIT))
        publisher_b.warm(occurrence_b)
        b_done.set()

    (ta, errors_a), (tb, errors_b) = run_thread(thread_a), run_thread(thread_b)
    ta.join(WAIT * 3)
    tb.join(WAIT * 3)
    assert not errors_a and not errors_b, (errors_a, errors_b)
    assert a_in.is_set() and b_in.is_set()  # they did overlap


# -- A. two captures in two threads ---------------------------------------------------------


def test_overlapping_captures_leave_a_stale_guard_that_swallows_the_first_threads_publishes(
    redis_url: str,
) -> None:
    """Found failing by round 33, fixed.

    Promise: each slot published exactly once (or reported uncertain, never silently
    lost); a process's other publishes are not lost while beat captures.

    ``capture`` saves ``Producer._publish`` and restores it in ``finally``: a save/restore
    pair, not a stack. Two captures in two threads (two beats of two apps in one process, a
    warm-ahead beside another publisher's) that overlap as A-starts, B-starts, A-ends, B-ends
    leave B's saved value — A's guard — on the class for good. From then on every publish
    through Kombu in thread A on any channel but A's old capture channel is swallowed: the
    guard returns None, ``Producer.publish`` raises nothing, and the message never reaches the
    broker. Here thread A then publishes a slot through Celery (``templates=False``, another
    connection): ``publish_many`` reports it sent, the queue stays empty. (The guard's
    closure keeps A's channel and recorded messages alive forever as well.)
    Cause: message_template.py:capture (restores the value it read instead of undoing only its
    own patch; no lock / no per-thread dispatch)."""
    original = Producer.__dict__["_publish"]
    app_a, app_b = make_app(redis_url, "a"), make_app(redis_url, "b")
    entry_a, entry_b, later = one_entry("t.a", "a"), one_entry("t.b", "b"), one_entry("t.c", "c")
    outcome: list[Any] = []
    try:
        with app_a.connection_for_write() as conn_a, app_b.connection_for_write() as conn_b:
            producer_a, producer_b = Producer(conn_a), Producer(conn_b)
            publisher_a = CeleryPublisher(app_a, lambda: producer_a)
            publisher_b = CeleryPublisher(app_b, lambda: producer_b)

            def after_a() -> None:  # the same thread as A's capture, later
                with app_a.connection_for_write() as other:
                    plain = CeleryPublisher(app_a, lambda: Producer(other), templates=False)
                    outcome.append(plain.publish_many([occurrence_of(later)]))

            overlapping_warms(
                publisher_a, occurrence_of(entry_a), publisher_b, occurrence_of(entry_b), after_a
            )
            left_on_class = Producer.__dict__["_publish"]
    finally:
        app_a.close()
        app_b.close()
    assert outcome == [[None]]  # reported sent ...
    # ... and queued, alone: the warms themselves sent nothing
    assert queued(redis_url) == [occurrence_of(later).task_id], "reported sent, never queued"
    assert left_on_class is original, "a capture's guard was left on kombu's Producer"


def test_overlapping_captures_let_the_second_captures_other_channel_publish_reach_the_broker(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found failing by round 33, fixed.

    Promise: nothing is sent during warm-ahead; "a publish through Kombu on another
    channel (a producer or connection of its own, in the capturing thread) is kept from the
    broker: nothing is sent, and the slot goes through Celery once" (guarantees.md).

    While capture B (warming an entry whose publish takes a producer of its own) is inside
    its send, capture A in another thread ends and writes Kombu's original ``_publish`` back
    on the class: B's guard is gone, B's publish on the other connection goes to the broker
    during the warm-ahead, and B's capture then sees neither its channel nor Kombu
    (``CaptureEscaped``): the slot is refused as uncertain though the escape was of a kind
    the capture claims to keep back.
    Cause: message_template.py:capture (class attribute swapped per capture, restored
    unconditionally by whichever capture ends first)."""
    monkeypatch.setattr(publishing, "capture_safe", lambda task, options: True)
    app_a, app_b = make_app(redis_url, "a"), make_app(redis_url, "b")
    own_producer_task(app_b)
    entry_a, entry_b = one_entry("t.a", "a"), one_entry("t.own", "b")
    try:
        with app_a.connection_for_write() as conn_a, app_b.connection_for_write() as conn_b:
            producer_a, producer_b = Producer(conn_a), Producer(conn_b)
            publisher_a = CeleryPublisher(app_a, lambda: producer_a)
            publisher_b = CeleryPublisher(app_b, lambda: producer_b)
            overlapping_warms(
                publisher_a, occurrence_of(entry_a), publisher_b, occurrence_of(entry_b)
            )
            assert queued(redis_url) == [], "a warm-ahead sent a message"
            errors = publisher_b.publish_many([occurrence_of(entry_b)])
    finally:
        app_a.close()
        app_b.close()
    assert errors == [None]
    assert queued(redis_url) == [occurrence_of(entry_b).task_id]


# -- B. a capture inside a capture (re-entrancy) ----------------------------------------------


def test_a_capture_nested_on_the_same_channel_strips_the_outer_capture_and_sends_during_warm(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found failing by round 33, fixed.

    Promise: nothing is sent during warm-ahead; a publish through Kombu on the capture's
    own channel is captured, never sent.

    A task whose ``apply_async`` first makes another entry's template on the same publisher
    (a re-entrant capture on the same channel), then publishes its own message on the channel
    it was given: the inner capture ends with ``del channel._put, channel._put_fanout``, which
    removes the OUTER capture's instance attributes too. The outer publish then reaches the
    real ``Channel._put`` and is sent to the broker during warm-ahead, and the outer capture,
    having recorded nothing, reports ``CaptureEscaped``: the slot is refused as uncertain
    though its publish went through the very channel being captured.
    Cause: message_template.py:capture (deletes the channel attributes instead of restoring
    what was there before; no nesting)."""
    monkeypatch.setattr(publishing, "capture_safe", lambda task, options: True)
    app = make_app(redis_url)
    inner_entry = one_entry("t.inner", "inner")
    holder: dict[str, CeleryPublisher] = {}

    class Reentrant(app.Task):  # type: ignore[name-defined,misc]
        def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
            holder["publisher"].warm(occurrence_of(inner_entry))
            return super().apply_async(args, kwargs, **options)

    @app.task(name="t.outer", base=Reentrant, shared=False)  # type: ignore[untyped-decorator]
    def outer(number: int) -> None: ...

    entry = one_entry("t.outer", "outer")
    try:
        with app.connection_for_write() as conn:
            producer = Producer(conn)
            publisher = holder["publisher"] = CeleryPublisher(app, lambda: producer)
            publisher.warm(occurrence_of(entry))
            sent_by_warm = queued(redis_url)
            errors = publisher.publish_many([occurrence_of(entry)])
    finally:
        app.close()
    assert sent_by_warm == [], "a warm-ahead sent a message on the captured channel"
    assert errors == [None]
    assert queued(redis_url) == [occurrence_of(entry).task_id]


# -- probes -----------------------------------------------------------------------------------


def test_probe_another_threads_publish_during_a_capture_is_sent(redis_url: str) -> None:
    """worker -B: a publish from another thread (an event, a result, another task) while beat
    is inside a capture goes to the broker, once."""
    app = make_app(redis_url)
    entry = one_entry("t.a", "a")
    inside, done = threading.Event(), threading.Event()
    try:
        with app.connection_for_write() as conn:
            producer = Producer(conn)
            publisher = CeleryPublisher(app, lambda: producer)

            def beat() -> None:
                HOOKS[threading.get_ident()] = lambda: (inside.set(), done.wait(WAIT))
                publisher.warm(occurrence_of(entry))

            thread, errors = run_thread(beat)
            assert inside.wait(WAIT)
            app.send_task("t.other", task_id="other-thread", serializer="json")
            done.set()
            thread.join(WAIT)
            assert not errors
    finally:
        app.close()
    assert queued(redis_url) == ["other-thread"]
    assert Producer.__dict__["_publish"] is not None


def test_probe_an_error_inside_the_send_restores_kombu(redis_url: str) -> None:
    """A send that raises inside a capture (an argument the serializer refuses) is reported
    not sent, and leaves Kombu's ``_publish`` and the channel's ``_put`` as they were: a later
    publish of this thread on another connection is sent."""
    original = Producer.__dict__["_publish"]
    app = make_app(redis_url)
    entry = one_entry("t.a", "a")
    try:
        with app.connection_for_write() as conn:
            producer = Producer(conn)
            publisher = CeleryPublisher(app, lambda: producer)

            def boom() -> None:
                raise ValueError("refused by the serializer")

            HOOKS[threading.get_ident()] = boom
            [error] = publisher.publish_many([occurrence_of(entry)])
            assert "refused by the serializer" in repr(error)
            assert not isinstance(error, publishing.DeliveryUncertain)
            assert "_put" not in vars(producer.channel)
            assert Producer.__dict__["_publish"] is original
            app.send_task("t.other", task_id="after", serializer="json")
    finally:
        app.close()
    assert queued(redis_url) == ["after"]


def test_probe_a_producer_subclass_calling_super_is_kept_back(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publish on a Producer subclass that overrides ``_publish`` (and calls Kombu's) on a
    connection of its own, in the capturing thread, is kept back during warm-ahead; the slot
    then goes through Celery once."""
    monkeypatch.setattr(publishing, "capture_safe", lambda task, options: True)
    app = make_app(redis_url)

    class Traced(Producer):
        def _publish(self, *args: Any, **kwargs: Any) -> Any:
            return super()._publish(*args, **kwargs)

    class OwnTraced(app.Task):  # type: ignore[name-defined,misc]
        def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
            options.pop("producer", None)
            with app.connection_for_write() as other:
                options["producer"] = Traced(other)
                return super().apply_async(args, kwargs, **options)

    @app.task(name="t.own", base=OwnTraced, shared=False)  # type: ignore[untyped-decorator]
    def own(number: int) -> None: ...

    entry = one_entry("t.own")
    try:
        with app.connection_for_write() as conn:
            producer = Producer(conn)
            publisher = CeleryPublisher(app, lambda: producer)
            publisher.warm(occurrence_of(entry))
            assert queued(redis_url) == []
            assert publisher.publish_many([occurrence_of(entry)]) == [None]
            assert publisher.publish_many([occurrence_of(entry, NEXT_SLOT)]) == [None]
    finally:
        app.close()
    assert sorted(queued(redis_url)) == sorted(
        [occurrence_of(entry).task_id, occurrence_of(entry, NEXT_SLOT).task_id]
    )


def test_probe_two_publishes_on_the_capture_channel_are_both_sent_once(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``apply_async`` that publishes twice on the publisher's channel (its message and a
    second task's): the capture records both, no template is made, both are sent once for the
    first slot and through Celery for the next."""
    monkeypatch.setattr(publishing, "capture_safe", lambda task, options: True)
    app = make_app(redis_url)

    class Twice(app.Task):  # type: ignore[name-defined,misc]
        def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
            result = super().apply_async(args, kwargs, **options)
            app.send_task(
                "t.audit", task_id=f"audit-{options['task_id']}", producer=options["producer"]
            )
            return result

    @app.task(name="t.twice", base=Twice, shared=False)  # type: ignore[untyped-decorator]
    def twice(number: int) -> None: ...

    entry = one_entry("t.twice")
    first, second = occurrence_of(entry), occurrence_of(entry, NEXT_SLOT)
    try:
        with app.connection_for_write() as conn:
            producer = Producer(conn)
            publisher = CeleryPublisher(app, lambda: producer)
            publisher.warm(first)
            assert queued(redis_url) == []
            assert publisher.publish_many([first]) == [None]
            assert publisher.publish_many([second]) == [None]
    finally:
        app.close()
    ids = [first.task_id, second.task_id]
    assert sorted(queued(redis_url)) == sorted(ids + [f"audit-{i}" for i in ids])
