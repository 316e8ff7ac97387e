"""What is refused: one table of schedule strings that ``cron`` or ``parse_schedule`` refuses,
each with the message (a regular expression) its ScheduleError must match."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from celery_fork_scheduler.errors import ScheduleError
from celery_fork_scheduler.schedules import SlotSchedule, cron
from celery_fork_scheduler.schedules.parsing import parse_schedule

#: (parser, text, the message its ScheduleError matches)
REFUSED: list[tuple[Callable[[str], SlotSchedule], str, str]] = [
    # cron(): what the cron dialect does not mean, naming the field
    (cron, "5-1 * * * *", r"minute field '5-1': range '5-1' runs backwards"),
    (cron, "0 22-2 * * *", r"hour field '22-2': .* do not wrap"),
    (cron, "0 0 * * fri-mon", r"day-of-week field 'fri-mon': range"),
    (cron, "0 0 * * 3-sun", r"day-of-week field '3-sun': .*write 7: '3-7'"),
    (cron, "0 0 * nov-feb *", r"month field 'nov-feb'"),
    (cron, "0 0 20-10/2 * *", r"day-of-month field '20-10/2'"),
    (cron, "*/61 * * * *", r"step in '\*/61' must be 1-60"),
    (cron, "0 0 * * */9", r"step in '\*/9' must be 1-8"),
    (cron, "0 0 L/2 * *", r"day-of-month field 'l/2'"),
    (cron, "0 0 W15 * *", r"day-of-month field 'w15'"),
    (cron, "0 0 1-5W * *", r"day-of-month field '1-5w'"),
    (cron, "0 0 32W * *", r"day-of-month field '32w'"),
    (cron, "0 0 * * L", r"day-of-week field 'l'"),
    (cron, "0 0 * * 8L", r"day-of-week field '8l'"),
    (cron, "0 0 * * mon#0", r"day-of-week field 'mon#0'"),
    (cron, "0 0 * * 1#", r"day-of-week field '1#'"),
    (cron, "0 0 15-L * *", r"day-of-month field '15-l'"),
    (cron, "0 0 0 * *", r"day-of-month field '0'"),
    (cron, "0 0 1,,2 * *", r"day-of-month field '1,,2'"),
    # cron(): fields out of range, unknown words and the wrong number of fields
    (cron, "*/61 * * * *", r"minute field '\*/61': step .* must be 1-60"),
    (cron, "*/0 * * * *", r"minute field '\*/0': step"),
    (cron, "0 25 * * *", r"hour field '25'"),
    (cron, "0 0 32 * *", r"day-of-month field '32'"),
    (cron, "0 0 * 13 *", r"month field '13'"),
    (cron, "0 0 * * 8", r"day-of-week field '8'"),
    (cron, "0 0 * * 1#6", r"day-of-week field '1#6'"),
    (cron, "61 * * * * *", r"second field '61'"),
    (cron, "H * * * *", r"minute field 'h'"),
    (cron, "R * * * *", r"minute field 'r'"),
    (cron, "0 ? * * *", r"hour field '\?'"),
    (cron, "* * * *", r"expected 5 fields"),
    (cron, "0 0 1 1 * * 2030", r"got 7"),
    (cron, "@reboot", r"unknown macro"),
    (cron, "0 0 * foo *", r"month field 'foo'"),
    # parse_schedule(): the string quoted with what was expected
    (parse_schedule, "", r"cannot parse schedule '': expected"),
    (parse_schedule, "hello", r"cannot parse schedule 'hello': expected e\.g\."),
    (parse_schedule, "every 0 minutes", r"at least 1, got 0"),
    (parse_schedule, "every 5 fortnights", r"unknown unit 'fortnights'"),
    (parse_schedule, "every fortnight", r"unknown unit or weekday 'fortnight'"),
    (parse_schedule, "at 25:00", r"'at 25:00'.*invalid time '25:00'"),
    (parse_schedule, "at 10:30, 10:61", r"invalid time '10:61'"),
    (parse_schedule, "every 2h at 10:00", r"'at' needs a day unit"),
    (parse_schedule, "monthly on 0", r"days of month"),
    (parse_schedule, "monthly at 10:00", r"expected 'monthly on"),
    (parse_schedule, "someday at 10:00", r"unknown unit or weekday 'someday'"),
    (parse_schedule, "cron */61 * * * *", r"minute field '\*/61'"),
    (parse_schedule, "0 25 * * *", r"hour field '25'"),
    (parse_schedule, "@reboot", r"unknown macro"),
    (parse_schedule, "daily at 10:30 in Mars/Olympus", r"Mars/Olympus"),
]


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [pytest.param(*row, id=f"{row[0].__name__}:{row[1]}") for row in REFUSED],
)
def test_a_refused_schedule_says_what_is_wrong(
    parse: Callable[[str], SlotSchedule], text: str, message: str
) -> None:
    with pytest.raises(ScheduleError, match=message):
        parse(text)
