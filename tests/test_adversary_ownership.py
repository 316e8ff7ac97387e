"""Adversarial tests of the division of entries between replicas (issue 20, ownership).

Every test here FAILS today and shows a broken promise. Root cause shared by the first two:
another replica's progress record is trusted whenever the *view fingerprint* matches (live set
+ runtime version + static digest), but the fingerprint does not capture everything that
decides which slots a replica asks about, so a replica can truthfully-looking report
``until >= slot`` for slots it never had, and the others skip them (reported ``claimed``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from replica_helpers import START, fired, make_app, schedulers, tick_for

from celery_fork_scheduler import Manager, every
from celery_fork_scheduler.ownership import owner_of
from celery_fork_scheduler.testing import FakeClock

ENTRIES = {f"e{i:02}": {"task": "t", "schedule": every(1).seconds} for i in range(20)}
DIVIDED = {"fork_scheduler_owner_grace": 1}
PROGRESS_KEY = "scheduler:{replicas}:progress"


def tick_all(replicas: list[Any], clock: FakeClock, seconds: float, step: float = 0.1) -> None:
    tick_for(lambda: [r.tick() for r in replicas], clock, seconds, step=step)


def every_second(name: str, first: datetime, last: datetime) -> list[tuple[str, str]]:
    keys = []
    slot = first
    while slot <= last:
        keys.append((name, slot.isoformat()))
        slot += timedelta(seconds=1)
    return keys


def owned_by(owner: str, replicas: list[str], prefix: str = "job") -> str:
    """An entry name that rendezvous hashing gives to ``owner`` among ``replicas``."""
    for i in range(1000):
        name = f"{prefix}-{i}"
        if owner_of(name, replicas) == owner:
            return name
    raise AssertionError("no such name")


def test_a_replica_with_fork_scheduler_enabled_false_silently_swallows_its_share_of_slots(
    redis_url: str,
) -> None:
    """Promise (docs/settings.md, fork_scheduler_enabled): "claims and publishes nothing ...
    Useful to keep a replica defined but idle. Other replicas are not affected"; and
    docs/guarantees.md promise 1: while one replica is healthy, every slot is published.

    Observed: the disabled replica still builds an Ownership, writes a progress record every
    tick (its queue is empty, so ``until = now``) and is counted live. It owns about half of the
    entries; the enabled replica defers those, reads "handled up to now" under the very same
    view, and skips every one of their slots as ``claimed``. Those entries never fire again,
    with no error (here: every slot of every entry owned by "replica-off" for 4 s is missing).
    """
    clock = FakeClock(START)
    with schedulers(redis_url, **DIVIDED, beat_schedule=ENTRIES) as make:
        on = make(clock, "replica-on")
        off = make(clock, "replica-off", fork_scheduler_enabled=False)
        tick_all([on, off], clock, 3)
        begin = clock()
        tick_all([on, off], clock, 6)
        end = clock()
        everything = fired(on.publisher, off.publisher)
    first = begin.replace(microsecond=0) + timedelta(seconds=1)
    last = end.replace(microsecond=0) - timedelta(seconds=2)
    missing = [
        key for name in ENTRIES for key in every_second(name, first, last) if key not in everything
    ]
    assert not missing, f"{len(missing)} slots never published, e.g. {missing[:4]}"


def test_runtime_entry_refused_by_one_replica_never_fires_on_the_replica_that_accepts_it(
    redis_url: str,
) -> None:
    """Promise (docs/guarantees.md): a runtime entry that one replica cannot parse "is
    skipped; every other entry keeps firing", and with differing configs "an entry present on
    at least one healthy replica keeps firing"; docs/settings.md owner_grace: the record is
    trusted only when the replicas have "the same runtime entries".

    Observed: the view's basis holds only the runtime *version* counter, not what each replica
    made of the stored entries. A rolling deploy that lowers ``fork_scheduler_min_interval``:
    the old replica refuses a 0.5 s runtime entry (logged), the new one loads it; both are at
    the same version, so the same view. When the old replica owns the entry (hash), the new one
    defers every slot, reads "handled up to now" and skips it: the entry never fires at all
    (0 publishes in 6 s; expected ~12). The same happens with any per-replica parse
    difference at one version: a different app ``timezone`` (a runtime cron without a zone
    gets different slots), an older library that does not know a schema field.
    """
    clock = FakeClock(START)
    ids = ["replica-old", "replica-new"]
    name = owned_by("replica-old", ids)
    with schedulers(redis_url, **DIVIDED) as make:
        old = make(clock, "replica-old")
        new = make(clock, "replica-new", fork_scheduler_min_interval=0.1)
        tick_all([old, new], clock, 3)
        manager = Manager(make_app(redis_url, fork_scheduler_min_interval=0.1), clock=clock)
        manager.add(name, "t", 0.5)
        tick_all([old, new], clock, 6)
        everything = fired(old.publisher, new.publisher)
        views = [r.ownership.view if r.ownership else None for r in (old, new)]
    published = sorted(slot for entry, slot in everything if entry == name)
    assert len(published) >= 8, (f"{name}: {len(published)} slots published", views)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param(b"\xff\xfe", b"{}", id="non-utf8-replica-id"),
        pytest.param("deep", "[" * 100_000 + "]" * 100_000, id="deeply-nested-json"),
    ],
)
def test_a_garbage_progress_record_crashes_every_replicas_tick(
    redis_url: str, field: Any, value: Any
) -> None:
    """Promise (docs/guarantees.md, fail closed): "any Redis failure is logged once per outage
    and never crashes or hangs beat"; a corrupted stored value costs at most its own entry
    (runtime entries, marks: tests/test_hostile_input.py); ``Progress.decode`` is meant to
    ignore a record it cannot read.

    Observed: ``Ownership.follow`` decodes the hash field names with ``bytes.decode()`` outside
    any guard (UnicodeDecodeError) and ``Progress.decode`` catches only
    ValueError/TypeError/KeyError/OverflowError, not RecursionError from ``json.loads``. One
    such field in ``<prefix>{replicas}:progress`` makes ``Scheduler.tick`` raise on every tick of
    every replica (beat dies), until someone deletes the field by hand.
    """
    clock = FakeClock(START)
    client = redis.Redis.from_url(redis_url)
    with schedulers(redis_url, **DIVIDED, beat_schedule=ENTRIES) as make:
        replica = make(clock, "replica-a")
        tick_all([replica], clock, 1)
        client.hset(PROGRESS_KEY, field, value)
        errors = []
        for _ in range(8):
            clock.advance(0.25)
            try:
                replica.tick()
            except Exception as exc:
                errors.append(repr(exc)[:120])
    client.close()
    assert not errors, f"{len(errors)} of 8 ticks raised: {errors[0]}"
