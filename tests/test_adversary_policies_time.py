"""Outside adversarial review of issues 14 (policies through retries) and 15 (time correctness).

Each test reproduces a promise of the docs or the issues that HEAD breaks. Expected values are
derived independently: solar events straight from ``ephem`` with Celery's documented observer
settings (never from ``celery_fork_scheduler.schedules``); worker behaviour from the docs' words.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import ephem
import pytest
from celery import Celery
from celery.app.task import Context
from celery.exceptions import Ignore

from celery_fork_scheduler import signals
from celery_fork_scheduler.ids import ENTRY_HEADER, OVERLAP_HEADER, SLOT_HEADER, task_id_for
from celery_fork_scheduler.schedules import Solar
from celery_fork_scheduler.worker import WorkerHooks

UTC = timezone.utc


# -- issue 15: a solar day with two events loses the second ---------------------------------------


def _ephem_events(
    horizon: str, use_center: bool, lat: float, lon: float, start: datetime, end: datetime
) -> list[datetime]:
    """Every setting of the sun below ``horizon`` in [start, end), with Celery's observer
    (elevation 0, pressure 0), found by walking ephem forward: independent of the project."""
    observer = ephem.Observer()
    observer.lat, observer.lon = str(lat), str(lon)
    observer.elev, observer.pressure, observer.horizon = 0, 0, horizon
    found: list[datetime] = []
    moment = start
    while True:
        observer.date = ephem.Date(moment.replace(tzinfo=None))
        event = observer.next_setting(ephem.Sun(), use_center=use_center)
        instant = event.datetime().replace(tzinfo=UTC)
        if instant >= end:
            return found
        found.append(instant)
        moment = instant + timedelta(seconds=1)


@pytest.mark.parametrize(
    ("place", "lat", "lon", "window_start"),
    [
        # Helsinki: solar day starts 22:20:14Z (lon 24.94 -> 1 h 39 m 46 s before 00:00Z).
        # Nautical dusks: 08-01 22:21:35Z (just after the day's start) and 08-02 21:55:10Z
        # (just before its end): two in one solar day.
        ("helsinki", 60.17, 24.94, datetime(2026, 8, 2, 12, 0, tzinfo=UTC)),
        # Oslo: solar day starts 23:17:00Z (lon 10.75 -> 43 min before 00:00Z); the dusk of
        # 07-30 falls after 23:17Z and that of 07-31 (23:14:06Z) before the next start.
        ("oslo", 59.91, 10.75, datetime(2026, 7, 31, 12, 0, tzinfo=UTC)),
    ],
)
def test_solar_dusk_nautical_is_not_lost_when_a_solar_day_holds_two(
    place: str, lat: float, lon: float, window_start: datetime
) -> None:
    """Promise (docs/schedules.md, native schedules): ``solar`` is "Celery's solar maths"; the
    only stated difference is that slots "are whole seconds, searched once per solar day from
    its start ... Celery's beat searches from its last run, which moves the event by
    milliseconds". Issue 15: "solar entries fire".

    Mechanism: ``_solar_slot`` keeps only the *first* event after local mean midnight of each
    solar day. In summer at 60°N the nautical dusk sits near local midnight and moves ~25 min
    a day earlier, so one solar day holds two dusks (one just after its start, one just before
    its end) and the second is dropped: in Helsinki (a capital, not a polar edge) the nautical
    dusk of 2026-08-02 never fires, while Celery's beat (searching from its last run) fires it.
    Expected instant: ephem directly, horizon -12° (Celery's ``dusk_nautical``), centre of the
    disc, pressure 0.
    """
    window_end = window_start + timedelta(hours=12)
    expected = _ephem_events("-12", True, lat, lon, window_start, window_end)
    assert len(expected) == 1, expected  # the reference itself: one dusk in the window
    schedule = Solar(event="dusk_nautical", lat=lat, lon=lon)
    got = list(schedule.slots(window_start, window_end))
    assert len(got) == 1, f"{place}: ephem has a nautical dusk at {expected[0]}, slots {got}"
    assert abs(got[0] - expected[0]) <= timedelta(seconds=2)


# -- issue 14: a retry attempt skipped at start ---------------------------------------------------


class _StubTask:
    """What the worker hooks read of a task: its app and request (headers, retries)."""

    def __init__(self, app: Celery, entry: str, slot: datetime, task_id: str, retries: int):
        self.app = app
        self.request = Context(
            {
                ENTRY_HEADER: entry,
                SLOT_HEADER: slot.isoformat(),
                OVERLAP_HEADER: "skip",
                "id": task_id,
                "hostname": "w1@host",
                "retries": retries,
            }
        )


@pytest.fixture
def hooks_app(redis_url: str) -> Iterator[Celery]:
    app = Celery("adversary", set_as_current=False, broker="memory://")
    app.conf.update(
        timezone="UTC", fork_scheduler_redis_url=redis_url, fork_scheduler_singleton_lease=3
    )
    yield app
    app.close()


def _retried_run_loses_its_marker(app: Celery, redis_client: Any) -> tuple[WorkerHooks, str]:
    """Drive the real hooks on a real Redis through: slot 1 claimed (runs 1, marker R1);
    attempt 1 of R1 runs and calls ``self.retry(countdown=...)``; while the retry waits in the
    broker with no worker (restart, workers down longer than the lease) the marker expires and
    slot 2 is claimed (runs 2, marker R2) and runs; then attempt 2 of R1 starts."""
    hooks = WorkerHooks(app)
    keys = hooks.keys
    slot1 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    slot2 = slot1 + timedelta(seconds=10)
    r1, r2 = task_id_for("single", slot1), task_id_for("single", slot2)
    # the claim of slot 1 (what CLAIM writes): one run counted, the marker for R1
    redis_client.hset(keys.state("single"), mapping={"runs": 1})
    redis_client.set(keys.running("single"), r1, px=3000)
    first = _StubTask(app, "single", slot1, r1, retries=0)
    hooks.on_prerun(r1, first)
    hooks.prevent(r1)  # before_start: executes
    hooks.on_postrun(r1, first, state="RETRY")
    # the retry waits in the broker longer than the lease; slot 2 is claimed meanwhile
    redis_client.delete(keys.running("single"))
    redis_client.hincrby(keys.state("single"), "runs", 1)
    redis_client.set(keys.running("single"), r2, px=3000)
    second = _StubTask(app, "single", slot1, r1, retries=1)
    hooks.on_prerun(r1, second)
    with pytest.raises(Ignore):
        hooks.prevent(r1)  # the body of attempt 2 is kept from running
    hooks.on_postrun(r1, second, state="IGNORED")
    return hooks, r1


def test_a_retry_attempt_skipped_at_start_does_not_give_back_a_run_that_executed(
    hooks_app: Celery, redis_client: Any
) -> None:
    """Promise (docs/guarantees.md via issue 14; docs/schedules.md): ``max_runs`` — "the entry
    stops after this many runs, counted in Redis"; docs/singleton.md: a run skipped at start
    "is given back (it does not count towards max_runs)" — because it never executed.

    Mechanism: ``on_prerun`` re-checks the marker on *every* attempt. Attempt 2 of a retried
    run whose marker expired while the retry waited in the broker finds the next slot's run
    holding it and is skipped ``busy``; ``_record_skip`` then runs RECORD_SKIP with counted
    "1", which decrements ``runs`` — although attempt 1 of that run did execute its body. Two
    runs executed (R1's first attempt, R2), yet the count says 1: with ``max_runs=2`` a third
    run is claimed.
    """
    hooks, _ = _retried_run_loses_its_marker(hooks_app, redis_client)
    runs = int(redis_client.hget(hooks.keys.state("single"), "runs"))
    assert runs == 2, f"R1 executed its first attempt and R2 ran: two runs, the count says {runs}"


def test_a_retried_run_whose_later_attempt_is_skipped_still_gets_one_final_outcome(
    hooks_app: Celery, redis_client: Any
) -> None:
    """Promise (docs/events.md): "One ``job_started`` and one final outcome per run, whatever
    the pool." (issue 14 item 10: "One job_started and one final outcome per run").

    Mechanism: attempt 1 sends ``job_started`` (retries 0) and retries; attempt 2 finds another
    run holding the marker and is skipped at start, and a skipped run "sends no job signal".
    The run therefore has a ``job_started`` and never a ``job_completed``/``job_failed``: a
    receiver pairing starts with ends (a running-jobs gauge, a duration metric) leaks it.
    """
    started: list[str] = []
    ended: list[str] = []

    def on_start(task_id: str, **_: Any) -> None:
        started.append(task_id)

    def on_end(task_id: str, **_: Any) -> None:
        ended.append(task_id)

    signals.job_started.connect(on_start, weak=False)
    signals.job_completed.connect(on_end, weak=False)
    signals.job_failed.connect(on_end, weak=False)
    try:
        _, r1 = _retried_run_loses_its_marker(hooks_app, redis_client)
    finally:
        signals.job_started.disconnect(on_start)
        signals.job_completed.disconnect(on_end)
        signals.job_failed.disconnect(on_end)
    assert started == [r1]
    assert ended == [r1], "job_started was sent for the run, but no final outcome ever"


# -- unconfirmed suspicions (not tests) -----------------------------------------------------------
#
# * Re-added entry + a stale run of the removed one: a run of the old definition that starts after
#   the name was re-added and the new definition claimed a slot is skipped ``busy`` and RECORD_SKIP
#   decrements the *new* state's ``runs`` (reset to 0 by the re-add) to -1, so a re-added
#   ``max_runs``/``one_off`` entry may run once more than allowed. Not reproduced (timing).
# * ``P{entry}:buffered`` has no expiry. When the running run's worker dies, the marker expires but
#   the held message stays; a ``Manager.trigger`` in between (SET NX on the free marker) means the
#   manual run's RELEASE hands the marker to that stale held slot and publishes it (runs +1), where
#   docs/singleton.md says the next claim "supersedes it". Whether this breaks a promise is unclear.
# * Prefork: ``_received`` lives in the pool's parent, but ``_forget`` runs in the child's
#   ``on_postrun``; the parent keeps heartbeating finished runs until its next ``task_received``.
#   Harmless while HEARTBEAT/CAP_HEARTBEAT are compare-and-set, but a parent-side ``task_failure``
#   for a later attempt could read a stale Run (``started`` of the first receipt). Unconfirmed.
# * Solar sunrise/dawn at high latitudes differ from an ephem walk by one second on some days
#   (search start moves ephem's root by ms): documented, not counted.
# * Checked and found consistent (no test): next_slot/previous_slot of cron against cronsim walls
#   mapped through the DST rule, around every 2024-2026 transition of Lord Howe, Santiago, Havana,
#   Chatham, St Johns, Gaza, Cairo, Asuncion, Apia and Berlin (5- and 6-field, ``L``, ``LW``,
#   ``6L``, ``sun#1``, seconds steps), probes at slots ±1 µs: 0 differences; L/LW/#/Feb 29 with
#   weekdays in UTC 2000-2100 against cronsim: 0 differences.
