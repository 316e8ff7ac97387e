"""Adversary round 42: error paths and bad input (Manager, CLI, @periodic).

Each test's docstring names the promise, what happens instead and where. Every test here was
found failing by round 42, and fixed: a static entry's claims mark its state ``static``, which
a runtime write of the same name (by an app that does not know it) neither resets nor marks
removed; ``update`` lifts only what ``singleton=False``, ``one_off=False`` and
``timezone=None`` say; ``@periodic`` takes its keys as ``beat_schedule`` does and refuses a
name taken; counts, instants and ``--within`` are checked; offsets beyond a timedelta are a
``ScheduleError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import redis
import replica_helpers
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result
from replica_helpers import Beat

from celery_fork_scheduler import ConfigError, Manager, every, periodic
from celery_fork_scheduler.cli import schedule as schedule_cli
from celery_fork_scheduler.errors import ForkSchedulerError
from celery_fork_scheduler.testing import FakeClock

UTC = timezone.utc

#: A static entry that fires every second, with a run limit.
STATIC = {"report": {"task": "reports.static", "schedule": every(1).seconds, "max_runs": 100}}


def make_app(redis_url: str, beat_schedule: dict[str, Any] | None = None, **conf: Any) -> Celery:
    return replica_helpers.make_app(redis_url, beat_schedule, main="round42", **conf)


def run_cli(app: Celery, *args: str) -> Result:
    obj = CLIContext(app=app, no_color=True, workdir=None)
    return CliRunner().invoke(schedule_cli, list(args), obj=obj)


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    made = make_app(redis_url)
    yield made
    made.close()


@pytest.fixture
def manager(app: Celery, clock: FakeClock) -> Manager:
    return Manager(app, clock=clock)


# -- a runtime write under a static entry's name -----------------------------------------------


@pytest.mark.parametrize("bulk", [False, True], ids=["add", "add_many"])
def test_a_runtime_add_under_a_static_name_keeps_the_static_entrys_pause_and_runs(
    redis_url: str, clock: FakeClock, layout: str, bulk: bool
) -> None:
    """docs/manager.md: "A runtime entry never replaces a static one of the same name, even
    when it was written by an app that does not know the static entry: beat keeps the static
    entry"; docs/guarantees.md: a pause "survives restarts of every replica", and `max_runs`
    holds across the cluster.

    The static entry `report` (every second, `max_runs=100`) is paused by an operator. A
    Manager of another app (an admin tool, a web UI that does not import the beat_schedule)
    adds a runtime entry `report`. That write goes through `RuntimeStore.put`, which treats
    the name as a *new runtime entry* and "starts it afresh" (`_start_afresh`, store.py, and
    PUT_MANY's reset): it deletes `paused`, `pause_note`, `paused_at`, `runs` and `finished`
    from the shared state hash `scheduler:{report}:state`. The static entry, which beat keeps,
    loses its pause and its run count: it starts firing again on every replica, and its
    `max_runs` budget starts from zero.

    Expected: the static entry's state is untouched (still paused, run count kept) and it
    publishes nothing while paused.
    """
    beat = Beat(redis_url, clock, make_app(redis_url, STATIC), "round42-a")
    try:
        beat.run_for(3)
        ours = Manager(make_app(redis_url, STATIC), clock=clock)
        runs = ours.get("report").run_count
        assert runs >= 3
        ours.pause("report", note="upstream API down")
        beat.run_for(1)
        beat.publisher.clear()

        other = Manager(make_app(redis_url), clock=clock)  # knows no static entry
        if bulk:
            other.add_many([{"name": "report", "task": "reports.impostor", "schedule": 1.0}])
        else:
            other.add("report", "reports.impostor", every(1).seconds)
        beat.run_for(3)

        job = ours.get("report")
        assert job.task == "reports.static"  # beat keeps the static entry, as promised
        published = [o.slot for o in beat.publisher.occurrences if o.entry == "report"]
        assert published == [], f"the paused static entry fired {len(published)} times"
        assert (job.paused, job.pause_note) == (True, "upstream API down"), (
            "the runtime add under the static name cleared the static entry's pause"
        )
        assert job.run_count == runs, "the static entry's run count was reset"
    finally:
        beat.scheduler.close()


@pytest.mark.parametrize("bulk", [False, True], ids=["remove", "remove_many"])
def test_removing_a_runtime_entry_named_like_a_static_one_leaves_the_static_state_alone(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock, layout: str, bulk: bool
) -> None:
    """docs/manager.md: static entries' "state (high-water mark, run counter, pause) is in
    Redis and survives restarts"; a runtime entry of the same name never replaces them.

    A Manager of an app that does not know the static entry `report` adds, then removes, a
    runtime entry `report` (`RuntimeStore.delete`, store.py). The removal marks the *shared*
    state hash `removed` and puts the retention expiry (one day) on the static entry's own
    keys: its state (high-water mark, run count, pause) and its history. So a day later the
    static entry's high-water mark, counters and any pause made meanwhile vanish; until then
    everything that checks `removed` treats the static entry as a removed runtime entry
    (`RECORD_OUTCOME` no longer pauses it on failure, `BACKFILL_CLAIM` refuses every slot as
    `skipped:removed`).

    Expected: the state hash of a static entry carries no `removed` mark and no expiry.
    """
    beat = Beat(redis_url, clock, make_app(redis_url, STATIC), "round42-b")
    try:
        beat.run_for(2)
        other = Manager(make_app(redis_url), clock=clock)
        other.add("report", "reports.impostor", every(1).seconds)
        if bulk:
            other.remove_many(["report"])
        else:
            other.remove("report")
        beat.run_for(2)
        state = "scheduler:{report}:state"
        assert redis_client.hget(state, "removed") is None, (
            "the static entry's state is marked removed"
        )
        assert redis_client.ttl(state) == -1, (
            f"the static entry's state expires in {redis_client.ttl(state)} s"
        )
        assert redis_client.ttl("scheduler:{report}:history") == -1, (
            "the static entry's history expires"
        )
    finally:
        beat.scheduler.close()


# -- update(timezone=None) -------------------------------------------------------------------


def test_update_timezone_none_leaves_schedule_and_exclusions_in_one_zone(
    manager: Manager,
) -> None:
    """docs/schedules.md: "A slot is excluded when its date **in the entry's time zone**"
    matches an item; docs/manager.md: `update` changes only the fields given.

    An entry added with `"30 8 * * *"`, `timezone="Asia/Tokyo"` and `exclude=["2026-12-25"]`
    fires at 08:30 Tokyo and skips the 25th in Tokyo. `update(name, timezone=None)` (drop the
    override) stores the entry without its `timezone` key but keeps the zone baked into the
    stored schedule dict (`"tz": "Asia/Tokyo"`, `stored_fields`, entry.py; `_changed`,
    manager.py). The rebuilt entry then fires at 08:30 *Tokyo* while its exclusion dates are
    read in the app's zone (UTC): the slot at 08:30 on the 25th in Tokyo (12-24 23:30Z) now
    fires, and the slot on the 26th in Tokyo (12-25 23:30Z) is skipped instead.

    Expected: one zone for both — either the schedule follows the app's zone as the
    exclusions do, or the exclusions keep following the schedule's zone (or the call is
    refused): the slot on the 25th in the zone the schedule fires in is the one excluded.
    """
    manager.add(
        "tokyo",
        "proj.report",
        "30 8 * * *",
        timezone="Asia/Tokyo",
        exclude=["2026-12-25"],
    )
    manager.update("tokyo", timezone=None)
    job = manager.get("tokyo")
    zone = job.schedule.zone
    slots = manager.next_runs("tokyo", 3, after=datetime(2026, 12, 23, 12, tzinfo=UTC))
    on_the_25th = [s for s in slots if s.astimezone(zone).date().isoformat() == "2026-12-25"]
    excluded = manager.excluded_runs("tokyo", slots)
    assert excluded == on_the_25th, (
        f"the schedule fires in {zone.key} (slots {[s.isoformat() for s in slots]}), but the "
        f"excluded slot is {[s.isoformat() for s in excluded]}: the exclusions switched zone"
    )


# -- @periodic: strings where lists are expected, names given twice ---------------------------


def test_periodic_tags_given_as_one_string_is_one_tag_not_letters(redis_url: str) -> None:
    """docs/decorators.md: `@periodic` takes the entry keys of `beat_schedule`, and "a bad
    value raises ConfigError at import". A `beat_schedule` entry and `Manager.add` both take
    `tags="reports"` as the one tag `reports`.

    `@periodic(..., tags="reports")` runs `list(tags)` (decorators.py, `periodic`) before the
    check, so the entry is tagged with the letters `r`, `e`, `p`, `o`, `t`, `s`:
    `pause(tag="reports")`, `jobs("reports")` and `--tag reports` never find it. Likewise
    `args="abc"` becomes the three arguments `'a', 'b', 'c'` where `beat_schedule` and
    `Manager.add` refuse a string (`field 'args': must be a list or tuple`).

    Expected: `tags="reports"` is the tag `reports` (or a ConfigError naming `tags`), and
    `args="abc"` is a ConfigError naming `args`.
    """
    app = make_app(redis_url)

    @app.task(name="reports.refresh")
    def refresh() -> None: ...

    try:
        periodic("every 5 minutes", name="tagged", tags="reports")(refresh)
    except ConfigError as refused:
        assert refused.field == "tags"
    else:
        tags = Manager(app).get("tagged").tags
        assert tags == frozenset({"reports"}), f"tags='reports' became the tags {sorted(tags)}"
    with pytest.raises(ConfigError) as refused_args:
        periodic("every 5 minutes", name="lettered", args="abc")(refresh)
    assert refused_args.value.field == "args"


def test_periodic_twice_under_one_name_is_an_error_not_a_silent_drop(redis_url: str) -> None:
    """docs/decorators.md, "One task, several schedules": stack the decorator, "give each
    entry its own name"; docs/guarantees.md: a bad entry is a `ConfigError` naming the entry
    and the field.

    Two `@periodic` on one task without `name=` (both default to the task name), or two tasks
    given the same `name=`, write the same key of the app's registry
    (`registry[entry_name] = definition`, decorators.py): the later decorator silently
    replaces the earlier one. Here the every-10-minutes schedule is dropped without a word;
    beat, `Manager.jobs()` and `Manager.check()` only ever see the every-5-minutes one.

    Expected: the second registration under a name already taken raises `ConfigError` naming
    the entry and the field `name` (or both schedules are kept).
    """
    app = make_app(redis_url)

    @app.task(name="reports.refresh")
    def refresh() -> None: ...

    inner = periodic("every 10 minutes")
    outer = periodic("every 5 minutes")
    try:
        outer(inner(refresh))
    except ConfigError as refused:
        assert refused.entry == "reports.refresh" and refused.field == "name"
        return
    schedules = sorted(job.schedule_text for job in Manager(app).jobs())
    assert schedules == ["every 10 minutes", "every 5 minutes"], (
        f"one of the two @periodic schedules was dropped silently: {schedules}"
    )


# -- CLI and Manager read calls with bad numbers -------------------------------------------------


@pytest.mark.parametrize("within", ["nan", "inf", "1e400"])
def test_cli_replicas_within_not_finite_is_a_one_line_error(app: Celery, within: str) -> None:
    """docs/cli.md, Conventions: "a mistake is one line on stderr, with no stack trace";
    bad input exits 2.

    `celery schedule replicas --within nan` (or `inf`, `1e400`): the option is a
    `click.FloatRange(min=0)` (cli/inspection.py), which lets NaN and infinity through; with
    no replica seen, the text output calls `span(within)` (cli/output.py), whose
    `int(abs(seconds))` raises `ValueError: cannot convert float NaN to integer` /
    `OverflowError`: the command dies with a traceback, exit 1.

    Expected: a one-line error naming `--within`, exit 2 (or a finite answer, exit 0).
    """
    result = run_cli(app, "replicas", "--within", within)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"--within {within}: {type(result.exception).__name__}: {result.exception}"
    )
    assert result.exit_code in (0, 2), result.output


def test_manager_read_calls_refuse_a_bad_count_or_instant_cleanly(manager: Manager) -> None:
    """docs/manager.md and the round's promise: bad input to the Manager API is an error
    naming the field (a `ConfigError`), never a raw `TypeError`/`AttributeError`, nor a Redis
    error that reads as an outage.

    - `history(name, 2.5)` sends `LRANGE key 0 1.5` (manager.py, `history_items`): Redis
      answers `ResponseError: value is not an integer or out of range`, a `redis.RedisError`
      that the CLI and the web UI present as "cannot reach Redis";
    - `history(name, None)` and `next_runs(name, "3")`: `TypeError` from `max(n, 1)`;
    - `next_runs(name, 2.5)`: `TypeError` from `range(n)` (`_first_slots`);
    - `next_runs(name, after="2026-01-01")`: `AttributeError: 'str' object has no attribute
      'tzinfo'`.

    Expected: each is a `ConfigError` (a `ForkSchedulerError`) naming what was wrong.
    """
    manager.add("job", "proj.job", "every 5 minutes")
    calls = {
        "history n=2.5": lambda: manager.history("job", 2.5),  # type: ignore[arg-type]
        "history n=None": lambda: manager.history("job", None),  # type: ignore[arg-type]
        "next_runs n=2.5": lambda: manager.next_runs("job", 2.5),  # type: ignore[arg-type]
        "next_runs n='3'": lambda: manager.next_runs("job", "3"),  # type: ignore[arg-type]
        "next_runs after=str": lambda: manager.next_runs(
            "job",
            3,
            after="2026-01-01",  # type: ignore[arg-type]
        ),
    }
    raw = {}
    for label, call in calls.items():
        try:
            call()
        except ForkSchedulerError:
            continue
        except Exception as exc:  # what escapes is the finding
            raw[label] = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    assert raw == {}, raw


# -- update changes a field it was not given ---------------------------------------------------


def test_update_one_off_false_keeps_the_entrys_max_runs(manager: Manager) -> None:
    """docs/manager.md, `add` and `update`: `update` changes "only these fields"; docs/
    schedules.md: "`one_off`: `True` is `max_runs=1`". `add(..., max_runs=3, one_off=False)`
    stores `max_runs=3`.

    An entry added with `max_runs=3` (never one-off) is updated with `one_off=False` (an
    admin form or a sync job that always sends its booleans). `_changed` (manager.py) drops
    the stored `max_runs` whenever `one_off` is among the changes and `max_runs` is not, so
    the entry silently loses its run limit: `max_runs` becomes `None` and it fires for ever
    (`update_many` does the same). The same rule turns a `buffer_all` entry into
    `overlap="allow"` on `update(singleton=False)`.

    Expected: `one_off=False` leaves a run limit that did not come from `one_off` alone
    (`max_runs` stays 3), as `add` with the same keys does.
    """
    manager.add("limited", "proj.job", "every 5 minutes", max_runs=3)
    job = manager.update("limited", one_off=False)
    assert job.max_runs == 3, f"update(one_off=False) changed max_runs 3 -> {job.max_runs}"
    assert manager.get("limited").max_runs == 3


def test_update_singleton_false_lifts_only_skip(manager: Manager) -> None:
    """Found by round 42 (its docstring above), fixed with it: `update(singleton=False)` turned
    a `buffer_all` entry into `overlap="allow"`. It lifts `"skip"` (what `singleton=True` is)
    and leaves the other policies; `one_off=False` lifts a limit of one run."""
    manager.add("queued", "proj.job", "every 5 minutes", overlap="buffer_all")
    manager.add("single", "proj.job", "every 5 minutes", singleton=True)
    manager.add("once", "proj.job", "every 5 minutes", one_off=True)
    assert manager.update("queued", singleton=False).overlap == "buffer_all"
    assert manager.update("single", singleton=False).overlap == "allow"
    assert manager.update("once", one_off=False).max_runs is None
    assert manager.update("queued", singleton=True).overlap == "skip"


# -- schedule constructors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "delta",
    [{"seconds": float("nan")}, {"seconds": float("inf")}, {"days": 10**9}],
    ids=["nan", "inf", "huge"],
)
def test_interval_offset_with_a_bad_value_is_a_schedule_error(delta: dict[str, float]) -> None:
    """docs/schedules.md: `.offset(**timedelta_keywords)` shifts every slot by a phase; bad
    input to a schedule constructor is a `ScheduleError` (a `ConfigError` naming the field
    once in an entry), never a raw `ValueError`/`OverflowError`.

    `every(5).minutes.offset(seconds=float("nan"))` raises `ValueError: cannot convert float
    NaN to integer`, `offset(seconds=inf)` and `offset(days=10**9)` raise `OverflowError`:
    `Interval.offset` (schedules/interval.py) turns only a `TypeError` from `timedelta(...)`
    into a `ScheduleError`. So a `beat_schedule` module (or a `@periodic` argument) with such
    an offset dies at import with a traceback instead of the one-line error beat promises.

    Expected: a `ScheduleError` naming the offset.
    """
    with pytest.raises(ForkSchedulerError):
        every(5).minutes.offset(**delta)


# -- reported by round 42 without a test ("minor things"), fixed --------------------------------


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda m: m.add_many(None), "definitions"),
        (lambda m: m.add_many({"a": {"task": "t", "schedule": 5.0}}), "definitions"),
        (lambda m: m.update_many(None), "changes"),
        (lambda m: m.remove_many(None), "names"),
        (lambda m: m.remove_many(["a"], expected_versions=[1]), "expected_versions"),
        (lambda m: m.update_many([{"name": "a"}], expected_versions=[1]), "expected_versions"),
    ],
    ids=["add_many None", "add_many dict", "update_many None", "remove_many None",
         "remove_many versions list", "update_many versions list"],
)  # fmt: skip
def test_bulk_calls_refuse_what_is_not_a_list_of_items(
    manager: Manager, call: Any, field: str
) -> None:
    """Bad arguments to the bulk calls were a raw `TypeError` / `AttributeError`, and a
    `beat_schedule`-shaped dict given to `add_many` an error about its first key."""
    manager.add("a", "proj.job", "every 5 minutes")
    with pytest.raises(ConfigError) as refused:
        call(manager)
    errors = getattr(refused.value, "errors", [refused.value])
    assert field in [error.field for error in errors], str(refused.value)
    assert manager.get("a").version == 1


def test_a_beat_schedule_entry_named_only_whitespace_is_refused_at_load() -> None:
    """A `beat_schedule` entry named `" "` loaded, though no Manager call can name it."""
    from celery_fork_scheduler.entry import entry_from_config

    with pytest.raises(ConfigError):
        entry_from_config(" ", {"task": "t", "schedule": 5.0}, default_timezone=UTC)
