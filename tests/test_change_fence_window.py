"""The change fence lasts as long as a replica may take to read a change: at least 5 minutes,
and twice the replica's ``fork_scheduler_refresh_interval`` when that is longer (a replica
refreshing every hour may read a change almost an hour late)."""

from __future__ import annotations

from datetime import datetime

from replica_helpers import make_app, schedulers
from runtime_edit_helpers import at, reasons, slots_of, tick_until

from celery_fork_scheduler import Manager, every
from celery_fork_scheduler.testing import FakeClock


def test_a_replica_refreshing_hourly_is_fenced_from_an_old_slot_ten_minutes_after_a_change(
    redis_url: str, clock: FakeClock, skipped: list[tuple[str, datetime, str]]
) -> None:
    """Noticed in round 39's review, fixed: the fence lasted 5 minutes whatever the refresh.

    One replica refreshing every hour runs `x` hourly at :00. At 10:50 `update` moves it to :55
    (next_run 10:55). The replica has not read the change by 11:00 and asks for the earlier
    definition's 11:00, 10 minutes after the change. Before the fix that claim was won: the
    earlier definition fired after the change and its mark (11:00) then refused the promised
    10:55 as `claimed`. Now it is refused (`changed`), the replica reads the change at once
    and 10:55 fires (the latest missed slot: catch-up `latest`)."""
    app = make_app(redis_url)
    manager = Manager(app, clock=clock)
    manager.add("x", "t", every(1).hours)
    with schedulers(redis_url, fork_scheduler_refresh_interval=3600) as make:
        replica = make(clock, "replica-a")
        tick_until([replica], clock, at(60), step=1)
        clock.set(at(50 * 60))
        job = manager.update("x", schedule=every(1).hours.offset(minutes=55))
        assert job.next_run == at(55 * 60)
        tick_until([replica], clock, at(61 * 60), step=5)
        published = slots_of("x", replica)
    assert at(60 * 60) not in published, "the earlier definition fired 10 minutes after the change"
    assert reasons(skipped, "x", at(60 * 60)) == ["changed"]
    reported = reasons(skipped, "x", at(55 * 60))
    assert at(55 * 60) in published, f"next_run 10:55 not published; reported: {reported}"
