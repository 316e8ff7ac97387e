"""How cron expressions are read: the next slots of each, or why it is refused.

    python examples/cron_dialect/run.py [--after 2026-01-01T00:00:00+00:00] [--tz Europe/Berlin]
    python examples/cron_dialect/run.py "0 0 */2 * mon" "0 0 1-31/2 * mon"

The default expressions show the day rule (a day field starting with ``*`` ANDs the two day
fields, otherwise either may match), ``L``, ``W`` and ``#``, steps from a start value, and
expressions that are refused at load time. No processes, no Redis.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

from celery_fork_scheduler import ScheduleError, cron

EXPRESSIONS = {
    "0 0 */2 * mon": "odd days AND Mondays (a day field starts with '*')",
    "0 0 1-31/2 * mon": "odd days OR Mondays",
    "0 0 15 * fri#2": "the 15th OR the second Friday",
    "0 0 15W * *": "the weekday nearest the 15th",
    "0 18 * * 5L": "the last Friday of the month",
    "0 0 * * 1/3": "from Monday in steps of 3: Mon, Thu, Sun",
    "0 3-3 * * *": "a range with equal ends is one value: 03:00",
    "0 22-2 * * *": "refused: ranges do not wrap around",
    "*/61 * * * *": "refused: the step is larger than the field",
    "0 0 30 2 *": "refused: never fires",
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("expressions", nargs="*", help="cron expressions (default: a tour)")
    parser.add_argument("--after", type=datetime.fromisoformat, default=None)
    parser.add_argument("--tz", default="UTC", help="IANA zone the expressions are read in")
    parser.add_argument("--count", type=int, default=3)
    options = parser.parse_args()
    after = options.after or datetime.now(timezone.utc).replace(microsecond=0)
    if after.tzinfo is None:
        parser.error("--after needs a UTC offset, e.g. 2026-01-01T00:00:00+00:00")
    chosen = {text: "" for text in options.expressions} or EXPRESSIONS

    print(f"slots after {after.isoformat()}, read in {options.tz}")
    for text, meaning in chosen.items():
        print(f"\n{text!r}" + (f"  -- {meaning}" if meaning else ""))
        try:
            schedule = cron(text, options.tz)
            schedule.validate()
        except ScheduleError as exc:
            print(f"  refused: {exc}")
            continue
        moment: datetime | None = after
        for _ in range(options.count):
            moment = schedule.next_slot(moment) if moment is not None else None
            if moment is None:
                break
            local = moment.astimezone(schedule.zone)
            print(f"  {moment:%Y-%m-%d %H:%M:%S} UTC   {local:%a %Y-%m-%d %H:%M:%S %Z}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
