"""Scenario 5: one replica's clock 1 h ahead or behind (``faketime -f "+1h"`` / ``"-1h"``), and
one replica whose wall clock jumps +1 h and back while it runs (libfaketime reading its offset
from a file; libfaketime moves the monotonic clock with it: with FAKETIME_DONT_FAKE_MONOTONIC
Python's time.sleep fails with EINVAL under libfaketime 0.9.10). No duplicate, nothing published
more than 0.5 s early, the others keep every slot covered."""

from __future__ import annotations

import shutil
import time
from datetime import timedelta

import pytest

from .conftest import MARGIN, BrokerWatch, every_entries, every_second, now, project, stop_all

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("faketime") is None, reason="needs Debian's faketime"),
]

ENTRIES = 30
#: docs/guarantees.md: "A slot is not published before Redis's clock reaches it (with a
#: tolerance of 0.5 s)". The broker is sampled every 20 ms by an unfaked clock.
EARLY_TOLERANCE = 0.5
#: "A replica's clock runs ahead or behind / jumps": the others claim every slot as usual, so
#: no miss is allowed anywhere.
MISS_WINDOWS: list = []
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def _run(title, scenario, redis_url, prefixes, during) -> list:
    module = scenario.write(project(every_entries(ENTRIES)))
    with BrokerWatch(redis_url) as watch:
        beats = scenario.start_beats(module, prefixes=prefixes)
        start = now()
        during()
        end = now()
        alive = stop_all(beats)
    expected = every_second(ENTRIES, start + MARGIN, end - MARGIN)
    early = watch.early(EARLY_TOLERANCE)
    _, result = scenario.judge(
        title, expected, counts=watch.counts, windows=MISS_WINDOWS, note=f"early={len(early)}"
    )
    assert alive, scenario.logs()
    assert result.duplicated == 0, scenario.logs()
    assert early == {}, early
    assert result.missed_outside == 0, scenario.logs()
    return beats


@pytest.mark.parametrize("offset", ["+1h", "-1h"])
def test_a_replica_an_hour_off_never_duplicates_nor_fires_early(
    offset, scenario, redis_url
) -> None:
    beats = _run(
        f"5 clock {offset} on one replica",
        scenario,
        redis_url,
        [["faketime", "-f", offset], [], []],
        lambda: time.sleep(20),
    )
    # It schedules on Redis's clock: it takes part instead of idling or firing an hour off.
    assert "off Redis TIME" in beats[0].log(), scenario.logs()
    assert " sent " in beats[0].log(), scenario.logs()


def test_a_replica_whose_clock_jumps_an_hour_and_back_never_duplicates_nor_fires_early(
    scenario, redis_url
) -> None:
    offset_file = scenario.workdir / "faketime-offset"
    offset_file.write_text("+0\n")
    jumping = {
        "LD_PRELOAD": LIBFAKETIME,
        "FAKETIME_TIMESTAMP_FILE": str(offset_file),
        "FAKETIME_NO_CACHE": "1",
    }
    jumps = []

    def during() -> None:
        time.sleep(6)
        for offset in ("+1h", "+0", "-1h", "+0"):
            offset_file.write_text(offset + "\n")
            jumps.append(f"{now():%T.%f} {offset}")
            time.sleep(5)

    env_prefix = ["env", *(f"{k}={v}" for k, v in jumping.items())]
    beats = _run(
        "5b clock jumps +1h/-1h mid-run", scenario, redis_url, [env_prefix, [], []], during
    )
    assert "off Redis TIME" in beats[0].log(), f"{jumps}\n{scenario.logs()}"


#: A lone replica whose clock steps +1 h while it runs: the docs promise "Nothing, or one
#: catch-up fire" and that a skewed host "neither fires early nor sleeps through its slots".
#: No other replica covers for it here, so every slot after the jump plus this settle time
#: (one refresh interval to re-measure the offset, plus slack) must still be published.
JUMP_SETTLE = 3.0


def test_a_lone_replica_keeps_publishing_after_its_clock_steps_an_hour_ahead(
    scenario, redis_url
) -> None:
    offset_file = scenario.workdir / "faketime-offset"
    offset_file.write_text("+0\n")
    prefix = [
        "env",
        f"LD_PRELOAD={LIBFAKETIME}",
        f"FAKETIME_TIMESTAMP_FILE={offset_file}",
        "FAKETIME_NO_CACHE=1",
    ]
    module = scenario.write(project(every_entries(ENTRIES)))
    with BrokerWatch(redis_url) as watch:
        beat = scenario.start_beat(module, "lone", prefix=prefix)
        time.sleep(4)
        offset_file.write_text("+1h\n")
        jumped = now()
        time.sleep(12)
        end = now()
        alive = stop_all([beat])
    expected = every_second(ENTRIES, jumped + timedelta(seconds=JUMP_SETTLE), end - MARGIN)
    early = watch.early(EARLY_TOLERANCE)
    _, result = scenario.judge(
        "5c lone replica, clock steps +1h",
        expected,
        counts=watch.counts,
        note=f"early={len(early)}",
    )
    assert alive, scenario.logs()
    assert result.duplicated == 0 and early == {}
    assert result.missed == 0, f"jumped {jumped:%T.%f}\n{scenario.logs()}"
