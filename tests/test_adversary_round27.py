"""Adversary round 27: hiredis packing (commit ee258a9, ``backends/packing.py`` and
``backends/redis_connection.client_from_url``), compact siblings and the weighed template cache
(61fab9b, 68d041d), warm-ahead for owned entries only (ec733d1: ``PublishPipeline.warm``,
``CeleryPublisher.warm``, ``Scheduler._owned_elsewhere``).

The promises: the backend's packer writes "the same bytes" as redis-py's own packer for any
argument redis-py takes (packing module; tests/test_packing.py "for every kind of argument
redis-py takes"); ``client_from_url`` reports a bad option as a clear ``ConfigError`` about
``fork_scheduler_redis_options``; ``CeleryPublisher.warm`` "Sends nothing"; each slot is
published exactly once (docs/guarantees.md), a task that overrides ``apply_async`` included
("A task that overrides apply_async ... never shares: each entry is captured").

All found failing by round 27, fixed: the packer hands hiredis only commands without a
``bytearray`` or ``memoryview`` argument and with a name redis-py would not split
(``HiredisPacker.pack``); ``command_packer`` in ``fork_scheduler_redis_options`` is refused by
name (the scheduler sets it); a task that overrides ``apply_async`` is never captured (no
template, no warm-ahead: ``message_template.capture_safe``), since its override may publish on
a producer of its own; a removed entry's hashed owner is dropped (``Ownership.forget_entry``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
import redis
from celery import Celery
from publish_helpers import ONE_SLOT, one_entry, queued_after
from redis.connection import HiredisRespSerializer, PythonRespSerializer

from celery_fork_scheduler.backends import packing
from celery_fork_scheduler.backends.redis_connection import client_from_url
from celery_fork_scheduler.errors import ConfigError
from celery_fork_scheduler.ids import task_id_for

SLOT = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)

needs_hiredis = pytest.mark.skipif(
    not packing.packer_options(), reason="hiredis (a dependency) is not installed"
)


# --- 1. The hiredis packer --------------------------------------------------------------------


@needs_hiredis
def test_a_strided_memoryview_is_stored_as_its_bytes_not_its_underlying_buffer(
    redis_url: str,
) -> None:
    """Found failing by round 27, fixed. Promise (backends/packing.py): hiredis's packing of the
    arguments as given, redis-py's packer otherwise, "the bytes are the same either way".

    Reproduction: a client from ``client_from_url`` SETs ``memoryview(b"abcdef")[::2]`` (a
    valid, non-contiguous view whose bytes are ``b"ace"``; redis-py takes any memoryview).
    redis-py's own ``HiredisRespSerializer.pack`` turns a memoryview into ``bytes(view)`` before
    hiredis sees it; ``HiredisPacker.pack`` hands the view to ``hiredis.pack_command`` as it is,
    and hiredis reads ``nbytes`` contiguous bytes from the view's start pointer: Redis stores
    ``b"abc"``. A reversed view (``[::-1]``) makes hiredis read past the buffer's end: bytes
    of the process's heap go on the wire.
    """
    view = memoryview(b"abcdef")[::2]
    assert bytes(view) == b"ace"
    ours = b"".join(packing.HiredisPacker().pack("SET", "k", view))
    theirs = b"".join(bytes(c) for c in HiredisRespSerializer().pack("SET", "k", view))
    client = client_from_url(redis_url)
    try:
        client.set("round27:strided", view)
        stored = client.get("round27:strided")
    finally:
        client.close()
    assert (stored, ours) == (b"ace", theirs)


@needs_hiredis
@pytest.mark.parametrize("name", ["CONFIG\tGET", "CONFIG\nGET"])
def test_a_command_name_is_split_on_whitespace_as_redis_py_splits_it(
    redis_url: str, name: str
) -> None:
    """Found failing by round 27, fixed. Promise (backends/packing.py): the same bytes as redis-
    py's packers.

    Reproduction: ``execute_command("CONFIG\\tGET", "maxmemory")``. Both of redis-py's packers
    split a ``str`` command name with ``str.split()`` (any whitespace) into ``CONFIG`` ``GET``;
    ``HiredisPacker.pack`` falls back to them only when the name holds a *space*
    (``" " not in name``), so it sends one argument ``CONFIG\\tGET`` and Redis answers "unknown
    command" where redis-py's client gets the setting. (Low severity: the package's own
    commands never carry such names; the client is a general redis-py client.)
    """
    ours = b"".join(packing.HiredisPacker().pack(name, "maxmemory"))
    theirs = b"".join(bytes(c) for c in HiredisRespSerializer().pack(name, "maxmemory"))
    client = client_from_url(redis_url)
    try:
        answer = client.execute_command(name, "maxmemory")
    except redis.ResponseError as exc:
        answer = exc
    finally:
        client.close()
    assert ours == theirs
    assert not isinstance(answer, Exception), answer


@needs_hiredis
def test_a_command_packer_option_is_used_or_refused_as_an_option(redis_url: str) -> None:
    """Found failing by round 27, fixed. Promise (redis_connection.check_client_options /
    client_from_url): the client options are redis-py's client keywords, checked up front, a
    wrong one a ``ConfigError`` about ``fork_scheduler_redis_options`` naming it.

    Reproduction: ``fork_scheduler_redis_options = {"command_packer": <a packer>}``.
    ``command_packer`` is a redis-py connection keyword, so ``check_client_options`` accepts it
    (it is in ``KNOWN_OPTIONS`` and ``FROM_URL_KEYWORDS``). ``client_from_url`` then calls
    ``redis.Redis.from_url(url, **packer_options(), **settings)`` (redis_connection.py:352)
    with the keyword twice: Python's ``TypeError: ... got multiple values for keyword argument
    'command_packer'`` is caught as a URL problem and reported as ``bad Redis URL
    redis://...`` on ``fork_scheduler_redis_url``, a URL that is fine. (Before ee258a9 the
    option was honoured.)
    """
    mine = PythonRespSerializer(6000, lambda value: str(value).encode())
    try:
        client = client_from_url(redis_url, {"command_packer": mine})
    except ConfigError as exc:
        assert exc.field == "fork_scheduler_redis_options", str(exc)
        assert "command_packer" in str(exc)
        return
    try:
        connection = client.connection_pool.get_connection()
        assert connection._command_packer is mine
        client.connection_pool.release(connection)
    finally:
        client.close()


# --- 2. Warm-ahead and captures of a task whose apply_async does not use the given producer ---


def _app_with_own_producer(redis_url: str) -> Celery:
    """An app whose task ``t.own`` overrides ``apply_async`` and publishes with a producer of
    its own (the pool's), as a wrapper that drops or replaces ``producer`` does."""
    app = Celery("own-producer", broker=redis_url, set_as_current=False)

    class OwnProducer(app.Task):  # type: ignore[name-defined,misc]
        def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
            options.pop("producer", None)  # e.g. a wrapper that publishes on its own
            return super().apply_async(args, kwargs, **options)

    @app.task(name="t.own", base=OwnProducer, shared=False)  # type: ignore[untyped-decorator]
    def own(number: int) -> None: ...

    return app


def test_warming_a_template_ahead_sends_nothing(redis_url: str) -> None:
    """Found failing by round 27, fixed. Promise: ``CeleryPublisher.warm`` "Sends nothing"
    (publishing.py); the warm-ahead of ec733d1 makes templates in idle time, before any claim,
    for the entries a replica owns.

    Reproduction: a registered task whose ``apply_async`` publishes with a producer of its own
    (it drops the ``producer`` Celery's beat passes: a wrapper class, a task that re-sends
    through ``app.send_task`` / a signature). ``warm`` -> ``render`` -> ``capture``
    (message_template.py:102) replaces ``_put`` on *the publisher's* channel only, then calls
    ``apply_async``: the message goes out through the pool's channel, for real, with the slot's
    task id, in idle time, before the slot is due or claimed (a replica that then loses the
    claim, or is no longer the owner, has sent it anyway). ``capture`` then returns ``None``
    ("nothing was sent either way", its docstring) and ``warm`` swallows nothing wrong.
    """
    app = _app_with_own_producer(redis_url)
    assert queued_after(app, redis_url, one_entry("t.own"), warm=True) == []


def test_the_first_slot_of_a_task_publishing_on_its_own_producer_is_sent_once(
    redis_url: str,
) -> None:
    """Found failing by round 27, fixed. Promise: each slot is published exactly once; a task
    that overrides ``apply_async`` is supported ("never shares: each entry is captured",
    docs/guarantees.md).

    Reproduction: the same task; one ``publish_many`` of the entry's first slot. ``render``
    captures it (publishing.py ``render`` -> ``capture``): the override publishes through its
    own producer, so the "capture" really sends the message and records nothing; ``render``
    caches ``None`` ("goes through Celery") and answers ``None``; ``publish_many`` then sends
    the slot through Celery: two messages with the same task id. On a Redis broker sharing the
    claims' Redis the same happens in ``commands_for`` (the capture's send is outside the fence,
    then the fence path publishes it again).
    """
    app = _app_with_own_producer(redis_url)
    assert queued_after(app, redis_url, one_entry("t.own")) == [task_id_for("own", ONE_SLOT)]


# --- 3. Owners hashed ahead: one per entry name ever seen ----------------------------------------


def test_owners_hashed_ahead_are_not_kept_for_entries_that_are_gone(redis_url: str) -> None:
    """Found failing by round 27, fixed. Promise: no unbounded memory growth;
    ``Ownership.other_owner`` keeps "the owner of each entry asked about under the live set"
    (ownership.py:130-134). It is asked at claim time (scheduler.py:911, since 3f83462) and,
    since ec733d1, for every new entry in idle time too (``Scheduler._owned_elsewhere``, the
    warm-ahead).

    Reproduction: two replicas (a stable live set), runtime entries added and removed with new
    names (one-off reminders, per-customer jobs: ``Manager.add`` / ``remove``), 5 rounds of
    40. ``Ownership._owners`` is reset only when the live set changes, never when an entry
    goes: after the rounds each replica keeps the owner of every name it ever saw (200), though
    40 entries exist at most. A beat that creates and removes uniquely named entries for weeks
    grows without bound.
    """
    from replica_helpers import START, make_app, schedulers, tick_for

    from celery_fork_scheduler.manager import Manager
    from celery_fork_scheduler.testing import FakeClock

    clock = FakeClock(START)
    with schedulers(redis_url, fork_scheduler_owner_grace=1) as make:
        replicas = [make(clock, f"replica-{name}") for name in "ab"]

        def tick(seconds: float) -> None:
            tick_for(lambda: [r.tick() for r in replicas], clock, seconds, step=0.1)

        tick(3)
        manager = Manager(make_app(redis_url), clock=clock)
        for round_ in range(5):
            names = [f"reminder-{round_}-{i}" for i in range(40)]
            for name in names:
                manager.add(name, "t", 1)
            tick(2)
            for name in names:
                manager.remove(name)
            tick(2)
        kept = [len(r.ownership._owners) for r in replicas if r.ownership is not None]
    assert len(kept) == 2
    assert max(kept) <= 40, f"owners kept per replica: {kept}"
