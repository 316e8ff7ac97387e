"""Scenario 3: ``CLIENT PAUSE 5000 ALL`` on the claims Redis, and scenario 4: a slow broker
(``CLIENT PAUSE 3000 WRITE`` on the broker Redis, so each publish hangs for seconds)."""

from __future__ import annotations

import random
import time
from datetime import timedelta

import pytest
import redis

from .conftest import GRACE, MARGIN, every_entries, every_second, now, project, stop_all

pytestmark = pytest.mark.e2e

ENTRIES = 30
CLAIMS_PAUSE = timedelta(seconds=5)
#: Stated window (docs/guarantees.md, "Redis unreachable" and "A replica wakes up late"):
#: while the claims Redis does not answer nothing is published; once it answers again, slots
#: no older than the catch-up grace (5 s) are each published, older ones follow the catch-up
#: policy. Misses are allowed from the start of the pause until its end plus the grace.
CLAIMS_PAUSE_WINDOW = CLAIMS_PAUSE + GRACE

BROKER_PAUSE = timedelta(seconds=3)
BROKER_PAUSES = 3
#: A publish that hangs 3 s happens after the fence (no takeover) and is shorter than the
#: catch-up grace: the docs state no miss and no duplicate for it.
BROKER_PAUSE_WINDOWS: list = []


def test_claims_redis_client_pause_kills_nothing_and_duplicates_nothing(
    scenario, claims_server
) -> None:
    rng = random.Random(20260503)
    beats = scenario.start_beats(scenario.write(project(every_entries(ENTRIES))))
    start = now()
    time.sleep(rng.uniform(4.0, 6.0))
    claims = redis.Redis.from_url(claims_server.url)
    paused = now()
    claims.execute_command("CLIENT", "PAUSE", int(CLAIMS_PAUSE.total_seconds() * 1000), "ALL")
    claims.close()
    time.sleep(CLAIMS_PAUSE.total_seconds() + GRACE.total_seconds() + 5)
    end = now()
    alive = stop_all(beats)
    expected = every_second(ENTRIES, start + MARGIN, end - MARGIN)
    window = (paused, paused + CLAIMS_PAUSE_WINDOW)
    fires, result = scenario.judge(
        "3 claims Redis CLIENT PAUSE 5000 ALL",
        expected,
        windows=[window],
        note=f"paused {paused:%T.%f}",
    )
    assert alive, scenario.logs()
    scenario.assert_clean(fires, result, expected)


def test_a_slow_broker_duplicates_nothing(scenario, broker) -> None:
    rng = random.Random(20260504)
    beats = scenario.start_beats(scenario.write(project(every_entries(ENTRIES))))
    start = now()
    pauses = []
    for _ in range(BROKER_PAUSES):
        time.sleep(rng.uniform(1.0, 3.0))
        pauses.append(now())
        # Writes hang (every LPUSH of a publish), reads go on: a broker that takes seconds.
        broker.execute_command("CLIENT", "PAUSE", int(BROKER_PAUSE.total_seconds() * 1000), "WRITE")
        time.sleep(BROKER_PAUSE.total_seconds())
    time.sleep(6)
    end = now()
    alive = stop_all(beats)
    expected = every_second(ENTRIES, start + MARGIN, end - MARGIN)
    fires, result = scenario.judge(
        "4 slow broker (CLIENT PAUSE 3000 WRITE)",
        expected,
        windows=BROKER_PAUSE_WINDOWS,
        note="paused " + ", ".join(f"{p:%T.%f}" for p in pauses),
    )
    assert alive, scenario.logs()
    scenario.assert_clean(fires, result, expected)
