"""Adversary round 47: manual operations (trigger, backfill, pause/resume/remove by tag, the CLI)
where they meet the schedule.

Each test's docstring names the promise (with its page), the sequence, what happened instead and
where. Every test was found failing by round 47 and fixed (a trigger sets ``latest_run`` only
once it has its place; backfill reads history items of the slot's own task id only, and a slot
asked about after a change of the definition it read is ``skipped:removed``; an instant outside
the years 1-9999 in UTC is a ``BackfillInputError``). Claims, markers and history are on a
real Redis; the schedule runs on a fake clock; the worker side is driven through the real
``WorkerHooks`` (the handlers ``install(app)`` connects), each run's start and end by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery
from hand_driven_helpers import HandDrivenWorker as Worker
from hand_driven_helpers import RecordingBeat as Beat
from hand_driven_helpers import queued
from replica_helpers import START

from celery_fork_scheduler import Manager, every
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import FakeClock

KEYS = Keys("scheduler:")
#: The task of the entries the hand-driven worker runs.
TASK = "adv47.job"
START_AT = datetime.fromisoformat(START).replace(microsecond=0)  # 10:00:00 UTC


def at(seconds: float) -> datetime:
    """10:00:00 plus ``seconds``."""
    return START_AT + timedelta(seconds=seconds)


def make_app(redis_url: str, beat_schedule: dict[str, Any], **conf: Any) -> Celery:
    """Beat, Manager and worker of one app; the broker is the claims' Redis (queue ``celery``)."""
    app = Celery("adv47", broker=redis_url, set_as_current=False)
    app.conf.update(
        timezone="UTC",
        beat_schedule=beat_schedule,
        fork_scheduler_redis_url=redis_url,
        fork_scheduler_owner_grace=0,
        result_expires=None,
        broker_connection_retry_on_startup=False,
        **conf,
    )

    @app.task(name="adv47.job", shared=False)
    def job(*args: Any, **kwargs: Any) -> None:
        """The task of every entry."""

    return app


@pytest.fixture
def apps() -> Iterator[list[Celery]]:
    made: list[Celery] = []
    yield made
    for app in made:
        app.close()


@pytest.fixture
def beats() -> Iterator[list[Beat]]:
    made: list[Beat] = []
    yield made
    for beat in made:
        beat.scheduler.close()


# -- 1. a capped trigger of a cancel_other entry leaves its run id as the entry's latest run ----


def test_a_capped_trigger_of_a_cancel_other_entry_makes_the_waiting_scheduled_run_replaced(
    redis_url: str, redis_client: redis.Redis, apps: list[Celery], beats: list[Beat]
) -> None:
    """Promise (docs/manager.md, "Pause, resume, trigger"): with the cap full "nothing is sent
    (`skipped="capped"`)"; "After this or any other failure to send, its singleton marker and
    place under the cap are given back at once". docs/singleton.md: "A **triggered** run ...
    that gets the marker is the entry's latest run too: a scheduled run still waiting in the
    broker gives way to it" -- a run that was never sent cannot be the one it gives way to.
    docs/redis-layout.md, ``latest_run``: "the task id of the latest run claimed or
    triggered; the one it replaced ... is the latest again when the new run is not published
    after all (given back under the cap, the broker unreachable: a run that never starts
    replaces nothing)" (the scheduler's own path restores ``previous_run``: round 45).

    Sequence: ``fork_scheduler_max_concurrent=2``; entry ``e`` (``cancel_other``, every 10 s).
    Slot 10:00:10 is published and starts on a worker (marker, one place). Slot 10:00:20 falls
    due while it runs: published without the marker (cancel_other), the entry's
    ``latest_run``, second place. The 10:00:10 run ends (marker and its place freed); the
    10:00:20 run waits in the broker. An operator triggers ``other`` (its run takes the free
    place: cap full), then triggers ``e``: it gets the free marker, writes its task id as
    ``latest_run``, finds the cap full and returns ``skipped="capped"`` -- nothing sent.
    Then the 10:00:20 run starts.

    What happens: ``TAKE_OVER`` reads ``latest_run`` = the id of the trigger that was never sent
    and answers "replaced": the scheduled 10:00:20 run is not executed. Neither runs. Expected:
    the 10:00:20 run executes (the trigger sent nothing). Where: manager.py ``Manager.trigger``
    (``HSET latest_run`` before the cap is decided, no ``previous_run``) and
    ``Manager._give_back`` (frees the marker and the place, not ``latest_run``).
    """
    app = make_app(
        redis_url,
        {
            "e": {"task": "adv47.job", "schedule": every(10).seconds, "overlap": "cancel_other"},
            "other": {"task": "adv47.job", "schedule": "every 1 hour"},
        },
        fork_scheduler_max_concurrent=2,
    )
    apps.append(app)
    clock = FakeClock(START)
    beat = Beat(app, clock)
    beats.append(beat)
    worker = Worker(app, TASK)
    beat.run_until(at(10.5))
    first, first_headers = beat.headers("e", at(10))
    assert worker.start(first, first_headers)
    beat.run_until(at(20.5))
    second, second_headers = beat.headers("e", at(20))
    worker.end(first)
    assert not redis_client.exists(KEYS.running("e"))

    manager = Manager(app, clock=clock)
    assert manager.trigger("other").task_id is not None  # the last place under the cap
    result = manager.trigger("e")
    assert result.skipped == "capped" and result.task_id is None
    assert [m["headers"]["fork_scheduler_entry"] for m in queued(redis_client)] == ["other"]

    assert worker.start(second, second_headers), (
        "the scheduled 10:00:20 run of 'e' was not executed: it was 'replaced' by a trigger "
        f"that sent nothing (latest_run={redis_client.hget(KEYS.state('e'), 'latest_run')!r})"
    )


