"""Adversary round 62: drop-in compatibility with Celery's own beat, after round 61's fixes.

Every test here was found failing by round 62 and fixed with this file; each docstring tells
the scenario as it failed.

Each feeds the same Celery configuration to Celery's
beat (its ``Scheduler`` / ``ScheduleEntry`` driven on an injected ``app.now``, or its
``apply_async`` on a real Redis broker) and to this package's ``Scheduler`` (a FakeClock, a real
Redis for the claims), and asserts that the fork does what Celery's beat does. The helpers are
round 61's (``tests/test_adversary_round61.py``).

What was compared and held (no test) is listed in the round's report.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from celery.beat import BeatLazyFunc
from celery.schedules import crontab
from dateutil import tz as dateutil_tz
from replica_helpers import make_app, make_scheduler
from test_adversary_round61 import (  # noqa: F401  (broker_url is a fixture)
    body,
    broker_url,
    celery_beat_fires,
    celery_beat_sends,
    fork_fires,
    fork_sends,
    queued,
)

from celery_fork_scheduler import ConfigError, install
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

UTC = timezone.utc


# -- 1. app.add_periodic_task without a name --------------------------------------------------


def _periodic_app(redis_url: str, broker_url: str, signature: Callable[[Any], Any]) -> Celery:  # noqa: F811
    """An app whose one periodic task is added the way Celery's docs show it
    (``@app.on_after_configure.connect`` ... ``sender.add_periodic_task(30.0, sig)``), with no
    ``name=``: Celery names the entry ``repr(sig)``."""
    app = Celery("proj", set_as_current=False, broker=broker_url)
    app.conf.update(
        timezone="UTC",
        result_expires=None,
        fork_scheduler_redis_url=redis_url,
        fork_scheduler_owner_grace=0,
    )

    @app.task(name="proj.sync", shared=False)  # type: ignore[untyped-decorator]
    def sync(payload: Any) -> None: ...

    @app.on_after_configure.connect(weak=False)  # type: ignore[untyped-decorator]
    def setup_periodic_tasks(sender: Celery, **kwargs: Any) -> None:
        sender.add_periodic_task(30.0, signature(sync))

    return app


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(lambda sync: sync.s({"tenant": "acme"}), id="dict-argument"),
        pytest.param(lambda sync: sync.s(list(range(60))), id="long-argument"),
    ],
)
def test_an_unnamed_add_periodic_task_with_a_dict_or_long_argument_is_published(
    redis_url: str, broker_url: str, signature: Callable[[Any], Any]  # noqa: F811
) -> None:
    """Scenario: Celery's documented way of adding a periodic task, without ``name=``::

        @app.on_after_configure.connect
        def setup_periodic_tasks(sender, **kwargs):
            sender.add_periodic_task(30.0, sync.s({"tenant": "acme"}))

    (or ``sync.s(list(range(60)))``). Celery's ``_sig_to_periodic_task_entry`` keys the entry
    ``repr(sig)``: ``"proj.sync({'tenant': 'acme'})"`` -- braces -- or, for the list, a
    271-character name. The user never wrote that name.

    Celery beat: sends ``proj.sync`` with ``[{"tenant": "acme"}]`` every 30 s.

    Promise broken: docs/migration.md "What stays" ("``beat_schedule`` works as it is ... with
    ``args``, ``kwargs`` and ``options``"; ``add_periodic_task`` writes into ``beat_schedule``);
    docs/schedules.md "A ``beat_schedule`` written for Celery's default scheduler works
    unchanged". The name rule (at most 200 characters, no braces) is documented only for
    names a user gives (django-celery-beat's ``PeriodicTask.name``, ``Manager.add``), and
    ``add_periodic_task`` is mentioned nowhere in the docs.

    What the fork does: beat does not start -- ``ConfigError: entry "proj.sync({'tenant':
    'acme'})", field 'name': entry names must not contain '{' or '}'`` (``... at most 200
    characters`` for the long one): every entry of the app stops, not only this one.

    Cause: ``entry.py:_check_name`` (called by ``entry_from_config`` from
    ``static_build.StaticBuild._build``) applies the Redis-key name rules to the
    ``beat_schedule`` key Celery generated from ``repr(sig)``; the name is used verbatim as
    the Redis Cluster hash tag (``keys.Keys``), so a generated name has no safe mapping.
    """
    app = _periodic_app(redis_url, broker_url, signature)
    [name] = app.conf.beat_schedule  # Celery's own key: repr(sig)
    celery_beat_sends(app, name)
    by_celery = [body(message)[:2] for message in queued(broker_url).get("celery", [])]
    assert len(by_celery) == 1  # the reference: Celery beat sends it

    app = _periodic_app(redis_url, broker_url, signature)
    try:
        fork_sends(redis_url, app, 35)  # one slot: 10:00:30
        refused = ""
    except Exception as exc:
        refused = f"{type(exc).__name__}: {exc}"
    by_fork = [body(message)[:2] for message in queued(broker_url).get("celery", [])]
    assert by_fork == by_celery, (
        f"the fork published {by_fork} for entry {name[:60]!r} ({refused or 'no error'}); "
        f"Celery beat sends {by_celery}"
    )


# -- 2. a crontab subclass with its own zone ---------------------------------------------------


class zoned_crontab(crontab):
    """A ``crontab`` read in a zone of its own: it overrides Celery's ``BaseSchedule.tz``
    property (the zone ``crontab.remaining_delta`` / ``is_due`` work in), and nothing that
    decides when it is due (``is_due``, ``remaining_estimate``)."""

    def __init__(self, *args: Any, zone: str = "UTC", **kwargs: Any) -> None:
        self.zone = zone
        super().__init__(*args, **kwargs)

    @property
    def tz(self) -> tzinfo:  # type: ignore[override]
        return ZoneInfo(self.zone)


def test_a_crontab_subclass_that_sets_its_own_tz_fires_in_that_zone_or_is_refused(
    redis_url: str,
) -> None:
    """Scenario: app ``timezone`` UTC; ``"schedule": zoned_crontab(minute=0, hour=9,
    zone="Europe/Berlin")``, a ``crontab`` subclass overriding only the ``tz`` property (a
    per-entry zone, as Celery's schedules take their zone from ``self.tz``), over Monday
    2026-03-02 06:00Z-10:00Z.

    Celery beat: ``crontab.remaining_delta`` normalises to ``self.tz`` -- fires at 09:00
    Berlin, 08:00 UTC.

    Promise broken: docs/schedules.md "Celery's native schedules": "A subclass of one of them
    that decides itself when it is due (it overrides ``is_due`` or ``remaining_estimate``
    ...) is refused at start-up ... A subclass that only changes how it is built keeps
    working"; round 61's fix was meant to stop a subclass's own timing being silently
    dropped. This one's timing is its zone: it is neither honoured nor refused.

    What the fork does: fires at 09:00 UTC, an hour after Celery beat (the app's zone; the
    subclass's ``tz`` is never read).

    Cause: ``schedules/celery_adapters.py:_check_own_logic`` looks only at ``_DECIDING =
    ("is_due", "remaining_estimate")``; ``_from_crontab`` takes the zone from ``default_tz``
    (entry key, else the app), never from ``schedule.tz`` (``remaining_delta`` and ``now`` are
    not checked either).
    """
    start = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
    end = datetime(2026, 3, 2, 10, 0, 30, tzinfo=UTC)

    def beat_schedule() -> dict[str, Any]:
        schedule = zoned_crontab(minute=0, hour=9, zone="Europe/Berlin")
        return {"report": {"task": "proj.report", "schedule": schedule}}

    by_celery = celery_beat_fires(make_app(redis_url, beat_schedule()), "report", start, end)
    assert by_celery == ["2026-03-02T08:00:00+00:00"]  # the reference: 09:00 in Berlin

    try:
        by_fork = fork_fires(
            redis_url, make_app(redis_url, beat_schedule()), "2026-03-02T06:00:00.300+00:00",
            end, "report",
        )
    except ConfigError as refused:  # refused at start-up, as documented for own timing
        assert (refused.entry, refused.field) == ("report", "schedule")
        return
    assert by_fork == by_celery, (
        f"the fork fired {by_fork}: the subclass's own zone (tz = Europe/Berlin) was dropped "
        "for the app's UTC, and the entry was not refused"
    )


# -- 3. a dateutil tzinfo as the timezone setting -------------------------------------------


@pytest.mark.parametrize(
    "zone",
    [
        pytest.param(lambda: dateutil_tz.tzoffset(None, 2 * 3600), id="dateutil-tzoffset+2"),
        pytest.param(lambda: dateutil_tz.tzutc(), id="dateutil-tzutc"),
    ],
)
def test_a_whole_hour_fixed_offset_tzinfo_from_dateutil_is_accepted_as_timezone(
    redis_url: str, zone: Callable[[], tzinfo]
) -> None:
    """Scenario: ``app.conf.timezone = dateutil.tz.tzoffset(None, 7200)`` (or
    ``dateutil.tz.tzutc()``) -- ``python-dateutil`` is a Celery dependency, and Celery takes
    any ``tzinfo`` as ``timezone`` (``app.timezone`` returns it, ``crontab`` reads in it) --
    with ``crontab(minute=0, hour=9)``, 2026-03-02 06:00Z-09:30Z.

    Celery beat: fires at 09:00 UTC+02:00 = 07:00 UTC (09:00 UTC for ``tzutc()``).

    Promise broken: docs/settings.md, ``timezone``: "A fixed-offset ``tzinfo``
    (``timezone(timedelta(hours=2))``) of whole hours is the IANA zone of that offset
    (``Etc/GMT-2``); any other offset (``+05:30``) names no IANA zone and is refused";
    "a value that is neither a string nor a ``tzinfo`` is one error" -- these are whole-hour
    fixed-offset tzinfos (one of them UTC itself).

    What the fork does: beat does not start: ``ConfigError: field 'timezone': unknown time
    zone 'tzoffset(None, 7200)'`` (``'tzutc()'``).

    Cause: ``schedules/base.py:to_zone`` maps only ``datetime.timezone`` instances
    (``isinstance(tz, timezone)`` -> ``_fixed_offset_zone``) and objects equal to
    ``datetime.timezone.utc``; any other tzinfo falls to ``key``/``zone``/``str(tz)``, and
    ``str(tzoffset(...))`` is no zone name (``config.app_timezone`` then raises).
    """

    def app() -> Celery:
        made = make_app(redis_url, {"a": {"task": "proj.a", "schedule": crontab(minute=0, hour=9)}})
        made.conf.timezone = zone()
        return made

    start = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
    end = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    by_celery = celery_beat_fires(app(), "a", start, end)
    assert len(by_celery) == 1  # the reference: one run, at 09:00 in that offset
    try:
        by_fork = fork_fires(redis_url, app(), "2026-03-02T06:00:00.300+00:00", end, "a")
        refused = ""
    except Exception as exc:
        by_fork, refused = [], f"{type(exc).__name__}: {exc}"
    assert by_fork == by_celery, f"the fork fired {by_fork} ({refused or 'no error'})"


# -- 4. what the Manager / `celery schedule show` says a BeatLazyFunc entry sends -------------


def test_schedule_show_of_an_entry_with_a_beat_lazy_func_item_keeps_its_plain_arguments(
    redis_url: str,
) -> None:
    """Scenario: round 61's fix, seen from the inspection side: ``"args": ["eu",
    BeatLazyFunc(today)], "kwargs": {"dry_run": False, "at": BeatLazyFunc(today)}``, every 30 s.
    ``celery -A proj schedule show report`` / ``Manager.get("report")`` (and the dashboard,
    which shows the same ``Job``) after the entry ran once.

    What the scheduler sends: ``["eu", "2026-03-02"]``, ``{"dry_run": False, "at":
    "2026-03-02"}`` (the BeatLazyFunc items evaluated, as Celery beat does).

    Promise broken: docs/manager.md "Jobs are plain values": a ``Job`` carries the entry's
    ``args`` and ``kwargs``; docs/cli.md ``schedule show`` prints them (``args``/``kwargs``
    rows). docs/schedules.md (round 61) says only that such an entry is "built once its slot
    is won (no message template)", not that its arguments disappear from inspection.

    What the fork shows: ``args []`` and ``kwargs {}`` -- the plain ``"eu"`` and
    ``dry_run=False`` vanish too, so an operator reading ``schedule show`` is told the task
    runs with no arguments at all.

    Cause: ``lazy_args.with_lazy_items`` (called by ``entry.entry_from_config``) wraps the whole
    ``args``/``kwargs`` in a callable ``LazyItems``; ``manager_results`` (``Job`` built with
    ``args=tuple(entry.args) if not callable(entry.args) else ()``) then treats it like an
    opaque callable, although ``LazyItems.value`` holds the items as written.
    """
    def today() -> str:
        return "2026-03-02"

    definition = {
        "task": "proj.report",
        "schedule": 30.0,
        "args": ["eu", BeatLazyFunc(today)],
        "kwargs": {"dry_run": False, "at": BeatLazyFunc(today)},
    }
    app = make_app(redis_url, {"report": definition})
    install(app)
    clock = FakeClock("2026-03-02T10:00:00.300+00:00")
    publisher = RecordingPublisher()
    scheduler = make_scheduler(redis_url, clock, publisher=publisher, app=app)
    try:
        while clock.now < datetime(2026, 3, 2, 10, 0, 31, tzinfo=UTC):
            clock.advance(min(max(scheduler.tick(), 0.001), 1.0))
    finally:
        scheduler.close()
    [sent] = publisher.occurrences
    assert (list(sent.args), dict(sent.kwargs)) == (  # what the scheduler sends
        ["eu", "2026-03-02"], {"dry_run": False, "at": "2026-03-02"}
    )
    job = app.fork_scheduler.get("report")
    shown_plain = (job.args[:1], {k: v for k, v in job.kwargs.items() if k == "dry_run"})
    sent_plain = (tuple(sent.args)[:1], {"dry_run": sent.kwargs["dry_run"]})
    assert shown_plain == sent_plain, (
        f"schedule show / Manager.get says args {list(job.args)}, kwargs {dict(job.kwargs)}; "
        f"the entry sends args {list(sent.args)}, kwargs {dict(sent.kwargs)}"
    )
