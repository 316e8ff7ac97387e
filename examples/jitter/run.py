"""Show where jitter puts each slot: nominal slots and jittered publish instants, no Redis.

    python examples/jitter/run.py [--after 2026-03-02T09:59:00+00:00] [--count 4]

Every entry below is due on the minute; with ``jitter`` each slot is published at the slot
plus an offset in ``[0, jitter)``, a hash of (entry, slot): the same on every replica and
after restarts, so the output is the same on every machine for the same ``--after``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta, timezone

from celery_fork_scheduler import every
from celery_fork_scheduler.entry import entries_from_config

#: Three entries due at :00, spread by their jitter; the last one keeps the app default.
BEAT_SCHEDULE = {
    "sync-crm": {"task": "crm.sync", "schedule": "* * * * *", "jitter": "30s"},
    "poll-feeds": {"task": "feeds.poll", "schedule": every(1).minutes, "jitter": 50},
    "heartbeat": {"task": "ops.heartbeat", "schedule": every(1).minutes},
}
#: ``fork_scheduler_default_jitter`` of this example's app.
DEFAULT_JITTER = 10


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--after", type=datetime.fromisoformat, default=None)
    parser.add_argument("--count", type=int, default=4)
    options = parser.parse_args()
    after = options.after or datetime.now(timezone.utc).replace(microsecond=0)
    if after.tzinfo is None:
        parser.error("--after needs a UTC offset, e.g. 2026-03-02T09:59:00+00:00")
    default = timedelta(seconds=DEFAULT_JITTER)
    entries = entries_from_config(BEAT_SCHEDULE, default_timezone=timezone.utc)
    print(f"slots after {after.isoformat()}; fork_scheduler_default_jitter = {DEFAULT_JITTER} s")
    for name, entry in entries.items():
        entry = entry.with_default_jitter(default)
        own = "own" if entry.jitter is not None else "default"
        jitter = entry.effective_jitter.total_seconds()
        print(f"\n{name}: {entry.schedule.describe()}, jitter {jitter:g} s ({own})")
        slot = entry.first_slot_after(after)
        for _ in range(options.count):
            if slot is None:
                break
            publish_at = entry.publish_at(slot)
            offset = (publish_at - slot).total_seconds()
            print(
                f"  slot {slot:%H:%M:%S}  published at {publish_at:%H:%M:%S.%f}  (+{offset:.3f} s)"
            )
            slot = entry.first_slot_after(slot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