# -- 2. a manual run's history item hides a never-published slot from backfill ----------------


def test_a_manual_run_near_a_paused_slot_makes_backfill_call_the_slot_already_published(
    redis_url: str, redis_client: redis.Redis, apps: list[Celery], beats: list[Beat]
) -> None:
    """Promise (docs/manager.md, "Backfill"): backfill "publishes each slot ... that was
    **never published**"; a paused slot is one of those it is meant for ("a paused or busy slot
    is skipped"). "Redis remembers a slot as published when the entry's **history** has an
    item for it"; `already_published`: "the entry's state or history has a publish or a run
    of it". A manual run is not a run *of a slot*: "a triggered `one_off` entry still fires
    its scheduled slot"; `trigger` publishes "with ... a task id of its own".

    Sequence: entry ``minutely`` (every minute) is paused at 10:00:30; slots 10:01 and 10:02
    are skipped (``paused``). At 10:01:00.2 the operator runs it by hand
    (``trigger(force=True)``); the run executes and the worker records it in the history
    (``completed``, slot 10:01:00.2, the trigger's task id). The entry is resumed; the operator
    backfills 10:01..10:02.

    What happens: 10:02 is sent, but 10:01 is reported ``already_published`` (detail
    ``completed``) and never sent: ``BACKFILL_CLAIM`` matches history items to the slot by
    instant within 0.5 s, whatever their task id, so the manual run 0.2 s after the slot
    counts as the slot's run. Expected: 10:01 ``sent`` (nothing of that slot was published).
    Where: backends/lua.py ``BACKFILL_CLAIM`` (the history scan: ``math.abs(item.slot - slot)
    < 500000`` without comparing ``item.task_id`` to the slot's task id).
    """
    app = make_app(redis_url, {"minutely": {"task": "adv47.job", "schedule": "* * * * *"}})
    apps.append(app)
    clock = FakeClock(START)
    beat = Beat(app, clock)
    beats.append(beat)
    worker = Worker(app, TASK)
    manager = Manager(app, clock=clock)
    beat.run_until(at(30))
    manager.pause("minutely", note="maintenance")
    beat.run_until(at(60.2))
    manual = manager.trigger("minutely", force=True)
    assert manual.task_id is not None
    [message] = queued(redis_client)
    assert worker.start(manual.task_id, message["headers"])
    worker.end(manual.task_id)
    beat.run_until(at(121))
    manager.resume("minutely")

    results = manager.backfill("minutely", at(60), at(120), rate=1000)
    outcomes = {r.slot: (r.outcome, r.detail) for r in results}
    assert outcomes[at(120)][0] == "sent"
    assert outcomes[at(60)][0] == "sent", (
        f"slot 10:01 was never published (skipped: paused), yet backfill says {outcomes[at(60)]}"
        " -- the manual run 0.2 s after it was taken for the slot's run"
    )


# -- 3. a backfill goes on sending the removed definition once the name is added again ---------


