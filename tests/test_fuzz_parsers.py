"""Fuzzing every parser of user and stored input with Hypothesis (deterministic: derandomized).

Each parser either returns a value or raises :class:`ScheduleError` / :class:`ConfigError`
(both ``ValueError`` subclasses) whose message names what was wrong: never another exception.
Valid inputs round-trip: ``describe()`` parses back to an equal schedule, ``to_dict`` to an
equal schedule, ``entry_to_dict`` through JSON to an equal dict.

The strategies stay inside the ranges where the package is known to behave; the inputs just
outside them that crash today are pinned, exactly, by the strict ``xfail`` tests of
``test_bad_input.py`` (widen the strategies when those are fixed).
"""

from __future__ import annotations

import dataclasses
import json
import string
from collections.abc import Callable
from datetime import datetime, time, timedelta, timezone
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_fork_scheduler.config import (
    DEFAULTS,
    SETTING_PREFIX,
    Settings,
    has_control_characters,
    read_settings,
)
from celery_fork_scheduler.durations import to_timedelta
from celery_fork_scheduler.entry import (
    ENTRY_KEYS,
    Entry,
    entry_from_config,
    entry_from_dict,
    entry_to_dict,
)
from celery_fork_scheduler.errors import ConfigError, ScheduleError
from celery_fork_scheduler.schedules import (
    WEEKDAY_NAMES,
    Cron,
    Daily,
    Interval,
    Monthly,
    SlotSchedule,
    Weekly,
    cron,
    every,
    parse_time,
    schedule_from_dict,
)
from celery_fork_scheduler.schedules.parsing import parse_schedule

