"""Cron against cronsim, an independent evaluator of Vixie cron's dialect (docs/schedules.md).

Random 5- and 6-field expressions (steps, lists, ranges, names, ``L``, ``LW``, ``nL``, ``#``,
``nW``, reversed ranges, oversized steps), each from several start instants, in UTC and in zones
with daylight saving. cronsim iterates naive wall times; the test maps each through the project's
DST rule, written out again here: a skipped wall time fires at the first valid instant after the
gap, a repeated one at its first occurrence. Seeded, so a failure reproduces.

Every intentional difference is a named entry of :data:`EXCLUSIONS` (and a sentence in the docs);
any other difference fails.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

from celery_fork_scheduler.errors import ScheduleError
from celery_fork_scheduler.schedules import cron

UTC = timezone.utc
SEED = 20_261_202
#: Expressions generated; some are refused by both evaluators (reversed ranges, never firing)
#: or excluded, and at least 2 000 and 300 must be compared slot by slot.
FIVE_FIELD_EXPRESSIONS = 2_400
SIX_FIELD_EXPRESSIONS = 380
AGREEMENTS = ("same_slots", "both_refuse")
SLOTS_PER_START = 4
DST_ZONES = ("Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago")
#: cronsim gives up when a search passes 50 years; the project searches a whole 400-year cycle.
CRONSIM_HORIZON = timedelta(days=50 * 365)

#: The intentional differences from cronsim, by name: why each case is not compared.
EXCLUSIONS: dict[str, str] = {
    "step_beyond_field": (
        "a step larger than its field (*/61 in minutes) is refused here as a likely typo; "
        "cronsim accepts it and uses only the first value of the range"
    ),
    "nearest_weekday": (
        "nW (the weekday nearest to day n) is not in cronsim's dialect; it is checked by hand in "
        "tests/test_cron_dialect.py"
    ),
    "stepped_single_value_range": (
        "a range with equal ends and a step (6-6/1, sat-sat/2) is that one value here, as in "
        "Vixie cron; cronsim reads it as 6/1, from 6 to the end of the field"
    ),
    "beyond_cronsim_horizon": (
        "the next slot is more than 50 years away: cronsim stops looking, the project finds it"
    ),
}

MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


# -- the generator ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] is value low + i
    star_weight: float = 0.3


SECOND = Field(0, 59)
MINUTE = Field(0, 59)
HOUR = Field(0, 23)
DOM = Field(1, 31, star_weight=0.4)
MONTH = Field(1, 12, MONTH_NAMES, star_weight=0.5)
DOW = Field(0, 7, DOW_NAMES, star_weight=0.4)


def value(rng: random.Random, field: Field, number: int | None = None) -> str:
    number = rng.randint(field.low, field.high) if number is None else number
    index = number - field.low
    if field.names and index < len(field.names) and rng.random() < 0.4:
        name = field.names[index]
        return name.upper() if rng.random() < 0.3 else name
    return str(number)


def step(rng: random.Random, field: Field) -> int:
    span = field.high - field.low + 1
    if rng.random() < 0.015:
        return rng.randint(span + 1, span + 10)
    return rng.choice([1, 2, 3, 5, rng.randint(1, span)])


def plain_item(rng: random.Random, field: Field) -> str:
    kind = rng.random()
    if kind < 0.35:
        return value(rng, field)
    if kind < 0.6:
        low = rng.randint(field.low, field.high)
        roll = rng.random()
        if roll < 0.15:
            high = low  # a-a is that one value
        elif roll < 0.2:
            low, high = max(low, field.low + 1), rng.randint(field.low, max(low, field.low + 1) - 1)
        else:
            high = rng.randint(low, field.high)
        return f"{value(rng, field, low)}-{value(rng, field, high)}"
    if kind < 0.75:
        return f"*/{step(rng, field)}"
    if kind < 0.87:
        return f"{value(rng, field)}/{step(rng, field)}"
    low = rng.randint(field.low, field.high)
    high = rng.randint(low, field.high)
    return f"{value(rng, field, low)}-{value(rng, field, high)}/{step(rng, field)}"


def day_of_month_item(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.08:
        return "L"
    if roll < 0.12:
        return "LW"
    if roll < 0.16:
        return f"{rng.randint(1, 31)}W"
    return plain_item(rng, DOM)


def day_of_week_item(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.12:
        return f"{value(rng, DOW)}#{rng.randint(1, 5)}"
    if roll < 0.18:
        return f"{rng.randint(0, 7)}L"
    if roll < 0.22:
        return f"L{rng.randint(0, 7)}"
    return plain_item(rng, DOW)


def cron_field(rng: random.Random, field: Field, item: Callable[[random.Random], str]) -> str:
    if rng.random() < field.star_weight:
        return "*"
    return ",".join(item(rng) for _ in range(rng.choice([1, 1, 1, 2, 3])))


def expression(rng: random.Random, *, seconds: bool) -> str:
    fields = [
        cron_field(rng, MINUTE, lambda r: plain_item(r, MINUTE)),
        # hours: mostly restricted, so that the days decide more often than the clock
        cron_field(rng, HOUR, lambda r: plain_item(r, HOUR)),
        cron_field(rng, DOM, day_of_month_item),
        cron_field(rng, MONTH, lambda r: plain_item(r, MONTH)),
        cron_field(rng, DOW, day_of_week_item),
    ]
    if seconds:
        fields.insert(0, cron_field(rng, SECOND, lambda r: plain_item(r, SECOND)))
    return " ".join(fields)


# -- the reference: cronsim's wall times through the DST rule --------------------------------------


def exists(wall: datetime, zone: ZoneInfo) -> bool:
    aware = wall.replace(tzinfo=zone)
    return aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall


def wall_to_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """A repeated wall time is its first occurrence; a skipped one is the first valid instant
    after its gap (the zones' transitions fall on whole minutes)."""
    if exists(wall, zone):
        return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    probe = wall.replace(second=0) + timedelta(minutes=1)
    while not exists(probe, zone):
        probe += timedelta(minutes=1)
    return probe.replace(tzinfo=zone).astimezone(UTC)


def cronsim_expression(expr: str) -> str:
    """cronsim spells the last weekday of the month ``5L`` only; the project also takes ``L5``."""
    return " ".join(
        ",".join(
            f"{item[1:]}L" if item[:1] == "L" and item[1:].isdigit() else item
            for item in part.split(",")
        )
        for part in expr.split()
    )


def reference_slots(expr: str, zone: ZoneInfo, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` slots after ``after``; CronSimError if cronsim refuses ``expr``."""
    local = after.astimezone(zone).replace(tzinfo=None)
    walls: Iterator[datetime] = CronSim(cronsim_expression(expr), local)
    found: list[datetime] = []
    for wall in walls:
        instant = wall_to_instant(wall, zone)
        if instant > after and (not found or instant > found[-1]):
            found.append(instant)
            if len(found) == count:
                break
    return found


def project_slots(expr: str, zone: ZoneInfo, after: datetime, count: int) -> list[datetime]:
    """The project's next ``count`` slots; ScheduleError if it refuses or never fires."""
    schedule = cron(expr, zone)
    schedule.validate()
    found: list[datetime] = []
    moment: datetime | None = after
    while moment is not None and len(found) < count:
        moment = schedule.next_slot(moment)
        if moment is not None:
            found.append(moment)
    return found


# -- start instants --------------------------------------------------------------------------------


def transitions(zone: ZoneInfo, years: range) -> list[datetime]:
    """The UTC instants at which ``zone``'s offset changes in ``years`` (to the minute)."""
    found = []
    moment = datetime(years.start, 1, 1, tzinfo=UTC)
    end = datetime(years.stop, 1, 1, tzinfo=UTC)
    offset = moment.astimezone(zone).utcoffset()
    while moment < end:
        following = moment + timedelta(days=1)
        if following.astimezone(zone).utcoffset() != offset:
            low, high = moment, following
            while high - low > timedelta(minutes=1):
                middle = low + (high - low) / 2
                if middle.astimezone(zone).utcoffset() == offset:
                    low = middle
                else:
                    high = middle
            found.append(high.replace(second=0, microsecond=0))
            offset = following.astimezone(zone).utcoffset()
        moment = following
    return found


YEARS = range(2024, 2031)
TRANSITIONS = {name: transitions(ZoneInfo(name), YEARS) for name in DST_ZONES}


def random_instant(rng: random.Random) -> datetime:
    seconds = rng.randint(0, int(timedelta(days=365 * 15).total_seconds()))
    moment = datetime(2021, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    return moment.replace(microsecond=rng.choice([0, 0, rng.randint(1, 999_999)]))


def starts(rng: random.Random, zone_name: str) -> list[datetime]:
    """A random instant and instants a little before DST transitions (or month ends in UTC)."""
    chosen = [random_instant(rng)]
    for _ in range(2):
        if zone_name == "UTC":
            month_end = datetime(rng.choice(YEARS), rng.randint(1, 12), 1, tzinfo=UTC)
            chosen.append(month_end - timedelta(seconds=rng.randint(1, 3 * 86_400)))
        else:
            near = rng.choice(TRANSITIONS[zone_name])
            chosen.append(near - timedelta(seconds=rng.randint(0, 3 * 3_600)))
    return chosen


# -- the comparison --------------------------------------------------------------------------------


def compare(expr: str, zone_name: str, after: datetime) -> str:
    """``"same_slots"``, ``"both_refuse"``, the name of the exclusion that applies, or a
    description of the difference."""
    zone = ZoneInfo(zone_name)
    try:
        ours: list[datetime] | ScheduleError = project_slots(expr, zone, after, SLOTS_PER_START)
    except ScheduleError as exc:
        ours = exc
    try:
        theirs: list[datetime] | CronSimError = reference_slots(expr, zone, after, SLOTS_PER_START)
    except CronSimError as exc:
        theirs = exc
    if isinstance(ours, ScheduleError) and "step in" in str(ours) and isinstance(theirs, list):
        return "step_beyond_field"
    if any(item.upper().endswith("W") and item[:-1].isdigit() for item in day_items(expr)):
        return "nearest_weekday"
    if isinstance(ours, list) and isinstance(theirs, list):
        if ours == theirs:
            return "same_slots" if ours else "both_refuse"
        if has_stepped_single_value_range(expr):
            return "stepped_single_value_range"
        if ours[: len(theirs)] == theirs and ours[len(theirs)] - after > CRONSIM_HORIZON:
            return "beyond_cronsim_horizon"
    # Refused (bad syntax) or never firing: cronsim says so with an error or no slot at all.
    if isinstance(ours, ScheduleError) and (isinstance(theirs, CronSimError) or theirs == []):
        return "both_refuse"
    return (
        f"{expr!r} in {zone_name} after {after.isoformat()}: project {ours!r}, cronsim {theirs!r}"
    )


def number(token: str) -> int:
    lowered = token.lower()
    for names in (MONTH_NAMES, DOW_NAMES):
        if lowered in names:
            return names.index(lowered) + (1 if names is MONTH_NAMES else 0)
    return int(token)


def has_stepped_single_value_range(expr: str) -> bool:
    for part in expr.split():
        for item in part.split(","):
            bounds, _, stepped = item.partition("/")
            low, dash, high = bounds.partition("-")
            if stepped and dash and number(low) == number(high):
                return True
    return False


def day_items(expr: str) -> list[str]:
    parts = expr.split()
    return parts[-3].split(",")


def test_cron_agrees_with_cronsim_except_for_the_named_exclusions() -> None:
    rng = random.Random(SEED)
    outcomes: Counter[str] = Counter()
    compared: Counter[int] = Counter()  # expressions compared slot by slot, by field count
    differences: list[str] = []
    plan = [5] * FIVE_FIELD_EXPRESSIONS + [6] * SIX_FIELD_EXPRESSIONS
    for fields in plan:
        expr = expression(rng, seconds=fields == 6)
        found = {
            compare(expr, zone_name, after)
            for zone_name in ("UTC", *DST_ZONES)
            for after in starts(rng, zone_name)
        }
        differences += sorted(found - set(AGREEMENTS) - set(EXCLUSIONS))
        outcomes.update(found)
        compared[fields] += "same_slots" in found
    assert not differences, f"{len(differences)} differences, e.g.\n" + "\n".join(differences[:20])
    assert compared[5] >= 2_000 and compared[6] >= 300, (compared, outcomes)
