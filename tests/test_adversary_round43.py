"""Adversary round 43: time semantics (each entry fires at exactly the instants its definition
means, once each).

Each test's docstring names the promise (with the page of the docs), what happened instead and
where; both were found failing by round 43 and fixed (a naive ``start_at``/``end_at`` is read
with the schedules' own gap and fold rule; an interval's offset given before ``starting()``
is kept whole, not reduced modulo the interval). Schedules are driven on injected clocks; the
scheduler test runs on a real Redis (the conftest fixture).

What was compared and held up (no test): cron against cronsim (5 and 6 fields, DST zones), cron
``nW`` against croniter (only the documented ``30W``-in-February difference), Celery
``crontab`` against Celery's own ``remaining_estimate`` (random fields in UTC and four DST
zones, names, wrapping ranges, steps; only the documented gap difference), ``solar`` against
Celery's ``solar._next_event`` over a year at 25 places (equator, date line, polar circles,
white-night latitudes, 78 degrees), daily/weekly/monthly against a brute-force reference in ten
zones (Apia 2011, Lord Howe, Santiago, Havana, Troll, Tehran, St Johns), ``previous_slot``
against ``next_slot`` around transitions in 80 random zones, the doc tables of
docs/schedules.md, and a harness run over a year with late wake-ups and jitter (every slot once,
never before its publish instant, offsets inside ``[0, jitter)``).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from replica_helpers import make_app, make_scheduler

from celery_fork_scheduler import every
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

UTC = timezone.utc


# -- a naive start_at inside a daylight-saving gap ------------------------------------------------


def test_a_naive_start_at_inside_a_dst_gap_follows_the_gap_rule_and_keeps_that_days_run(
    redis_url: str,
) -> None:
    """Promise (docs/schedules.md, entry keys): ``start_at`` -- "no slots before `start_at` ...;
    a naive value is read in the entry's zone"; docs/schedules.md, daylight saving time: "A
    skipped local time (clocks jump forward) fires once, at the first valid instant after the
    gap" -- the one rule "for every wall-clock schedule", so that the local time 02:30 of
    2026-03-29 in Europe/Berlin (clocks jump 02:00 -> 03:00) *is* 03:00 CEST (01:00Z).

    Entry ``every(1).day.at("02:30")`` in Europe/Berlin with ``start_at: "2026-03-29T02:30"``
    (naive): the run of 03-29 02:30 is its slot at 01:00Z, which is exactly the start the user
    named, so it must fire.

    Driven on a real Redis from 00:55Z to 01:05Z on 03-29.

    What happens: ``_instant`` (entry.py) reads the naive value with
    ``value.replace(tzinfo=zone)`` -- Python's fold=0 reading of a nonexistent time, with the
    winter offset -- so ``start_at`` becomes 01:30Z (03:30 CEST), half an hour after the slot the
    same entry computes for that same local time. The scheduler never fires the 03-29 run
    (``Entry.first_slot_after``, so ``Manager.next_runs`` too, gives 03-30 00:30Z as the first):
    one local time mapped two ways inside one entry.
    """
    beat_schedule = {
        "night": {
            "task": "proj.night",
            "schedule": every(1).day.at("02:30"),
            "start_at": "2026-03-29T02:30",
        }
    }
    clock = FakeClock("2026-03-29T00:55:00+00:00")
    publisher = RecordingPublisher()
    app = make_app(redis_url, beat_schedule)
    app.conf.timezone = "Europe/Berlin"
    scheduler = make_scheduler(redis_url, clock, publisher=publisher, app=app)
    try:
        end = datetime(2026, 3, 29, 1, 5, tzinfo=UTC)
        while clock.now < end:
            sleep = scheduler.tick()
            clock.advance(max(sleep, 0.001))  # wake up at each wake-up it asks for
        scheduler.tick()
    finally:
        scheduler.close()
    # 02:30 local does not exist that day: its slot is 03:00 CEST (01:00Z), the start_at itself
    assert publisher.fired("night") == ["2026-03-29T01:00:00+00:00"], (
        f"fired {publisher.fired('night')}: the naive start_at 02:30 was read as 03:30 CEST, "
        "so the run of 03-29 (its slot is 03:00 CEST by the gap rule) was dropped"
    )


# -- an interval's offset and its anchor ----------------------------------------------------------


def test_offset_then_starting_gives_the_anchor_plus_the_offset_as_the_first_slot() -> None:
    """Promise (docs/schedules.md, intervals): "`.offset(**timedelta_keywords)` shifts every
    slot by a phase" and "`.starting(aware_datetime)` anchors the interval at that instant
    instead of the epoch. The first slot is the anchor (plus the offset); there are no slots
    before it."

    So ``every(1).hour.offset(minutes=-10).starting(09:00Z)`` ("ten minutes before each hour,
    from 09:00") has its first slot at 08:50Z, and
    ``every(2).hours.offset(minutes=150).starting(09:00Z)`` at 11:30Z -- as the same builders
    written the other way round (``.starting(...).offset(...)``) give.

    What happens: ``Interval.__post_init__`` (schedules/interval.py) reduces the phase modulo
    the interval while no anchor is set, and ``.starting()`` keeps the reduced phase: -10 min
    becomes +50 min (first slot 09:50Z, a whole slot lost) and +150 min becomes +30 min (first
    slot 09:30Z, two hours before the anchor plus the offset, a run the definition never
    meant). The slots depend on the order of two builder calls.
    """
    anchor = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    long_before = datetime(2025, 1, 1, tzinfo=UTC)
    cases = [
        (every(1).hour, timedelta(minutes=-10), datetime(2026, 1, 5, 8, 50, tzinfo=UTC)),
        (every(2).hours, timedelta(minutes=150), datetime(2026, 1, 5, 11, 30, tzinfo=UTC)),
    ]
    for interval, offset, expected in cases:
        minutes = offset // timedelta(minutes=1)
        anchored_first = interval.starting(anchor).offset(minutes=minutes)
        offset_first = interval.offset(minutes=minutes).starting(anchor)
        assert anchored_first.next_slot(long_before) == expected  # the doc's reading
        got = offset_first.next_slot(long_before)
        assert got == expected, (
            f"{offset_first.describe()}: first slot {got}, expected the anchor plus the offset "
            f"{expected} (as {anchored_first.describe()!r} gives)"
        )
