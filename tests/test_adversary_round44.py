"""Adversary round 44: the changes of rounds 42-43 and the commits before them (static state
marks, the change fence, ``update`` semantics, ``@periodic`` re-declarations, argument checks,
naive instants, interval offsets, error skips, ownership digests).

Each test's docstring names the promise (with the page of the docs), what happened instead and
where. Each was found failing by round 44 and fixed: round 42's ``static`` mark outlived the
static entry, so it is gone; a reset keeps the fields it clears in ``before_reset`` instead,
and only a replica that runs a static entry of the name puts them back (and drops a
``removed`` mark) at its next claim. Two lambdas are told apart by their code; a count of 0
lists nothing; a naive ``after`` is a ConfigError. Real Redis (conftest fixtures), fake clocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import redis
import replica_helpers
from celery import Celery
from replica_helpers import Beat, schedulers
from runtime_edit_helpers import at, reasons, slots_of, tick_until

from celery_fork_scheduler import ConfigError, Manager, every, periodic
from celery_fork_scheduler.decorators import REGISTRY_ATTRIBUTE
from celery_fork_scheduler.testing import FakeClock

#: A static entry that fires every second (an old release's beat_schedule).
STATIC = {"report": {"task": "reports.static", "schedule": every(1).seconds}}

DAY = 86_400.0


def make_app(redis_url: str, beat_schedule: dict[str, Any] | None = None, **conf: Any) -> Celery:
    return replica_helpers.make_app(redis_url, beat_schedule, main="round44", **conf)


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    made = make_app(redis_url)
    yield made
    made.close()


def retired_static_entry(redis_url: str, clock: FakeClock, *, pause: bool) -> None:
    """An earlier release ran ``report`` as a static entry (its claims wrote ``static=1`` into
    the state), optionally paused it, and was then replaced everywhere by a release whose
    beat_schedule no longer has it: no replica runs it as static any more."""
    old = make_app(redis_url, STATIC)
    beat = Beat(redis_url, clock, old, "old-release")
    try:
        beat.run_for(3)
        if pause:
            Manager(old, clock=clock).pause("report", note="retired")
            beat.run_for(1)
    finally:
        beat.scheduler.close()
        old.close()


# -- change 1: the `static` mark outlives the static entry -------------------------------------


def test_a_runtime_entry_added_under_a_retired_static_name_starts_afresh(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock, layout: str
) -> None:
    """docs/manager.md, Bulk changes: "A name added again starts afresh (no run count, no
    pause, no finished mark, nor held-back run)"; docs/redis-layout.md: `static` exists so that
    a runtime entry "written by an app that does not know the static one" does not reset
    the state of a static entry *a replica runs*.

    Steps: release 1 runs the static entry `report` (every second) and an operator pauses it;
    release 2 drops `report` from `beat_schedule` and every replica runs release 2 (no replica
    runs a static `report` any more). Two days later someone adds a *new* runtime entry
    `report` (every second) with `Manager.add`; release-2 replicas tick.

    What happens: release 1's claims left `static=1` in `scheduler:{report}:state`, and nothing
    ever deletes it until a runtime claim of the name (`_CLAIM_BODY`, backends/lua.py). So
    `PUT_MANY` (store.py: `... and not redis.call('HGET', ..., 'static')`) and, on the Cluster
    path, `RuntimeStore.put` (`fresh = fresh and not self._runs_static(name)`) skip the reset
    (`_FRESH_FIELDS`): the new runtime entry inherits the retired entry's pause, note and run
    count. `add` answers `paused=False, run_count=0`, while `get` right after says paused
    (note "retired") with the old run count, and the new entry never fires: every slot is
    `skipped:paused`.

    Expected: the added entry starts afresh (not paused, no runs) and fires every second.
    """
    retired_static_entry(redis_url, clock, pause=True)
    clock.advance(2 * DAY)
    app = make_app(redis_url)  # release 2: no static `report`
    manager = Manager(app, clock=clock)
    added = manager.add("report", "reports.runtime", every(1).seconds)
    assert (added.paused, added.run_count) == (False, 0)  # what `add` promises
    job = manager.get("report")
    beat = Beat(redis_url, clock, app, "new-release")
    try:
        beat.run_for(3)
    finally:
        beat.scheduler.close()
    published = [o.slot for o in beat.publisher.occurrences if o.entry == "report"]
    assert (job.paused, job.pause_note, job.run_count) == (False, "", 0), (
        f"the new runtime entry inherited the retired static entry's state: paused={job.paused} "
        f"note={job.pause_note!r} run_count={job.run_count} (add answered paused=False, 0 runs)"
    )
    assert published, "the newly added runtime entry never fired (every slot skipped:paused)"


def test_a_removed_runtime_entry_under_a_retired_static_name_is_refused_removed(
    redis_url: str,
    redis_client: redis.Redis,
    clock: FakeClock,
    layout: str,
    skipped: list[tuple[str, datetime, str]],
) -> None:
    """docs/guarantees.md, "A runtime entry is added, changed or removed": "A removed runtime
    entry is marked removed in its state, so a replica that has not seen the removal yet is
    refused its slots (skip reason `removed`)"; docs/manager.md: "A removed entry stops on
    every replica within one refresh" (and fires no slot due after the removal).

    Steps: a retired static entry `report` left `static=1` in its state (release 1 ran it; no
    replica runs it as static now). At 10:00:05 a runtime entry `report` (every minute) is
    added; a replica refreshing every 5 minutes reads it. At 10:00:30, before its first slot,
    the entry is removed. The replica, which has not refreshed yet, asks for 10:01:00.

    What happens: `DELETE_MANY` (store.py: `if own_keys and not redis.call('HGET', ...,
    'static')`) and on the Cluster path `RuntimeStore.delete` (`if self._runs_static(name):
    return True`) see the stale `static` mark and write no `removed` instant (nor the
    expiry): the claim of 10:01:00 is won and the removed entry fires 30 s after its removal
    (and its run count goes on from the retired entry's). Without the stale mark (no release 1)
    the same steps give `removed` for 10:01:00 and publish nothing, as promised.

    Expected: the slot after the removal is refused (`removed`) and not published.
    """
    retired_static_entry(redis_url, clock, pause=False)
    clock.set(at(5))
    manager = Manager(make_app(redis_url), clock=clock)
    manager.add("report", "reports.runtime", every(1).minutes)
    with schedulers(redis_url, fork_scheduler_refresh_interval=300) as make:
        replica = make(clock, "new-release")
        tick_until([replica], clock, at(30), step=1)
        assert manager.remove("report")
        tick_until([replica], clock, at(70), step=1)
        published = slots_of("report", replica)
    assert published == [], (
        f"the removed entry fired {[s.time().isoformat() for s in published]} after its removal "
        f"at 10:00:30; reasons for 10:01: {reasons(skipped, 'report', at(60))}; state "
        f"{redis_client.hgetall('scheduler:{report}:state')}"
    )
    assert reasons(skipped, "report", at(60)) == ["removed"]


# -- change 4: @periodic re-declarations compared by qualified name ------------------------------


def test_two_periodic_of_one_name_with_different_lazy_kwargs_are_refused(app: Celery) -> None:
    """docs/decorators.md, "One task, several schedules": "two `@periodic` of one name, say
    stacked without `name=`, are a `ConfigError` naming the entry and the field `name`";
    docs/manager.md: lazy (callable) `args`/`kwargs` are allowed in static entries.

    Steps: one task, two stacked `@periodic("every 5 minutes", kwargs=lambda: {...})` without
    `name=`, one for region `eu`, one for region `us` (a copy-paste of the docs' example with
    lazy kwargs).

    What happens: `_comparable` (decorators.py) stands a callable for
    `module.qualname`; both lambdas are `<module>.<...>.<lambda>`, so the two definitions
    compare equal and the second silently replaces the first: the registry holds only the
    `us` entry, the `eu` runs never happen and nothing is raised (the silent drop round 42
    meant to end).

    Expected: a `ConfigError` naming the entry `reports.refresh` and the field `name` (or
    both entries kept).
    """

    @app.task(name="reports.refresh")
    def refresh(region: str) -> None: ...

    inner = periodic("every 5 minutes", kwargs=lambda: {"region": "eu"})
    outer = periodic("every 5 minutes", kwargs=lambda: {"region": "us"})
    try:
        outer(inner(refresh))
    except ConfigError as refused:
        assert (refused.entry, refused.field) == ("reports.refresh", "name")
        return
    registry = app.__dict__[REGISTRY_ATTRIBUTE]
    regions = sorted(definition["kwargs"]()["region"] for definition in registry.values())
    assert regions == ["eu", "us"], (
        f"two different @periodic of one name were taken for one: only {regions} is scheduled"
    )


# -- change 5: counts ----------------------------------------------------------------------------


def test_history_with_a_count_of_zero_lists_nothing(redis_url: str, clock: FakeClock) -> None:
    """docs/manager.md: "The counts of `next_runs`, `history`, `history_items` and `outages`
    are whole numbers from 0 to 10 000"; docs/events.md: "`history(name, n=20)` returns up to
    `n` `RunRecord` items".

    Steps: a static entry fires a few times (its history holds items); `history(name, 0)` and
    `history_items(name, 0)` (0 is accepted by the new check).

    What happens: `history_items` (manager.py) reads `LRANGE key 0 max(n, 1) - 1`, so a count
    of 0 lists one item (`outages(0)` likewise); `next_runs(name, 0)` lists none.

    Expected: no item for a count of 0 (or 0 refused as a `ConfigError`).
    """
    app = make_app(redis_url, STATIC)
    beat = Beat(redis_url, clock, app, "history")
    try:
        beat.run_for(3)
    finally:
        beat.scheduler.close()
    manager = Manager(app, clock=clock)
    assert len(manager.history("report", 5)) >= 3
    try:
        items = manager.history_items("report", 0)
        records = manager.history("report", 0)
    except ConfigError:
        return
    assert (len(items), len(records)) == (0, 0), (
        f"a count of 0 listed {len(items)} history item(s) and {len(records)} record(s)"
    )


def test_next_runs_with_a_naive_after_is_a_config_error_naming_after(app: Celery) -> None:
    """docs/manager.md: "The counts of `next_runs`, ... are whole numbers from 0 to 10 000,
    `after` an aware `datetime`, ...: anything else is a `ConfigError` naming the argument."

    Steps: `next_runs("job", 3, after=datetime(2026, 1, 1))` (naive: a common slip).

    What happens: `Manager.next_runs` (manager.py) checks only `isinstance(after, datetime)`;
    the naive value reaches the slot maths, which raise `ScheduleError` ("naive datetime ...:
    expected an aware datetime"): not a `ConfigError` (`except ConfigError` around the call
    does not catch it) and no `field`.

    Expected: a `ConfigError` with `field == "after"`.
    """
    manager = Manager(app)
    manager.add("job", "proj.job", "every 5 minutes")
    try:
        manager.next_runs("job", 3, after=datetime(2026, 1, 1))
    except ConfigError as refused:
        assert refused.field == "after"
    except Exception as exc:  # what escapes is the finding
        raise AssertionError(
            f"a naive `after` raised {type(exc).__name__} (not a ConfigError naming 'after'): {exc}"
        ) from None
    else:
        raise AssertionError("a naive `after` was accepted")
