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


def test_locking_critical_section() -> None:
    output = run_example("locking_critical_section.py", timeout=120)
    assert "counter = 200 (expected 200)" in output


@pytest.mark.e2e
def test_quickstart() -> None:
    output = run_example("quickstart/run.py", timeout=120)
    assert "scheduled task runs received by the worker" in output
    assert "hello-every-2s" in output


@pytest.mark.e2e
def test_demo() -> None:
    output = run_example("demo/run.py", "--seconds", "16", timeout=240)
    assert "OK: every slot fired exactly once" in output


@pytest.mark.e2e
def test_runtime_manager() -> None:
    output = run_example("runtime_manager/run.py", timeout=240)
    assert "runs received; pause, resume, run_now and removal held" in output


@pytest.mark.e2e
def test_decorators() -> None:
    output = run_example("decorators/run.py", timeout=180)
    assert "OK: every @periodic entry fired" in output


@pytest.mark.e2e
def test_singleton_slow_task() -> None:
    output = run_example("singleton_slow_task/run.py", timeout=240)
    assert "runs, never two at once;" in output


@pytest.mark.e2e
def test_event_listeners() -> None:
    output = run_example("event_listeners/run.py", timeout=180)
    assert "events logged by the listener" in output
    assert "dispatch" in output