UTC = timezone.utc
FUZZ = settings(
    derandomize=True,
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
#: Largest count the strategies use with a unit: far beyond any real schedule, well below the
#: ~8.6e13 s where ``timedelta`` overflows (see test_bad_input.py).
MAX_COUNT = 10**6

# -- strategies -----------------------------------------------------------------------------------

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(min_value=-1e9, max_value=1e9, allow_nan=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
#: Python values a settings module could hold besides JSON: NaN, inf, timedeltas, tuples.
odd_values = st.one_of(
    json_values,
    st.sampled_from([float("nan"), float("inf"), -float("inf"), -1, 0, 0.0, (), ("a.b",)]),
    st.timedeltas(min_value=timedelta(days=-10), max_value=timedelta(days=10)),
)

times_of_day = st.times().map(lambda t: t.replace(microsecond=0))
time_texts = times_of_day.map(lambda t: t.strftime("%H:%M:%S" if t.second else "%H:%M"))
zones = st.none() | st.sampled_from(ZONES)

unit_words = st.sampled_from(
    ["s", "sec", "seconds", "m", "min", "minutes", "h", "hours", "w", "weeks", "d", "days"]
)
weekday_words = st.sampled_from([*WEEKDAY_NAMES, *(name[:3] for name in WEEKDAY_NAMES)])
cron_field = st.one_of(
    st.sampled_from(["*", "?", "L", "W", "#", "-", "/", ",", "*/0", "1-", "-1", "mon", "jan"]),
    st.sampled_from(["LW", "5L", "L5", "mon#2", "15W", "fri-mon", "3-3", "1/3", "6-6/2"]),
    st.integers(min_value=0, max_value=70).map(str),
    st.tuples(st.integers(0, 70), st.integers(0, 70)).map(lambda p: f"{p[0]}-{p[1]}"),
    st.integers(0, 70).map(lambda n: f"*/{n}"),
    st.text(alphabet="0123456789*/,-?LW#abcmonjan", min_size=1, max_size=6),
)
cron_text = st.lists(cron_field, min_size=1, max_size=7).map(" ".join)

#: Text that looks like the schedule grammar, well-formed or not.
grammar_text = st.one_of(
    st.tuples(st.integers(0, MAX_COUNT), unit_words).map(lambda p: f"every {p[0]} {p[1]}"),
    st.tuples(st.integers(0, 400), st.lists(time_texts, min_size=1, max_size=3)).map(
        lambda p: f"every {p[0]} days at {', '.join(p[1])}"
    ),
    st.lists(time_texts | st.text(max_size=6), min_size=1, max_size=3).map(
        lambda ts: "at " + ", ".join(ts)
    ),
    st.tuples(st.lists(weekday_words, min_size=1, max_size=3), time_texts).map(
        lambda p: f"{', '.join(p[0])} at {p[1]}"
    ),
    st.tuples(st.integers(0, 1000), st.lists(st.integers(-40, 40), min_size=1, max_size=3)).map(
        lambda p: f"every {p[0]} months on {','.join(map(str, p[1]))}"
    ),
    cron_text.map(lambda text: "cron " + text),
    cron_text,
    st.sampled_from(["@daily", "@hourly", "@weekly", "@reboot", "@", "daily", "monthly"]),
)
schedule_text = st.one_of(
    grammar_text,
    st.tuples(grammar_text, st.sampled_from([*ZONES, "Mars/Base", "x", "../etc", ""])).map(
        lambda p: f"{p[0]} in {p[1]}"
    ),
    st.text(max_size=40),
    st.text(alphabet=string.printable, max_size=40),
)


@st.composite
def valid_schedules(draw: st.DrawFn) -> SlotSchedule:
    """Schedules whose ``describe()`` is meant to parse back (no offset, start or AND-cron)."""
    kind = draw(st.sampled_from(["interval", "daily", "weekly", "monthly", "cron"]))
    n = draw(st.integers(1, MAX_COUNT))
    times = draw(st.lists(times_of_day, min_size=1, max_size=3))
    schedule: SlotSchedule
    if kind == "interval":
        unit = draw(st.sampled_from(["seconds", "minutes", "hours", "weeks"]))
        schedule = getattr(every(n), unit)
    elif kind == "daily":
        schedule = every(draw(st.integers(1, 400))).days.at(*times)
    elif kind == "weekly":
        days = draw(st.lists(st.integers(0, 6), min_size=1, max_size=7))
        schedule = Weekly(weekdays=tuple(days), times=tuple(times))
    elif kind == "monthly":
        days = draw(
            st.lists(st.integers(-31, 31).filter(bool), min_size=1, max_size=4, unique=True)
        )
        schedule = Monthly(every_months=draw(st.integers(1, 600)), days=tuple(days))
        schedule = schedule.at(*times)
    else:
        minute = draw(st.sampled_from(["*", "0", "*/5", "1-59/7", "0,30"]))
        hour = draw(st.sampled_from(["*", "3", "*/2", "8-18"]))
        dom = draw(st.sampled_from(["*", "1", "15", "L", "1-7"]))
        month = draw(st.sampled_from(["*", "1", "*/3", "jan-jun"]))
        dow = draw(st.sampled_from(["*", "1", "mon-fri", "sun"]))
        fields = [minute, hour, dom, month, dow]
        if draw(st.booleans()):
            fields.insert(0, draw(st.sampled_from(["0", "*/10", "30"])))
        schedule = cron(" ".join(fields))
    zone = draw(zones)
    return schedule if zone is None else schedule.with_timezone(zone)


def assert_names(error: ValueError, *candidates: object) -> None:
    """The message quotes (or names) at least one of ``candidates``."""
    message = str(error)
    assert message.strip(), "empty error message"
    assert any(str(c) in message or repr(c) in message for c in candidates), (
        f"{message!r} names none of {candidates!r}"
    )


T = TypeVar("T")


def built_or_named(build: Callable[[], T], *candidates: object) -> T | None:
    """What ``build()`` returns, or None when it raised a ScheduleError naming a candidate."""
    try:
        return build()
    except ScheduleError as exc:
        assert_names(exc, *candidates)
        return None


# -- schedule strings -----------------------------------------------------------------------------


@FUZZ
@given(schedule_text)
def test_parse_schedule_returns_a_schedule_or_a_schedule_error_quoting_the_text(
    text: str,
) -> None:
    schedule = built_or_named(lambda: parse_schedule(text), text)
    if schedule is not None:
        assert isinstance(schedule, SlotSchedule)
        assert isinstance(schedule.describe(), str)


@FUZZ
@given(valid_schedules())
def test_describe_parses_back_to_an_equal_schedule(schedule: SlotSchedule) -> None:
    parsed = parse_schedule(schedule.describe())
    if isinstance(schedule, Interval):
        # UTC intervals ignore the zone, and describe() leaves it out: same slots either way.
        schedule = dataclasses.replace(schedule, tz=None)
    assert parsed == schedule


@FUZZ
@given(valid_schedules())
def test_to_dict_through_json_gives_back_an_equal_schedule(schedule: SlotSchedule) -> None:
    data = json.loads(json.dumps(schedule.to_dict(), allow_nan=False))
    assert schedule_from_dict(data) == schedule


@FUZZ
@given(st.one_of(st.integers(), st.floats(), st.none(), st.text(max_size=5), st.booleans()))
def test_parse_schedule_of_a_non_string_is_a_schedule_error(value: object) -> None:
    try:
        parse_schedule(value)  # type: ignore[arg-type]
    except ScheduleError as exc:
        assert_names(exc, value)


# -- cron -----------------------------------------------------------------------------------------


@FUZZ
@given(cron_text, st.one_of(st.none(), st.sampled_from([*ZONES, "Nowhere/Land", "", "../x"])))
def test_cron_builds_or_names_the_expression_or_zone(text: str, zone: str | None) -> None:
    schedule = built_or_named(lambda: cron(text, zone), text, " ".join(text.split()), zone)
    if schedule is not None:
        assert isinstance(schedule, Cron)
        assert Cron(expr=schedule.expr, tz=schedule.tz) == schedule
        # An accepted expression either never fires (said at load time) or has slots that
        # next_slot and previous_slot agree on.
        try:
            schedule.validate()
        except ScheduleError as exc:
            assert "never fires" in str(exc)
            return
        after = datetime(2026, 3, 29, 0, 30, tzinfo=timezone.utc)
        slot = schedule.next_slot(after)
        assert slot is not None and slot > after
        assert schedule.previous_slot(slot) == slot
        assert schedule.next_slot(slot - timedelta(microseconds=1)) == slot


# -- times ----------------------------------------------------------------------------------------


@FUZZ
@given(
    st.one_of(
        st.text(max_size=12),
        st.text(alphabet="0123456789: ", max_size=10),
        st.tuples(st.integers(0, 99), st.integers(0, 99), st.integers(0, 99)).map(
            lambda p: f"{p[0]}:{p[1]:02}:{p[2]:02}"
        ),
    )
)
def test_parse_time_of_any_text_is_a_time_or_a_schedule_error_quoting_it(text: str) -> None:
    parsed = built_or_named(lambda: parse_time(text), text)
    if parsed is not None:
        assert isinstance(parsed, time)
        assert parsed.tzinfo is None and parsed.microsecond == 0


@FUZZ
@given(times_of_day)
def test_every_time_of_day_round_trips_through_its_text(moment: time) -> None:
    assert parse_time(moment.strftime("%H:%M:%S")) == moment
    assert parse_time(moment) == moment


# -- every(n) -------------------------------------------------------------------------------------

UNITS = [
    "second", "seconds", "minute", "minutes", "hour", "hours", "week", "weeks",
    "day", "days", "month", "months", *WEEKDAY_NAMES,
]  # fmt: skip


@FUZZ
@given(
    st.one_of(
        st.integers(min_value=-(10**6), max_value=MAX_COUNT),
        st.floats(allow_nan=True),
        st.booleans(),
        st.text(max_size=3),
        st.none(),
    ),
    st.sampled_from(UNITS),
)
def test_every_n_builds_or_names_n(n: Any, unit: str) -> None:
    built = built_or_named(lambda: getattr(every(n), unit), "every(", n)
    if built is not None:
        assert isinstance(built, (Interval, Daily, Weekly, Monthly))
        assert parse_schedule(built.describe()) == built


# -- durations ------------------------------------------------------------------------------------


@FUZZ
@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(10**20), max_value=10**20),
        st.timedeltas(),
        st.booleans(),
        st.none(),
        st.text(max_size=4),
        json_values,
    ),
    st.booleans(),
)
def test_to_timedelta_gives_a_duration_or_a_value_error_naming_the_setting(
    value: Any, allow_zero: bool
) -> None:
    try:
        result = to_timedelta(value, what="some_duration", allow_zero=allow_zero)
    except ValueError as exc:
        assert type(exc) is ValueError
        assert str(exc).startswith("some_duration ")
    else:
        assert isinstance(result, timedelta)
        assert result >= timedelta(0)


