"""Backfill: publish the slots of a 1-minute entry that a long outage left unpublished.

A beat replica that comes back after an outage with catch-up off moves past the slots it
missed: they were never published. This example leaves Redis as such a replica does after an
outage that ended two hours ago (the entry decided up to that minute, only that minute
published), then backfills the ``--minutes`` minutes up to it with :meth:`Manager.backfill`
and prints each slot's outcome; a second backfill of the same range publishes nothing again
(``already_published``). The messages are counted on the broker's queue. Uses ``$REDIS_URL``
when set, otherwise a private, throwaway ``redis-server`` -- which is why the outage is two
hours back: a backfill reports the slots of the hour before Redis last started
``skipped:unknown`` (Redis may have come back from a snapshot older than their publish).
Takes a second or two.

    python examples/backfill/run.py [--minutes 5]
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import redis
from celery import Celery

from celery_fork_scheduler import Manager
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import redis_url_from_env
from celery_fork_scheduler.testing.examples import parse_options

ENTRY = "minutely-report"
QUEUE = "backfill-example"
#: When the outage ended: over an hour before this example's Redis may have started.
OUTAGE_ENDED = timedelta(hours=2)


def make_app(url: str) -> Celery:
    app = Celery("backfill_example", broker=url, set_as_current=False)
    app.conf.update(
        timezone="UTC",
        task_default_queue=QUEUE,
        beat_schedule={ENTRY: {"task": "report", "schedule": "* * * * *"}},
    )
    return app


def leave_redis_as_after_an_outage(client: redis.Redis, last: datetime) -> None:
    """What a replica writes when it skips the missed slots and publishes ``last``."""
    keys, slot = Keys("scheduler:"), int(last.timestamp()) * 1_000_000
    client.hset(keys.state(ENTRY), mapping={"hwm": slot, "state": "sent"})
    item = {"slot": slot, "outcome": "sent", "at": slot, "task_id": "", "replica": "example"}
    client.lpush(keys.history(ENTRY), json.dumps(item))


def main() -> int:
    options = parse_options(__doc__, minutes=(5, "how many past minutes to backfill"))
    with redis_url_from_env() as url:
        client = redis.Redis.from_url(url)
        keys = Keys("scheduler:")
        client.delete(*keys.entry_keys(ENTRY), keys.backfill(ENTRY))
        client.delete(QUEUE)
        app = make_app(url)
        minute = datetime.now(timezone.utc).replace(second=0, microsecond=0) - OUTAGE_ENDED
        start, end = minute - options.minutes * timedelta(minutes=1), minute - timedelta(minutes=1)
        leave_redis_as_after_an_outage(client, end)

        manager = Manager(app)
        for attempt in ("first", "second"):
            print(f"{attempt} backfill of {start:%H:%M}..{end:%H:%M} UTC:")
            for result in manager.backfill(ENTRY, start, end, rate=20):
                print(f"  {result.slot:%H:%M}  {result.outcome:<18} {result.task_id}")
        waiting = client.llen(QUEUE)
        app.close()
    expected = options.minutes - 1  # the last minute was published before the outage
    if waiting != expected:
        print(f"FAILED: {waiting} messages on the queue, expected {expected}")
        return 1
    print(f"OK: {waiting} missed slots backfilled once; the second run sent nothing")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
