"""Scenario 7 (issue 19): the broker is the claims' Redis, so each slot is fenced, published
and recorded in one step. Three replicas, many entries every second, one replica SIGKILLed and
restarted every 2-3 s at seeded random instants (inside the burst half the time): no slot is
published twice and none is missed. The fence path leaves a killed replica's fenced, unsent
slots ``in_flight`` (at most once); the one-step publish leaves no such window.

``KILL_STORM_ENTRIES`` (default 800) sets the entries; the soak and benchmark runs use the
default, a loaded CI machine may run fewer.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
import redis

from celery_fork_scheduler.testing import CeleryProcess

from .conftest import (
    CLAIM_LEASE,
    MARGIN,
    Scenario,
    every_entries,
    every_second,
    now,
    sleep_to_a_random_moment,
    stop_all,
)

pytestmark = pytest.mark.e2e

SEED = 20261202
ENTRIES = int(os.environ.get("KILL_STORM_ENTRIES", "800"))
KILLS = 16
TAIL = CLAIM_LEASE.total_seconds() + 3

PROJECT = """
app.conf.fork_scheduler_redis_url = os.environ["TEST_BROKER_URL"]
app.conf.beat_schedule = {{
    {entries}
}}
"""


def test_one_step_publish_through_a_kill_storm_is_exactly_once(
    redis_url: str,
    workdir: Path,
    processes: list[CeleryProcess],
    broker: redis.Redis,
    report,
) -> None:
    scenario = Scenario({"TEST_BROKER_URL": redis_url}, workdir, processes, broker, report)
    rng = random.Random(SEED)
    module = scenario.write(PROJECT.format(entries=every_entries(ENTRIES)))
    beats = scenario.start_beats(module)
    start = now()
    time.sleep(2)
    for _ in range(KILLS):
        sleep_to_a_random_moment(rng, 1.0, 2.0, inside_burst=0.05)
        scenario.kill_and_restart(beats, rng.randrange(3), module)
    time.sleep(TAIL)
    end = now()
    assert stop_all(beats), scenario.logs()
    one_step = [p for p in processes if "published and recorded in one step" in p.log()]
    assert one_step, "no replica used the one-step publish\n" + scenario.logs()
    expected = every_second(ENTRIES, start + MARGIN, end - MARGIN)
    fires, result = scenario.judge(
        f"7 kill storm, shared Redis ({ENTRIES} entries)",
        expected,
        note="; ".join(scenario.events),
    )
    scenario.assert_clean(fires, result, expected, f"{len(scenario.events)} kills")