def test_a_backfill_keeps_sending_a_removed_definition_once_its_name_is_added_again(
    redis_url: str, redis_client: redis.Redis, apps: list[Celery], beats: list[Beat]
) -> None:
    """Promise (docs/manager.md, "Backfill" outcomes): `skipped:removed` -- "the runtime entry
    was removed while the backfill ran: nothing more of it is sent". "A name added again
    starts afresh" (Bulk changes): the entry added again is a new entry, with its own task and
    arguments.

    Sequence: runtime entry ``sync`` (``adv47.job``, args ``["old"]``, every minute) is paused
    while slots 10:01-10:03 fall due (skipped ``paused``), then resumed. The operator backfills
    10:01-10:03 at 1/s. After the first slot is sent, while the backfill waits for its pace,
    a tenant sync removes ``sync`` and adds it again (``remove`` + ``add``: another task,
    ``adv47.other``, args ``["new"]``) -- the remove-then-add that ``remove_by_tag`` +
    ``add_many`` make.

    What happens: the two remaining slots are ``sent`` as messages of the *removed*
    definition (task ``adv47.job``, args ``["old"]``): the add cleared the state's ``removed``
    mark, which is all ``BACKFILL_CLAIM`` looks at, and the backfill keeps the ``Entry`` it
    read at its start. Expected: ``skipped:removed`` for them (nothing more of the removed
    entry is sent), as when the name is only removed. Where: manager.py ``Manager.backfill``
    / backfill.py ``run_backfill`` (the definition read once, never checked against the
    entry's version or ``defined``), backends/lua.py ``BACKFILL_CLAIM`` (``removed`` only).
    """
    app = make_app(redis_url, {})

    @app.task(name="adv47.other", shared=False)
    def other(*args: Any) -> None:
        """The task of the entry added again."""

    apps.append(app)
    clock = FakeClock(START)
    beat = Beat(app, clock)
    beats.append(beat)
    manager = Manager(app, clock=clock)
    manager.add("sync", "adv47.job", "every 1 minute", args=["old"], tags=["tenants"])
    beat.run_until(at(30))
    manager.pause("sync")
    beat.run_until(at(190))
    manager.resume("sync")
    beat.run_until(at(200))

    swapped: list[bool] = []

    def tenant_sync_while_waiting(_: float) -> None:  # the pace's wait after the first publish
        if not swapped:
            manager.remove("sync")
            manager.add("sync", "adv47.other", "every 1 minute", args=["new"], tags=["tenants"])
            swapped.append(True)

    results = manager.backfill(
        "sync", at(60), at(180), rate=1.0, sleep=tenant_sync_while_waiting, monotonic=lambda: 0.0
    )
    assert swapped
    sent = [(m["headers"]["task"], m["headers"]["argsrepr"]) for m in queued(redis_client)]
    assert [r.outcome for r in results] == ["sent", "skipped:removed", "skipped:removed"], (
        f"after 'sync' was removed (and added again as another entry) the backfill sent the "
        f"removed definition's runs: {[r.outcome for r in results]}, messages {sent}"
    )


# -- 4. an instant out of datetime's range is a traceback, not bad input -----------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--from", "0001-01-01T00:00:00+01:00", "--to", "2026-01-01T00:00"],
        ["--from", "2026-01-01T00:00", "--to", "9999-12-31T23:59:59-01:00"],
    ],
    ids=["from-before-year-1-in-utc", "to-after-year-9999-in-utc"],
)
def test_a_backfill_instant_out_of_range_in_utc_is_one_line_of_bad_input(
    redis_url: str, redis_client: redis.Redis, apps: list[Celery], args: list[str]
) -> None:
    """Promise (docs/cli.md, Conventions): "a mistake is one line on stderr, with no stack
    trace"; `backfill`: "2 for bad input, in one line naming the option, with nothing
    written". docs/manager.md, "Backfill" / Bad input: "`start` after `end` or before 1970
    ... (`BackfillInputError`, a `ConfigError` naming the entry and the field)".

    Sequence: ``celery schedule backfill minutely --from 0001-01-01T00:00:00+01:00 --to
    2026-01-01T00:00`` (an offset that puts the instant before year 1 in UTC), or ``--to
    9999-12-31T23:59:59-01:00`` (after year 9999 in UTC). Both parse as ISO-8601.

    What happens: ``OverflowError: date value out of range`` escapes (exit 1, a traceback on
    the real command line); ``Manager.backfill`` raises the same ``OverflowError`` instead of a
    ``BackfillInputError``. Expected: exit 2 and one ``Error:`` line naming ``--from`` /
    ``--to`` (or the entry's field ``start`` / ``end``), as for ``--from 1969-12-31T23:59``.
    Where: backfill.py ``_utc`` (``moment.astimezone(timezone.utc)`` unguarded), reached from
    ``backfill_slots``; cli/backfill.py ``_moment`` accepts the instant.
    """
    from celery.bin.base import CLIContext
    from click.testing import CliRunner

    from celery_fork_scheduler.cli import schedule

    app = make_app(redis_url, {"minutely": {"task": "adv47.job", "schedule": "* * * * *"}})
    apps.append(app)
    result = CliRunner().invoke(
        schedule,
        ["backfill", "minutely", *args],
        obj=CLIContext(app=app, no_color=True, workdir=None),
    )
    assert result.exit_code == 2 and result.output.startswith("Error:"), (
        f"exit {result.exit_code}, output {result.output!r}, exception {result.exception!r}"
    )
    assert len(result.output.strip().splitlines()) == 1
