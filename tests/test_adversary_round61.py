"""Adversary round 61: drop-in compatibility with Celery's own beat (``celery.beat.Scheduler``).

Every test here was found failing by round 61 and fixed with this file; each docstring tells the
scenario as it failed.

Each test feeds one ``beat_schedule`` entry to both schedulers -- Celery's beat (its
``ScheduleEntry`` / ``Scheduler.apply_async``, driven on an injected ``app.now``) and this
package's ``Scheduler`` (a FakeClock, a real Redis for the claims) -- and asserts that the
fork does what Celery does. Every test FAILS on HEAD; the docstrings name the promise
(docs/migration.md "What stays": "``beat_schedule`` works as it is ... with ``args``,
``kwargs`` and ``options``"; docs/schedules.md "Celery's native schedules": "A
``beat_schedule`` written for Celery's default scheduler works unchanged"), what Celery does,
what the fork does instead, and where.

What was compared and held (no test) is listed in the round's report.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from celery import Celery
from celery.beat import BeatLazyFunc
from celery.beat import Scheduler as CeleryBeat
from celery.schedules import crontab, schedstate, schedule
from kombu.utils import json as kombu_json
from replica_helpers import make_app, make_scheduler

from celery_fork_scheduler import ConfigError
from celery_fork_scheduler.publishing import CeleryPublisher
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

UTC = timezone.utc


# -- helpers ---------------------------------------------------------------------------------


def celery_beat_fires(app: Celery, name: str, start: datetime, end: datetime) -> list[str]:
    """The instants (UTC, ISO) at which Celery's own beat sends entry ``name`` of
    ``app.conf.beat_schedule`` between ``start`` and ``end``: Celery's ``Scheduler`` builds the
    entry (``_maybe_entry``, which binds the schedule to the app as beat does), then its
    ``is_due`` / ``_next_instance`` loop runs on an injected ``app.now``."""
    now = [start]
    app.now = lambda: now[0]  # type: ignore[method-assign]
    beat = CeleryBeat(app=app, lazy=True)
    entry = beat._maybe_entry(name, app.conf.beat_schedule[name])
    fired: list[str] = []
    while now[0] < end:
        due, wait = entry.is_due()
        if due:
            fired.append(now[0].astimezone(UTC).isoformat())
            entry = entry._next_instance()
        now[0] += timedelta(seconds=min(max(wait, 1.0), 60.0))
    return fired


def fork_fires(
    redis_url: str, app: Celery, start: str, end: datetime, name: str
) -> list[str]:
    """The slots this package's Scheduler publishes for ``name`` on a fake clock from ``start``
    to ``end`` (waking up at each wake-up it asks for)."""
    clock = FakeClock(start)
    publisher = RecordingPublisher()
    scheduler = make_scheduler(redis_url, clock, publisher=publisher, app=app)
    try:
        while clock.now < end:
            sleep = scheduler.tick()
            clock.advance(min(max(sleep, 0.001), 60.0))
        scheduler.tick()
    finally:
        scheduler.close()
    return publisher.fired(name)


@pytest.fixture
def broker_url(redis_url: str) -> Iterator[str]:
    """A Redis broker of its own (database 1 of the session's server), emptied."""
    url = redis_url.rsplit("/", 1)[0] + "/1"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    yield url


def queued(broker_url: str) -> dict[str, list[dict[str, Any]]]:
    """Every Kombu message waiting in the broker, per queue (oldest first), then empties it."""
    client = redis.Redis.from_url(broker_url)
    try:
        found: dict[str, list[dict[str, Any]]] = {}
        for key in client.keys("*"):
            if client.type(key) == b"list":
                found[key.decode()] = [
                    kombu_json.loads(raw) for raw in reversed(client.lrange(key, 0, -1))
                ]
        client.flushdb()
        return found
    finally:
        client.close()


def celery_beat_sends(app: Celery, name: str) -> None:
    """Celery beat's own ``apply_async`` for entry ``name`` (what beat does when it is due)."""
    beat = CeleryBeat(app=app, lazy=True)
    entry = beat._maybe_entry(name, app.conf.beat_schedule[name])
    with app.producer_or_acquire() as producer:
        beat.apply_async(entry, producer=producer, advance=False)


def fork_sends(redis_url: str, app: Celery, seconds: float) -> None:
    """This package's Scheduler, publishing through Celery (``CeleryPublisher``) to the app's
    broker, on a fake clock for ``seconds`` from 2026-03-02 10:00:00.3Z."""
    clock = FakeClock("2026-03-02T10:00:00.300+00:00")
    scheduler = make_scheduler(redis_url, clock, {}, app=app)
    scheduler.publisher = CeleryPublisher(app, lambda: scheduler.producer)
    try:
        scheduler.setup_schedule()
        end = clock.now + timedelta(seconds=seconds)
        while clock.now < end:
            clock.advance(0.25)
            scheduler.tick()
    finally:
        scheduler.close()


def body(message: dict[str, Any]) -> Any:
    return json.loads(base64.b64decode(message["body"]))


# -- 1. BeatLazyFunc arguments ---------------------------------------------------------------


def test_beat_lazy_func_arguments_are_evaluated_at_each_send_as_celery_beat_does(
    redis_url: str, broker_url: str
) -> None:
    """Scenario: a ``beat_schedule`` entry whose ``args``/``kwargs`` hold Celery's
    ``celery.beat.BeatLazyFunc`` items (Celery beat's public API for values computed at send
    time: "A lazy function declared in 'beat_schedule' and called before sending to worker"),
    ``"args": [BeatLazyFunc(str.upper, "eu")], "kwargs": {"region": BeatLazyFunc(...)}``,
    every 30 s, JSON serializer (the default).

    Celery beat: ``Scheduler.apply_async`` runs ``_evaluate_entry_args`` /
    ``_evaluate_entry_kwargs``, calling every ``BeatLazyFunc`` item, and sends
    ``[["EU"], {"region": "EU"}, ...]``.

    Promise broken: docs/migration.md "What stays": "``beat_schedule`` works as it is ... with
    ``args``, ``kwargs`` and ``options``"; docs/schedules.md: "A ``beat_schedule`` written for
    Celery's default scheduler works unchanged".

    What the fork does: nothing is published. The entry is accepted at start-up (no
    ConfigError), then every slot fails at publish with ``EncodeError(TypeError('Object of type
    BeatLazyFunc is not JSON serializable'))`` -- a missed run every slot, forever. (With the
    pickle serializer the worker would receive the ``BeatLazyFunc`` object itself instead of
    its value.)

    Cause: ``publishing.build_occurrence`` only evaluates ``args``/``kwargs`` when the whole
    value is callable (the package's own "lazy args" form); it never looks for Celery's
    ``BeatLazyFunc`` items, and ``entry.entry_from_config`` does not refuse or convert them.
    """
    definition = {
        "task": "proj.report",
        "schedule": 30.0,
        "args": [BeatLazyFunc(str.upper, "eu")],
        "kwargs": {"region": BeatLazyFunc(str.upper, "eu")},
    }
    app = make_app(redis_url, {"report": definition}, broker_url=broker_url)

    @app.task(name="proj.report", shared=False)  # type: ignore[untyped-decorator]
    def report(code: str, region: str = "") -> None: ...

    celery_beat_sends(app, "report")
    by_celery = [body(message)[:2] for message in queued(broker_url).get("celery", [])]
    assert by_celery == [[["EU"], {"region": "EU"}]]  # the reference: Celery beat's message

    fork_sends(redis_url, app, 35)  # one slot: 10:00:30
    by_fork = [body(message)[:2] for message in queued(broker_url).get("celery", [])]
    assert by_fork == by_celery, (
        f"the fork published {by_fork} for the slot of 10:00:30; Celery beat sends "
        f"{by_celery} (BeatLazyFunc items evaluated at send)"
    )


# -- 2. a custom schedule type ---------------------------------------------------------------


class weekdays_only(schedule):
    """A custom schedule type, as Celery's docs invite ("You can also define your own custom
    schedule types, by extending the interface of schedule"): the interval, but never on a
    Saturday or a Sunday."""

    def is_due(self, last_run_at: datetime) -> schedstate:
        state = super().is_due(last_run_at)
        if self.now().weekday() >= 5:
            return schedstate(False, state.next)
        return state


def test_a_schedule_subclass_with_its_own_is_due_is_not_turned_into_a_plain_interval(
    redis_url: str,
) -> None:
    """Scenario: ``"schedule": weekdays_only(run_every=timedelta(hours=1))``, a subclass of
    ``celery.schedules.schedule`` overriding ``is_due`` (Celery's periodic-tasks guide: "You
    can also define your own custom schedule types, by extending the interface of
    schedule"), driven over Saturday 2026-03-07 00:00Z-06:00Z.

    Celery beat: asks the schedule's own ``is_due`` -- no run on a Saturday.

    Promise broken: docs/schedules.md "Celery's native schedules": "A ``beat_schedule``
    written for Celery's default scheduler works unchanged"; docs/migration.md "What stays".
    The docs list what each native value becomes; a subclass with its own timing is not among
    the documented differences, and it is not refused either.

    What the fork does: fires every hour of the Saturday (6 runs Celery beat never sends).

    Cause: ``schedules/celery_adapters.py:from_celery`` matches
    ``isinstance(schedule, celery.schedules.schedule)`` and keeps only ``run_every``
    (``_interval_from``), silently dropping the subclass's ``is_due`` /
    ``remaining_estimate``; the same ``isinstance`` test turns a ``crontab`` subclass into its
    fields.
    """
    start = datetime(2026, 3, 7, 0, 0, tzinfo=UTC)  # a Saturday
    end = datetime(2026, 3, 7, 6, 0, 30, tzinfo=UTC)
    app = make_app(
        redis_url,
        {"sync": {"task": "proj.sync", "schedule": weekdays_only(run_every=timedelta(hours=1))}},
    )
    by_celery = celery_beat_fires(app, "sync", start, end)
    assert by_celery == []  # the reference: no run on a Saturday

    app = make_app(
        redis_url,
        {"sync": {"task": "proj.sync", "schedule": weekdays_only(run_every=timedelta(hours=1))}},
    )
    # Fixed: refused at start-up, naming the entry and the field (replicas agree on slots
    # computed ahead; a schedule deciding itself in is_due cannot be followed): never fired.
    with pytest.raises(ConfigError) as refused:
        fork_fires(redis_url, app, "2026-03-07T00:00:00.300+00:00", end, "sync")
    assert (refused.value.entry, refused.value.field) == ("sync", "schedule")
    assert "weekdays_only overrides is_due" in str(refused.value)


# -- 3. a crontab bound to another app -------------------------------------------------------


def test_a_crontab_created_with_another_app_is_read_in_the_beat_apps_zone(
    redis_url: str,
) -> None:
    """Scenario: the beat app's ``timezone`` is UTC; its ``beat_schedule`` holds
    ``crontab(minute=0, hour=9, app=other)`` where ``other`` is an app configured with
    ``timezone = "Asia/Tokyo"`` (a crontab built in a shared module with some app at hand, a
    second app in the same project, tests).

    Celery beat: ``ScheduleEntry`` runs ``maybe_schedule(schedule, relative, app=beat_app)``,
    which sets ``schedule.app = beat_app``: the crontab is read in the beat app's zone and fires
    at 09:00 UTC.

    Promise broken: docs/schedules.md "Time zones": the zone of a wall-clock schedule is the
    entry's ``timezone`` key, else "the schedule's own zone: ``cron(expr, tz=...)``, ``"... in
    Asia/Tokyo"``, ``schedule.with_timezone(...)``", else "the app's ``timezone`` setting" --
    a crontab's ``app=`` is not a zone of its own, so the beat app's UTC applies, as in Celery;
    and "A ``beat_schedule`` written for Celery's default scheduler works unchanged".

    What the fork does: reads it in Asia/Tokyo and fires at 00:00 UTC (09:00 in Tokyo), nine
    hours before Celery beat would, and not at 09:00 UTC.

    Cause: ``schedules/celery_adapters.py:_crontab_zone`` takes the zone from the crontab's own
    ``_app`` before the app the scheduler runs (``default_tz``); Celery beat rebinds the
    schedule to its own app first.
    """
    other = Celery("other", set_as_current=False)
    other.conf.timezone = "Asia/Tokyo"
    start = datetime(2026, 3, 1, 23, 59, tzinfo=UTC)
    end = datetime(2026, 3, 2, 9, 0, 30, tzinfo=UTC)

    def beat_schedule() -> dict[str, Any]:
        return {"report": {"task": "proj.report", "schedule": crontab(minute=0, hour=9, app=other)}}

    by_celery = celery_beat_fires(make_app(redis_url, beat_schedule()), "report", start, end)
    assert by_celery == ["2026-03-02T09:00:00+00:00"]  # the reference: the beat app's UTC

    by_fork = fork_fires(
        redis_url, make_app(redis_url, beat_schedule()), "2026-03-01T23:59:00.300+00:00", end,
        "report",
    )
    assert by_fork == by_celery, (
        f"the fork fired {by_fork}: the crontab was read in its own app's Asia/Tokyo, where "
        "Celery beat reads it in the beat app's UTC"
    )


# -- 4. the args of the message: a tuple where Celery beat sends a list ----------------------


def test_the_message_args_are_the_list_celery_beat_sends_argsrepr_and_pickled_body(
    redis_url: str, broker_url: str
) -> None:
    """Scenario: ``{"task": "proj.job", "schedule": 30.0, "args": [1, "eu"]}``; compared field
    by field with the message Celery beat's ``Scheduler.apply_async`` sends for the same entry
    (task id and the fork's own ``fork_scheduler_*`` headers aside), once with the default JSON
    serializer and once with ``options: {"serializer": "pickle"}``.

    Celery beat: ``_evaluate_entry_args`` always hands ``apply_async`` a **list**, so the
    message header ``argsrepr`` is ``"[1, 'eu']"`` (``"[]"`` without args) and a pickled body
    holds a list.

    Promise broken: docs/migration.md "What stays" ("``beat_schedule`` works as it is ... with
    ``args``"; "Publishing goes through the app, so routing, queues and serialisers apply as
    before"); docs/guarantees.md, message templates: the messages are what Celery builds,
    with a list of "intended differences" that does not include the arguments.

    What the fork sends: ``argsrepr`` ``"(1, 'eu')"`` (shown by ``celery inspect
    active/reserved``, Flower and task events), and with pickle a body whose args are a tuple:
    the bytes differ and ``self.request.args`` on the worker is a tuple, not the list Celery
    beat gave it.

    Cause: ``publishing.build_occurrence`` stores ``args=tuple(args)``; Celery's own beat
    evaluates entry args into a list (``celery.beat._evaluate_entry_args``).
    """
    differences: dict[str, list[str]] = {}
    for serializer in ("json", "pickle"):
        definition = {
            "task": "proj.job",
            "schedule": 30.0,
            "args": [1, "eu"],
            "options": {"serializer": serializer},
        }
        app = make_app(
            redis_url, {"job": definition}, broker_url=broker_url,
            accept_content=["json", "pickle"],
        )

        @app.task(name="proj.job", shared=False)  # type: ignore[untyped-decorator]
        def job(number: int, region: str) -> None: ...

        celery_beat_sends(app, "job")
        [by_celery] = queued(broker_url)["celery"]
        redis.Redis.from_url(redis_url).flushdb()  # the claims of the previous round
        fork_sends(redis_url, app, 35)
        [by_fork] = queued(broker_url)["celery"]
        found = []
        if by_fork["headers"]["argsrepr"] != by_celery["headers"]["argsrepr"]:
            found.append(
                f"argsrepr {by_fork['headers']['argsrepr']!r} != "
                f"{by_celery['headers']['argsrepr']!r}"
            )
        if by_fork["body"] != by_celery["body"]:
            found.append("body bytes differ")
        if found:
            differences[serializer] = found
    assert differences == {}, f"fork vs Celery beat message: {differences}"


# -- 5. a tzinfo timezone setting is blamed on an entry --------------------------------------


def test_a_fixed_offset_timezone_setting_is_one_error_naming_timezone_not_an_entry(
    redis_url: str,
) -> None:
    """Scenario: ``app.conf.timezone = datetime.timezone(timedelta(hours=2))`` (a ``tzinfo``,
    which Celery accepts: ``app.timezone`` returns it and Celery beat reads every ``crontab``
    in it) and two ``crontab`` entries.

    Promise broken: docs/settings.md, "Celery settings that are honoured", ``timezone``: "An
    unknown name (``"Europe/Berln"``) or a value that is neither a string nor a ``tzinfo`` is
    one error naming ``timezone`` (beat stops, ``schedule validate`` reports it, other commands
    exit 2), never blamed on the entries". The fork cannot use this zone (it is not an IANA
    zone) -- fine -- but the error it gives is about the setting, and the docs say it then
    names the setting.

    What the fork does: ``ConfigError: entry 'a', field 'schedule': unknown time zone
    'UTC+02:00': expected an IANA name such as 'Europe/Berlin'`` -- blamed on the first crontab
    entry (the operator looks for a bad schedule there), not on ``timezone``; an app whose
    entries are all intervals starts with the setting silently unused.

    Cause: ``config.app_timezone`` accepts any ``tzinfo`` and returns it; the IANA check
    happens later, per schedule, in ``schedules/base.py:to_zone`` (called from
    ``celery_adapters._from_crontab`` / ``resolve_timezone``), where the error is attributed
    to the entry being built.
    """
    app = make_app(
        redis_url,
        {
            "a": {"task": "proj.a", "schedule": crontab(minute=0, hour=9)},
            "b": {"task": "proj.b", "schedule": crontab(minute=30, hour=9)},
        },
    )
    # Fixed: a whole-hour offset is the IANA zone of that offset ('Etc/GMT-2'): the crontab
    # fires at 09:00 UTC+02:00 as Celery beat fires it.
    app.conf.timezone = timezone(timedelta(hours=2))
    start, end = datetime(2026, 3, 2, 6, 0, tzinfo=UTC), datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    by_celery = celery_beat_fires(app, "a", start, end)
    assert by_celery == ["2026-03-02T07:00:00+00:00"]
    by_fork = fork_fires(redis_url, app, "2026-03-02T06:00:00.300+00:00", end, "a")
    assert by_fork == by_celery
    # Any other offset is no IANA zone: one error naming the setting, not an entry.
    app = make_app(redis_url, dict(app.conf.beat_schedule))  # (app.timezone is cached)
    app.conf.timezone = timezone(timedelta(hours=5, minutes=30))
    clock = FakeClock("2026-03-02T10:00:00.300+00:00")
    with pytest.raises(ConfigError) as raised:
        scheduler = make_scheduler(redis_url, clock, app=app)
        try:
            scheduler.setup_schedule()
            scheduler.tick()
        finally:
            scheduler.close()
    assert (raised.value.entry, raised.value.field) == (None, "timezone"), (
        f"the error names entry {raised.value.entry!r}, field {raised.value.field!r}: "
        f"{raised.value}"
    )
