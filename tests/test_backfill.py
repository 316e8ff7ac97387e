"""Backfill against a real Redis: never-published past slots go out once, in order, paced."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner

from celery_fork_scheduler import BackfillInputError, JobNotFoundError, Manager
from celery_fork_scheduler.backfill import BACKFILL_HEADER
from celery_fork_scheduler.cli import schedule
from celery_fork_scheduler.ids import SLOT_HEADER, task_id_for
from celery_fork_scheduler.keys import Keys

KEYS = Keys("scheduler:")
MINUTE = timedelta(minutes=1)
STATIC = {
    "minutely": {"task": "tasks.report", "schedule": "* * * * *"},
    "solo": {"task": "tasks.report", "schedule": "* * * * *", "overlap": "skip"},
}


def stored(client: redis.Redis) -> dict[bytes, bytes | None]:
    """Every key and its dump, but the workers' heartbeat (an in-process worker of an earlier
    test may still beat: it is not what a backfill writes)."""
    return {
        key: client.dump(key) for key in client.keys("*") if not key.endswith(b"{workers}:seen")
    }


def report(*args: Any, **kwargs: Any) -> None:
    """The task the entries name."""


def make_app(redis_url: str, **conf: Any) -> Celery:
    app = Celery("backfill_tests", set_as_current=False, broker=redis_url)
    app.conf.update(timezone="UTC", beat_schedule=STATIC, result_expires=None, **conf)
    app.task(name="tasks.report", shared=False)(report)
    return app


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = make_app(redis_url)
    yield app
    app.close()


@pytest.fixture
def manager(app: Celery) -> Manager:
    return Manager(app)


@pytest.fixture
def minute() -> datetime:
    """The start of the current minute, UTC (slots must be in Redis's past)."""
    return datetime.now(timezone.utc).replace(second=0, microsecond=0)


def us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000


def decided(client: redis.Redis, name: str, hwm: datetime, *sent: datetime) -> None:
    """Redis as a beat replica leaves it: slots decided up to ``hwm``, ``sent`` published."""
    state = "sent" if hwm in sent else "skipped"
    client.hset(KEYS.state(name), mapping={"hwm": us(hwm), "state": state})
    for slot in sent:
        item = {"slot": us(slot), "replica": "r1", "task_id": task_id_for(name, slot)}
        client.lpush(KEYS.history(name), json.dumps({**item, "outcome": "sent", "at": us(slot)}))


def broker_messages(client: redis.Redis) -> list[dict[str, Any]]:
    """The messages in the broker's ``celery`` queue, oldest first."""
    return [json.loads(raw) for raw in reversed(client.lrange("celery", 0, -1))]


def outcomes(results: list[Any]) -> list[str]:
    return [result.outcome for result in results]


class FakePace:
    """A monotonic clock that only sleeping moves; records every sleep."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def test_it_publishes_the_never_published_slots_once_in_slot_order(
    manager: Manager, redis_client: redis.Redis, minute: datetime
) -> None:
    slots = [minute - n * MINUTE for n in range(6, 0, -1)]
    decided(redis_client, "minutely", slots[-1], slots[1], slots[4])
    results = manager.backfill("minutely", slots[0], slots[-1], rate=1000)
    assert [r.slot for r in results] == slots
    assert outcomes(results) == [
        "sent",
        "already_published",
        "sent",
        "sent",
        "already_published",
        "sent",
    ]
    messages = broker_messages(redis_client)
    sent = [slots[0], slots[2], slots[3], slots[5]]
    assert [m["headers"]["id"] for m in messages] == [task_id_for("minutely", s) for s in sent]
    assert [m["headers"][SLOT_HEADER] for m in messages] == [s.isoformat() for s in sent]
    assert all(m["headers"][BACKFILL_HEADER] for m in messages)
    [history] = [manager.history_items("minutely", 20)]
    backfilled = [item.data for item in history if item.data and item.data.get("backfill")]
    assert [item["outcome"] for item in backfilled] == ["sent"] * 4


def test_it_publishes_nothing_again_when_run_twice(
    manager: Manager, redis_client: redis.Redis, minute: datetime
) -> None:
    decided(redis_client, "minutely", minute - MINUTE)
    first = manager.backfill("minutely", minute - 5 * MINUTE, minute - MINUTE, rate=1000)
    again = manager.backfill("minutely", minute - 5 * MINUTE, minute - MINUTE, rate=1000)
    assert outcomes(first) == ["sent"] * 5
    assert outcomes(again) == ["already_published"] * 5
    assert [r.task_id for r in again] == [r.task_id for r in first]
    assert len(broker_messages(redis_client)) == 5


def test_two_concurrent_backfills_of_one_range_publish_each_slot_exactly_once(
    redis_url: str, redis_client: redis.Redis, minute: datetime
) -> None:
    start, end = minute - 40 * MINUTE, minute - MINUTE
    decided(redis_client, "minutely", end)
    apps = [make_app(redis_url), make_app(redis_url)]
    results: list[list[Any]] = [[], []]
    barrier = threading.Barrier(2)

    def backfill(index: int) -> None:
        barrier.wait(timeout=10)
        results[index] = Manager(apps[index]).backfill("minutely", start, end, rate=10_000)

    threads = [threading.Thread(target=backfill, args=(i,)) for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        for app in apps:
            app.close()
    ids = [m["headers"]["id"] for m in broker_messages(redis_client)]
    assert len(ids) == 40 == len(set(ids))
    assert [len(r) for r in results] == [40, 40]
    for first, second in zip(*results, strict=True):
        assert [first.outcome, second.outcome].count("sent") == 1


def test_it_paces_the_publishes_to_the_rate(
    manager: Manager, redis_client: redis.Redis, minute: datetime
) -> None:
    pace = FakePace()
    decided(redis_client, "minutely", minute - MINUTE, minute - 3 * MINUTE)
    results = manager.backfill(
        "minutely",
        minute - 5 * MINUTE,
        minute - MINUTE,
        rate=4,
        sleep=pace.sleep,
        monotonic=pace.monotonic,
    )
    assert outcomes(results) == ["sent", "sent", "already_published", "sent", "sent"]
    assert pace.sleeps == [0.25, 0.25, 0.25]  # 4 publishes, a quarter second apart


def test_it_refuses_slots_the_scheduler_has_not_decided_yet_and_future_ones(
    manager: Manager, redis_client: redis.Redis, minute: datetime
) -> None:
    decided(redis_client, "minutely", minute - 3 * MINUTE)
    results = manager.backfill("minutely", minute - 4 * MINUTE, minute + 2 * MINUTE, rate=1000)
    assert outcomes(results) == [
        "sent",
        "sent",
        "skipped:undecided",
        "skipped:undecided",
        "skipped:undecided",  # the current minute: past, but the scheduler has not decided it
        "skipped:future",
        "skipped:future",
    ]


def test_a_dry_run_writes_and_sends_nothing(
    manager: Manager, redis_client: redis.Redis, minute: datetime
) -> None:
    decided(redis_client, "minutely", minute - MINUTE, minute - 2 * MINUTE)
    before = stored(redis_client)
    results = manager.backfill("minutely", minute - 3 * MINUTE, minute - MINUTE, dry_run=True)
    assert outcomes(results) == ["would_send", "already_published", "would_send"]
    assert stored(redis_client) == before


def test_a_singleton_entry_is_not_backfilled_over_a_running_run_unless_overlap_allow(
    manager: Manager, redis_client: redis.Redis, minute: datetime
) -> None:
    decided(redis_client, "solo", minute - MINUTE)
    results = manager.backfill("solo", minute - 3 * MINUTE, minute - MINUTE, rate=1000)
    assert outcomes(results) == ["sent", "skipped:busy", "skipped:busy"]
    assert redis_client.get(KEYS.running("solo")) == results[0].task_id.encode()
    allowed = manager.backfill(
        "solo", minute - 3 * MINUTE, minute - MINUTE, rate=1000, overlap="allow"
    )
    assert outcomes(allowed) == ["already_published", "sent", "sent"]
    assert len(broker_messages(redis_client)) == 3


def test_slots_older_than_a_full_history_remembers_are_refused_unless_forced(
    redis_url: str, redis_client: redis.Redis, minute: datetime
) -> None:
    app = make_app(redis_url, fork_scheduler_history_size=2)
    try:
        manager = Manager(app)
        decided(redis_client, "minutely", minute - MINUTE, minute - 2 * MINUTE, minute - MINUTE)
        start = minute - 4 * MINUTE
        assert outcomes(manager.backfill("minutely", start, minute - MINUTE, rate=1000)) == [
            "skipped:unknown",
            "skipped:unknown",
            "already_published",
            "already_published",
        ]
        forced = manager.backfill("minutely", start, minute - 3 * MINUTE, rate=1000, force=True)
        assert outcomes(forced) == ["sent", "sent"]
    finally:
        app.close()


def test_a_paused_entry_is_not_backfilled_unless_forced(
    manager: Manager, redis_client: redis.Redis, minute: datetime
) -> None:
    decided(redis_client, "minutely", minute - MINUTE)
    manager.pause("minutely")
    assert outcomes(manager.backfill("minutely", minute - MINUTE, minute - MINUTE)) == [
        "skipped:paused"
    ]
    assert outcomes(manager.backfill("minutely", minute - MINUTE, minute, force=True)) == [
        "sent",
        "skipped:undecided",
    ]


def test_a_disabled_entry_is_not_backfilled_unless_forced(
    manager: Manager, redis_client: redis.Redis, minute: datetime
) -> None:
    """``enabled: False`` never fires the entry, by a backfill either, unless forced (the
    pause's rule; the simulator's disables found a backfill sending a busy slot of a disabled
    entry)."""
    manager.add("off", "tasks.report", "every 1 minute")
    decided(redis_client, "off", minute - MINUTE)
    manager.update("off", enabled=False)
    assert outcomes(manager.backfill("off", minute - MINUTE, minute - MINUTE)) == [
        "skipped:disabled"
    ]
    assert outcomes(manager.backfill("off", minute - MINUTE, minute - MINUTE, force=True)) == [
        "sent"
    ]


def test_a_runtime_entry_removed_while_its_backfill_runs_gets_nothing_more_sent(
    manager: Manager, redis_client: redis.Redis, minute: datetime
) -> None:
    manager.add("hourly-sync", "tasks.report", "every 1 minute")
    decided(redis_client, "hourly-sync", minute - MINUTE)

    removed: list[bool] = []

    def remove_while_waiting(_: float) -> None:  # the pace's wait after the first publish
        if not removed:
            manager.remove("hourly-sync")
            removed.append(True)

    results = manager.backfill(
        "hourly-sync",
        minute - 3 * MINUTE,
        minute - MINUTE,
        rate=1.0,
        sleep=remove_while_waiting,
        monotonic=lambda: 0.0,
    )
    assert outcomes(results) == ["sent", "skipped:removed", "skipped:removed"]
    assert len(broker_messages(redis_client)) == 1


def test_a_slot_claimed_by_a_backfill_that_died_before_publishing_is_never_sent(
    manager: Manager, redis_client: redis.Redis, minute: datetime
) -> None:
    decided(redis_client, "minutely", minute - MINUTE)
    slot = us(minute - MINUTE)
    redis_client.hset(KEYS.backfill("minutely"), str(slot), f"publishing|dead|{slot}")
    assert outcomes(manager.backfill("minutely", minute - MINUTE, minute - MINUTE)) == [
        "skipped:in_flight"
    ]
    assert broker_messages(redis_client) == []


@pytest.mark.parametrize(
    ("name", "start", "end", "options", "error", "match"),
    [
        ("ghost", -3, -1, {}, JobNotFoundError, "ghost"),
        ("minutely", -1, -3, {}, BackfillInputError, "field 'start'.*after end"),
        ("minutely", -30, -1, {"limit": 10}, BackfillInputError, "more than 10 slots"),
        ("minutely", -3, -1, {"rate": 0}, BackfillInputError, "field 'rate'"),
        ("minutely", -3, -1, {"overlap": "never"}, BackfillInputError, "field 'overlap'"),
    ],
    ids=["unknown-entry", "from-after-to", "too-many-slots", "zero-rate", "bad-overlap"],
)
def test_bad_input_is_refused_before_anything_is_written(
    manager: Manager,
    redis_client: redis.Redis,
    minute: datetime,
    name: str,
    start: int,
    end: int,
    options: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    decided(redis_client, "minutely", minute - MINUTE)
    before = stored(redis_client)
    with pytest.raises(error, match=match):
        manager.backfill(name, minute + start * MINUTE, minute + end * MINUTE, **options)
    assert stored(redis_client) == before


# -- the CLI ---------------------------------------------------------------------------------


def cli(app: Celery, *args: str) -> Any:
    return CliRunner().invoke(
        schedule, list(args), obj=CLIContext(app=app, no_color=True, workdir=None)
    )


def test_the_command_prints_one_line_per_slot_and_json(
    app: Celery, redis_client: redis.Redis, minute: datetime
) -> None:
    decided(redis_client, "minutely", minute - MINUTE, minute - MINUTE)
    start, end = (minute - 2 * MINUTE).isoformat(), (minute - MINUTE).isoformat()
    result = cli(app, "backfill", "minutely", "--from", start, "--to", end, "--rate", "100/s")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["" + start, "sent", task_id_for("minutely", minute - 2 * MINUTE)]
    assert lines[1].split()[:2] == [end, "already_published"]
    assert lines[2] == "2 slots, 1 sent"
    again = cli(app, "backfill", "minutely", "--from", start, "--to", end, "--json")
    assert again.exit_code == 0, again.output
    data = json.loads(again.output)
    assert [s["outcome"] for s in data["slots"]] == ["already_published"] * 2


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--from", "yesterday", "--to", "2026-01-01T00:00:00"], "--from: not an ISO-8601 time"),
        (["--from", "2026-01-02T00:00", "--to", "2026-01-01T00:00"], "--from .* is after --to"),
        (["--from", "2026-01-01T00:00", "--to", "2026-01-02T00:00", "--rate", "fast"], "--rate"),
        (
            ["--from", "2026-01-01T00:00", "--to", "2026-01-01T00:05", "--rate", "1e-320"],
            "one a day",
        ),
        (["--from", "2026-01-01T00:00", "--to", "2026-01-31T00:00"], "more than 10000 slots"),
    ],
    ids=["unparsable", "from-after-to", "bad-rate", "rate-waits-for-ever", "too-many-slots"],
)
def test_the_command_refuses_bad_input_in_one_line(
    app: Celery, redis_client: redis.Redis, args: list[str], match: str
) -> None:
    result = cli(app, "backfill", "minutely", *args)
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert "Traceback" not in result.output
    assert re.search(match, line), line
    assert stored(redis_client) == {}


def test_the_command_names_an_unknown_entry(app: Celery) -> None:
    result = cli(app, "backfill", "ghost", "--from", "2026-01-01T00:00", "--to", "2026-01-01T01:00")
    assert result.exit_code == 1
    assert "ghost" in result.output


def test_a_publish_that_raises_is_recorded_failed_ends_the_run_and_is_never_retried(
    manager: Manager,
    redis_client: redis.Redis,
    minute: datetime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from celery_fork_scheduler import backfill

    def refuse(self: Any, occurrence: Any) -> None:
        raise OSError("broker gone mid-publish")

    decided(redis_client, "minutely", minute - MINUTE)
    with monkeypatch.context() as patch:
        patch.setattr(backfill.CeleryPublisher, "publish", refuse)
        results = manager.backfill("minutely", minute - 3 * MINUTE, minute - MINUTE)
    assert outcomes(results) == ["failed"]
    assert "broker gone" in results[0].detail
    [item] = manager.history_items("minutely")
    assert (item.data or {})["outcome"] == "failed" and (item.data or {})["backfill"] is True
    again = manager.backfill("minutely", minute - 3 * MINUTE, minute - MINUTE, rate=1000)
    assert outcomes(again) == ["skipped:failed", "sent", "sent"]


def test_a_run_held_back_or_running_for_its_slot_is_not_backfilled(
    manager: Manager, redis_client: redis.Redis, minute: datetime
) -> None:
    slots = [minute - n * MINUTE for n in range(4, 0, -1)]
    decided(redis_client, "solo", slots[-1])
    held = {"slot": us(slots[0]), "replica": "r1", "task_id": task_id_for("solo", slots[0])}
    redis_client.lpush(
        KEYS.history("solo"),
        json.dumps({**held, "outcome": "skipped:buffered", "at": us(slots[0])}),
    )
    redis_client.set(KEYS.buffered("solo"), json.dumps({"task_id": task_id_for("solo", slots[1])}))
    redis_client.set(KEYS.running("solo"), task_id_for("solo", slots[2]))
    results = manager.backfill("solo", slots[0], slots[-1], rate=1000, overlap="allow")
    assert outcomes(results) == [
        "skipped:buffered",  # its held run is published by a worker, with no "sent" item
        "skipped:buffered",  # held right now
        "already_published",  # running right now
        "sent",
    ]
    assert results[2].detail == "running"


def test_a_backfill_and_the_scheduler_claims_never_both_win_a_slot(
    app: Celery, manager: Manager, redis_client: redis.Redis, redis_url: str, minute: datetime
) -> None:
    from celery_fork_scheduler.backends.base import Claim
    from celery_fork_scheduler.backends.redis import RedisBackend
    from celery_fork_scheduler.config import read_settings

    backend = RedisBackend.from_url(redis_url, read_settings(app.conf))
    try:

        def claim(slot: datetime) -> Any:
            [result] = backend.claim([Claim("minutely", slot, task_id_for("minutely", slot))])
            return result

        assert claim(minute - 3 * MINUTE).outcome.value == "won"
        backend.mark_sent(
            [Claim("minutely", minute - 3 * MINUTE, task_id_for("minutely", minute - 3 * MINUTE))]
        )
        assert claim(minute - 2 * MINUTE).outcome.value == "won"  # pending: not published yet
        results = manager.backfill("minutely", minute - 4 * MINUTE, minute - MINUTE, rate=1000)
        assert outcomes(results) == [
            "sent",  # before the scheduler's first claim: it never published it
            "already_published",
            "skipped:pending",
            "skipped:undecided",
        ]
        # The scheduler can no longer win the backfilled slot (it is below its mark).
        assert claim(minute - 4 * MINUTE).outcome.value != "won"
    finally:
        backend.close()
    assert len(broker_messages(redis_client)) == 1


def test_slots_whose_history_redis_lost_are_unknown_to_a_backfill_unless_forced(
    app: Celery, manager: Manager, redis_url: str, redis_client: redis.Redis, minute: datetime
) -> None:
    """Found by the simulator (seed 5540), fixed. Redis restarted empty after the scheduler
    published slots of an entry (their history gone with it); the next claim writes back the
    mark a replica saw (``restored``). A backfill of the range then found no record of those
    slots and published them again. The restore now notes ``lost_before``: slots up to it are
    ``skipped:unknown`` unless forced, as slots older than a full history are."""
    from celery_fork_scheduler.backends.base import Claim
    from celery_fork_scheduler.backends.redis import RedisBackend
    from celery_fork_scheduler.config import read_settings

    slots = [minute - n * MINUTE for n in range(4, 0, -1)]
    decided(redis_client, "minutely", slots[-2], *slots[:-1])  # published by the scheduler
    redis_client.flushall()  # Redis restarted empty: the marks and the history are gone
    backend = RedisBackend.from_url(redis_url, read_settings(app.conf))
    try:
        late = Claim(
            "minutely",
            slots[-1],
            task_id_for("minutely", slots[-1]),
            known_mark_us=us(slots[-2]),  # what this replica saw claimed before the loss
        )
        backend.claim([late])
    finally:
        backend.close()
    results = manager.backfill("minutely", slots[0], slots[-2], rate=1000)
    assert outcomes(results) == ["skipped:unknown"] * 3
    assert broker_messages(redis_client) == []
    forced = manager.backfill("minutely", slots[0], slots[0], rate=1000, force=True)
    assert outcomes(forced) == ["sent"]


@pytest.mark.parametrize("rate", [1e-320, 1e-6, 0.0, -1.0])
def test_a_rate_slower_than_one_a_day_is_refused_before_anything_is_written(
    manager: Manager, redis_client: redis.Redis, minute: datetime, rate: float
) -> None:
    """``1 / rate`` seconds between publishes: a rate of 1e-320 passed, then waited for ever."""
    from celery_fork_scheduler import BackfillInputError

    with pytest.raises(BackfillInputError, match="one a day") as refused:
        manager.backfill("minutely", minute - 3 * MINUTE, minute - MINUTE, rate=rate)
    assert (refused.value.entry, refused.value.field) == ("minutely", "rate")
    assert stored(redis_client) == {}


def test_a_claim_no_redis_replica_confirmed_is_not_published(
    redis_url: str, redis_client: redis.Redis, minute: datetime
) -> None:
    """With ``fork_scheduler_wait_replicas``, a backfill publishes a slot only once that many
    Redis replicas have its claim, as the scheduler's claims: a failover could lose an
    unconfirmed claim and its record, and a later backfill would publish the slot again
    (simulator seed 71050). This Redis has no replica: nothing is published, the slot is
    recorded ``failed`` (with why) and the run ends there."""
    app = make_app(redis_url, fork_scheduler_wait_replicas=1, fork_scheduler_wait_timeout=0.05)
    try:
        decided(redis_client, "minutely", minute - MINUTE)
        results = Manager(app).backfill("minutely", minute - 3 * MINUTE, minute - MINUTE)
    finally:
        app.close()
    assert outcomes(results) == ["failed"]
    assert "not confirmed by 1 Redis replica(s)" in results[0].detail
    assert broker_messages(redis_client) == []
    stored_mark = redis_client.hget(KEYS.backfill("minutely"), us(minute - 3 * MINUTE))
    assert stored_mark is not None and stored_mark.startswith(b"failed|")
