"""Scenario 6: a rolling deploy. Five replicas of version 1 are replaced one at a time by five
of version 2 (an entry added, one removed, one changed from every 2 s to every 3 s), so both
versions run side by side during the roll-out."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from .conftest import MARGIN, every_entries, every_second, expected_every, now, project, stop_all

pytestmark = pytest.mark.e2e

REPLICAS = 5
COMMON = 20
V1 = project(
    every_entries(COMMON),
    '"removed": {"task": "record", "schedule": every(1).seconds}',
    '"changed": {"task": "record", "schedule": every(2).seconds}',
)
V2 = project(
    every_entries(COMMON),
    '"added": {"task": "record", "schedule": every(1).seconds}',
    '"changed": {"task": "record", "schedule": every(3).seconds}',
)
#: docs/guarantees.md, "Replicas with different beat_schedule": "An entry present on at least
#: one healthy replica keeps firing": no miss window for the entries of either version while
#: a replica defining them runs. A replica stopped with SIGTERM publishes nothing after it.
MISS_WINDOWS: list = []
#: Each version-2 replica runs this long before the next version-1 replica is replaced.
STEP = timedelta(seconds=2)


def test_a_rolling_deploy_loses_no_v2_slot_and_duplicates_nothing(scenario) -> None:
    v1 = scenario.write(V1, name="proj_v1")
    v2 = scenario.write(V2, name="proj_v2")
    old = scenario.start_beats(v1, REPLICAS, name="v1")
    start = now()
    time.sleep(3)
    new = []
    first_v2_up = last_v1_gone = None
    for i in range(REPLICAS):
        old[i].stop()
        last_v1_gone = now()
        new.append(scenario.start_beat(v2, f"v2-{i}"))
        first_v2_up = first_v2_up or now()
        time.sleep(STEP.total_seconds())
    last_v2_up = now() - STEP
    time.sleep(6)
    end = now()
    alive = stop_all(new)
    expected = every_second(COMMON, start + MARGIN, end - MARGIN)
    expected["added"] = expected_every(1, first_v2_up + MARGIN, end - MARGIN)
    expected["changed"] = expected_every(3, last_v2_up + MARGIN, end - MARGIN)
    expected["removed"] = expected_every(1, start + MARGIN, start + timedelta(seconds=3))
    fires = scenario.fires()
    late_removed = sorted(
        slot for slot in fires.counts["removed"] if slot > last_v1_gone.isoformat()
    )
    timeline = (
        f"v1 up {start:%T}, v2 first up {first_v2_up:%T.%f}, last v1 gone "
        f"{last_v1_gone:%T.%f}, last v2 up {last_v2_up:%T.%f}"
    )
    fires, result = scenario.judge(
        "6 rolling deploy v1->v2",
        expected,
        fires=fires,
        windows=MISS_WINDOWS,
        note=f"{timeline}; v1-only fired after v1 gone: {len(late_removed)}",
    )
    assert alive, scenario.logs()
    scenario.assert_clean(fires, result, expected, timeline)
    assert late_removed == [], timeline
    # The changed entry follows version 2 (every 3 s) once only version 2 runs.
    after = [s for s in fires.counts["changed"] if s > (last_v1_gone + MARGIN).isoformat()]
    assert after and all(int(s[17:19]) % 3 == 0 for s in after), (after, timeline)
