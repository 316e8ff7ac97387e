"""Show how Celery's own schedules become slots: the next 5 per entry, no processes needed.

    python examples/native_schedules/run.py [--after 2026-03-27T12:00:00+00:00]

Every replica computes the same slots from the definition alone; ``--after`` fixes the
reference instant so the output can be compared between machines.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta, timezone
from itertools import islice
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))

from beat_schedule import beat_schedule
from beat_schedule import timezone as app_timezone

from celery_fork_scheduler.lazy_args import with_lazy_items
from celery_fork_scheduler.schedules import coerce_schedule

#: How far ahead to look for the next slots (the monthly entries need a few months).
HORIZON = timedelta(days=400)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--after", type=datetime.fromisoformat, default=None)
    parser.add_argument("--count", type=int, default=5)
    options = parser.parse_args()
    after = options.after or datetime.now(timezone.utc).replace(microsecond=0)
    if after.tzinfo is None:
        parser.error("--after needs a UTC offset, e.g. 2026-03-27T12:00:00+00:00")
    zone = ZoneInfo(app_timezone)

    print(f"app timezone {app_timezone}; slots after {after.isoformat()}")
    for name, definition in beat_schedule.items():
        slot_schedule = coerce_schedule(definition["schedule"], default_tz=zone)
        print(f"\n{name}: {definition['schedule']!r}\n  -> {slot_schedule.describe()}")
        if "args" in definition:  # BeatLazyFunc items are called at each publish
            print(f"  args sent now: {with_lazy_items(definition['args'])()!r}")
        slots = slot_schedule.slots(after, after + HORIZON)
        for slot in islice(slots, options.count):
            local = slot.astimezone(zone)
            print(f"     {slot:%Y-%m-%d %H:%M:%S} UTC   {local:%a %Y-%m-%d %H:%M:%S %Z}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
