"""Smoke tests: every example runs on its own, exits 0 and prints its key line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(script: str, *args: str, timeout: float) -> str:
    """Run ``examples/<script>`` with this interpreter; return its output, fail on exit != 0."""
    env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, f"{script} exited {completed.returncode}:\n{output}"
    return output


def test_native_schedules_prints_next_slots() -> None:
    output = run_example(
        "native_schedules/run.py", "--after", "2026-03-27T12:00:00+00:00", timeout=60
    )
    assert "-> cron 30 7 * * 1-5 in Europe/Berlin" in output
    # the first weekday 07:30 in Berlin after the switch to summer time
    assert "2026-03-30 05:30:00 UTC   Mon 2026-03-30 07:30:00 CEST" in output
    # crontab ANDs day_of_month with day_of_week: the first Monday of the month
    assert "2026-04-06 07:00:00 UTC   Mon 2026-04-06 09:00:00 CEST" in output
    assert "-> every 45 seconds" in output


def test_exclusions_prints_a_month_of_slots_marking_the_excluded_ones() -> None:
    output = run_example("exclusions/run.py", "--after", "2026-12-01T00:00:00+00:00", timeout=60)
    assert "Wed 2026-12-23 09:00 CET  runs" in output
    assert "Thu 2026-12-24 09:00 CET  excluded" in output  # the entry's own range
    assert "Fri 2026-12-25 09:00 CET  excluded" in output  # the calendar's yearly 12-25
    assert "17 runs, 6 excluded" in output


def test_jitter_prints_slots_and_their_jittered_instants() -> None:
    output = run_example("jitter/run.py", "--after", "2026-03-02T09:59:00+00:00", timeout=60)
    assert "sync-crm: cron * * * * * in UTC, jitter 30 s (own)" in output
    assert "heartbeat: every minute, jitter 10 s (default)" in output
    # Deterministic: the same offset on every machine (a hash of entry and slot).
    assert "slot 10:00:00  published at 10:00:23.054614  (+23.055 s)" in output


def test_locking_critical_section() -> None:
    output = run_example("locking_critical_section.py", timeout=120)
    assert "counter = 200 (expected 200)" in output


def test_backfill_publishes_missed_slots_once() -> None:
    output = run_example("backfill/run.py", "--minutes", "4", timeout=120)
    assert "OK: 3 missed slots backfilled once; the second run sent nothing" in output
    assert output.count("already_published") == 5  # one in the first run, four in the second


def test_runtime_shards_spread_definitions_over_every_master() -> None:
    output = run_example("runtime_shards/run.py", "--entries", "600", timeout=120)
    assert "OK: every master holds definitions; 540 entries left" in output
    assert "a Manager with 1 shard is refused: field 'fork_scheduler_runtime_shards'" in output


#: The examples that start a worker and beat: (directory, arguments, timeout, lines they print).
PROCESS_EXAMPLES = [
    ("quickstart", [], 120, ["scheduled task runs received by the worker", "hello-every-2s"]),
    ("demo", ["--seconds", "16"], 240, ["OK: every slot fired exactly once"]),
    ("runtime_manager", [], 240, ["runs received; pause, resume, run_now and removal held"]),
    ("decorators", [], 180, ["OK: every @periodic entry fired"]),
    ("singleton_slow_task", [], 240, ["runs, never two at once;"]),
    ("overlap_policies", [], 120, ["OK: queued runs one after another in slot order"]),
    ("event_listeners", [], 180, ["events logged by the listener", "dispatch"]),
    (
        "pause_on_failure",
        [],
        120,
        ["note: paused on failure: task", "OK: failed once, paused, resumed, ran again"],
    ),
]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("example", "args", "timeout", "expected"),
    PROCESS_EXAMPLES,
    ids=[example for example, *_ in PROCESS_EXAMPLES],
)
def test_example_with_processes(
    example: str, args: list[str], timeout: float, expected: list[str]
) -> None:
    output = run_example(f"{example}/run.py", *args, timeout=timeout)
    for line in expected:
        assert line in output
