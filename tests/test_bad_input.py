"""Bad input, by hand: huge, negative, NaN and infinite values, unicode, 10 000-character names,
and corrupted runtime entries in a real Redis.

Every refusal is a :class:`ScheduleError` or :class:`ConfigError` naming what was wrong; every
input here is refused cleanly (``docs/security.md`` lists the limits).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
import replica_helpers
from celery import Celery
from replica_helpers import store_raw

from celery_fork_scheduler import Manager, every
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.durations import to_timedelta
from celery_fork_scheduler.entry import entry_from_config, entry_from_dict, entry_to_dict
from celery_fork_scheduler.errors import ConfigError, ScheduleError
from celery_fork_scheduler.schedules import cron, parse_time, schedule_from_dict
from celery_fork_scheduler.schedules.parsing import parse_schedule
from celery_fork_scheduler.testing import FakeClock

UTC = timezone.utc
START = "2026-03-02T10:00:00.300+00:00"


def build(name: str = "x", **definition: Any) -> Any:
    return entry_from_config(name, {"task": "t", **definition}, default_timezone=UTC)


def schedule_error(call: Callable[[], object]) -> str:
    """The message of the ScheduleError that ``call()`` raises."""
    with pytest.raises(ScheduleError) as refused:
        call()
    return str(refused.value)


# -- huge values ----------------------------------------------------------------------------------


def test_every_10_to_the_12_seconds_builds_describes_and_is_refused_as_never_firing() -> None:
    schedule = every(10**12).seconds
    assert schedule.describe() == "every 1000000000000 seconds"
    assert parse_schedule(schedule.describe()) == schedule
    assert schedule.next_slot(datetime(2026, 1, 1, tzinfo=UTC)) is None
    with pytest.raises(ConfigError) as refused:
        build(schedule=schedule)
    assert refused.value.field == "schedule" and "never fires" in str(refused.value)


@pytest.mark.parametrize(
    "schedule",
    [every(10**20).days, every(10**20).months, parse_schedule("every 9999999999999 days")],
    ids=["days", "months", "parsed-days"],
)
def test_a_huge_calendar_count_never_fires_and_says_so(schedule: Any) -> None:
    with pytest.raises(ScheduleError, match="never fires"):
        schedule.validate()
    assert schedule_from_dict(json.loads(json.dumps(schedule.to_dict()))) == schedule


@pytest.mark.parametrize("unit", ["seconds", "minutes", "hours", "weeks"])
def test_a_huge_every_n_interval_is_a_schedule_error(unit: str) -> None:
    with pytest.raises(ScheduleError, match=r"every\("):
        getattr(every(10**15), unit)


@pytest.mark.parametrize("text", ["every 99999999999999999999 seconds", "every 99999999999 weeks"])
def test_a_huge_count_in_a_schedule_string_is_a_schedule_error(text: str) -> None:
    with pytest.raises(ScheduleError, match="cannot parse schedule"):
        parse_schedule(text)


@pytest.mark.parametrize(
    "expr",
    [
        "*/61 * * * *",
        "*/0 * * * *",
        "*/99999999999999999999 * * * *",
        "0-99999999999999999999 * * * *",
        "*/61 * * * * *",
        "0 */25 * * *",
        "0 0 */32 * *",
        "0 0 * */13 *",
        "0 0 * * */9",
    ],
)
def test_an_out_of_range_cron_step_or_value_is_refused_naming_the_field(expr: str) -> None:
    message = schedule_error(lambda: cron(expr))
    assert expr in message
    assert "field" in message


def test_the_largest_cron_steps_are_accepted() -> None:
    assert cron("*/60 * * * *").next_slot(datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)) == datetime(
        2026, 1, 1, 1, 0, tzinfo=UTC
    )
    assert cron("*/60 */24 */31 */12 */8").validate() is None


def test_a_start_at_in_year_9999_is_kept_and_round_trips() -> None:
    entry = build(schedule="every 5 minutes", start_at="9999-12-31T00:00:00")
    assert entry.first_slot_after(datetime(2026, 1, 1, tzinfo=UTC)) == datetime(
        9999, 12, 31, tzinfo=UTC
    )
    stored = entry_to_dict(entry)
    assert entry_to_dict(entry_from_dict("x", stored, default_timezone=UTC)) == stored


def test_an_end_at_before_start_at_near_the_edges_names_end_at() -> None:
    with pytest.raises(ConfigError) as refused:
        build(schedule="daily", start_at="9999-12-31T00:00:00", end_at="0001-01-01T00:00:00")
    assert refused.value.field == "end_at"


@pytest.mark.parametrize(
    ("field", "value"),
    [("start_at", "9999-12-31T23:00:00-05:00"), ("end_at", "0001-01-01T00:00:00+05:00")],
)
def test_an_instant_that_overflows_in_utc_is_a_config_error(field: str, value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        build(schedule="every 5 minutes", **{field: value})
    assert refused.value.field == field


def test_a_long_timedelta_is_kept_to_the_microsecond() -> None:
    value = timedelta(days=99421, microseconds=1)
    assert to_timedelta(value, what="d") == value


# -- negative values ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -1, -(10**20)])
def test_every_with_zero_or_a_negative_count_names_n(n: int) -> None:
    with pytest.raises(ScheduleError, match=r"every\(n\): n must be a positive integer"):
        every(n)


@pytest.mark.parametrize(
    "text",
    ["every 0 minutes", "every -5 minutes", "monthly on -32", "monthly on 0", "every 0 days"],
)
def test_a_zero_or_negative_count_in_a_string_is_refused(text: str) -> None:
    assert repr(text) in schedule_error(lambda: parse_schedule(text))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("schedule", -5),
        ("schedule", timedelta(seconds=-1)),
        ("catchup_window", -1),
        ("max_runs", -1),
        ("max_runs", 0),
        ("max_runs", 10**23),
    ],
)
def test_negative_entry_values_name_the_field(field: str, value: Any) -> None:
    definition = {"schedule": "every 5 minutes", field: value}
    with pytest.raises(ConfigError) as refused:
        build(**definition)
    assert refused.value.field == field


@pytest.mark.parametrize(
    "name", ["lock_duration", "claim_lease", "singleton_lease", "refresh_interval", "retry_delay"]
)
@pytest.mark.parametrize("value", [-1, -0.5, timedelta(seconds=-1)])
def test_negative_durations_in_settings_name_the_setting(name: str, value: Any) -> None:
    with pytest.raises(ConfigError) as refused:
        read_settings({f"fork_scheduler_{name}": value})
    assert refused.value.field == f"fork_scheduler_{name}"


@pytest.mark.parametrize("name", ["max_retries", "max_concurrent", "history_size", "metrics_port"])
def test_negative_counts_in_settings_name_the_setting(name: str) -> None:
    with pytest.raises(ConfigError) as refused:
        read_settings({f"fork_scheduler_{name}": -1})
    assert refused.value.field == f"fork_scheduler_{name}"


def test_a_metrics_port_above_65535_is_refused() -> None:
    with pytest.raises(ConfigError):
        read_settings({"fork_scheduler_metrics_port": 70_000})


# -- NaN and infinity -----------------------------------------------------------------------------

NON_FINITE = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", ["lock_duration", "claim_lease", "catchup_grace", "retry_delay"])
def test_non_finite_setting_durations_name_the_setting(name: str, value: float) -> None:
    with pytest.raises(ConfigError) as refused:
        read_settings({f"fork_scheduler_{name}": value})
    assert refused.value.field == f"fork_scheduler_{name}"
    assert "finite" in str(refused.value)


@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
def test_a_non_finite_catchup_window_names_the_field(value: float) -> None:
    with pytest.raises(ConfigError) as refused:
        build(schedule="every 5 minutes", catchup_window=value)
    assert refused.value.field == "catchup_window"


@pytest.mark.parametrize("value", [*NON_FINITE, 1e16], ids=["nan", "inf", "-inf", "1e16"])
def test_a_non_finite_or_huge_interval_in_stored_json_names_the_field(value: float) -> None:
    with pytest.raises(ScheduleError, match="schedule"):
        schedule_from_dict({"type": "interval", "every": value})


@pytest.mark.parametrize("n", [*NON_FINITE, 1.5, True, "5", None], ids=str)
def test_every_with_a_non_integer_names_n(n: Any) -> None:
    with pytest.raises(ScheduleError, match=r"every\(n\)"):
        every(n)


@pytest.mark.parametrize("value", [*NON_FINITE, 1e16], ids=["nan", "inf", "-inf", "1e16"])
def test_a_non_finite_or_huge_number_as_schedule_is_a_config_error(value: float) -> None:
    with pytest.raises(ConfigError) as refused:
        build(schedule=value)
    assert refused.value.field == "schedule"


@pytest.mark.parametrize("value", [1e-9, 1e-7, 4.9e-7, 5e-324])
def test_a_positive_duration_below_a_microsecond_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match="x "):
        to_timedelta(value, what="x", allow_zero=False)


# -- unicode --------------------------------------------------------------------------------------

#: Names with control characters (NUL, ESC, U+202E) are refused: tests/test_hostile_input.py.
UNICODE_NAMES = ["日本語のジョブ", "émoji-🚀-job", "Ω≈ç√∫", "ع-ربي", "x\u200by"]


@pytest.mark.parametrize(
    "text",
    [
        "every \uff15 minutes \u2728",  # fullwidth digit five, sparkles
        "каждые 5 минут",
        "🕐 at 10:30",
        "at 10:30 in Europe/Bérlin",
        "\x00",
        "",
        "cron ½ * * * *",
        "at 1²:00",
        "every 5 minutes in Europe/Berlin\u202e",
        "\ufeffdaily",
    ],
)
def test_unicode_schedule_strings_are_refused_quoting_them(text: str) -> None:
    assert repr(text) in schedule_error(lambda: parse_schedule(text))


@pytest.mark.parametrize(
    ("text", "ascii_text"),
    [
        ("every \u0663 minutes", "every 3 minutes"),  # Arabic-Indic digit three
        ("at \uff11\uff12:\uff10\uff10", "at 12:00"),  # fullwidth digits
    ],
)
def test_non_ascii_digits_are_refused_as_in_a_cron_field(text: str, ascii_text: str) -> None:
    # Python's \\d and int() read any Unicode decimal digit; a schedule string takes ASCII
    # digits only (as a cron field does, and cronsim): the ASCII spelling parses.
    assert repr(text) in schedule_error(lambda: parse_schedule(text))
    assert parse_schedule(ascii_text).describe().isascii()


@pytest.mark.parametrize("name", UNICODE_NAMES)
def test_unicode_entry_names_round_trip_through_stored_json(name: str) -> None:
    entry = build(name, schedule="every 5 minutes", description="✓ ünïcödé", tags=["タグ"])
    stored = json.loads(json.dumps(entry_to_dict(entry)))
    assert entry_to_dict(entry_from_dict(name, stored, default_timezone=UTC)) == entry_to_dict(
        entry
    )


# -- Redis-backed: Manager and Scheduler ---------------------------------------------------------


def make_app(redis_url: str, beat_schedule: dict[str, Any] | None = None, **conf: Any) -> Celery:
    app = replica_helpers.make_app(redis_url, beat_schedule or {}, main="bad_input", **conf)
    return app


def dump(client: redis.Redis) -> dict[bytes, Any]:
    """Every key of the database with its type and value, to compare before and after."""
    result: dict[bytes, Any] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"hash":
            value: Any = client.hgetall(key)
        elif kind == b"zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"list":
            value = client.lrange(key, 0, -1)
        elif kind == b"set":
            value = client.smembers(key)
        else:
            value = client.get(key)
        result[key] = (kind, value)
    return result


@pytest.fixture
def manager(redis_url: str) -> Iterator[Manager]:
    app = make_app(redis_url)
    yield Manager(app, clock=FakeClock(START))
    app.close()


@pytest.mark.parametrize(
    "name",
    ["x" * 10_000, "é" * 10_000, "🚀" * 10_000, "a{b}" + "x" * 9_996, "x" * 201],
    ids=["ascii", "latin", "emoji", "braces", "201"],
)
def test_a_10000_character_name_is_refused_clearly_and_stores_nothing(
    manager: Manager, redis_client: redis.Redis, name: str
) -> None:
    manager.add("existing", "tasks.t", every(1).minutes)
    before = dump(redis_client)
    with pytest.raises(ConfigError) as refused:
        manager.add(name, "tasks.t", every(1).minutes)
    message = str(refused.value)
    assert "at most 200 characters" in message
    assert len(message) < 300
    assert dump(redis_client) == before


@pytest.mark.parametrize("name", [n for n in UNICODE_NAMES if "\x00" not in n])
def test_a_unicode_runtime_entry_fires(redis_url: str, manager: Manager, name: str) -> None:
    manager.add(name, "tasks.t", every(1).seconds)
    assert manager.get(name).name == name
    replica = Replica(redis_url, {})
    try:
        replica.run(3)
    finally:
        replica.close()
    assert name in {occurrence.entry for occurrence in replica.publisher.occurrences}


def test_a_runtime_entry_the_manager_accepts_can_be_read_back(manager: Manager) -> None:
    try:
        manager.add("tiny-window", "tasks.t", every(1).minutes, catchup_window=1e-7)
    except ConfigError:
        return  # refused up front: fine
    assert [job.name for job in manager.jobs()] == ["tiny-window"]


class Replica(replica_helpers.SteppedReplica):
    """One Scheduler on the test Redis, with a fake clock and a recording publisher."""

    def __init__(self, redis_url: str, beat_schedule: dict[str, Any]) -> None:
        super().__init__(redis_url, make_app(redis_url, beat_schedule))

    def fired(self) -> set[str]:
        return {occurrence.entry for occurrence in self.publisher.occurrences}


def stored(**data: Any) -> str:
    return json.dumps({"schema": 1, "task": "t", **data})


SKIPPED = {
    "bad-json": b"{not json",
    "not-utf8": b"\xff\xfe{",
    "a-list": json.dumps([1, 2]),
    "a-string": json.dumps("every 5 minutes"),
    "unknown-schema": json.dumps({"schema": 99, "task": "t", "schedule": "every 5 minutes"}),
    "no-schema": json.dumps({"task": "t", "schedule": "every 5 minutes"}),
    "bad-schedule": stored(schedule={"type": "interval", "every": -1}),
    "unknown-type": stored(schedule={"type": "lunar"}),
    "bad-cron": stored(schedule={"type": "cron", "expr": "*/99 * * * *"}),
    "bad-zone": stored(schedule="every 5 minutes", timezone="Nowhere/Land"),
    "no-task": json.dumps({"schema": 1, "schedule": "every 5 minutes"}),
    "unknown-key": stored(schedule="every 5 minutes", pickle="cos\nsystem\n"),
}
#: Stored values that crash the Scheduler today, with the exception they raise.
CRASHING = {
    "times-not-strings": stored(schedule={"type": "daily", "every": 1, "times": [1]}),
    "start-at-overflow": stored(schedule="every 5 minutes", start_at="9999-12-31T23:00:00-05:00"),
    "huge-number-schedule": stored(schedule=1e16),
}
CRASH_REASON = (
    "RuntimeEntries._parse catches only ConfigError, so any other exception of entry_from_dict "
    "stops the whole Scheduler (at start-up or in tick): {'schedule': {'type': 'daily', "
    "'every': 1, 'times': [1]}} -> AttributeError in parse_time; start_at "
    "'9999-12-31T23:00:00-05:00' -> OverflowError; 'schedule': 1e16 -> OverflowError. Fix: "
    "runtime.RuntimeEntries._parse also catches Exception (logging 'runtime entry skipped: "
    "entry <name>: <type>: <error>'), plus the parser fixes named in the other xfails"
)


def corrupted_run(redis_url: str, name: str | bytes, raw: str | bytes, *, late: bool) -> Replica:
    """A replica with a static and a valid runtime entry, and one corrupted runtime entry written
    before it starts (``late=False``) or while it runs (``late=True``)."""
    client = redis.Redis.from_url(redis_url)
    store_raw(client, "good-runtime", stored(schedule={"type": "interval", "every": 1}))
    if not late:
        store_raw(client, name, raw)
    replica = Replica(redis_url, {"good-static": {"task": "t", "schedule": every(1).seconds}})
    try:
        replica.run(3)
        if late:
            store_raw(client, name, raw)
        replica.run(3)
    except BaseException:
        replica.close()
        raise
    finally:
        client.close()
    return replica


def run_past_a_corrupt_entry(
    redis_url: str, caplog: pytest.LogCaptureFixture, name: str, raw: str | bytes, late: bool
) -> tuple[Replica, list[str]]:
    """A corrupted run: both good entries fired; the replica and the error lines logged."""
    with caplog.at_level(logging.ERROR, logger="celery_fork_scheduler"):
        replica = corrupted_run(redis_url, name, raw, late=late)
    replica.close()
    assert replica.fired() == {"good-static", "good-runtime"}
    return replica, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("late", [False, True], ids=["at-start", "while-running"])
@pytest.mark.parametrize("label", sorted(SKIPPED) + sorted(CRASHING))
def test_a_corrupted_runtime_entry_is_skipped_with_an_error_and_the_others_keep_firing(
    redis_url: str, caplog: pytest.LogCaptureFixture, label: str, late: bool
) -> None:
    """Stored values that fail to parse, and those that crashed a parser (CRASHING), alike."""
    name = f"corrupt-{label}"
    raw = {**SKIPPED, **CRASHING}[label]
    replica, errors = run_past_a_corrupt_entry(redis_url, caplog, name, raw, late)
    # Each entry fires every second: none was held up by the bad one.
    slots = [o.slot for o in replica.publisher.occurrences if o.entry == "good-static"]
    assert len(slots) == len(set(slots)) >= 5
    assert any("skipped" in message and repr(name) in message for message in errors), errors


@pytest.mark.parametrize("late", [False, True], ids=["at-start", "while-running"])
def test_a_runtime_entry_whose_name_is_not_utf8_is_skipped(redis_url: str, late: bool) -> None:
    replica = corrupted_run(redis_url, b"\xff\xfe", stored(schedule="every 5 minutes"), late=late)
    replica.close()
    assert replica.fired() == {"good-static", "good-runtime"}


@pytest.mark.parametrize("value", [1030, None, b"10:30", 10.5], ids=str)
def test_a_time_that_is_not_a_string_is_a_schedule_error(value: Any) -> None:
    with pytest.raises(ScheduleError):
        parse_time(value)


def test_kwargs_with_non_string_keys_are_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        build(schedule="every 5 minutes", kwargs={1: 2})
    assert refused.value.field == "kwargs"
