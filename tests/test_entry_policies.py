"""Entry policies through the scheduler on a real Redis: limits, windows, catch-up, overlap, cap.

A fake clock drives the slot maths; claims, markers and counters are real Redis. A downtime is
simulated by not ticking while the fake clock moves on, then restarting or continuing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import redis
import replica_helpers
from celery import Celery

from celery_fork_scheduler import Manager, every
from celery_fork_scheduler.ids import CAPPED_HEADER, task_id_for
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.signals import entry_skipped
from celery_fork_scheduler.testing import FakeClock

KEYS = Keys("scheduler:")


def make_app(redis_url: str, beat_schedule: dict[str, Any], **conf: Any) -> Celery:
    return replica_helpers.make_app(redis_url, beat_schedule, main="policy_tests", **conf)


class Beat(replica_helpers.Beat):
    """One beat replica on the test Redis, driven by a fake clock."""

    def __init__(
        self, redis_url: str, clock: FakeClock, beat_schedule: dict[str, Any], **conf: Any
    ) -> None:
        app = make_app(redis_url, beat_schedule, **conf)
        super().__init__(redis_url, clock, app, f"policy-test-{id(self)}")

    def fired(self, entry: str = "e") -> list[str]:
        return self.publisher.fired(entry)


BeatFactory = Any


@pytest.fixture
def make_beat(redis_url: str, clock: FakeClock) -> Iterator[BeatFactory]:
    yield from replica_helpers.closed_after(
        lambda beat_schedule, **conf: Beat(redis_url, clock, beat_schedule, **conf)
    )


@pytest.fixture
def skips() -> Iterator[list[tuple[str, str, str]]]:
    """(entry, slot, reason) of every ``entry_skipped`` signal sent during the test."""
    seen: list[tuple[str, str, str]] = []

    def receiver(sender: Any = None, **kwargs: Any) -> None:
        seen.append((kwargs["entry"], kwargs["slot"].isoformat(), kwargs["reason"]))

    entry_skipped.connect(receiver)
    yield seen
    entry_skipped.disconnect(receiver)


def at(time_of_day: str) -> str:
    return f"2026-03-02T{time_of_day}+00:00"


def seconds(*values: int) -> list[str]:
    return [at(f"10:00:{value:02}") for value in values]


def every_second(**policies: Any) -> dict[str, Any]:
    return {"e": {"task": "t", "schedule": every(1).seconds, **policies}}


def every_minute(**policies: Any) -> dict[str, Any]:
    return {"e": {"task": "t", "schedule": every(1).minutes, **policies}}


# -- limited runs ------------------------------------------------------------------------------


def test_max_runs_stops_after_that_many_runs(
    make_beat: BeatFactory, skips: list[tuple[str, str, str]]
) -> None:
    beat = make_beat(every_second(max_runs=3))
    beat.run_for(6)
    assert beat.fired() == seconds(1, 2, 3)
    assert [reason for _, _, reason in skips] == ["finished"]  # recorded once, not per slot


def test_paused_slots_do_not_count_towards_max_runs(
    make_beat: BeatFactory, redis_url: str, skips: list[tuple[str, str, str]]
) -> None:
    beat = make_beat(every_second(max_runs=3))
    manager = Manager(beat.app, clock=beat.clock)
    beat.run_for(1)
    manager.pause("e")
    beat.run_for(3)
    manager.resume("e")
    beat.run_for(4)
    assert beat.fired() == seconds(1, 5, 6)
    assert [reason for _, _, reason in skips] == ["paused"] * 3 + ["finished"]
    assert manager.get("e").run_count == 3


def test_a_one_off_entry_runs_once(make_beat: BeatFactory) -> None:
    beat = make_beat(every_second(one_off=True))
    beat.run_for(5)
    assert beat.fired() == seconds(1)


def test_a_one_off_entry_stays_done_after_a_restart(
    make_beat: BeatFactory, clock: FakeClock
) -> None:
    first = make_beat(every_second(one_off=True))
    first.run_for(2)
    first.scheduler.close()
    clock.advance(60)
    second = make_beat(every_second(one_off=True))
    second.run_for(5)
    assert first.fired() == seconds(1)
    assert second.fired() == []


def test_a_one_off_runtime_entry_runs_once_across_replicas(
    make_beat: BeatFactory, clock: FakeClock
) -> None:
    replicas = [make_beat({}) for _ in range(3)]
    Manager(replicas[0].app, clock=clock).every(1).seconds.name("once").one_off().do("t")
    for _ in range(6 * 4):
        for replica in replicas:
            replica.scheduler.tick()
        clock.advance(0.25)
    assert sum(len(r.fired("once")) for r in replicas) == 1


# -- start and end -----------------------------------------------------------------------------


def test_start_at_and_end_at_bound_the_runs(make_beat: BeatFactory) -> None:
    beat = make_beat(
        every_second(start_at=at("10:00:04"), end_at="2026-03-02T11:00:06+01:00")  # 10:00:06 UTC
    )
    beat.run_for(10)
    assert beat.fired() == seconds(4, 5, 6)


def test_an_entry_whose_end_has_passed_never_fires(make_beat: BeatFactory) -> None:
    beat = make_beat(every_second(end_at=at("09:59:59")))
    beat.run_for(5)
    assert beat.fired() == []


def test_start_at_between_slots_bounds_an_interval_without_moving_its_anchor(
    make_beat: BeatFactory,
) -> None:
    beat = make_beat(
        {"e": {"task": "t", "schedule": every(10).seconds, "start_at": at("10:00:03")}}
    )
    beat.run_for(25)
    assert beat.fired() == seconds(10, 20)


# -- catch-up after a downtime -------------------------------------------------------------------


CATCHUP_CASES = [
    pytest.param({"catchup": "skip"}, ["10:06:00"], id="skip"),
    pytest.param({}, ["10:05:00", "10:06:00"], id="latest-by-default"),
    pytest.param({"catchup": "latest"}, ["10:05:00", "10:06:00"], id="latest"),
    pytest.param(
        {"catchup": "latest", "catchup_window": 20}, ["10:06:00"], id="latest-too-old-for-window"
    ),
    pytest.param(
        {"catchup": "all"}, ["10:02:00", "10:03:00", "10:04:00", "10:05:00", "10:06:00"], id="all"
    ),
    pytest.param(
        {"catchup": "all", "catchup_window": 200},
        ["10:03:00", "10:04:00", "10:05:00", "10:06:00"],
        id="all-within-window",
    ),
]


def fired_the_first_minute(make_beat: BeatFactory, policy: dict[str, Any]) -> Beat:
    """A beat with an every-minute entry under ``policy`` that ran to 10:01:01 (one slot)."""
    beat = make_beat(every_minute(**policy))
    beat.run_for(61, step=1)
    assert beat.fired() == [at("10:01:00")]
    return beat


@pytest.mark.parametrize(("policy", "expected"), CATCHUP_CASES)
def test_after_every_replica_was_down_missed_slots_follow_the_catchup_policy(
    make_beat: BeatFactory, clock: FakeClock, policy: dict[str, Any], expected: list[str]
) -> None:
    first = fired_the_first_minute(make_beat, policy)
    first.scheduler.close()

    clock.set(at("10:05:30"))  # down from 10:01:01 to 10:05:30
    second = make_beat(every_minute(**policy))
    second.run_for(31, step=1)
    assert second.fired() == [at(t) for t in expected]


@pytest.mark.parametrize(("policy", "expected"), CATCHUP_CASES)
def test_after_a_stall_missed_slots_follow_the_catchup_policy(
    make_beat: BeatFactory, clock: FakeClock, policy: dict[str, Any], expected: list[str]
) -> None:
    beat = fired_the_first_minute(make_beat, policy)
    clock.set(at("10:05:30"))  # no tick from 10:01:01 to 10:05:30
    beat.run_for(31, step=1)
    assert beat.fired() == [at("10:01:00")] + [at(t) for t in expected]


def test_catching_up_all_publishes_each_missed_slot_once_across_replicas(
    make_beat: BeatFactory, clock: FakeClock
) -> None:
    definition = every_minute(catchup="all")
    first = make_beat(definition)
    first.run_for(61, step=1)
    first.scheduler.close()
    clock.set(at("10:05:30"))
    replicas = [make_beat(definition) for _ in range(3)]
    for _ in range(31):
        for replica in replicas:
            replica.scheduler.tick()
        clock.advance(1)
    fired = sorted(slot for r in replicas for slot in r.fired())
    assert fired == [at(f"10:0{minute}:00") for minute in range(2, 7)]


# -- overlap -------------------------------------------------------------------------------------


def test_a_singleton_is_skipped_as_busy_while_its_marker_is_held(
    make_beat: BeatFactory, redis_client: redis.Redis, skips: list[tuple[str, str, str]]
) -> None:
    redis_client.set(KEYS.running("e"), "a-run-still-executing", px=60_000)
    beat = make_beat(every_second(singleton=True))
    beat.run_for(3)
    assert beat.fired() == []
    assert [reason for _, _, reason in skips] == ["busy"] * 3
    redis_client.delete(KEYS.running("e"))  # the worker finished
    beat.run_for(1)
    assert beat.fired() == seconds(4)


def test_a_published_singleton_run_holds_the_marker_until_released(
    make_beat: BeatFactory, redis_client: redis.Redis, skips: list[tuple[str, str, str]]
) -> None:
    beat = make_beat(every_second(singleton=True))
    beat.run_for(3)
    assert beat.fired() == seconds(1)
    marker = redis_client.get(KEYS.running("e"))
    assert marker is not None
    assert marker.decode() == beat.publisher.occurrences[0].task_id
    assert 0 < redis_client.pttl(KEYS.running("e")) <= 60_000
    assert [reason for _, _, reason in skips] == ["busy", "busy"]


def test_overlap_allow_ignores_a_held_marker(
    make_beat: BeatFactory, redis_client: redis.Redis
) -> None:
    redis_client.set(KEYS.running("e"), "someone")
    beat = make_beat(every_second())
    beat.run_for(2)
    assert beat.fired() == seconds(1, 2)


def test_buffer_one_holds_exactly_one_message_while_a_run_executes(
    make_beat: BeatFactory, redis_client: redis.Redis, skips: list[tuple[str, str, str]]
) -> None:
    redis_client.set(KEYS.running("e"), "a-run-still-executing", px=60_000)
    beat = make_beat(every_second(overlap="buffer_one", args=[1]))
    beat.run_for(4)
    assert beat.fired() == []
    assert [reason for _, _, reason in skips] == ["buffered", "busy", "busy", "busy"]
    held = json.loads(redis_client.get(KEYS.buffered("e")) or b"null")
    assert held["slot"] == seconds(1)[0]
    assert held["task_id"] == task_id_for("e", datetime.fromisoformat(seconds(1)[0]))
    assert (held["task"], held["args"]) == ("t", [1])
    assert redis_client.type(KEYS.buffered("e")) == b"string"


# -- the cluster-wide cap ------------------------------------------------------------------------


def test_the_cap_skips_slots_over_it_as_capped(
    make_beat: BeatFactory, skips: list[tuple[str, str, str]]
) -> None:
    beat = make_beat(
        {
            "a": {"task": "t", "schedule": every(1).seconds},
            "b": {"task": "t", "schedule": every(1).seconds},
        },
        fork_scheduler_max_concurrent=1,
    )
    beat.run_for(3)
    assert len(beat.publisher.occurrences) == 1
    assert beat.publisher.occurrences[0].headers[CAPPED_HEADER] is True
    assert {reason for _, _, reason in skips} == {"capped"}
    assert len(skips) == 5


def test_capped_slots_do_not_count_as_runs(
    make_beat: BeatFactory, redis_client: redis.Redis
) -> None:
    beat = make_beat(every_second(max_runs=2), fork_scheduler_max_concurrent=1)
    beat.run_for(3)
    assert beat.fired() == seconds(1)
    redis_client.delete(KEYS.cap)  # the running one finished
    beat.run_for(2)
    assert beat.fired() == seconds(1, 4)
    assert Manager(beat.app).get("e").run_count == 2


def test_the_cap_holds_across_replicas(
    make_beat: BeatFactory, clock: FakeClock, skips: list[tuple[str, str, str]]
) -> None:
    definition = {f"e{i}": {"task": "t", "schedule": every(1).seconds} for i in range(5)}
    replicas = [make_beat(definition, fork_scheduler_max_concurrent=2) for _ in range(3)]
    for _ in range(3 * 4):
        for replica in replicas:
            replica.scheduler.tick()
        clock.advance(0.25)
    assert sum(len(r.publisher.occurrences) for r in replicas) == 2
    assert [reason for _, _, reason in skips].count("capped") == 3 * 5 - 2