@FUZZ
@given(st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=3650)))
def test_a_positive_timedelta_is_kept_exactly(value: timedelta) -> None:
    assert to_timedelta(value, what="d", allow_zero=False) == value


# -- settings -------------------------------------------------------------------------------------

setting_names = st.sampled_from([*DEFAULTS, "typo_setting", "lock_duratoin", ""])


@FUZZ
@given(
    st.dictionaries(setting_names.map(lambda name: SETTING_PREFIX + name), odd_values, max_size=5),
    st.dictionaries(st.sampled_from(["timezone", "broker_url", "beat_schedule"]), json_values),
)
def test_read_settings_validates_or_names_the_setting(
    fork: dict[str, Any], other: dict[str, Any]
) -> None:
    conf = {**other, **fork}
    try:
        result = read_settings(conf)
    except ConfigError as exc:
        assert exc.field in fork, exc
        assert exc.field is not None and exc.field in str(exc)
    else:
        assert isinstance(result, Settings)


# -- entries --------------------------------------------------------------------------------------

entry_values = st.one_of(
    # no NaN or infinite schedule here: test_bad_input pins that crash
    json_values,
    st.sampled_from([-1, 0, 0.0, (), ("a.b",)]),
    st.timedeltas(min_value=timedelta(days=-10), max_value=timedelta(days=10)),
    schedule_text,
    valid_schedules(),
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)),
    st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ).map(datetime.isoformat),
    st.sampled_from(["allow", "skip", "buffer_one", "latest", "all", *ZONES]),
)
entry_names = st.one_of(st.text(min_size=1, max_size=30), st.sampled_from(["", "a{b}", "é" * 5]))


