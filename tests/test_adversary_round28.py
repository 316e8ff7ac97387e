"""Adversary round 28: the round-27 fixes and their edges (commit 048cb67).

- ``backends/packing.HiredisPacker.pack``: the fast path now hands hiredis every command whose
  argument *types* are not exactly ``bytearray`` / ``memoryview``, with no ``try`` around it.
  Promise (packing module): "any other command is packed by redis-py's own packer. The bytes
  are the same either way"; tests/test_packing.py: "for every kind of argument redis-py takes".
- ``message_template.capture_safe``: a capture must send nothing; a publish whose path leaves
  the publisher's channel must not be captured (docs/guarantees.md, "Message templates": "the
  override may publish with a producer of its own, past the capture, so a capture could send
  the message (and a second one would follow)").

All found failing by round 28, fixed: hiredis's ``TypeError`` falls back to redis-py's packer
(a ``bytearray`` subclass is sent, a value Redis cannot take is redis-py's ``DataError``);
``capture_safe`` also requires the app's ``send_task`` to be Celery's and no ``apply_async``
set on the task object; warm-ahead skips an entry removed or changed since it was noted, before
hashing its owner (``Scheduler._not_to_warm``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
import redis
from celery import Celery
from publish_helpers import ONE_SLOT, one_entry, queued_after
from redis.connection import HiredisRespSerializer

from celery_fork_scheduler.backends import packing
from celery_fork_scheduler.backends.redis_connection import client_from_url
from celery_fork_scheduler.entry import entry_from_config
from celery_fork_scheduler.ids import task_id_for

SLOT = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)

needs_hiredis = pytest.mark.skipif(
    not packing.packer_options(), reason="hiredis (a dependency) is not installed"
)


# --- 1. The hiredis packer: a bytearray subclass; errors ---------------------------------------


class Buffer(bytearray):
    """A bytearray subclass (bytearray, unlike memoryview, can be subclassed)."""


@needs_hiredis
def test_a_bytearray_subclass_is_packed_as_redis_py_packs_it(redis_url: str) -> None:
    """Found failing by round 28, fixed. Promise (backends/packing.py): "any other command is
    packed by redis-py's own packer. The bytes are the same either way".

    Reproduction: ``SET k Buffer(b"ab")`` where ``Buffer`` subclasses ``bytearray``. redis-py's
    ``HiredisRespSerializer.pack`` converts it (``isinstance(arg, (bytearray, memoryview))``)
    and sends ``ab``. ``HiredisPacker.pack`` looks at exact types (``set(map(type, args))``,
    packing.py:36-37): ``Buffer`` is neither ``bytearray`` nor ``memoryview``, so the command
    goes to ``hiredis.pack_command`` as it is, which refuses it with a ``TypeError`` (the
    round-27 fix also removed the ``try``/fallback): the client cannot store what a plain
    redis-py client stores.
    """
    value = Buffer(b"ab")
    theirs = b"".join(HiredisRespSerializer().pack("SET", "k", value))
    try:
        ours: bytes | str = b"".join(packing.HiredisPacker().pack("SET", "k", value))
    except TypeError as exc:
        ours = f"TypeError: {exc}"
    client = client_from_url(redis_url)
    try:
        try:
            client.set("round28:buffer", value)
            stored: bytes | str | None = client.get("round28:buffer")
        except TypeError as exc:
            stored = f"TypeError: {exc}"
    finally:
        client.close()
    assert (ours, stored) == (theirs, b"ab")


@needs_hiredis
@pytest.mark.parametrize("value", [None, 1 + 2j, [1]], ids=["None", "complex", "list"])
def test_an_argument_redis_cannot_take_is_a_data_error_as_with_redis_py(
    redis_url: str, value: Any
) -> None:
    """Found failing by round 28, fixed. Promise: the packer is redis-py's ``command_packer``
    and behaves as redis-py's own (packing.py docstring); redis-py reports an argument it cannot
    send as ``redis.DataError`` (a ``RedisError``), which is what callers catch.

    Reproduction: ``client.set(key, None)`` (or any type hiredis refuses). redis-py's
    ``HiredisRespSerializer.pack`` wraps hiredis's ``TypeError`` in ``DataError``;
    ``HiredisPacker.pack`` (packing.py:38) calls ``hiredis.pack_command`` with no ``try``
    since round 27, so the bare ``TypeError`` escapes, past every ``except RedisError``.
    """
    with pytest.raises(redis.DataError):
        b"".join(HiredisRespSerializer().pack("SET", "k", value))
    client = client_from_url(redis_url)
    try:
        with pytest.raises(redis.DataError):
            client.set("round28:bad", value)
    finally:
        client.close()


# --- 2. A publish leaving the channel through the app, not the task ----------------------------


class OwnProducerCelery(Celery):  # type: ignore[misc]
    """An app whose ``send_task`` publishes with a producer of its own (a wrapper that adds
    tracing or a connection of its own: it drops the ``producer`` it is given)."""

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        options.pop("producer", None)
        return super().send_task(name, args, kwargs, **options)


def _own_app(redis_url: str) -> Celery:
    app = OwnProducerCelery("own-send-task", broker=redis_url, set_as_current=False)

    @app.task(name="t.plain", shared=False)  # type: ignore[untyped-decorator]
    def plain(number: int) -> None: ...

    return app


@pytest.mark.parametrize("task", ["t.plain", "t.unregistered"])
def test_an_app_send_task_publishing_on_its_own_producer_sends_the_slot_once(
    redis_url: str, task: str
) -> None:
    """Found failing by round 28, fixed. Promise: each slot is published exactly once
    (docs/guarantees.md); a capture sends nothing (the reason for round 27's ``capture_safe``).

    Reproduction: a Celery subclass overriding ``send_task`` that drops ``producer`` (every
    ``Task.apply_async`` ends in ``app.send_task``; an entry of an unregistered task name goes
    straight there). ``capture_safe`` (message_template.py:105-110) looks only at the task's
    class, so ``render`` captures (publishing.py:406): ``_put`` is replaced on the publisher's
    channel only, the message leaves through the pool's producer for real and nothing is
    recorded; ``capture`` answers ``None`` and ``publish_many`` sends the slot through Celery
    again: two messages with one task id.
    """
    app = _own_app(redis_url)
    assert queued_after(app, redis_url, one_entry(task)) == [task_id_for("own", ONE_SLOT)]


def test_warming_ahead_with_an_app_send_task_of_its_own_sends_nothing(redis_url: str) -> None:
    """Found failing by round 28, fixed. Promise: ``CeleryPublisher.warm`` "Sends nothing"
    (publishing.py:353-356).

    Reproduction: the app of the test above; ``warm`` of a plain registered task's entry.
    ``render`` -> ``capture``: the app's ``send_task`` publishes past the capture, in idle time,
    before the slot is due or claimed (by this replica or any other).
    """
    app = _own_app(redis_url)
    assert queued_after(app, redis_url, one_entry("t.plain"), warm=True) == []


def test_a_task_whose_instance_overrides_apply_async_sends_the_slot_once(redis_url: str) -> None:
    """Found failing by round 28, fixed. Promise: each slot is published exactly once; a task
    whose ``apply_async`` is not Celery's gets no template.

    Reproduction: the override is set on the task *object* (``task.apply_async = wrapper``, as a
    tracing or instrumentation library patches a task, or ``mock.patch.object``). Celery's beat
    and ``CeleryPublisher._send`` (publishing.py:552) call ``task.apply_async``, the instance's;
    ``capture_safe`` checks ``type(task).apply_async`` only (message_template.py:110), so the
    capture runs the wrapper, which publishes on its own producer: the slot is sent twice.
    """
    app = Celery("instance-override", broker=redis_url, set_as_current=False)

    @app.task(name="t.patched", shared=False)  # type: ignore[untyped-decorator]
    def patched(number: int) -> None: ...

    original = patched.apply_async

    def traced(args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        options.pop("producer", None)
        return original(args, kwargs, **options)

    patched.apply_async = traced
    assert queued_after(app, redis_url, one_entry("t.patched")) == [task_id_for("own", ONE_SLOT)]


# --- 3. Warm-ahead of an entry removed before its turn -----------------------------------------


def test_an_entry_removed_before_it_was_warmed_keeps_no_owner(redis_url: str) -> None:
    """Found failing by round 28, fixed. Promise: no unbounded memory growth; round 27 made
    ``Scheduler.remove_entry`` drop the removed entry's hashed owner
    (``Ownership.forget_entry``, ownership.py:124-126).

    Reproduction: two replicas (a stable live set). Runtime entries are added (``put_entry``
    notes each for the warm-ahead: ``PublishPipeline.note_entries``, pipeline.py:128-130) and
    removed before idle time reached them (a burst: warm-ahead spends at most
    ``WARM_LONGEST`` per tick, so a burst of thousands is warmed over many ticks). The cold
    queue still holds the removed entries; ``PublishPipeline.warm`` (pipeline.py:146-151)
    pops each and asks ``foreign(entry.name)`` -> ``Scheduler._owned_elsewhere`` (now
    ``Scheduler._not_to_warm``) ->
    ``Ownership.other_owner``, which hashes and *keeps* the owner of a name that is gone, after
    ``forget_entry`` ran: every such entry leaks one owner until the live set changes. (It
    also makes a template, through ``publisher.warm``, for an entry that no longer exists.)
    """
    from replica_helpers import START, schedulers, tick_for

    from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

    class WarmingPublisher(RecordingPublisher):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.warmed: list[str] = []

        def warm(self, occurrence: Any) -> None:
            self.warmed.append(occurrence.entry)

    clock = FakeClock(START)
    with schedulers(redis_url, fork_scheduler_owner_grace=1) as make:
        replicas = [make(clock, f"replica-{name}", publisher=WarmingPublisher()) for name in "ab"]
        tick_for(lambda: [r.tick() for r in replicas], clock, 3, step=0.1)
        first = replicas[0]
        assert first.ownership is not None and len(first.ownership.live) == 2
        names = [f"burst-{i}" for i in range(40)]
        now = first.now()
        for name in names:
            first.put_entry(
                entry_from_config(
                    name, {"task": "t", "schedule": 60}, default_timezone=timezone.utc
                ),
                now,
            )
        for name in names:  # removed before idle time came
            first.remove_entry(name)
        first.pipeline.warm(float("inf"), now, first._not_to_warm)
        kept = sorted(set(first.ownership._owners) & set(names))
        warmed = sorted(set(first.publisher.warmed) & set(names))
    assert (kept, warmed) == ([], [])
