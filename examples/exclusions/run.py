"""Show a month of slots of a weekday 09:00 entry with a holidays calendar: which are excluded.

    python examples/exclusions/run.py [--after 2026-12-01T00:00:00+00:00] [--days 31]

No Redis and no processes: the entry is validated as beat would validate it (the calendar
comes from ``fork_scheduler_calendars``), then its slots are listed, each marked ``excluded``
when it falls on an exclusion date in the entry's time zone. Beat claims those slots like any
other and records them skipped (``excluded``) in the entry's history, once across replicas.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from celery_fork_scheduler.entry import entry_from_config
from celery_fork_scheduler.exclusions import calendars_from_setting

#: What ``app.conf.fork_scheduler_calendars`` would hold.
CALENDARS = {
    "holidays-de": [
        "01-01",  # New Year's Day, every year
        "05-01",  # Labour Day
        "10-03",  # German Unity Day
        "12-25",
        "12-26",
        "2026-04-03..2026-04-06",  # Easter 2026 (Good Friday to Easter Monday)
    ],
}
#: The entry's time zone: exclusion dates are its local dates.
ZONE = "Europe/Berlin"
#: One ``beat_schedule`` entry.
ENTRY = {
    "task": "reports.daily",
    "schedule": "0 9 * * 1-5",  # weekdays at 09:00
    "timezone": ZONE,
    "calendar": "holidays-de",
    "exclude": ["2026-12-24..2026-12-31"],  # the office is closed between the holidays
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--after", type=datetime.fromisoformat, default=None)
    parser.add_argument("--days", type=int, default=31)
    options = parser.parse_args()
    after = options.after or datetime.now(timezone.utc).replace(microsecond=0)
    if after.tzinfo is None:
        parser.error("--after needs a UTC offset, e.g. 2026-12-01T00:00:00+00:00")

    entry = entry_from_config(
        "daily-report",
        ENTRY,
        default_timezone=ZoneInfo("UTC"),
        calendars=calendars_from_setting(CALENDARS),
    )
    zone = ZoneInfo(ZONE)
    print(f"daily-report: {entry.schedule.describe()}")
    print(f"  exclude {', '.join(entry.exclude)}; calendar {', '.join(entry.calendar)}")
    until = after + timedelta(days=options.days)
    fired = excluded = 0
    slot = entry.first_slot_after(after)
    while slot is not None and slot <= until:
        skipped = entry.excludes(slot)
        excluded += skipped
        fired += not skipped
        mark = "excluded" if skipped else "runs"
        print(f"  {slot.astimezone(zone):%a %Y-%m-%d %H:%M %Z}  {mark}")
        slot = entry.first_slot_after(slot)
    print(f"{fired} runs, {excluded} excluded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