@FUZZ
@given(
    entry_names,
    st.dictionaries(
        st.sampled_from([*sorted(ENTRY_KEYS), "tsk", "schedul"]), entry_values, max_size=8
    ),
)
def test_entry_from_config_builds_or_names_the_entry_and_field(
    name: str, definition: dict[str, Any]
) -> None:
    try:
        entry = entry_from_config(name, definition, default_timezone=UTC)
    except ConfigError as exc:
        if name:
            assert exc.entry == name
            assert exc.field is not None, exc
            assert exc.field in definition or exc.field in ("task", "schedule", "name"), exc
        else:
            assert_names(exc, "entry names")
    else:
        assert isinstance(entry, Entry)


def _no_controls(text: str) -> bool:
    """Names, tasks and tags with control characters are refused (test_hostile_input.py)."""
    return not has_control_characters(text)


@st.composite
def valid_definitions(draw: st.DrawFn) -> dict[str, Any]:
    """Definitions that a runtime entry can have (JSON-storable values)."""
    definition: dict[str, Any] = {
        "task": draw(st.text(min_size=1, max_size=20).filter(_no_controls)),
        "schedule": draw(valid_schedules()),
    }
    plain = st.one_of(st.none(), st.booleans(), st.integers(-(10**9), 10**9), st.text(max_size=8))
    optional: dict[str, st.SearchStrategy[Any]] = {
        "args": st.lists(plain, max_size=3),
        "kwargs": st.dictionaries(st.text(max_size=5), plain, max_size=3),
        "options": st.sampled_from([{}, {"queue": "q"}, {"priority": 5}]),
        "tags": st.lists(st.text(min_size=1, max_size=5).filter(_no_controls), max_size=3),
        "overlap": st.sampled_from(["allow", "skip", "buffer_one"]),
        "enabled": st.booleans(),
        "description": st.text(max_size=20),
        "max_runs": st.integers(1, 10**6),
        "catchup": st.sampled_from(["skip", "latest", "all"]),
        "catchup_window": st.integers(1, 10**6),
        "timezone": st.sampled_from(ZONES),
        "start_at": st.datetimes(
            min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
        ),
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
        definition[key] = draw(optional[key])
    return definition


@FUZZ
@given(
    st.text(min_size=1, max_size=40).filter(
        lambda name: not {"{", "}"} & set(name) and _no_controls(name)
    ),
    valid_definitions(),
)
def test_a_valid_entry_round_trips_through_its_stored_json(
    name: str, definition: dict[str, Any]
) -> None:
    try:
        entry = entry_from_config(name, definition, default_timezone=UTC)
    except ConfigError as exc:
        # A valid-looking schedule may never fire inside its window: named, not crashed.
        assert exc.entry == name and exc.field == "schedule", exc
        return
    stored = entry_to_dict(entry)
    raw = json.dumps(stored, allow_nan=False)
    again = entry_from_dict(name, json.loads(raw), default_timezone=UTC)
    assert entry_to_dict(again) == stored


# -- stored JSON ----------------------------------------------------------------------------------

schedule_fields = st.sampled_from(
    ["type", "every", "offset", "start", "times", "weekdays", "days", "expr", "day_or", "tz",
     "event", "lat", "lon"]
)  # fmt: skip
#: JSON values without lists of non-strings under "times" (see test_bad_input's xfails).
schedule_json_values = st.one_of(
    json_leaves,
    st.lists(json_leaves, max_size=4),
    st.lists(time_texts | st.text(max_size=6), max_size=4),
    st.sampled_from(
        ["interval", "daily", "weekly", "monthly", "cron", "solar", "*/5 * * * *", *ZONES]
    ),
    st.lists(st.sampled_from([*WEEKDAY_NAMES, "funday"]), max_size=3),
)


@st.composite
def schedule_dicts(draw: st.DrawFn) -> dict[str, Any]:
    data = draw(st.dictionaries(schedule_fields, schedule_json_values, max_size=6))
    times = data.get("times")
    if isinstance(times, list) and not all(isinstance(t, str) for t in times):
        data["times"] = [str(t) for t in times]
    return data


@FUZZ
@given(st.one_of(schedule_dicts(), json_values))
def test_schedule_from_dict_of_any_json_decodes_or_names_the_field(data: Any) -> None:
    try:
        schedule = schedule_from_dict(data)
    except ScheduleError as exc:
        message = str(exc)
        assert "schedule" in message or "cron" in message or "interval" in message, message
    else:
        assert isinstance(schedule, SlotSchedule)
        assert schedule_from_dict(schedule.to_dict()) == schedule


@st.composite
def stored_entries(draw: st.DrawFn) -> Any:
    data = draw(
        st.dictionaries(
            st.sampled_from([*sorted(ENTRY_KEYS), "schema", "extra"]),
            st.one_of(json_values, schedule_dicts(), schedule_text),
            max_size=8,
        )
    )
    if draw(st.booleans()):
        data["schema"] = 1
    return data


@FUZZ
@given(st.text(min_size=1, max_size=20), st.one_of(stored_entries(), json_values))
def test_entry_from_dict_of_any_json_rebuilds_or_names_the_entry(name: str, data: Any) -> None:
    try:
        entry = entry_from_dict(name, data, default_timezone=UTC)
    except ConfigError as exc:
        assert exc.entry == name, exc
    else:
        assert isinstance(entry, Entry)
        assert entry.source == "runtime"
